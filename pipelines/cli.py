"""The ``dupmine`` command: one subcommand per stage.

    dupmine run    --input SHARDS --output DIR [--config FILE.yaml] [--set STAGE.KEY=VALUE] [beam options]
    dupmine embed  --input SHARDS --output DIR [--model SPEC] [beam options]
    dupmine dedup  --embeddings DIR --output DIR [--threshold 0.95] [beam options]
    dupmine mine   --embeddings DIR --groups DIR --output DIR [--vocab FILE] [beam options]
    dupmine apply  --input SHARDS --drop FILE --output DIR
    dupmine score  --flagged FILE --target SPEC --output DIR [--checks plaplace,side,wen] [beam options]
    dupmine report --run DIR [--output DIR]
    dupmine train  --input SHARDS --output DIR [--unconditional] [--steps N]
    dupmine download --url-list FILE --output DIR
    dupmine demo   [--output DIR]

Each subcommand's ``--help`` lists its flags; flags it does not know are
passed to Apache Beam (``--runner``, ``--direct_num_workers``, ...).
"""
from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SUBCOMMANDS = {
    "run": ("pipelines.run", "every stage, shards to report, with a YAML config and caching"),
    "embed": ("pipelines.embed", "img2dataset shards -> image/text embeddings (LAION layout)"),
    "dedup": ("pipelines.dedup", "embeddings -> near-duplicate groups, edges, drop list (faiss)"),
    "mine": ("pipelines.mine", "keywords x groups x object tags -> trigger tables, flagged prompts"),
    "apply": ("pipelines.apply", "drop list + shards -> filtered shards (same img2dataset format)"),
    "score": ("pipelines.score", "flagged prompts x target model -> p-Laplace, SIDE, Wen scores"),
    "report": ("pipelines.report", "stage outputs -> static HTML report (galleries, triggers, scores)"),
    "train": ("pipelines.train", "img2dataset shards -> a small pixel-space diffusion model (diffusers layout)"),
    "download": ("pipelines.download", "URL list -> img2dataset webdataset shards (wraps img2dataset)"),
    "demo": ("pipelines.demo", "build a small synthetic dataset offline and run the pipeline on it"),
}


def _usage() -> str:
    lines = ["usage: dupmine <command> [flags] [beam options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'dupmine <command> --help' for a command's flags."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"dupmine: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    module.run(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
