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

# Set to 1 (deploy/dataflow/launch.py does) to submit pipelines without waiting for them.
SUBMIT_ONLY_ENV = "DUPMINE_SUBMIT_ONLY"


class PipelineSubmitted(Exception):
    """Raised by ``run()`` of a pipeline from :func:`make_pipeline` when ``DUPMINE_SUBMIT_ONLY=1``.

    The runner has accepted the job and nobody waits for it (a Dataflow Flex
    Template launcher must exit after ``run()``), so the stage's driver-side
    steps after the run (e.g. dedup's ``summary.json``) are skipped.
    ``result`` is the runner's PipelineResult.
    """

    def __init__(self, result):
        super().__init__(f"pipeline submitted and not awaited ({SUBMIT_ONLY_ENV}=1)")
        self.result = result


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


def stage_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of a ``dupmine <command>``: its module docstring as the description, kept as written."""
    return argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def make_pipeline(beam_args: list[str], test_pipeline=None):
    """A Beam pipeline for ``beam_args``; ``test_pipeline`` wins when given (tests)."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    if test_pipeline is not None:
        return test_pipeline
    options = PipelineOptions(beam_args)
    pipeline_class = _submit_only_pipeline_class() if os.environ.get(SUBMIT_ONLY_ENV) == "1" else beam.Pipeline
    if options.view_as(StandardOptions).runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return pipeline_class(runner=FnApiRunner(), options=options)
    return pipeline_class(options=options)


def _submit_only_pipeline_class():
    """A ``beam.Pipeline`` whose ``run()`` submits the job and raises :class:`PipelineSubmitted`."""
    import apache_beam as beam

    class SubmitOnlyPipeline(beam.Pipeline):
        def run(self, test_runner_api="AUTO"):
            raise PipelineSubmitted(super().run(test_runner_api))

    return SubmitOnlyPipeline


def shared_data_file(*parts: str) -> str | None:
    """A file of the team's shared data folder (``$DUPMINE_SHARED_DATA``, then ``../shared/data`` beside the
    repo), or None where neither has it."""
    roots = [os.environ.get("DUPMINE_SHARED_DATA"),
             os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")]
    for root in filter(None, roots):
        path = os.path.join(root, *parts)
        if os.path.exists(path):
            return os.path.abspath(path)
    return None


def positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive integer")
    return n
