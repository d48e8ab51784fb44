"""``dupmine embed``: img2dataset shards -> CLIP-style embedding folder.

    dupmine embed --input 'shards/{00000..00009}.tar' --output emb/ \
        --model openclip:ViT-B-32/laion2b_s34b_b79k [--batch-size 64] [--device auto] [beam options]
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass

from models.embed.shard_job import ShardJob
from models.embed.embedders import DEFAULT_MODEL, EmbedderConfig
from models.storage.imaging import DEFAULT_MAX_PIXELS
from pipelines.common import make_pipeline, positive_int, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.embed")


@dataclass(frozen=True)
class EmbedConfig:
    """Resolved options of the embed stage (written to ``OUTPUT/config.json``)."""

    input: str
    output: str
    model: str = DEFAULT_MODEL
    batch_size: int = 64
    device: str = "auto"
    preprocess: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_workers: int = 2
    threads: int = 0
    overwrite: bool = False
    progress_seconds: float = 30.0

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}; expected auto, cpu or cuda")
        for name in ("batch_size", "max_pixels", "decode_workers"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")

    @property
    def embedder(self) -> EmbedderConfig:
        return EmbedderConfig(model=self.model, device=self.device, preprocess=self.preprocess, threads=self.threads)

    @property
    def job(self) -> ShardJob:
        return ShardJob(batch_size=self.batch_size, max_pixels=self.max_pixels,
                        decode_workers=self.decode_workers, progress_seconds=self.progress_seconds)

    def output_fingerprint_params(self) -> dict:
        """The parameters that change what is written (a shard made with others is redone)."""
        return {"model": self.model, "preprocess": self.preprocess, "max_pixels": self.max_pixels}


def _default(name: str):
    return EmbedConfig.__dataclass_fields__[name].default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stage's flags; every default is :class:`EmbedConfig`'s (one source of truth)."""
    parser.add_argument("--input", required=True, help="shards: paths, globs, {00000..00099} braces, folders, fsspec URLs; comma-separated")
    parser.add_argument("--output", required=True, help="output embedding folder (local or fsspec URL)")
    parser.add_argument("--model", default=_default("model"), help="openclip:ARCH/PRETRAINED | onnx:PATH | pixel (default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=_default("batch_size"))
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=_default("device"))
    parser.add_argument("--preprocess", default=_default("preprocess"),
                        help="onnx: preprocessing as JSON or a JSON file/URL (default: MODEL.onnx.json, else ImageNet)")
    parser.add_argument("--max-pixels", type=positive_int, default=_default("max_pixels"),
                        help="reject images declaring more pixels (decompression bombs)")
    parser.add_argument("--decode-workers", type=positive_int, default=_default("decode_workers"), help="decode threads per worker")
    parser.add_argument("--threads", type=int, default=_default("threads"), help="torch/onnxruntime intra-op threads (0 = library default)")
    parser.add_argument("--overwrite", action="store_true", help="redo shards that already have a completion marker")
    parser.add_argument("--progress-seconds", type=float, default=_default("progress_seconds"), help="seconds between progress lines")


def config_from_args(args: argparse.Namespace) -> EmbedConfig:
    return EmbedConfig(
        input=args.input, output=args.output, model=args.model, batch_size=args.batch_size, device=args.device,
        preprocess=args.preprocess, max_pixels=args.max_pixels, decode_workers=args.decode_workers,
        threads=args.threads, overwrite=args.overwrite, progress_seconds=args.progress_seconds,
    )


def build(p, cfg: EmbedConfig, shards):
    """Wire the stage: shards -> EmbedShards -> WriteStats. Returns (stats PCollection, the EmbedShards transform)."""
    import apache_beam as beam

    from models.storage import layout
    from models.storage.folders.embed import EmbeddingFolder
    from transforms.embed import EmbedShards

    stats_path = EmbeddingFolder(cfg.output).stats
    fp = layout.fingerprint(cfg.output_fingerprint_params())
    embed = EmbedShards(cfg.embedder, cfg.job, cfg.output, fp, cfg.overwrite)
    stats = p | "ListShards" >> beam.Create(shards) | "EmbedShards" >> embed
    stats | "WriteStats" >> beam.Map(lambda s: layout.write_json(stats_path, s))
    return stats, embed


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, preflight the model, run the pipeline; return the merged stats."""
    from models.storage import layout
    from models.storage.folders.embed import EmbeddingFolder
    from models.storage.shards import list_shards

    parser = stage_parser("dupmine embed", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    shards = list_shards(cfg.input)
    p = make_pipeline(beam_args, test_pipeline)
    _, transform = build(p, cfg, shards)
    # Fail at start, with a clear message, if weights are missing. The model is loaded through the workers'
    # shared handle, so in-process runners reuse it instead of loading it twice (held until the run ends).
    loaded = transform.fn.load()
    folder = EmbeddingFolder(cfg.output)
    layout.write_json(folder.config, {"stage": "embed", "config": asdict(cfg), "embedder": loaded.value.describe(),
                                      "shards": [asdict(s) for s in shards], "beam_args": beam_args})
    log.info("embedding %d shard(s) with %s into %s", len(shards), cfg.model, cfg.output)
    p.run().wait_until_finish()
    stats = layout.read_json(folder.stats)
    log.info("embed done: %s", {k: v for k, v in stats.items() if not k.startswith(("count.rejected.", "count.key_source."))})
    log.info("embed: %s", key_source_note(stats))
    return stats


def key_source_note(stats: dict) -> str:
    """Where the plain keys came from, e.g. ``ids from key (78 rows), image_path (5 rows); exact matching on sha256``.

    Every embedded row has a sha256 (computed from the image bytes where the shard had none).
    """
    prefix = "count.key_source."
    sources = {k[len(prefix):]: v for k, v in sorted(stats.items()) if k.startswith(prefix)}
    listed = ", ".join(f"{name} ({n} rows)" for name, n in sources.items()) or "no rows"
    return f"ids from {listed}; exact matching on sha256"
