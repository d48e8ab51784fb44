"""What a dedup run will read: its parts, their order and the parameters the transforms need.

:func:`fresh_plan` lists an embedding folder; :func:`incremental_plan` puts
the parts of a previous run chain first (in chain order) and the new parts of
``--embeddings`` after them, so global row ids order rows as a one-shot run
over all parts would. Both read only ``.npy`` headers and metadata footers.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import NamedTuple

from fsspec.utils import get_protocol

from models.closed_sets import choice
from models.dedup.partition import DEFAULT_MAX_DIRECT_K, DEFAULT_MAX_TRAIN_ROWS, DEFAULT_NPROBE
from models.storage import layout, run_chain
from models.storage.folders.dedup import DedupFolder


class VectorTransport(enum.StrEnum):
    """How the vectors of a partition reach its search task (``--vectors``).

    * ``shuffle``: the assign step reads its block's rows once (from the block's own part) and every
      :class:`~transforms.dedup.rows.Piece` carries them, as stored (float16 for LAION / dupmine parts),
      through the shuffle; a search task reads no part. Shuffled: (1 + spill) N D stored bytes.
    * ``reread``: pieces carry row ids only; a search task reads its rows from their parts (memory-mapped
      when local, up to 64 parts cached per process). Cheapest on one machine; on an object store every
      task downloads about the whole dataset (a partition holds rows of nearly every part).
    * ``auto``: ``reread`` when every part is on a local filesystem, ``shuffle`` otherwise
      (:meth:`resolve`).
    """

    AUTO = "auto"
    SHUFFLE = "shuffle"
    REREAD = "reread"

    def resolve(self, folders) -> "VectorTransport":
        """``auto`` -> ``reread`` when every folder in ``folders`` is a plain path or ``file://`` URL, else
        ``shuffle``; the other two unchanged."""
        if self is not VectorTransport.AUTO:
            return self
        local = all(get_protocol(str(f)) in ("file", "local") for f in folders)
        return VectorTransport.REREAD if local else VectorTransport.SHUFFLE


class EdgeMode(enum.StrEnum):
    """Which near edges the search writes to ``edges/`` (``--edges``).

    * ``spanning``: per partition a maximum spanning forest of its near pairs (Kruskal on cosine
      descending), so a component of n rows inside a partition writes n - 1 edges; the union over
      partitions and exact-hash stars has the components of all pairs. Pairs are counted
      (``near_pairs``), not written.
    * ``all``: every near pair once (audits, pair recall; a group of n copies writes n (n - 1) / 2 rows).
    """

    SPANNING = "spanning"
    ALL = "all"


DEFAULT_VECTORS = VectorTransport.AUTO  # the one home of the defaults (DedupConfig's fields use these)
DEFAULT_EDGES = EdgeMode.SPANNING
DEFAULT_MAX_PARTITION_ROWS = 16384  # ~8x the auto partition size; a task then holds <= 2 x 16384 rows


INDEX_BUCKET_ROWS = 65536  # new rows per increment-index bucket: a lookup reads about this many rows per chain run


def index_buckets(new_rows: int) -> int:
    """Increment-index buckets of a run that adds ``new_rows`` rows (>= 1; :mod:`transforms.dedup.store`)."""
    return max(1, math.ceil(new_rows / INDEX_BUCKET_ROWS))


class ChainRun(NamedTuple):
    """One run of the chain as an increment reads it: its folder and its increment-index bucket count."""

    run: str
    buckets: int


@dataclass(frozen=True)
class DedupParams:
    """What the transforms need (picklable, resolved once on the driver).

    ``parts[i]`` is read from ``folders[i]`` (``embeddings`` when ``folders``
    is empty). Incremental runs: parts ``[0, n_old)`` come from the previous
    chain, ``slots[i]`` names old part i in the chain (its ``changed/`` file;
    the part name unless names collide, :mod:`models.storage.run_chain`),
    ``part_runs[i]`` lists the runs holding its group state
    (:func:`models.storage.run_chain.part_runs`), and ``centroids_path`` holds
    the frozen (K, D) centroids.

    Bounded k-means: ``sample_size`` is at most ``max_train_rows`` whatever
    ``n_rows``; ``k > max_direct_k`` trains a two-level quantizer of
    ``round(sqrt(k))`` coarse cells probed ``nprobe`` at a time
    (:class:`models.dedup.partition.TwoLevel`).
    """

    embeddings: str
    output: str
    parts: tuple[str, ...]
    dim: int
    threshold: float
    max_spill: int
    sample_size: int
    seed: int
    niter: int
    k: int
    block_rows: int
    n_rows: int
    folders: tuple[str, ...] = ()
    n_old: int = 0
    part_runs: tuple[tuple[str, ...], ...] = ()
    centroids_path: str | None = None
    nn_rate: float = 0.0  # fraction of new rows whose nearest-neighbour cosine goes into nn_similarity.json
    slots: tuple[str, ...] = ()
    max_train_rows: int = DEFAULT_MAX_TRAIN_ROWS
    max_direct_k: int = DEFAULT_MAX_DIRECT_K
    nprobe: int = DEFAULT_NPROBE
    vectors: VectorTransport = DEFAULT_VECTORS
    edges: EdgeMode = DEFAULT_EDGES
    max_partition_rows: int = DEFAULT_MAX_PARTITION_ROWS  # homes above which a partition is split (models.dedup.balance)
    index_buckets: int = 1  # this run's increment-index buckets (index_buckets of its new rows)
    write_index: bool = True  # write the increment index (--increment-index); a run without one ends its chain
    chain: tuple[ChainRun, ...] = ()  # increments: the previous runs whose increment index is read, oldest first

    def __post_init__(self):
        object.__setattr__(self, "vectors", choice(VectorTransport, self.vectors).resolve(
            self.folders or (self.embeddings,)))
        object.__setattr__(self, "edges", choice(EdgeMode, self.edges))
        if self.max_partition_rows < 0:
            raise ValueError(f"max_partition_rows must be >= 0 (0: never split), got {self.max_partition_rows}")
        if self.max_train_rows < 1 or self.max_direct_k < 1 or self.nprobe < 1:
            raise ValueError(f"max_train_rows, max_direct_k and nprobe must be >= 1; got {self.max_train_rows}, "
                             f"{self.max_direct_k} and {self.nprobe}")
        if self.folders and len(self.folders) != len(self.parts):
            raise ValueError(f"{len(self.folders)} folders for {len(self.parts)} parts")
        if not 0 <= self.n_old <= len(self.parts) or len(self.part_runs) != self.n_old:
            raise ValueError(f"n_old {self.n_old} and {len(self.part_runs)} part_runs for {len(self.parts)} parts")
        if self.slots and len(self.slots) != self.n_old:
            raise ValueError(f"{len(self.slots)} slots for {self.n_old} old parts")
        if self.n_old and self.centroids_path is None:
            raise ValueError("an incremental run (n_old > 0) needs the previous run's centroids_path")
        if self.index_buckets < 1 or (self.centroids_path is not None and not self.chain):
            raise ValueError(f"index_buckets must be >= 1 and an increment needs its chain; got {self.index_buckets} "
                             f"and {len(self.chain)} chain runs")

    @property
    def incremental(self) -> bool:
        return self.centroids_path is not None

    @property
    def out(self) -> DedupFolder:
        return DedupFolder(self.output)

    def folder(self, part_index: int) -> "layout.EmbeddingFolder":
        return layout.EmbeddingFolder(self.folders[part_index] if self.folders else self.embeddings)

    def is_new(self, part_index: int) -> bool:
        return part_index >= self.n_old

    def slot(self, part_index: int) -> str:
        """The chain slot of an old part (its name when no other part of the chain shares it)."""
        return self.slots[part_index] if self.slots else self.parts[part_index]

    @property
    def new_parts(self) -> tuple[str, ...]:
        return self.parts[self.n_old:]


def _rate(sample: int, rows: int) -> float:
    return min(1.0, sample / rows) if rows else 0.0


def _shape(folder: "layout.EmbeddingFolder", part: str) -> tuple[int, ...]:
    return tuple(layout.read_npy(folder.img_emb(part)).shape)


def inspect_parts(embeddings: str) -> tuple[list[str], int, int]:
    """(parts, dim, total rows) from the ``.npy`` headers; a dimension mismatch names the parts."""
    folder = layout.EmbeddingFolder(embeddings)
    parts = folder.parts()
    if not parts:
        raise ValueError(f"{embeddings!r} has no complete embedding parts")
    shapes = {i: _shape(folder, i) for i in parts}
    dims: dict[int, list[str]] = {}
    for i, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"{folder.img_emb(i)} has shape {shape}; expected (rows, dim)")
        dims.setdefault(shape[1], []).append(i)
    if len(dims) > 1:
        detail = "; ".join(f"dim {d}: parts {v[:5]}{'...' if len(v) > 5 else ''}" for d, v in sorted(dims.items()))
        raise ValueError(f"embedding dimensions differ between parts of {embeddings!r} ({detail})")
    return parts, next(iter(dims)), int(sum(s[0] for s in shapes.values()))


_BOUNDS = ("max_train_rows", "max_direct_k", "nprobe", "max_partition_rows")
_CHOICES = ("vectors", "edges")


def _bounds(cfg) -> dict:
    """The k-means bounds and the transport / edge choices of ``cfg`` (its fields of the same names)."""
    return {name: getattr(cfg, name) for name in _BOUNDS + _CHOICES}


def fresh_plan(cfg) -> DedupParams:
    """Parameters of a from-scratch run of ``cfg`` (a :class:`pipelines.dedup.DedupConfig`).

    The training sample is ``cfg.sample_size(n, k)`` capped at ``max_train_rows``.
    """
    parts, dim, n = inspect_parts(cfg.embeddings)
    k = cfg.resolve_k(n)
    bounds = _bounds(cfg)
    cap = bounds["max_train_rows"]
    return DedupParams(embeddings=cfg.embeddings, output=cfg.output, parts=tuple(parts), dim=dim, **bounds,
                       threshold=cfg.threshold, max_spill=cfg.max_spill, sample_size=min(cfg.sample_size(n, k), cap),
                       seed=cfg.seed, niter=cfg.niter, k=k, block_rows=cfg.block_rows, n_rows=n,
                       nn_rate=_rate(cfg.nn_sample, n), index_buckets=index_buckets(n),
                       write_index=cfg.increment_index)


def incremental_plan(cfg) -> tuple[DedupParams, list[run_chain.ChainEntry]]:
    """(params, previous chain) of an increment of ``cfg.previous``.

    Part order: the chain's parts (oldest run first, each run's parts in its
    order), then the new parts of ``--embeddings`` in folder order. A part of
    ``--embeddings`` is old when the chain introduced the same part of the same
    folder (:func:`models.storage.run_chain.part_locations`); a part of another
    folder is new whatever its name.

    Raises:
      ValueError: ``--output`` is a run of the chain; PREV lacks ``centroids.npy``;
        an old part is missing or changed (rows, or content where the chain
        recorded it); a new part's dimension differs from the chain's.
    """
    chain = run_chain.read_chain(cfg.previous)
    last = chain[-1]
    out = run_chain.normalize_path(cfg.output)
    if out in {run_chain.normalize_path(e.run) for e in chain}:
        raise ValueError(f"--output {cfg.output} is a run of the --previous chain; write the increment to a new folder")
    centroids = DedupFolder(cfg.previous).centroids
    if not layout.exists(centroids):
        raise ValueError(f"--previous {cfg.previous} has no {DedupFolder.CENTROIDS}; run dedup on it again from scratch")
    for entry in chain:
        if not entry.index_buckets:
            raise ValueError(f"{entry.run} of the --previous chain has no increment index (it ran with "
                             f"--no-increment-index, or before increments read one); run dedup from scratch to start "
                             f"a new chain")
    locations = run_chain.part_locations(chain)
    folder = layout.EmbeddingFolder(cfg.embeddings)
    emb = run_chain.normalize_path(cfg.embeddings)
    seen = {(run_chain.normalize_path(loc.embeddings), loc.part) for loc in locations.values()}
    new, rows = [], []
    by_source = {(run_chain.normalize_path(loc.embeddings), loc.part): loc for loc in locations.values()}
    for part in folder.parts():
        shape = _shape(folder, part)
        if len(shape) != 2 or shape[1] != last.dim:
            raise ValueError(f"{folder.img_emb(part)} has shape {shape}; the chain of {cfg.previous} has dim {last.dim}")
        if (emb, part) not in seen:
            new.append(part)
            rows.append(shape[0])
            continue
        loc = by_source[(emb, part)]  # already in the chain: it must be what the chain deduplicated
        if shape[0] != loc.rows:
            raise ValueError(f"part {loc.part} of {loc.embeddings} has {shape[0]} rows, but the chain of "
                             f"{cfg.previous} recorded {loc.rows}; old parts must not change")
        current = run_chain.part_identity(loc.embeddings, loc.part)
        if not run_chain.same_content(loc.content, current):
            raise ValueError(f"part {loc.part} of {loc.embeddings} changed since {loc.run} deduplicated it (content "
                             f"{loc.content} -> {current}); old parts must not change (run dedup from scratch)")
    old = sorted(locations.values(), key=lambda loc: loc.index)
    params = DedupParams(
        embeddings=cfg.embeddings, output=cfg.output, parts=tuple([loc.part for loc in old] + new), dim=last.dim,
        threshold=cfg.threshold, max_spill=cfg.max_spill, sample_size=0, seed=cfg.seed, niter=cfg.niter, k=last.k,
        block_rows=cfg.block_rows, n_rows=sum(loc.rows for loc in old) + sum(rows),
        folders=tuple([loc.embeddings for loc in old] + [cfg.embeddings] * len(new)),
        n_old=len(old), part_runs=tuple(loc.runs for loc in old), centroids_path=centroids,
        slots=tuple(loc.slot for loc in old), vectors=cfg.vectors, edges=cfg.edges,
        nn_rate=_rate(cfg.nn_sample, sum(rows)), max_partition_rows=cfg.max_partition_rows,
        index_buckets=index_buckets(sum(rows)), chain=tuple(ChainRun(e.run, e.index_buckets) for e in chain),
        write_index=cfg.increment_index)
    return params, chain


class RunPlan(NamedTuple):
    """Everything the driver resolves before the pipeline starts.

    ``chain``: the previous chain's entries as JSON (empty from scratch);
    ``previous_summary``: the previous run's ``summary.json`` (None from scratch).
    """

    params: DedupParams
    chain: list
    previous_summary: dict | None


def plan_run(cfg) -> RunPlan:
    """The :class:`RunPlan` of ``cfg``: a fresh plan, or an increment of ``cfg.previous``."""
    if not cfg.previous:
        return RunPlan(fresh_plan(cfg), [], None)
    params, chain = incremental_plan(cfg)
    return RunPlan(params, [e.to_json() for e in chain], layout.read_json(DedupFolder(cfg.previous).summary))
