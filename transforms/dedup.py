"""Beam transforms of the dedup stage: partition, search, connect, label.

Elements on the hot path are :class:`Block` s (numpy arrays of up to
``block_rows`` rows), never per-row dicts; per-row elements appear only for
the rows that have a duplicate (component merging, exact-hash join).

Global row ids: ``gid = part_index << 32 | row``, so a gid names a row of an
embedding part without carrying its key around, and the smallest gid of a
component (its canonical label) is its first member in part/row order.

Incremental runs (``DedupParams.incremental``): part indices ``[0, n_old)`` are
the previous chain's parts (in chain order), the rest are new, so gid order is
the order a one-shot run over all parts would use. Centroids are frozen (read,
not trained); old rows are assigned with them but shipped only to partitions
that hold new rows, and only pairs with at least one new row are searched.
Previous duplicate groups enter as local components (root = smallest gid of
the group), so the usual node-roots / links / resolve machinery labels old and
new rows together; only components that contain a new row are relabelled, and
of those only new rows (``groups/``) and old rows whose fields changed
(``changed/``) are written.
"""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import fsspec
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.dedup import kernels as kernels
from models.storage import run_chain
from models.storage import layout
from models.storage import schemas
from transforms.common import sum_counters

NAMESPACE = "dupmine.dedup"
ROW_BITS = 32


def gid_of(part_index: int, rows: np.ndarray) -> np.ndarray:
    return (np.int64(part_index) << ROW_BITS) | rows.astype(np.int64)


def split_gid(gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gids = np.asarray(gids, np.int64)
    return gids >> ROW_BITS, gids & ((1 << ROW_BITS) - 1)


@dataclass
class Block:
    """Up to ``block_rows`` valid rows of one embedding part.

    gids (n,) int64; keys (n,) str; sha256 (n,) str ('' when unknown); area
    (n,) int64 width*height. The vectors are not carried: they never enter a
    Beam shuffle (at 1M x 512 they would be 2 GB per copy); workers read the
    rows they need from the part's ``.npy`` (:func:`row_vectors`).
    """

    part: int
    gids: np.ndarray
    keys: np.ndarray
    sha256: np.ndarray
    area: np.ndarray

    def take(self, idx: np.ndarray) -> "Block":
        return Block(self.part, self.gids[idx], self.keys[idx], self.sha256[idx], self.area[idx])


_ARRAYS: dict = {}  # per-process caches of opened parts (memory-mapped when local) and of their keys
_KEYS: dict = {}


def _identity(path: str) -> tuple:
    """(path, size, modification stamp): a rewritten file (atomic rename) is never served from a cache."""
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    return path, info.get("size"), info.get("mtime") or info.get("updated") or info.get("ETag")


def _cached(cache: dict, key: tuple, load):
    if key not in cache:
        if len(cache) >= 64:
            cache.pop(next(iter(cache)))
        cache[key] = load()
    return cache[key]


def _part_array(params: "DedupParams", part_index: int) -> np.ndarray:
    path = params.folder(part_index).img_emb(params.parts[part_index])
    return _cached(_ARRAYS, _identity(path), lambda: layout.read_npy(path))


def row_vectors(params: "DedupParams", gids: np.ndarray) -> np.ndarray:
    """(n,) gids -> (n, D) float32 L2-normalised rows, read from their parts (memory-mapped when local).

    Memory: the returned rows only; pages of a local ``.npy`` are shared and evictable.
    """
    gids = np.asarray(gids, np.int64)
    out = np.empty((len(gids), params.dim), np.float32)
    parts, rows = split_gid(gids)
    for part in np.unique(parts).tolist():
        sel = np.flatnonzero(parts == part)
        order = np.argsort(rows[sel], kind="stable")  # sorted reads of the memory map
        out[sel[order]] = np.asarray(_part_array(params, part)[rows[sel][order]], np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def part_keys(params: "DedupParams", part_index: int) -> np.ndarray:
    """The part's keys by row (cached per process; clip-retrieval parts without keys: ``PART:ROW``)."""
    part = params.parts[part_index]
    path = params.folder(part_index).metadata(part)

    def load():
        meta = layout.read_parquet(path, None)
        if "key" in meta.column_names:
            return np.asarray([str(k) for k in meta.column("key").to_pylist()], dtype=object)
        return np.asarray([f"{part}:{i}" for i in range(meta.num_rows)], dtype=object)

    return _cached(_KEYS, _identity(path), load)


@dataclass(frozen=True)
class DedupParams:
    """What the transforms need (picklable).

    ``parts[i]`` is read from ``folders[i]`` (``embeddings`` when ``folders``
    is empty). Incremental runs: parts ``[0, n_old)`` come from the previous
    chain, ``part_runs[i]`` lists the runs holding old part i's group state
    (:func:`models.storage.run_chain.part_runs`), and ``centroids_path`` holds the
    frozen (K, D) centroids.
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

    def __post_init__(self):
        if self.folders and len(self.folders) != len(self.parts):
            raise ValueError(f"{len(self.folders)} folders for {len(self.parts)} parts")
        if not 0 <= self.n_old <= len(self.parts) or len(self.part_runs) != self.n_old:
            raise ValueError(f"n_old {self.n_old} and {len(self.part_runs)} part_runs for {len(self.parts)} parts")
        if self.n_old and self.centroids_path is None:
            raise ValueError("an incremental run (n_old > 0) needs the previous run's centroids_path")

    @property
    def incremental(self) -> bool:
        return self.centroids_path is not None

    def folder(self, part_index: int) -> layout.EmbeddingFolder:
        return layout.EmbeddingFolder(self.folders[part_index] if self.folders else self.embeddings)

    def is_new(self, part_index: int) -> bool:
        return part_index >= self.n_old


def _is_new_gid(gid: int, n_old: int) -> bool:
    return (gid >> ROW_BITS) >= n_old


def _column(table, name: str, n: int, fill) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [fill] * n


class ReadPartFn(beam.DoFn):
    """Part index -> Blocks of valid rows (main) and reject rows (tag ``rejects``).

    Rejects: ``non-finite-embedding``, ``zero-embedding``. Memory: one block of
    the part at a time (the ``.npy`` is memory-mapped when local). For an old
    part of an incremental run also ``(gid, previous)`` (tag ``old_state``)
    for each of its rows in a previous duplicate group, ``previous`` being
    ``(group_id, group_size, is_representative, representative_key,
    max_cosine)`` from :func:`models.storage.run_chain.load_part_state`.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.read = Metrics.counter(NAMESPACE, "rows_read")
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, part_index: int):
        p = self.params
        folder = p.folder(part_index)
        part = p.parts[part_index]
        emb = layout.read_npy(folder.img_emb(part))
        meta = layout.read_parquet(folder.metadata(part))
        n = meta.num_rows
        if emb.shape[0] != n:
            raise ValueError(f"{folder.img_emb(part)} has {emb.shape[0]} rows but {folder.metadata(part)} has {n}")
        keys = np.asarray([str(k) for k in _column(meta, "key", n, None)], dtype=object)
        if "key" not in meta.column_names:  # clip-retrieval metadata without keys: name rows by position
            keys = np.asarray([f"{part}:{i}" for i in range(n)], dtype=object)
        sha = np.asarray([s or "" for s in _column(meta, "sha256", n, "")], dtype=object)
        width = np.asarray([w or 0 for w in _column(meta, "width", n, 0)], np.int64)
        height = np.asarray([h or 0 for h in _column(meta, "height", n, 0)], np.int64)
        if not p.is_new(part_index):
            yield from self._old_state(part_index, keys)
        for start in range(0, n, p.block_rows):
            stop = min(n, start + p.block_rows)
            x = np.asarray(emb[start:stop], dtype=np.float32)
            finite = np.isfinite(x).all(axis=1)
            norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
            ok = finite & (norms > 1e-6)
            for r in np.flatnonzero(~ok):
                reason = "non-finite-embedding" if not finite[r] else "zero-embedding"
                self.rejected.inc()
                yield pvalue.TaggedOutput("rejects", (part_index, ("rej", (int(start + r), str(keys[start + r]), reason))))
            rows = np.flatnonzero(ok) + start
            self.read.inc(stop - start)
            if len(rows):
                yield Block(part_index, gid_of(part_index, rows), keys[rows], sha[rows], width[rows] * height[rows])

    def _old_state(self, part_index: int, keys: np.ndarray):
        p = self.params
        part = p.parts[part_index]
        state = run_chain.load_part_state(p.part_runs[part_index], part).to_pylist()
        row_of: dict = {}
        for row, key in enumerate(keys.tolist()):
            row_of.setdefault(key, row)
        for r in state:
            if r["group_size"] <= 1:
                continue
            if r["key"] not in row_of:
                raise ValueError(f"key {r['key']!r} of the previous groups of part {part} is not in "
                                 f"{p.folder(part_index).metadata(part)}; the part changed since the previous run")
            gid = int(gid_of(part_index, np.asarray([row_of[r["key"]]]))[0])
            previous = (r["group_id"], int(r["group_size"]), bool(r["is_representative"]), r["representative_key"], r["max_cosine"])
            yield pvalue.TaggedOutput("old_state", (gid, previous))


def sample_rows(block: Block, fraction: float, params: "DedupParams") -> np.ndarray:
    """A deterministic Bernoulli sample of a block's vectors for k-means training, (m, D) float16."""
    rng = np.random.default_rng([params.seed, block.part, int(block.gids[0] & 0xFFFFFFFF)])
    # float16 halves the gathered sample (the embeddings are stored as float16 anyway); train() renormalises.
    return row_vectors(params, block.gids[rng.random(len(block.gids)) < fraction]).astype(np.float16)


class ConcatArrays(beam.CombineFn):
    """Concatenate (n_i, D) arrays; the result is the k-means training sample."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, x):
        if len(x):
            acc.append(x)
        return acc

    def merge_accumulators(self, accs):
        return [x for acc in accs for x in acc]

    def extract_output(self, acc):
        return np.concatenate(acc) if acc else np.zeros((0, 0), np.float32)


def train(sample: np.ndarray, params: DedupParams) -> np.ndarray:
    """k-means centroids from the gathered sample (k clamped to the sample size)."""
    if len(sample) > params.sample_size:
        sample = sample[np.random.default_rng(params.seed).choice(len(sample), params.sample_size, replace=False)]
    if len(sample) == 0:
        return np.zeros((1, params.dim), np.float32)
    sample = np.asarray(sample, np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    return kernels.train_centroids(sample, min(params.k, len(sample)), seed=params.seed, niter=params.niter)


def load_centroids(path: str) -> np.ndarray:
    """The frozen (K, D) float32 centroids of the previous run."""
    return np.asarray(layout.read_npy(path, mmap=False), np.float32)


def write_centroids(centroids: np.ndarray, output: str) -> int:
    """``OUTPUT/centroids.npy`` (the next increment freezes them); returns K."""
    layout.write_npy(layout.join(output, run_chain.CENTROIDS), np.asarray(centroids, np.float32))
    return int(centroids.shape[0])


def assign(block: Block, centroids: np.ndarray, params: DedupParams):
    """Block -> (partition, ("home"|"visit", Piece)) pieces, one per touched partition (row ids only)."""
    home, (indptr, spill) = kernels.assign_with_spill(row_vectors(params, block.gids), centroids, params.threshold,
                                                      params.max_spill)
    for role, parts, rows in (("home", home, np.arange(len(home))),
                              ("visit", spill, np.repeat(np.arange(len(home)), np.diff(indptr)))):
        if not len(parts):
            continue
        order = np.argsort(parts, kind="stable")
        parts, rows = parts[order], rows[order]
        bounds = np.flatnonzero(np.diff(parts)) + 1
        for seg in np.split(np.arange(len(parts)), bounds):
            yield int(parts[seg[0]]), (role, Piece(block.part, block.gids[rows[seg]]))


def old_piece_needed(element, touched: dict) -> bool:
    """Incremental runs: ship an old row's piece only where it can meet a new row.

    ``touched``: {partition: whether a new row is homed there} for partitions
    with new homes or new visitors. Old homes go to every touched partition
    (new homes x old homes, new visitors x old homes); old visitors only where
    new rows are homed (new homes x old visitors).
    """
    partition, (role, _) = element
    return partition in touched and (role == "home" or touched[partition])


@dataclass
class Piece:
    """The rows of one block that go to one partition, as global ids (8 bytes a row in the shuffle)."""

    part: int
    gids: np.ndarray


def _concat(pieces: list, params: "DedupParams") -> tuple[np.ndarray, np.ndarray]:
    if not pieces:
        return np.zeros(0, np.int64), np.zeros((0, params.dim), np.float32)
    gids = np.concatenate([b.gids for b in pieces])
    return gids, row_vectors(params, gids)


class SearchPartitionFn(beam.DoFn):
    """(partition, pieces) -> edges file; emits (gid, local_root) and (gid, max_cos) per node with an edge.

    Searched: new homes x (new homes, old homes, all visitors), and new
    visitors x old homes -- every pair the one-shot search would find that
    has at least one new row, never old x old (in a from-scratch run every
    row is new: homes x homes and homes x visitors). Memory: the partition's
    homes and visitors, O((a + b) D), plus an O(block^2) tile inside
    :func:`models.dedup.kernels.partition_pairs`.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.edges = Metrics.counter(NAMESPACE, "near_edges")
        self.sizes = Metrics.distribution(NAMESPACE, "partition_rows")

    def process(self, element):
        partition, pieces = element
        p = self.params
        pieces = list(pieces)
        split = {(role, new): [b for r, b in pieces if r == role and p.is_new(b.part) == new]
                 for role in ("home", "visit") for new in (True, False)}
        homes_new, homes_old = split[("home", True)], split[("home", False)]
        visits_new, visits_old = split[("visit", True)], split[("visit", False)]
        if not homes_new and not (homes_old and visits_new):
            return
        self.sizes.update(sum(len(b.gids) for b in homes_new + homes_old))
        found = []
        if homes_new:
            h_ids, h_vecs = _concat(homes_new, p)
            v_ids, v_vecs = _concat(homes_old + visits_old + visits_new, p)
            found.append(kernels.partition_pairs(h_ids, h_vecs, v_ids, v_vecs, p.threshold))
        if homes_old and visits_new:
            # new visitors x old homes, with the new visitors as "homes" of the kernel; it also pairs new
            # visitors with each other, which their own home partitions cover: keep pairs with an old home.
            o_ids, o_vecs = _concat(homes_old, p)
            n_ids, n_vecs = _concat(visits_new, p)
            i, j, cos = kernels.partition_pairs(n_ids, n_vecs, o_ids, o_vecs, p.threshold)
            keep = np.isin(i, o_ids) | np.isin(j, o_ids)
            found.append((i[keep], j[keep], cos[keep]))
        i, j, cos = (np.concatenate(x) for x in zip(*found))
        if len(found) > 1 and len(i):
            _, first = np.unique(np.stack([i, j], axis=1), axis=0, return_index=True)
            i, j, cos = i[first], j[first], cos[first]
        self.edges.inc(len(i))
        if not len(i):
            return
        # A pair of rows homed in different partitions can be found in both (each visits the other's home):
        # edges leave as elements and are made distinct by a CombinePerKey before they are written.
        for a, b, c in zip(i.tolist(), j.tolist(), cos.tolist()):
            yield pvalue.TaggedOutput("edges", ((a, b), c))
        nodes, roots = kernels.local_components(np.zeros(0, np.int64), i, j)
        for node, root in zip(nodes.tolist(), roots.tolist()):
            yield pvalue.TaggedOutput("roots", (node, root))
        both = np.concatenate([i, j])
        best = np.concatenate([cos, cos])
        order = np.lexsort((-best, both))
        first = np.ones(len(order), bool)
        first[1:] = both[order][1:] != both[order][:-1]
        for node, c in zip(both[order][first].tolist(), best[order][first].tolist()):
            yield pvalue.TaggedOutput("max_cos", (node, c))


def write_edges(element, params: "DedupParams") -> int:
    """(part of key_a, [((gid_a, gid_b), cosine)]) -> ``edges/edges_{part}.parquet`` (near edges, each pair once)."""
    part_index, edges = element
    edges = sorted(edges)
    rows = []
    for (a, b), c in edges:
        (pa_, ra), (pb, rb) = split_gid(np.asarray([a])), split_gid(np.asarray([b]))
        rows.append({"key_a": part_keys(params, int(pa_[0]))[int(ra[0])], "key_b": part_keys(params, int(pb[0]))[int(rb[0])],
                     "cosine": float(c), "kind": "near"})
    layout.write_parquet(layout.join(params.output, "edges", f"edges_{params.parts[part_index]}.parquet"),
                         schemas.table(rows, schemas.DEDUP_EDGES))
    return len(rows)


def exact_groups(element, output: str, n_old: int = 0):
    """(sha256, [(gid, key)]) -> (gid, root) for hash groups of 2+, plus their edges file.

    The edges of a hash group are a star from its first member (cosine 1.0 by
    definition: identical bytes give identical embeddings), so every member
    also gets ``(gid, 1.0)`` (tag ``max_cos``). Incremental runs: only hash
    groups with a new row count, and only the edges to new rows are written
    (the old ones are in a previous run's files).
    """
    sha, members = element
    members = sorted(members)
    if len(members) < 2 or not _is_new_gid(members[-1][0], n_old):
        return
    root, root_key = members[0]
    rows = [{"key_a": root_key, "key_b": key, "cosine": 1.0, "kind": "exact"}
            for gid, key in members[1:] if _is_new_gid(gid, n_old)]
    layout.write_parquet(layout.join(output, "edges", f"exact_{sha[:16]}_{zlib.crc32(sha.encode()):08x}.parquet"),
                         schemas.table(rows, schemas.DEDUP_EDGES))
    for gid, _ in members:
        yield gid, root
        yield pvalue.TaggedOutput("max_cos", (gid, 1.0))


def old_group_roots(element):
    """(previous group_id, [gids]) -> (gid, smallest gid) per member: a previous group as a local component."""
    _, gids = element
    gids = list(gids)
    root = min(gids)
    for gid in gids:
        yield gid, root


def node_roots(element):
    """(gid, [local roots]) -> the node's smallest root, and links between its roots."""
    node, roots = element
    roots = np.unique(np.asarray(list(roots), np.int64))
    yield node, int(roots[0])
    for r in roots[1:].tolist():
        yield pvalue.TaggedOutput("links", (int(roots[0]), r))


def resolve(links: list) -> dict:
    """All cross-partition root links (small) -> {root: global root}."""
    if not links:
        return {}
    a, b = (np.asarray(x, np.int64) for x in zip(*links))
    roots, global_roots = kernels.resolve_roots(a, b)
    return dict(zip(roots.tolist(), global_roots.tolist()))


def join_label(element):
    """CoGroupByKey row (gid, {label, max_cos, previous}) -> (gid, (label, max_cos, previous)).

    ``max_cos`` is the largest of the new edges' cosines and the previous
    run's value (an old row keeps its old edges); 1.0 when neither exists.
    ``previous`` is the old row's previous group tuple, or None.
    """
    gid, value = element
    cosines = list(value["max_cos"])
    previous = value.get("previous") or [None]
    prev = previous[0]
    if prev is not None and prev[4] is not None:
        cosines.append(float(prev[4]))
    return gid, (value["label"][0], max(cosines) if cosines else 1.0, prev)


def keep_touched(element, n_old: int):
    """(label, [(gid, max_cos, previous)]) -> (gid, (label, max_cos, previous)) for components with a new row.

    A component without new rows is a previous group no new edge reached: unchanged, not rewritten.
    """
    label, members = element
    members = list(members)
    if any(_is_new_gid(gid, n_old) for gid, _, _ in members):
        for gid, cos, prev in members:
            yield gid, (label, cos, prev)


def by_part(element):
    """(gid, (label, max_cos, previous)) -> (part, (row, label, max_cos, previous))."""
    gid, value = element
    part, row = split_gid(np.asarray([gid]))
    return int(part[0]), (int(row[0]),) + tuple(value)


class AttachMetadataFn(beam.DoFn):
    """(part, [(row, label, max_cos, previous)]) -> (label, (gid, key, area, max_cos, previous)) using the part's metadata."""

    def __init__(self, params: DedupParams):
        self.params = params

    def process(self, element):
        part_index, members = element
        folder = self.params.folder(part_index)
        part = self.params.parts[part_index]
        meta = layout.read_parquet(folder.metadata(part))
        n = meta.num_rows
        keys = _column(meta, "key", n, None) if "key" in meta.column_names else [f"{part}:{i}" for i in range(n)]
        width, height = _column(meta, "width", n, 0), _column(meta, "height", n, 0)
        for row, label, max_cos, prev in members:
            area = int(width[row] or 0) * int(height[row] or 0)
            yield label, (int(gid_of(part_index, np.asarray([row]))[0]), str(keys[row]), area, max_cos, prev)


def label_group(element):
    """(label, members) -> (part, row info) per member; the group's size for the summary (tag ``sizes``).

    Row info: ``(row, key, group_id, group_size, is_representative,
    representative_key, max_cos, previous)``. Incremental runs also emit, per
    previous duplicate group inside the component, its previous size (tag
    ``retired``: it is replaced by this component in the size histogram) and,
    when its id no longer names the group, a :data:`models.storage.run_chain.MERGES`
    row (tag ``merges``).
    """
    label, members = element
    members = sorted(members)
    gids = np.asarray([m[0] for m in members], np.int64)
    keys = np.asarray([m[1] for m in members], dtype=object)
    area = np.asarray([m[2] for m in members], np.int64)
    is_rep = kernels.choose_representatives(np.zeros(len(members), np.int64), area, np.ones_like(area), keys)
    rep_key = str(keys[is_rep][0])
    group_id = str(keys[0])  # members sorted by gid: the first member names the group
    size = len(members)
    yield pvalue.TaggedOutput("sizes", size)
    previous = {}
    for m in members:
        if m[4] is not None:
            previous.setdefault(m[4][0], m[4][1])
    for old_id, old_size in sorted(previous.items()):
        yield pvalue.TaggedOutput("retired", old_size)
        if old_id != group_id:
            yield pvalue.TaggedOutput("merges", {"old_group_id": old_id, "new_group_id": group_id,
                                                 "old_group_size": old_size, "new_group_size": size})
    parts, rows = split_gid(gids)
    for part, row, key, rep, m in zip(parts.tolist(), rows.tolist(), keys.tolist(), is_rep.tolist(), members):
        yield part, (row, key, group_id, size, rep, rep_key, m[3], m[4])


def duplicate_keys(element):
    """(key, [gids]) -> (part, ("rej", (row, key, reason))) for every copy but the first."""
    key, gids = element
    gids = sorted(gids)
    parts, rows = split_gid(np.asarray(gids[1:], np.int64))
    first_part, first_row = split_gid(np.asarray(gids[:1], np.int64))
    for part, row in zip(parts.tolist(), rows.tolist()):
        yield part, ("rej", (row, key, f"duplicate-key: same key as part #{int(first_part[0])} row {int(first_row[0])}"))


def drop_rejected(block: Block, rejected: list) -> Block | None:
    """Remove rows rejected elsewhere (duplicate keys) from a block; None when nothing is left."""
    if not rejected:
        return block
    bad = np.asarray([int(gid_of(part, np.asarray([row]))[0]) for part, (_, (row, _, _)) in rejected], np.int64)
    keep = ~np.isin(block.gids, bad)
    return block.take(np.flatnonzero(keep)) if keep.any() else None


def _drop_row(key: str, group_id: str, rep_key: str, max_cos: float) -> dict:
    kind = "duplicate" if max_cos >= 1.0 - 1e-6 else "near-duplicate"
    return {"key": key, "group_id": group_id, "representative_key": rep_key,
            "reason": f"{kind} of {rep_key} (cosine {max_cos:.4f})"}


class WritePartFn(beam.DoFn):
    """(part, tagged rows) -> groups, drop_keys and rejects files of that part.

    Tagged rows: ``("dup", row info)`` for rows with a duplicate,
    ``("rej", (row, key, reason))`` for rejected rows, ``("all", None)`` so
    that every part gets its files. Every input row of the part ends in
    exactly one of groups or rejects.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.dropped = Metrics.counter(NAMESPACE, "rows_dropped")

    def process(self, element):
        part_index, tagged = element
        p = self.params
        part = p.parts[part_index]
        keys = part_keys(p, part_index)
        n = len(keys)
        dups = {v[0]: v for tag, v in tagged if tag == "dup"}
        rejected = {v[0]: v for tag, v in tagged if tag == "rej"}
        groups, drops = [], []
        for row in range(n):
            key = str(keys[row])
            if row in rejected:
                continue
            if row in dups:
                _, _, group_id, size, rep, rep_key, max_cos, _ = dups[row]
                groups.append({"key": key, "group_id": group_id, "group_size": size, "is_representative": rep,
                               "representative_key": rep_key, "max_cosine": max_cos, "part": part})
                if not rep:
                    drops.append(_drop_row(key, group_id, rep_key, max_cos))
            else:
                groups.append({"key": key, "group_id": key, "group_size": 1, "is_representative": True,
                               "representative_key": key, "max_cosine": None, "part": part})
        rejects = [{"key": key, "shard": part, "url": None, "reason": reason, "stage": "dedup"}
                   for _, key, reason in sorted(rejected.values())]
        layout.write_parquet(layout.join(p.output, "groups", f"groups_{part}.parquet"), schemas.table(groups, schemas.DEDUP_GROUPS))
        layout.write_parquet(layout.join(p.output, "drop_keys.parquet", f"part-{part}.parquet"), schemas.table(drops, schemas.DROP_KEYS))
        layout.write_parquet(layout.join(p.output, "rejects", f"rejects_{part}.parquet"), schemas.table(rejects, schemas.REJECTS))
        self.dropped.inc(len(drops))
        yield Counter({"rows": n, "grouped_rows": len(groups), "dropped": len(drops), "rejects": len(rejects)})


def _f32(x):
    return None if x is None else float(np.float32(x))


class WriteChangedFn(beam.DoFn):
    """Incremental runs: (old part, [row info]) -> ``changed/changed_{part}.parquet`` and the part's new drops.

    Row info as from :func:`label_group`, for the old rows of components that
    gained a new row. A row is written when any of group_id, group_size,
    is_representative, representative_key or max_cosine (as float32) differs
    from its previous value (a previous singleton: its own key, 1, True, its
    own key, null), with the previous values alongside
    (:data:`models.storage.run_chain.CHANGED_GROUPS`). Old representatives that lost
    their place are written to ``drop_keys.parquet/demoted-{part}.parquet``.
    Yields a stats Counter (``changed_rows``, ``demoted``, ``dropped``), and
    the part id when it wrote a changed file (tag ``parts``).
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.changed = Metrics.counter(NAMESPACE, "old_rows_changed")

    def process(self, element):
        part_index, rows = element
        p = self.params
        part = p.parts[part_index]
        changed, drops = [], []
        for row, key, group_id, size, rep, rep_key, max_cos, prev in sorted(rows, key=lambda r: r[0]):
            prev = prev if prev is not None else (key, 1, True, key, None)
            new = (group_id, size, rep, rep_key, _f32(max_cos))
            if new == (prev[0], prev[1], prev[2], prev[3], _f32(prev[4])):
                continue
            changed.append({"key": key, "group_id": group_id, "group_size": size, "is_representative": rep,
                            "representative_key": rep_key, "max_cosine": max_cos, "part": part,
                            "previous_group_id": prev[0], "previous_group_size": prev[1],
                            "previous_is_representative": prev[2], "previous_representative_key": prev[3],
                            "previous_max_cosine": prev[4]})
            if prev[2] and not rep:
                drops.append(_drop_row(key, group_id, rep_key, max_cos))
        if changed:
            layout.write_parquet(layout.join(p.output, "changed", f"changed_{part}.parquet"),
                                 schemas.table(changed, run_chain.CHANGED_GROUPS))
            yield pvalue.TaggedOutput("parts", part)
        if drops:
            layout.write_parquet(layout.join(p.output, "drop_keys.parquet", f"demoted-{part}.parquet"),
                                 schemas.table(drops, schemas.DROP_KEYS))
        self.changed.inc(len(changed))
        yield Counter({"changed_rows": len(changed), "demoted": len(drops), "dropped": len(drops)})


def write_merges(rows: list, output: str) -> int:
    """merges.parquet (sorted by old group id); returns the number of merged groups."""
    rows = sorted(rows, key=lambda r: (r["old_group_id"], r["new_group_id"]))
    layout.write_parquet(layout.join(output, run_chain.MERGES_FILE), schemas.table(rows, run_chain.MERGES))
    return len(rows)


class Deduplicate(beam.PTransform):
    """Part indices -> groups, edges, drop keys, rejects and centroids on disk (plus changed rows and merges).

    Returns a dict of single-element PCollections: ``stats`` (summed stats
    dict); ``sizes``, a list of ``(group_size, count)`` pairs for the groups
    of 2 or more it labelled (all of them in a from-scratch run, those that
    gained a new row in an incremental one); ``retired``, a list of
    ``(previous group_size, count)`` pairs for the previous duplicate groups
    those replace (empty from scratch); ``changed_parts``, the old parts
    given a ``changed/`` file; ``k``, the number of centroids (written to
    ``centroids.npy``).
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, part_indices):
        p = self.params
        pipeline = part_indices.pipeline
        read = part_indices | "ReadParts" >> beam.ParDo(ReadPartFn(p)).with_outputs("rejects", "old_state", main="blocks")
        key_rejects = (
            read.blocks
            | "KeyIds" >> beam.FlatMap(lambda b: zip(b.keys.tolist(), b.gids.tolist()))
            | "GroupByKeyName" >> beam.GroupByKey()
            | "DuplicateKeys" >> beam.FlatMap(duplicate_keys)
        )
        blocks = (
            read.blocks
            | "DropDuplicateKeys" >> beam.Map(drop_rejected, pvalue.AsList(key_rejects))
            | "NonEmpty" >> beam.Filter(lambda b: b is not None)
        )
        if p.incremental:
            centroids = (pipeline | "CentroidsPath" >> beam.Create([p.centroids_path])
                         | "FrozenCentroids" >> beam.Map(load_centroids))
        else:
            fraction = min(1.0, 1.2 * p.sample_size / max(1, p.n_rows))  # a little over the target, trimmed in train()
            centroids = (
                blocks
                | "SampleForCentroids" >> beam.Map(sample_rows, fraction, p)
                | "GatherSample" >> beam.CombineGlobally(ConcatArrays())
                | "TrainCentroids" >> beam.Map(train, p)
            )
        k = centroids | "WriteCentroids" >> beam.Map(write_centroids, p.output)
        pieces = blocks | "AssignPartitions" >> beam.FlatMap(assign, pvalue.AsSingleton(centroids), p)
        if p.incremental:
            new_pieces = pieces | "NewPieces" >> beam.Filter(lambda e: p.is_new(e[1][1].part))
            touched = (new_pieces | "NewRoles" >> beam.Map(lambda e: (e[0], e[1][0] == "home"))
                       | "TouchedPartitions" >> beam.CombinePerKey(any))
            old_pieces = (pieces | "OldPieces" >> beam.Filter(lambda e: not p.is_new(e[1][1].part))
                          | "OldPiecesWhereNeeded" >> beam.Filter(old_piece_needed, pvalue.AsDict(touched)))
            pieces = (new_pieces, old_pieces) | "PiecesToSearch" >> beam.Flatten()
        searched = (
            pieces
            | "GroupByPartition" >> beam.GroupByKey()
            | "SearchPartitions" >> beam.ParDo(SearchPartitionFn(p)).with_outputs("roots", "max_cos", "edges")
        )
        _ = (
            searched.edges
            | "DistinctEdges" >> beam.CombinePerKey(max)
            | "EdgesByPart" >> beam.Map(lambda e: (int(e[0][0]) >> ROW_BITS, e))
            | "GroupEdgesByPart" >> beam.GroupByKey()
            | "WriteEdges" >> beam.Map(write_edges, p)
        )
        exact = (
            blocks
            | "HashKeys" >> beam.FlatMap(lambda b: [(s, (g, k)) for s, g, k in zip(b.sha256.tolist(), b.gids.tolist(), b.keys.tolist()) if s])
            | "GroupByHash" >> beam.GroupByKey()
            | "ExactGroups" >> beam.FlatMap(exact_groups, p.output, p.n_old).with_outputs("max_cos", main="roots")
        )
        local_roots = [searched.roots, exact.roots]
        if p.incremental:
            local_roots.append(
                read.old_state
                | "ByPreviousGroup" >> beam.Map(lambda e: (e[1][0], e[0]))
                | "GroupByPreviousGroup" >> beam.GroupByKey()
                | "PreviousGroupRoots" >> beam.FlatMap(old_group_roots))
        nodes = (
            tuple(local_roots)
            | "AllLocalRoots" >> beam.Flatten()
            | "GroupByNode" >> beam.GroupByKey()
            | "NodeRoots" >> beam.FlatMap(node_roots).with_outputs("links", main="roots")
        )
        root_map = nodes.links | "GatherLinks" >> beam.combiners.ToList() | "ResolveRoots" >> beam.Map(resolve)
        max_cos = (searched.max_cos, exact.max_cos) | "AllCosines" >> beam.Flatten() | "MaxCosine" >> beam.CombinePerKey(max)
        labels = nodes.roots | "GlobalLabels" >> beam.Map(lambda nr, m: (nr[0], m.get(nr[1], nr[1])), pvalue.AsSingleton(root_map))
        joined = {"label": labels, "max_cos": max_cos}
        if p.incremental:
            joined["previous"] = read.old_state
        labelled = joined | "JoinLabelCosine" >> beam.CoGroupByKey() | "LabelWithCosine" >> beam.Map(join_label)
        if p.incremental:
            labelled = (
                labelled
                | "ByLabel" >> beam.Map(lambda e: (e[1][0], (e[0], e[1][1], e[1][2])))
                | "GroupComponents" >> beam.GroupByKey()
                | "KeepTouchedComponents" >> beam.FlatMap(keep_touched, p.n_old)
            )
        groups = (
            labelled
            | "KeyByPart" >> beam.Map(by_part)
            | "GroupByPartForMetadata" >> beam.GroupByKey()
            | "AttachMetadata" >> beam.ParDo(AttachMetadataFn(p))
            | "GroupByLabel" >> beam.GroupByKey()
            | "LabelGroups" >> beam.FlatMap(label_group).with_outputs("sizes", "retired", "merges", main="rows")
        )
        part_stats = (
            (groups.rows | "NewRows" >> beam.Filter(lambda e: p.is_new(e[0])) | "TagDuplicates" >> beam.Map(lambda e: (e[0], ("dup", e[1]))),
             read.rejects | "NewPartRejects" >> beam.Filter(lambda e: p.is_new(e[0])),
             key_rejects | "NewKeyRejects" >> beam.Filter(lambda e: p.is_new(e[0])),
             part_indices | "NewParts" >> beam.Filter(p.is_new) | "EveryPart" >> beam.Map(lambda i: (i, ("all", None))))
            | "AllPartRows" >> beam.Flatten()
            | "GroupRowsByPart" >> beam.GroupByKey()
            | "WriteParts" >> beam.ParDo(WritePartFn(p))
        )
        changed_stats = (
            groups.rows
            | "OldRows" >> beam.Filter(lambda e: not p.is_new(e[0])).with_output_types(tuple[int, Any])
            | "GroupChangedByPart" >> beam.GroupByKey()
            | "WriteChanged" >> beam.ParDo(WriteChangedFn(p)).with_outputs("parts", main="stats")
        )
        merged = (groups.merges | "GatherMerges" >> beam.combiners.ToList()
                  | "WriteMerges" >> beam.Map(write_merges, p.output))
        stats = (
            (part_stats, changed_stats.stats, merged | "MergeStats" >> beam.Map(lambda n: Counter({"merged_groups": n})))
            | "AllStats" >> beam.Flatten()
            | "SumStats" >> beam.CombineGlobally(sum_counters)
        )
        sizes = groups.sizes | "CountGroupSizes" >> beam.combiners.Count.PerElement() | "SizesToList" >> beam.combiners.ToList()
        retired = (groups.retired | "CountRetiredSizes" >> beam.combiners.Count.PerElement()
                   | "RetiredToList" >> beam.combiners.ToList())
        changed_parts = changed_stats.parts | "ChangedPartsToList" >> beam.combiners.ToList()
        return {"stats": stats, "sizes": sizes, "retired": retired, "changed_parts": changed_parts, "k": k}
