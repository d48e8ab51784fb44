"""``dupmine report``: a static HTML report of a run (opens from disk, no server, no network).

    dupmine report --run RUN/ [--output RUN/report]
    dupmine report --embeddings emb/ --dedup dedup/ [--mine mine/] [--score score/] --output report/
        [--max-groups 30] [--max-members 8] [--thumb-size 128] [--max-rows 50]

The ``--max-*`` and ``--thumb-size`` flags are the fields of
``models.report.config.ReportConfig`` (their one source of defaults).
``--run`` takes the folders of ``dupmine run`` (``RUN/embed``, ``RUN/dedup``,
``RUN/mine``, ``RUN/score``; any may be missing, and the demo's
``RUN/embeddings`` works too); explicit ``--embeddings/--dedup/--mine/--score``
override them. Writes ``OUTPUT/index.html`` with thumbnails, plots and copied
score images beside it, and prints nothing but a log line.

The report is plain Python, not a Beam pipeline: Beam options handed on by
``dupmine run`` are accepted and ignored.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from models.report.config import ReportConfig, ReportInputs
from pipelines.common import positive_int, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.report")


def build_parser() -> argparse.ArgumentParser:
    """The ``dupmine report`` flags."""
    parser = stage_parser("dupmine report", __doc__)
    parser.add_argument("--run", default=None, help="run folder with embed/, dedup/, mine/, score/ subfolders")
    parser.add_argument("--embeddings", default=None, help="embed output folder (overrides RUN/embed)")
    parser.add_argument("--dedup", default=None, help="dedup output folder (overrides RUN/dedup)")
    parser.add_argument("--mine", default=None, help="mine output folder (overrides RUN/mine)")
    parser.add_argument("--score", default=None, help="score output folder (overrides RUN/score)")
    parser.add_argument("--output", default=None, help="report folder (default: RUN/report)")
    for f in dataclasses.fields(ReportConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=positive_int, default=f.default,
                            help=f"{ReportConfig.help(f.name)} (default %(default)s)")
    return parser


def run(argv: list[str] | None = None) -> str:
    """Parse flags, render the report, return the path of ``index.html``."""
    from models.report.render import render_report

    parser = build_parser()
    args, rest = split_args(parser, argv)
    setup_logging()
    if rest:
        log.info("report is not a Beam pipeline; ignoring options %s", rest)
    inputs = ReportInputs.from_run_dir(args.run) if args.run else ReportInputs()
    overrides = {name: getattr(args, name) for name in ("embeddings", "dedup", "mine", "score") if getattr(args, name)}
    inputs = dataclasses.replace(inputs, **overrides)
    if not any(inputs.as_dict().values()):
        parser.error("give --run RUN or at least one of --embeddings, --dedup, --mine, --score")
    output = args.output or (os.path.join(args.run, "report") if args.run else None)
    if output is None:
        parser.error("--output is required without --run")
    cfg = ReportConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ReportConfig)})
    index = render_report(inputs, output, **dataclasses.asdict(cfg))
    log.info("report written to %s", index)
    return index
