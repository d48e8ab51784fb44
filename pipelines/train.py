"""``dupmine train``: a small pixel-space diffusion model on img2dataset shards, saved in diffusers layout.

    dupmine train --input SHARDS --output DIR [--unconditional] [--resolution 16] [--channels 1]
                  [--steps 1500] [--batch-size 64] [--seed 0] [...]

Reads the shards (webdataset, parquet or files; paths, globs, braces, URLs),
decodes and resizes every image to ``--resolution`` (grayscale with
``--channels 1``), trains a DDPM (text-conditional on the captions through the
frozen all-MiniLM-L6-v2 encoder, with the null caption dropped in 10% of steps
for classifier-free guidance; ``--unconditional`` for a UNet2DModel) and writes
``DIR/unet``, ``DIR/scheduler`` (+ ``text_encoder``, ``tokenizer``) and
``DIR/dupmine_training.json``. Score it with
``dupmine score --target diffusers:DIR`` (or ``diffusers-uncond:DIR``).
A rerun with the same flags and data reuses ``DIR``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from models.score.training.config import TrainConfig
from pipelines.common import setup_logging, stage_parser

_HIDDEN = ("conditional", "extra")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser():
    parser = stage_parser("dupmine train", __doc__)
    parser.add_argument("--input", required=True, help="img2dataset shards (paths, globs, braces, folders, URLs)")
    parser.add_argument("--output", required=True, help="model folder to write (diffusers layout)")
    parser.add_argument("--unconditional", action="store_true", help="a UNet2DModel without captions")
    parser.add_argument("--log-every", type=int, default=100, help="print the loss every N steps (0: never)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while training")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _HIDDEN:
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=value,
                                help=f"default {value}")
        elif isinstance(value, tuple):
            parser.add_argument(_flag(f.name), type=lambda s: tuple(int(v) for v in s.split(",")), default=value,
                                help=f"comma-separated (default {','.join(map(str, value))})")
        else:
            parser.add_argument(_flag(f.name), type=type(value), default=value, help=f"default {value}")
    return parser


def config_from_args(args) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if f.name not in _HIDDEN}
    return TrainConfig(conditional=not args.unconditional, **values)


def run(argv: list[str] | None = None) -> dict:
    """Train (or reuse) the model; returns and prints a summary (path, spec, steps, seconds, loss, rejects)."""
    from models.score.training.data import images_from_shards
    from models.score.training.trainer import train

    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    data = images_from_shards(args.input, cfg.resolution, cfg.channels)
    model = train(data, cfg, args.output, log_every=args.log_every, num_threads=args.threads)
    summary = {"path": model.path, "spec": model.spec, "images": int(data.images.shape[0]),
               "rejects": len(data.rejects), "steps": model.steps, "seconds": round(model.seconds, 1),
               "final_loss": round(model.final_loss, 5), "cached": model.cached}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    run()
