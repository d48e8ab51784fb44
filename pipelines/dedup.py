"""``dupmine dedup``: embedding folder -> near-duplicate groups, edges and a drop list.

    dupmine dedup --embeddings emb/ --output dedup/ [--threshold 0.95] [--partitions K]
        [--sample-fraction F] [--seed S] [--max-spill M] [--previous PREV_DEDUP] [beam options]

Works on dupmine's embed output and on LAION / clip-retrieval embedding
folders (``img_emb/img_emb_{i}.npy`` + ``metadata/metadata_{i}.parquet``).

With ``--previous PREV_DEDUP`` (a finished dedup output) the run is an
increment: the parts of ``--embeddings`` that are not yet in PREV's chain are
new, PREV's frozen centroids partition them, duplicates are searched only in
pairs with a new row, group ids stay stable, and only new and changed rows are
written (see :mod:`transforms.dedup` and :mod:`models.storage.run_chain`).
"""
from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass

from models.dedup.kernels import DEFAULT_MAX_SPILL
from pipelines.common import make_pipeline, positive_int, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.dedup")

ROWS_PER_PARTITION = 2000  # auto --partitions aims at this many home rows per partition
DEFAULT_THRESHOLD = 0.95
DEFAULT_SEED = 1234
# Cleared before a run; manifest.json first: it is the commit point an increment builds on.
OUTPUTS = ["manifest.json", "groups", "changed", "edges", "drop_keys.parquet", "rejects", "_stage", "merges.parquet",
           "centroids.npy", "summary.json"]


@dataclass(frozen=True)
class DedupConfig:
    """Resolved options of the dedup stage (written to ``OUTPUT/config.json``)."""

    embeddings: str
    output: str
    threshold: float = DEFAULT_THRESHOLD
    partitions: int = 0           # 0: auto, ceil(N / 2000)
    sample_fraction: float = 0.0  # 0: auto, enough for 256 rows per centroid (faiss's own cap)
    seed: int = DEFAULT_SEED
    max_spill: int = DEFAULT_MAX_SPILL
    niter: int = 20
    block_rows: int = 65536
    previous: str | None = None   # previous dedup output: this run is an increment of its chain

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
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"cosine at or above which two images are near-duplicates (default {DEFAULT_THRESHOLD}; "
                             f"with --previous the previous run's, which it must equal)")
    parser.add_argument("--partitions", type=int, default=0, help="k-means partitions (0: auto, one per ~2000 rows)")
    parser.add_argument("--sample-fraction", type=float, default=0.0, help="fraction of rows to train k-means on (0: auto, 256 per partition)")
    parser.add_argument("--seed", type=int, default=None, help=f"k-means seed (default {DEFAULT_SEED}; with --previous the previous run's)")
    parser.add_argument("--max-spill", type=int, default=None,
                        help=f"extra partitions a row may visit, recall vs work (default {DEFAULT_MAX_SPILL}; with --previous the previous run's)")
    parser.add_argument("--niter", type=positive_int, default=20, help="k-means iterations")
    parser.add_argument("--block-rows", type=positive_int, default=65536, help="rows per in-memory block")
    parser.add_argument("--previous", default=None,
                        help="previous dedup output: add the parts of --embeddings it has not seen to its groups "
                             "(frozen centroids, stable group ids, only new and changed rows written)")


def config_from_args(args: argparse.Namespace) -> DedupConfig:
    """Flags -> config; with ``--previous``, unset threshold, seed and max-spill come from the previous run.

    Raises:
      ValueError: ``--threshold`` differs from the previous run's (the groups would not be comparable).
    """
    threshold, seed, max_spill = args.threshold, args.seed, args.max_spill
    if args.previous:
        from models.storage import run_chain

        last = run_chain.read_chain(args.previous)[-1]
        if threshold is not None and threshold != last.threshold:
            raise ValueError(f"--threshold {threshold} differs from the threshold {last.threshold} of --previous "
                             f"{args.previous}; an increment must use its chain's threshold (or start a new chain)")
        threshold = last.threshold
        seed = last.seed if seed is None else seed
        max_spill = last.max_spill if max_spill is None else max_spill
    return DedupConfig(embeddings=args.embeddings, output=args.output,
                       threshold=DEFAULT_THRESHOLD if threshold is None else threshold, partitions=args.partitions,
                       sample_fraction=args.sample_fraction, seed=DEFAULT_SEED if seed is None else seed,
                       max_spill=DEFAULT_MAX_SPILL if max_spill is None else max_spill, niter=args.niter,
                       block_rows=args.block_rows, previous=args.previous)


def inspect_parts(embeddings: str) -> tuple[list[str], int, int]:
    """(parts, dim, total rows) from the ``.npy`` headers; a dimension mismatch names the parts."""
    from models.storage import layout

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


def _shape(folder, part: str) -> tuple[int, ...]:
    from models.storage import layout

    return tuple(layout.read_npy(folder.img_emb(part)).shape)


def params_for(cfg: DedupConfig):
    """The transforms' parameters; for an increment see :func:`incremental_params`."""
    from transforms.dedup import DedupParams

    if cfg.previous:
        return incremental_params(cfg)[0]
    parts, dim, n = inspect_parts(cfg.embeddings)
    k = cfg.resolve_k(n)
    return DedupParams(embeddings=cfg.embeddings, output=cfg.output, parts=tuple(parts), dim=dim, threshold=cfg.threshold,
                       max_spill=cfg.max_spill, sample_size=cfg.sample_size(n, k), seed=cfg.seed, niter=cfg.niter, k=k,
                       block_rows=cfg.block_rows, n_rows=n)


def incremental_params(cfg: DedupConfig):
    """(params, previous chain) of an increment on ``cfg.previous``.

    Part order: the chain's parts (oldest run first, each run's parts in its
    order), then the new parts of ``--embeddings`` (those whose id is not in
    the chain) in folder order, so gids are ordered as in a one-shot run over
    all parts when new parts sort after old ones. Reads only ``.npy`` headers.

    Raises:
      ValueError: ``--output`` is a run of the chain; PREV lacks ``centroids.npy``;
        an old part is missing or changed its row count; a part of
        ``--embeddings`` with an id already in the chain has other rows than
        the chain's part; a new part's dimension differs from the chain's.
    """
    from models.storage import run_chain
    from models.storage import layout
    from transforms.dedup import DedupParams

    chain = run_chain.read_chain(cfg.previous)
    last = chain[-1]
    out = run_chain.normalize_path(cfg.output)
    if out in {run_chain.normalize_path(e.run) for e in chain}:
        raise ValueError(f"--output {cfg.output} is a run of the --previous chain; write the increment to a new folder")
    centroids = layout.join(cfg.previous, run_chain.CENTROIDS)
    if not layout.exists(centroids):
        raise ValueError(f"--previous {cfg.previous} has no {run_chain.CENTROIDS}; run dedup on it again from scratch")
    locations = run_chain.part_locations(chain)
    for loc in locations.values():
        shape = _shape(layout.EmbeddingFolder(loc.embeddings), loc.part)
        if shape[0] != loc.rows or shape[1:] != (last.dim,):
            raise ValueError(f"part {loc.part} of {loc.embeddings} has shape {shape}, but the chain of "
                             f"{cfg.previous} recorded ({loc.rows}, {last.dim}); old parts must not change")
    folder = layout.EmbeddingFolder(cfg.embeddings)
    emb = run_chain.normalize_path(cfg.embeddings)
    new, rows = [], []
    for part in folder.parts():
        shape = _shape(folder, part)
        if len(shape) != 2 or shape[1] != last.dim:
            raise ValueError(f"{folder.img_emb(part)} has shape {shape}; the chain of {cfg.previous} has dim {last.dim}")
        loc = locations.get(part)
        if loc is None:
            new.append(part)
            rows.append(shape[0])
        elif run_chain.normalize_path(loc.embeddings) != emb and shape[0] != loc.rows:
            raise ValueError(f"part {part} of {cfg.embeddings} has {shape[0]} rows but the chain's part {part} "
                             f"(from {loc.embeddings}) has {loc.rows}; part ids must be unique across a run chain")
    old = sorted(locations.values(), key=lambda loc: loc.index)
    parts = tuple([loc.part for loc in old] + new)
    params = DedupParams(
        embeddings=cfg.embeddings, output=cfg.output, parts=parts, dim=last.dim, threshold=cfg.threshold,
        max_spill=cfg.max_spill, sample_size=0, seed=cfg.seed, niter=cfg.niter, k=last.k, block_rows=cfg.block_rows,
        n_rows=sum(loc.rows for loc in old) + sum(rows), folders=tuple([loc.embeddings for loc in old] + [cfg.embeddings] * len(new)),
        n_old=len(old), part_runs=tuple(loc.runs for loc in old), centroids_path=centroids)
    return params, chain


def build(p, params):
    """Wire the stage; returns the dict of result PCollections of :class:`transforms.dedup.Deduplicate`."""
    import apache_beam as beam

    from transforms.dedup import Deduplicate

    return p | "ListParts" >> beam.Create(list(range(len(params.parts)))) | "Deduplicate" >> Deduplicate(params)


def _group_counts(rows: int, grouped: int, rejects: int, dropped: int, hist: dict) -> dict:
    hist = {int(s): int(c) for s, c in sorted(hist.items()) if int(c)}
    in_dups = sum(size * count for size, count in hist.items())
    return {
        "rows": rows,
        "rows_grouped": grouped,
        "rejects": rejects,
        "groups": grouped - in_dups + sum(hist.values()),
        "duplicate_groups": sum(hist.values()),
        "rows_in_duplicate_groups": in_dups,
        "rows_dropped": dropped,
        "duplicate_fraction": dropped / grouped if grouped else 0.0,
        "group_size_histogram": hist,
    }


def summarize(stats: dict, sizes: list, params, cfg: DedupConfig, seconds: float | None, retired: list = (),
              previous: dict | None = None) -> dict:
    """summary.json: counts, group-size histogram, duplicate fraction, parameters, timing.

    The top-level counts describe the whole current state (for an increment:
    the previous state, less the previous groups that grew or merged, plus
    this run's rows and groups); ``increment`` describes this run alone
    (rows of its new parts, the old rows it changed, the groups it created or
    grew and their sizes, merges).
    """
    hist = {int(size): int(count) for size, count in sizes}
    inc = {"rows": stats.get("rows", 0), "rows_grouped": stats.get("grouped_rows", 0), "rejects": stats.get("rejects", 0),
           "rows_dropped": stats.get("dropped", 0), "rows_changed": stats.get("changed_rows", 0),
           "rows_demoted": stats.get("demoted", 0), "merged_groups": stats.get("merged_groups", 0),
           "duplicate_groups_created_or_grown": sum(hist.values()), "group_size_histogram": dict(sorted(hist.items())),
           "new_parts": len(params.parts) - params.n_old, "old_parts": params.n_old}
    if previous is None:
        state = _group_counts(inc["rows"], inc["rows_grouped"], inc["rejects"], inc["rows_dropped"], hist)
    else:
        total = {int(s): int(c) for s, c in previous["group_size_histogram"].items()}
        for size, count in retired:
            total[int(size)] = total.get(int(size), 0) - int(count)
        for size, count in hist.items():
            total[size] = total.get(size, 0) + count
        if any(c < 0 for c in total.values()):
            raise ValueError(f"group-size histogram went negative ({total}); the previous summary does not match its groups")
        state = _group_counts(previous["rows"] + inc["rows"], previous["rows_grouped"] + inc["rows_grouped"],
                              previous["rejects"] + inc["rejects"], previous["rows_dropped"] + inc["rows_dropped"], total)
    return state | {
        "increment": inc,
        "previous": cfg.previous,
        "parameters": asdict(cfg) | {"resolved_partitions": params.k, "resolved_sample_size": params.sample_size,
                                     "dim": params.dim, "parts": len(params.parts)},
        "seconds": None if seconds is None else round(seconds, 3),
    }


def finish(_, stats: dict, sizes: list, retired: list, changed_parts: list, k: int, params, cfg: DedupConfig,
           previous_summary: dict | None, chain: list) -> dict:
    """Last step of the pipeline (after every write): ``summary.json``, then ``manifest.json`` (the commit point).

    Runs on one worker, so a submitted-and-not-awaited job still leaves a
    manifest the next increment can build on.
    """
    from models.storage import run_chain
    from models.storage import layout

    summary = summarize(stats, sizes, params, cfg, None, retired, previous_summary)
    layout.write_json(layout.join(cfg.output, "summary.json"), summary)
    new_parts = params.parts[params.n_old:]
    folder = layout.EmbeddingFolder(cfg.embeddings)
    rows = [int(layout.read_npy(folder.img_emb(part)).shape[0]) for part in new_parts]
    order = {part: i for i, part in enumerate(params.parts)}
    entry = run_chain.ChainEntry(
        run=run_chain.normalize_path(cfg.output), embeddings=run_chain.normalize_path(cfg.embeddings),
        parts=tuple(new_parts), rows=tuple(rows), threshold=cfg.threshold, seed=cfg.seed, max_spill=cfg.max_spill,
        k=int(k), dim=params.dim, changed_parts=tuple(sorted(changed_parts, key=order.__getitem__)),
        previous=run_chain.normalize_path(cfg.previous) if cfg.previous else None)
    run_chain.write_manifest(cfg.output, [run_chain.ChainEntry.from_json(e) for e in chain] + [entry])
    return summary


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, run the pipeline (which writes ``summary.json`` and ``manifest.json``); return the summary."""
    import apache_beam as beam
    from apache_beam import pvalue

    from models.storage import layout

    parser = stage_parser("dupmine dedup", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    started = time.monotonic()
    chain, previous_summary = [], None
    if cfg.previous:
        params, prev_chain = incremental_params(cfg)
        chain = [e.to_json() for e in prev_chain]
        previous_summary = layout.read_json(layout.join(cfg.previous, "summary.json"))
    else:
        params = params_for(cfg)
    layout.clear_outputs(cfg.output, OUTPUTS)
    layout.write_json(layout.join(cfg.output, "config.json"), {"stage": "dedup", "config": asdict(cfg), "beam_args": beam_args,
                                                               "resolved": asdict(params)})
    if cfg.previous:
        log.info("dedup increment on %s: %d new part(s), %d old part(s), %d rows in all, threshold %.3f, %d frozen "
                 "partition(s)", cfg.previous, len(params.parts) - params.n_old, params.n_old, params.n_rows,
                 cfg.threshold, params.k)
    else:
        log.info("dedup: %d rows in %d part(s), dim %d, %d partition(s), threshold %.3f", params.n_rows, len(params.parts),
                 params.dim, params.k, cfg.threshold)
    p = make_pipeline(beam_args, test_pipeline)
    out = build(p, params)
    side = {name: pvalue.AsSingleton(out[name]) for name in ("stats", "sizes", "retired", "changed_parts", "k")}
    (p | "One" >> beam.Create([None])
       | "WriteSummaryAndManifest" >> beam.Map(lambda x, **kw: finish(x, params=params, cfg=cfg, previous_summary=previous_summary,
                                                                       chain=chain, **kw), **side))
    p.run().wait_until_finish()
    summary = layout.read_json(layout.join(cfg.output, "summary.json")) | {"seconds": round(time.monotonic() - started, 3)}
    layout.write_json(layout.join(cfg.output, "summary.json"), summary)
    for section in (summary, summary["increment"]):  # JSON object keys are strings; callers get int sizes
        section["group_size_histogram"] = {int(s): c for s, c in section["group_size_histogram"].items()}
    inc = summary["increment"]
    if cfg.previous:
        log.info("dedup increment done: %d new rows, %d old rows changed, %d groups created or grown, %d merged, "
                 "%d rows to drop in all (%d new) in %.1fs", inc["rows"], inc["rows_changed"],
                 inc["duplicate_groups_created_or_grown"], inc["merged_groups"], summary["rows_dropped"],
                 inc["rows_dropped"], summary["seconds"])
    else:
        log.info("dedup done: %d rows, %d duplicate groups, %d rows to drop (%.2f%%) in %.1fs", summary["rows_grouped"],
                 summary["duplicate_groups"], summary["rows_dropped"], 100 * summary["duplicate_fraction"], summary["seconds"])
    return summary
