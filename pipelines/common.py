"""Shared plumbing for stage entry points: flag parsing, runner choice, logging.

Our flags are parsed with ``parse_known_args``; everything else (``--runner``,
``--direct_num_workers``, ``--project``, ``--flink_master``, ...) is passed
untouched to Beam's ``PipelineOptions``. With no ``--runner``, pipelines run
on Beam's in-process ``FnApiRunner`` (the engine behind the DirectRunner)
directly, which skips the DirectRunner's attempt to download Prism.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("apache_beam", "urllib3", "fsspec", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def split_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Parse our flags; return them and the untouched rest for Beam."""
    return parser.parse_known_args(argv)


def make_pipeline(beam_args: list[str], test_pipeline=None):
    """A Beam pipeline for ``beam_args``; ``test_pipeline`` wins when given (tests)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    if test_pipeline is not None:
        return test_pipeline
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive integer")
    return n
