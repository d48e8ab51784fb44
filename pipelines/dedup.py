"""``dupmine dedup``: embedding folder -> near-duplicate groups, edges and a drop list.

    dupmine dedup --embeddings emb/ --output dedup/ [--threshold 0.95] [--partitions K]
        [--sample-fraction F] [--seed S] [--max-spill M] [beam options]

Works on dupmine's embed output and on LAION / clip-retrieval embedding
folders (``img_emb/img_emb_{i}.npy`` + ``metadata/metadata_{i}.parquet``).
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from models.dedup import DEFAULT_MAX_SPILL
from pipelines.common import make_pipeline, positive_int, setup_logging, split_args

log = logging.getLogger("dupmine.dedup")

ROWS_PER_PARTITION = 2000
OUTPUTS = ["groups", "edges", "drop_keys.parquet", "rejects", "_stage", "summary.json"]  # cleared before a run  # auto --partitions aims at this many home rows per partition


@dataclass(frozen=True)
class DedupConfig:
    """Resolved options of the dedup stage (written to ``OUTPUT/config.json``)."""

    embeddings: str
    output: str
    threshold: float = 0.95
    partitions: int = 0           # 0: auto, ceil(N / 2000)
    sample_fraction: float = 0.0  # 0: auto, enough for 256 rows per centroid (faiss's own cap)
    seed: int = 1234
    max_spill: int = DEFAULT_MAX_SPILL
    niter: int = 20
    block_rows: int = 65536

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold {self.threshold} must be in (0, 1]")
        if self.partitions < 0 or self.max_spill < 0 or self.niter <= 0 or self.block_rows <= 0:
            raise ValueError(f"--partitions, --max-spill must be >= 0 and --niter, --block-rows > 0; got {self}")
        if not 0.0 <= self.sample_fraction <= 1.0:
            raise ValueError(f"--sample-fraction {self.sample_fraction} must be in [0, 1]")

    def resolve_k(self, n_rows: int) -> int:
        return self.partitions or max(1, math.ceil(n_rows / ROWS_PER_PARTITION))

    def sample_size(self, n_rows: int, k: int) -> int:
        if self.sample_fraction:
            return max(1, int(round(self.sample_fraction * n_rows)))
        return min(n_rows, 256 * k)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", required=True, help="embedding folder (dupmine embed, LAION or clip-retrieval layout)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--threshold", type=float, default=0.95, help="cosine at or above which two images are near-duplicates")
    parser.add_argument("--partitions", type=int, default=0, help="k-means partitions (0: auto, one per ~2000 rows)")
    parser.add_argument("--sample-fraction", type=float, default=0.0, help="fraction of rows to train k-means on (0: auto, 256 per partition)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--max-spill", type=int, default=DEFAULT_MAX_SPILL, help="extra partitions a row may visit (recall vs work)")
    parser.add_argument("--niter", type=positive_int, default=20, help="k-means iterations")
    parser.add_argument("--block-rows", type=positive_int, default=65536, help="rows per in-memory block")


def config_from_args(args: argparse.Namespace) -> DedupConfig:
    return DedupConfig(embeddings=args.embeddings, output=args.output, threshold=args.threshold, partitions=args.partitions,
                       sample_fraction=args.sample_fraction, seed=args.seed, max_spill=args.max_spill, niter=args.niter,
                       block_rows=args.block_rows)


def inspect_parts(embeddings: str) -> tuple[list[str], int, int]:
    """(parts, dim, total rows) from the ``.npy`` headers; a dimension mismatch names the parts."""
    from models import layout

    folder = layout.EmbeddingFolder(embeddings)
    parts = folder.parts()
    if not parts:
        raise ValueError(f"{embeddings!r} has no complete embedding parts")
    shapes = {i: layout.read_npy(folder.img_emb(i)).shape for i in parts}
    dims = {}
    for i, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{folder.img_emb(i)} has shape {shape}; expected (rows, dim)")
        dims.setdefault(shape[1], []).append(i)
    if len(dims) > 1:
        detail = "; ".join(f"dim {d}: parts {v[:5]}{'...' if len(v) > 5 else ''}" for d, v in sorted(dims.items()))
        raise ValueError(f"embedding dimensions differ between parts of {embeddings!r} ({detail})")
    return parts, next(iter(dims)), int(sum(s[0] for s in shapes.values()))


def params_for(cfg: DedupConfig):
    from transforms.dedup import DedupParams

    parts, dim, n = inspect_parts(cfg.embeddings)
    k = cfg.resolve_k(n)
    return DedupParams(embeddings=cfg.embeddings, output=cfg.output, parts=tuple(parts), dim=dim, threshold=cfg.threshold,
                       max_spill=cfg.max_spill, sample_size=cfg.sample_size(n, k), seed=cfg.seed, niter=cfg.niter, k=k,
                       block_rows=cfg.block_rows, n_rows=n)


def build(p, params):
    """Wire the stage; returns (stats, sizes) PCollections."""
    import apache_beam as beam

    from transforms.dedup import Deduplicate

    return p | "ListParts" >> beam.Create(list(range(len(params.parts)))) | "Deduplicate" >> Deduplicate(params)


def summarize(stats: dict, sizes: list, params, cfg: DedupConfig, seconds: float) -> dict:
    """summary.json: counts, group-size histogram, duplicate fraction, parameters, timing."""
    hist = {int(size): int(count) for size, count in sorted(sizes)}
    grouped = stats.get("grouped_rows", 0)
    in_dups = sum(size * count for size, count in hist.items())
    return {
        "rows": stats.get("rows", 0),
        "rows_grouped": grouped,
        "rejects": stats.get("rejects", 0),
        "groups": grouped - in_dups + sum(hist.values()),
        "duplicate_groups": sum(hist.values()),
        "rows_in_duplicate_groups": in_dups,
        "rows_dropped": stats.get("dropped", 0),
        "duplicate_fraction": stats.get("dropped", 0) / grouped if grouped else 0.0,
        "group_size_histogram": hist,
        "parameters": asdict(cfg) | {"resolved_partitions": params.k, "resolved_sample_size": params.sample_size,
                                     "dim": params.dim, "parts": len(params.parts)},
        "seconds": round(seconds, 3),
    }


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, run the pipeline, write ``summary.json``; return the summary."""
    import apache_beam as beam

    from models import layout

    parser = argparse.ArgumentParser(prog="dupmine dedup", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    started = time.monotonic()
    params = params_for(cfg)
    layout.clear_outputs(cfg.output, OUTPUTS)
    layout.write_json(layout.join(cfg.output, "config.json"), {"stage": "dedup", "config": asdict(cfg), "beam_args": beam_args,
                                                               "resolved": asdict(params)})
    log.info("dedup: %d rows in %d part(s), dim %d, %d partition(s), threshold %.3f", params.n_rows, len(params.parts),
             params.dim, params.k, cfg.threshold)
    p = make_pipeline(beam_args, test_pipeline)
    stats, sizes = build(p, params)
    out = layout.join(cfg.output, "_stage")
    stats | "WriteStats" >> beam.Map(lambda s: layout.write_json(layout.join(out, "stats.json"), s))
    sizes | "WriteSizes" >> beam.Map(lambda s: layout.write_json(layout.join(out, "sizes.json"), [list(x) for x in s]))
    p.run().wait_until_finish()
    summary = summarize(layout.read_json(layout.join(out, "stats.json")), layout.read_json(layout.join(out, "sizes.json")),
                        params, cfg, time.monotonic() - started)
    layout.write_json(layout.join(cfg.output, "summary.json"), summary)
    log.info("dedup done: %d rows, %d duplicate groups, %d rows to drop (%.2f%%) in %.1fs", summary["rows_grouped"],
             summary["duplicate_groups"], summary["rows_dropped"], 100 * summary["duplicate_fraction"], summary["seconds"])
    return summary
