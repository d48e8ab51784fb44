"""``dupmine dedup``: embedding folder -> near-duplicate groups, edges and a drop list.

    dupmine dedup --embeddings emb/ --output dedup/ [--threshold 0.95] [--partitions K]
        [--sample-fraction F] [--seed S] [--max-spill M] [--previous PREV_DEDUP] [beam options]

Works on dupmine's embed output and on LAION / clip-retrieval embedding
folders (``img_emb/img_emb_{i}.npy`` + ``metadata/metadata_{i}.parquet``).

With ``--previous PREV_DEDUP`` (a finished dedup output) the run is an
increment: the parts of ``--embeddings`` that are not yet in PREV's chain are
new, PREV's frozen centroids partition them, duplicates are searched only in
pairs with a new row, group ids stay stable, and only new and changed rows are
written (see :mod:`transforms.dedup.strategy` and :mod:`models.storage.run_chain`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field

from models.dedup.partition import DEFAULT_MAX_DIRECT_K, DEFAULT_MAX_SPILL, DEFAULT_MAX_TRAIN_ROWS, DEFAULT_NPROBE
from models.closed_sets import choice
from models.dedup.plan import DEFAULT_EDGES, DEFAULT_MAX_PARTITION_ROWS, DEFAULT_VECTORS, EdgeMode, VectorTransport
from models.storage.folders.dedup import DedupFolder
from pipelines.common import make_pipeline, positive_int, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.dedup")

ROWS_PER_PARTITION = 2000  # auto --partitions aims at this many home rows per partition
OUTPUTS = list(DedupFolder.OUTPUTS)
# Flags that, left unset with --previous, take the previous run's value (an increment must match its chain).
INHERITED = ("threshold", "seed", "max_spill")


def _opt(default, help: str, type=None, required: bool = False, choices=None):
    return field(default=default, metadata={"help": help, "type": type, "required": required, "choices": choices})


def _choices(enum_type) -> dict:
    """``type`` and ``choices`` of a flag whose values are the members of ``enum_type`` (converted in
    :class:`DedupConfig`)."""
    return {"type": str, "choices": tuple(m.value for m in enum_type)}


@dataclass(frozen=True)
class DedupConfig:
    """Resolved options of the dedup stage (written to ``OUTPUT/config.json``); the one home of every default.

    The command line is built from these fields (:func:`add_arguments`).
    """

    embeddings: str = _opt(None, "embedding folder (dupmine embed, LAION or clip-retrieval layout)", required=True)
    output: str = _opt(None, "output folder", required=True)
    threshold: float = _opt(0.95, "cosine at or above which two images are near-duplicates", float)
    partitions: int = _opt(0, "k-means partitions (0: auto, one per ~2000 rows)", int)
    sample_fraction: float = _opt(0.0, "fraction of rows to train k-means on (0: auto, 256 per partition)", float)
    seed: int = _opt(1234, "k-means seed", int)
    max_spill: int = _opt(DEFAULT_MAX_SPILL, "extra partitions a row may visit, recall vs work", int)
    niter: int = _opt(20, "k-means iterations", positive_int)
    max_train_rows: int = _opt(DEFAULT_MAX_TRAIN_ROWS, "most rows k-means trains on, whatever the dataset size",
                               positive_int)
    max_direct_k: int = _opt(DEFAULT_MAX_DIRECT_K, "most partitions trained and searched directly; above it a "
                             "two-level (coarse then fine) quantizer", positive_int)
    nprobe: int = _opt(DEFAULT_NPROBE, "coarse cells scored per row by the two-level quantizer", positive_int)
    max_partition_rows: int = _opt(DEFAULT_MAX_PARTITION_ROWS, "homes above which a partition's search is cut into "
                                   "block-pair tasks of at most 2x this many rows (a hot partition is not one hot "
                                   "key; 0: never split)", int)
    block_rows: int = _opt(65536, "rows per in-memory block", positive_int)
    vectors: VectorTransport = _opt(DEFAULT_VECTORS, "how vectors reach the search tasks: shuffle (in the pieces, "
                                    "float16 as stored; no task reads another block's part), reread (from the "
                                    "parts, memory-mapped when local) or auto (reread when every part is local, "
                                    "else shuffle)", **_choices(VectorTransport))
    edges: EdgeMode = _opt(DEFAULT_EDGES, "near edges written: spanning (a maximum spanning forest per partition, "
                           "n - 1 edges for n connected rows; pair counts in the summary) or all (every pair)",
                           **_choices(EdgeMode))
    nn_sample: int = _opt(10000, "rows whose nearest-neighbour cosine is recorded in nn_similarity.json", int)
    increment_index: bool = _opt(True, "write the increment index (partitions/ with every partition's rows as "
                                 "stored, about (1 + spill) x the new vectors' bytes, and index/): what a later "
                                 "--previous run reads instead of the old parts; --no-increment-index saves the "
                                 "space, and no increment can build on the run", bool)
    previous: str | None = _opt(None, "previous dedup output: add the parts of --embeddings it has not seen to its "
                                      "groups (frozen centroids, stable group ids, only new and changed rows written)")

    def __post_init__(self):
        if not self.embeddings or not self.output:
            raise ValueError(f"--embeddings and --output are required; got {self.embeddings!r} and {self.output!r}")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"--threshold {self.threshold} must be in (0, 1]")
        if (self.partitions < 0 or self.max_spill < 0 or self.nn_sample < 0 or self.max_partition_rows < 0
                or self.niter <= 0 or self.block_rows <= 0):
            raise ValueError(f"--partitions, --max-spill, --nn-sample, --max-partition-rows must be >= 0 and "
                             f"--niter, --block-rows > 0; got {self}")
        if not 0.0 <= self.sample_fraction <= 1.0:
            raise ValueError(f"--sample-fraction {self.sample_fraction} must be in [0, 1]")
        object.__setattr__(self, "vectors", choice(VectorTransport, self.vectors))
        object.__setattr__(self, "edges", choice(EdgeMode, self.edges))

    def resolve_k(self, n_rows: int) -> int:
        return self.partitions or max(1, math.ceil(n_rows / ROWS_PER_PARTITION))

    def sample_size(self, n_rows: int, k: int) -> int:
        if self.sample_fraction:
            return max(1, int(round(self.sample_fraction * n_rows)))
        return min(n_rows, 256 * k)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`DedupConfig` field (``max_spill`` -> ``--max-spill``), defaults and help from the field."""
    for f in dataclasses.fields(DedupConfig):
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        if meta["required"]:
            parser.add_argument(flag, required=True, help=meta["help"])
            continue
        default = getattr(f.default, "value", f.default)
        help_text = meta["help"] + (f" (default {default})" if f.default is not None else "")
        if f.name in INHERITED:
            help_text += "; with --previous the previous run's"
        kwargs = {"type": meta["type"]} if meta["type"] else {}
        if meta["type"] is bool:  # --name / --no-name
            kwargs = {"action": argparse.BooleanOptionalAction}
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
        parser.add_argument(flag, default=None if f.name in INHERITED else f.default, help=help_text, **kwargs)


def config_from_args(args: argparse.Namespace) -> DedupConfig:
    """Flags -> config; with ``--previous``, unset threshold, seed and max-spill come from the previous run.

    Raises:
      ValueError: ``--threshold`` differs from the previous run's (the groups would not be comparable).
    """
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DedupConfig)}
    if args.previous:
        from models.storage import run_chain

        last = run_chain.read_chain(args.previous)[-1]
        if values["threshold"] is not None and values["threshold"] != last.threshold:
            raise ValueError(f"--threshold {values['threshold']} differs from the threshold {last.threshold} of "
                             f"--previous {args.previous}; an increment must use its chain's threshold (or start a "
                             f"new chain)")
        for name in INHERITED:
            if values[name] is None:
                values[name] = getattr(last, name)
    return DedupConfig(**{k: v for k, v in values.items() if v is not None or k not in INHERITED})


def build(p, cfg: DedupConfig, plan=None):
    """Wire the stage: list parts -> :class:`transforms.dedup.Deduplicate` -> :class:`transforms.dedup.CommitRun`.

    ``plan`` (:func:`models.dedup.plan.plan_run` of ``cfg``) is resolved here when not given. Returns the
    commit step's PCollection (the summary).
    """
    import apache_beam as beam

    from models.dedup.plan import plan_run
    from transforms.dedup import CommitRun, Deduplicate

    plan = plan or plan_run(cfg)
    results = (p | "ListParts" >> beam.Create(list(range(len(plan.params.parts))))
               | "Deduplicate" >> Deduplicate(plan.params))
    return results | "CommitRun" >> CommitRun(plan, cfg)


def _log_start(cfg: DedupConfig, params) -> None:
    if cfg.previous:
        log.info("dedup increment on %s: %d new part(s), %d old part(s), %d rows in all, threshold %.3f, %d frozen "
                 "partition(s)", cfg.previous, len(params.new_parts), params.n_old, params.n_rows,
                 cfg.threshold, params.k)
    else:
        log.info("dedup: %d rows in %d part(s), dim %d, %d partition(s), threshold %.3f", params.n_rows,
                 len(params.parts), params.dim, params.k, cfg.threshold)


def _log_done(cfg: DedupConfig, summary: dict) -> None:
    inc = summary["increment"]
    if cfg.previous:
        log.info("dedup increment done: %d new rows, %d old rows changed, %d groups created or grown, %d merged, "
                 "%d rows to drop in all (%d new) in %.1fs", inc["rows"], inc["rows_changed"],
                 inc["duplicate_groups_created_or_grown"], inc["merged_groups"], summary["rows_dropped"],
                 inc["rows_dropped"], summary["seconds"])
    else:
        log.info("dedup done: %d rows, %d duplicate groups, %d rows to drop (%.2f%%) in %.1fs", summary["rows_grouped"],
                 summary["duplicate_groups"], summary["rows_dropped"], 100 * summary["duplicate_fraction"],
                 summary["seconds"])


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, run the pipeline (which writes ``summary.json`` and ``manifest.json``); return the summary."""
    from models.dedup.plan import plan_run
    from models.storage import layout

    parser = stage_parser("dupmine dedup", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    started = time.monotonic()
    plan = plan_run(cfg)
    out = DedupFolder(cfg.output)
    layout.clear_outputs(cfg.output, OUTPUTS)
    layout.write_json(out.config, {"stage": "dedup", "config": asdict(cfg), "beam_args": beam_args,
                                   "resolved": asdict(plan.params)})
    _log_start(cfg, plan.params)
    p = make_pipeline(beam_args, test_pipeline)
    build(p, cfg, plan)
    p.run().wait_until_finish()
    summary = layout.read_json(out.summary) | {"seconds": round(time.monotonic() - started, 3)}
    layout.write_json(out.summary, summary)
    for section in (summary, summary["increment"]):  # JSON object keys are strings; callers get int sizes
        section["group_size_histogram"] = {int(s): c for s, c in section["group_size_histogram"].items()}
    _log_done(cfg, summary)
    return summary
