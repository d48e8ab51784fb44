"""Beam transforms of the dedup stage: partition, search, connect, label.

Elements on the hot path are :class:`Block` s (numpy arrays of up to
``block_rows`` rows), never per-row dicts; per-row elements appear only for
the rows that have a duplicate (component merging, exact-hash join).

Global row ids: ``gid = part_index << 32 | row``, so a gid names a row of an
embedding part without carrying its key around, and the smallest gid of a
component (its canonical label) is its first member in part/row order.
"""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models import dedup as kernels
from models import layout, schemas

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

    gids (n,) int64; keys (n,) str; vecs (n, D) float32 L2-normalised;
    sha256 (n,) str ('' when unknown); area (n,) int64 width*height.
    """

    part: int
    gids: np.ndarray
    keys: np.ndarray
    vecs: np.ndarray
    sha256: np.ndarray
    area: np.ndarray

    def take(self, idx: np.ndarray) -> "Block":
        return Block(self.part, self.gids[idx], self.keys[idx], self.vecs[idx], self.sha256[idx], self.area[idx])


@dataclass(frozen=True)
class DedupParams:
    """What the transforms need (picklable)."""

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


def _column(table, name: str, n: int, fill) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [fill] * n


class ReadPartFn(beam.DoFn):
    """Part index -> Blocks of valid rows (main) and reject rows (tag ``rejects``).

    Rejects: ``non-finite-embedding``, ``zero-embedding``. Memory: one block of
    the part at a time (the ``.npy`` is memory-mapped when local).
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.read = Metrics.counter(NAMESPACE, "rows_read")
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, part_index: int):
        p = self.params
        folder = layout.EmbeddingFolder(p.embeddings)
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
                vecs = x[ok] / norms[ok, None]
                yield Block(part_index, gid_of(part_index, rows), keys[rows], vecs, sha[rows], width[rows] * height[rows])


def sample_rows(block: Block, fraction: float, seed: int) -> np.ndarray:
    """A deterministic Bernoulli sample of a block's vectors for k-means training."""
    rng = np.random.default_rng([seed, block.part, int(block.gids[0] & 0xFFFFFFFF)])
    return block.vecs[rng.random(len(block.gids)) < fraction]


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
    return kernels.train_centroids(sample, min(params.k, len(sample)), seed=params.seed, niter=params.niter)


def assign(block: Block, centroids: np.ndarray, params: DedupParams):
    """Block -> (partition, ("home"|"visit", Block)) pieces, one per touched partition."""
    home, (indptr, spill) = kernels.assign_with_spill(block.vecs, centroids, params.threshold, params.max_spill)
    for role, parts, rows in (("home", home, np.arange(len(home))),
                              ("visit", spill, np.repeat(np.arange(len(home)), np.diff(indptr)))):
        if not len(parts):
            continue
        order = np.argsort(parts, kind="stable")
        parts, rows = parts[order], rows[order]
        bounds = np.flatnonzero(np.diff(parts)) + 1
        for seg in np.split(np.arange(len(parts)), bounds):
            yield int(parts[seg[0]]), (role, block.take(rows[seg]))


class SearchPartitionFn(beam.DoFn):
    """(partition, pieces) -> edges file; emits (gid, local_root) and (gid, max_cos) per node with an edge.

    Memory: the partition's homes and visitors, O((a + b) D), plus an
    O(block^2) tile inside :func:`models.dedup.partition_pairs`.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.edges = Metrics.counter(NAMESPACE, "near_edges")
        self.sizes = Metrics.distribution(NAMESPACE, "partition_rows")

    def process(self, element):
        partition, pieces = element
        homes = [b for role, b in pieces if role == "home"]
        visits = [b for role, b in pieces if role == "visit"]
        if not homes:
            return
        h_ids = np.concatenate([b.gids for b in homes])
        h_vecs = np.concatenate([b.vecs for b in homes])
        v_ids = np.concatenate([b.gids for b in visits]) if visits else np.zeros(0, np.int64)
        v_vecs = np.concatenate([b.vecs for b in visits]) if visits else np.zeros((0, h_vecs.shape[1]), np.float32)
        self.sizes.update(len(h_ids))
        i, j, cos = kernels.partition_pairs(h_ids, h_vecs, v_ids, v_vecs, self.params.threshold)
        self.edges.inc(len(i))
        if not len(i):
            return
        key_of = dict(zip(np.concatenate([h_ids, v_ids]).tolist(), np.concatenate([b.keys for b in homes + visits]).tolist()))
        rows = [{"key_a": key_of[a], "key_b": key_of[b], "cosine": float(c), "kind": "near"}
                for a, b, c in zip(i.tolist(), j.tolist(), cos.tolist())]
        layout.write_parquet(layout.join(self.params.output, "edges", f"edges_{partition:06d}.parquet"),
                             schemas.table(rows, schemas.DEDUP_EDGES))
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


def exact_groups(element, output: str):
    """(sha256, [(gid, key)]) -> (gid, root) for hash groups of 2+, plus their edges file.

    The edges of a hash group are a star from its first member (cosine 1.0 by
    definition: identical bytes give identical embeddings).
    """
    sha, members = element
    members = sorted(members)
    if len(members) < 2:
        return
    root, root_key = members[0]
    rows = [{"key_a": root_key, "key_b": key, "cosine": 1.0, "kind": "exact"} for _, key in members[1:]]
    layout.write_parquet(layout.join(output, "edges", f"exact_{sha[:16]}_{zlib.crc32(sha.encode()):08x}.parquet"),
                         schemas.table(rows, schemas.DEDUP_EDGES))
    for gid, _ in members:
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


def by_part(element):
    """(gid, (label, max_cos)) -> (part, (row, label, max_cos))."""
    gid, value = element
    part, row = split_gid(np.asarray([gid]))
    return int(part[0]), (int(row[0]),) + tuple(value)


class AttachMetadataFn(beam.DoFn):
    """(part, [(row, label, max_cos)]) -> (label, (gid, key, area, max_cos)) using the part's metadata."""

    def __init__(self, params: DedupParams):
        self.params = params

    def process(self, element):
        part_index, members = element
        folder = layout.EmbeddingFolder(self.params.embeddings)
        part = self.params.parts[part_index]
        meta = layout.read_parquet(folder.metadata(part))
        n = meta.num_rows
        keys = _column(meta, "key", n, None) if "key" in meta.column_names else [f"{part}:{i}" for i in range(n)]
        width, height = _column(meta, "width", n, 0), _column(meta, "height", n, 0)
        for row, label, max_cos in members:
            area = int(width[row] or 0) * int(height[row] or 0)
            yield label, (int(gid_of(part_index, np.asarray([row]))[0]), str(keys[row]), area, max_cos)


def label_group(element):
    """(label, members) -> (part, row info) per member; the group's size for the summary (tag ``sizes``)."""
    label, members = element
    members = sorted(members)
    gids = np.asarray([m[0] for m in members], np.int64)
    keys = np.asarray([m[1] for m in members], dtype=object)
    area = np.asarray([m[2] for m in members], np.int64)
    is_rep = kernels.choose_representatives(np.zeros(len(members), np.int64), area, np.ones_like(area), keys)
    rep_key = str(keys[is_rep][0])
    group_id = str(keys[0])  # members sorted by gid: the first member names the group
    yield pvalue.TaggedOutput("sizes", len(members))
    parts, rows = split_gid(gids)
    for part, row, key, rep, m in zip(parts.tolist(), rows.tolist(), keys.tolist(), is_rep.tolist(), members):
        yield part, (row, key, group_id, len(members), rep, rep_key, m[3])


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
        meta = layout.read_parquet(layout.EmbeddingFolder(p.embeddings).metadata(part))
        n = meta.num_rows
        keys = _column(meta, "key", n, None) if "key" in meta.column_names else [f"{part}:{i}" for i in range(n)]
        dups = {v[0]: v for tag, v in tagged if tag == "dup"}
        rejected = {v[0]: v for tag, v in tagged if tag == "rej"}
        groups, drops = [], []
        for row in range(n):
            key = str(keys[row])
            if row in rejected:
                continue
            if row in dups:
                _, _, group_id, size, rep, rep_key, max_cos = dups[row]
                groups.append({"key": key, "group_id": group_id, "group_size": size, "is_representative": rep,
                               "representative_key": rep_key, "max_cosine": max_cos, "part": part})
                if not rep:
                    kind = "duplicate" if max_cos >= 1.0 - 1e-6 else "near-duplicate"
                    drops.append({"key": key, "group_id": group_id, "representative_key": rep_key,
                                  "reason": f"{kind} of {rep_key} (cosine {max_cos:.4f})"})
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


def sum_counters(parts) -> dict:
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


class Deduplicate(beam.PTransform):
    """Part indices -> groups, edges, drop keys and rejects on disk.

    Returns ``(stats, sizes)``: one summed stats dict, and one list of
    ``(group_size, count)`` pairs for groups of 2 or more.
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, part_indices):
        p = self.params
        read = part_indices | "ReadParts" >> beam.ParDo(ReadPartFn(p)).with_outputs("rejects", main="blocks")
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
        fraction = min(1.0, 2.0 * p.sample_size / max(1, p.n_rows))
        centroids = (
            blocks
            | "SampleForCentroids" >> beam.Map(sample_rows, fraction, p.seed)
            | "GatherSample" >> beam.CombineGlobally(ConcatArrays())
            | "TrainCentroids" >> beam.Map(train, p)
        )
        searched = (
            blocks
            | "AssignPartitions" >> beam.FlatMap(assign, pvalue.AsSingleton(centroids), p)
            | "GroupByPartition" >> beam.GroupByKey()
            | "SearchPartitions" >> beam.ParDo(SearchPartitionFn(p)).with_outputs("roots", "max_cos")
        )
        exact_roots = (
            blocks
            | "HashKeys" >> beam.FlatMap(lambda b: [(s, (g, k)) for s, g, k in zip(b.sha256.tolist(), b.gids.tolist(), b.keys.tolist()) if s])
            | "GroupByHash" >> beam.GroupByKey()
            | "ExactGroups" >> beam.FlatMap(exact_groups, p.output)
        )
        nodes = (
            (searched.roots, exact_roots)
            | "AllLocalRoots" >> beam.Flatten()
            | "GroupByNode" >> beam.GroupByKey()
            | "NodeRoots" >> beam.FlatMap(node_roots).with_outputs("links", main="roots")
        )
        root_map = nodes.links | "GatherLinks" >> beam.combiners.ToList() | "ResolveRoots" >> beam.Map(resolve)
        max_cos = searched.max_cos | "MaxCosine" >> beam.CombinePerKey(max)
        labels = nodes.roots | "GlobalLabels" >> beam.Map(lambda nr, m: (nr[0], m.get(nr[1], nr[1])), pvalue.AsSingleton(root_map))
        groups = (
            {"label": labels, "max_cos": max_cos}
            | "JoinLabelCosine" >> beam.CoGroupByKey()
            | "LabelWithCosine" >> beam.Map(lambda e: (e[0], (e[1]["label"][0], e[1]["max_cos"][0] if e[1]["max_cos"] else 1.0)))
            | "KeyByPart" >> beam.Map(by_part)
            | "GroupByPartForMetadata" >> beam.GroupByKey()
            | "AttachMetadata" >> beam.ParDo(AttachMetadataFn(p))
            | "GroupByLabel" >> beam.GroupByKey()
            | "LabelGroups" >> beam.FlatMap(label_group).with_outputs("sizes", main="rows")
        )
        stats = (
            (groups.rows | "TagDuplicates" >> beam.Map(lambda e: (e[0], ("dup", e[1]))),
             read.rejects,
             key_rejects,
             part_indices | "EveryPart" >> beam.Map(lambda i: (i, ("all", None))))
            | "AllPartRows" >> beam.Flatten()
            | "GroupRowsByPart" >> beam.GroupByKey()
            | "WriteParts" >> beam.ParDo(WritePartFn(p))
            | "SumStats" >> beam.CombineGlobally(sum_counters)
        )
        sizes = groups.sizes | "CountGroupSizes" >> beam.combiners.Count.PerElement() | "SizesToList" >> beam.combiners.ToList()
        return stats, sizes
