"""Flex Template entry point (``FLEX_TEMPLATE_PYTHON_PY_FILE``): submit one dupmine stage to Dataflow.

The template launcher runs this file as

    python launch.py --stage=embed --input=gs://... --batch_size=64 --overwrite=true \\
        --runner=DataflowRunner --project=... --region=... --temp_location=... [other Beam options]

It

1. takes ``--stage`` (one of the stages with a template, see ``template_params.py``);
2. rewrites the template parameters into the stage's own flags
   (``--batch_size=64`` -> ``--batch-size=64``, ``--overwrite=true`` -> ``--overwrite``);
3. adds ``--sdk_container_image`` from ``$DUPMINE_WORKER_IMAGE`` (baked into
   the launcher image by build.sh) unless the launch names an image;
4. sets ``DUPMINE_SUBMIT_ONLY=1`` so the pipeline built by
   ``pipelines.common.make_pipeline`` returns after submission instead of
   waiting (Dataflow requires a Flex Template launcher to exit after
   ``run()``), and calls ``pipelines.cli.main([stage, ...])``.

The stage's driver-side steps that follow the run (reading the job's output,
writing ``summary.json``) are skipped in this mode; the job itself writes every
per-part output.
"""
from __future__ import annotations

import logging
import os
import sys

# Run from a checkout or the launcher image's /template: the stage modules live
# two folders up (an installed dupmine wins).
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import template_params  # noqa: E402  (sibling module; this script's folder is on sys.path)
from pipelines.common import SUBMIT_ONLY_ENV, PipelineSubmitted  # noqa: E402

log = logging.getLogger("dupmine.launch")


def stage_command(argv: list[str], worker_image: str | None) -> list[str]:
    """The ``dupmine`` command line (``[stage, *flags, *beam options]``) for the launcher's ``argv``."""
    stage, rest = template_params.split_stage(argv)
    return [stage, *template_params.with_worker_image(template_params.to_stage_argv(stage, rest), worker_image)]


def main(argv: list[str] | None = None) -> int:
    """Submit the stage; return 0 once the runner has accepted the job."""
    from pipelines.cli import main as dupmine

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = stage_command(sys.argv[1:] if argv is None else argv, os.environ.get(template_params.WORKER_IMAGE_ENV))
    log.info("launching: dupmine %s", " ".join(command))
    os.environ[SUBMIT_ONLY_ENV] = "1"
    try:
        return dupmine(command)
    except PipelineSubmitted as submitted:
        result = submitted.result
        # DataflowPipelineResult: has_job is False when only a job file was written.
        job = f" as Dataflow job {result.job_id()}" if getattr(result, "has_job", False) else ""
        log.info("submitted dupmine %s%s; not waiting (Flex Template launch)", command[0], job)
        return 0


if __name__ == "__main__":
    sys.exit(main())
