"""Assign rows to partitions, search each partition exactly, and join rows with equal image hashes.

Outputs per node with an edge: ``(gid, local_root)`` (the smallest gid of its
component inside one partition or hash group) and ``(gid, max_cos)``; near
edges (a spanning forest of each search task's owned pairs, or every owned
pair: ``--edges``; each pair is owned by one task, :func:`owned_pairs`) leave
the tasks as array batches and are written to ``edges/edges_{part}.parquet``
by the part of their second endpoint, keys attached in two keyed hops; the
number of distinct near pairs is counted. Vectors travel in the pieces or
are re-read from the parts (``--vectors``, :class:`models.dedup.plan.VectorTransport`).
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from models.dedup import components, nn_similarity, partition, search, spanning
from models.dedup.balance import TaskKey
from models.dedup.plan import DedupParams, EdgeMode, VectorTransport
from models.storage import layout, schemas
from transforms.dedup import store
from transforms.dedup.balance import BalancePartitions
from transforms.dedup.read import block_rows, part_ids, stored_rows
from transforms.dedup.rows import (NAMESPACE, Block, Piece, Role, Spill, is_new_gid, split_gid,
                                   unit_float32)


class BlockAssignment(NamedTuple):
    """One block's rows with their partitions, as arrays (:func:`assign_block`).

    gids (n,) int64; home (n,) int32, each row's home partition; ``indptr`` (n + 1,) int64 and ``spill`` (m,)
    int32, the CSR lists of the partitions each row visits (:func:`models.dedup.partition.assign_with_spill`);
    vecs (n, D) the rows as stored with ``--vectors shuffle``, else None.
    """

    part: int
    gids: np.ndarray
    home: np.ndarray
    indptr: np.ndarray
    spill: np.ndarray
    vecs: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.gids, self.home, self.indptr, self.spill, self.vecs) if a is not None)

    @classmethod
    def concat(cls, blocks: "list[BlockAssignment]") -> "BlockAssignment":
        """The rows of ``blocks`` one after another (``part``: the first's)."""
        if len(blocks) == 1:
            return blocks[0]
        indptr, spill = Spill.concat([Spill(b.indptr, b.spill) for b in blocks])
        vecs = None if blocks[0].vecs is None else np.concatenate([b.vecs for b in blocks])
        return cls(blocks[0].part, np.concatenate([b.gids for b in blocks]), np.concatenate([b.home for b in blocks]),
                   indptr, spill, vecs)


def assign_block(block: Block, centroids: np.ndarray, params: DedupParams,
                 distances: "partition.CentroidDistances | None" = None) -> BlockAssignment:
    """A block's home and spill partitions (``distances``: the centroids' distances kept between blocks).

    Reads the block's rows from its own part only (:func:`transforms.dedup.read.block_rows`); keeps them, as
    stored (float16 for LAION / dupmine parts), with ``--vectors shuffle`` (the search then needs no part).
    """
    stored = block_rows(params, block)
    home, (indptr, spill) = partition.assign_with_spill(unit_float32(stored), centroids, params.threshold,
                                                        params.max_spill, distances=distances)
    ship = params.vectors is VectorTransport.SHUFFLE
    return BlockAssignment(block.part, block.gids, home.astype(np.int32), indptr, spill.astype(np.int32),
                           stored if ship else None)


def assigned_pieces(assigned: BlockAssignment):
    """Assigned rows (of one block, or of blocks of equally new parts, :meth:`BlockAssignment.concat`) ->
    (partition, Piece) per touched partition and role.

    One piece per partition and role for all the rows together: they are sorted by partition once
    (stable: block order within a partition) and cut, so the number of pieces is K per role whatever the
    number of blocks. Pieces carry row ids, visitors' home partitions, homes' visited partitions and, with
    ``--vectors shuffle``, the rows as stored; ``part`` is the first block's (it only says new or old).
    """
    gids, home, indptr, spill, vecs = assigned.gids, assigned.home, assigned.indptr, assigned.spill, assigned.vecs
    for role, parts, rows in ((Role.HOME, home, None),
                              (Role.VISIT, spill, np.repeat(np.arange(len(home)), np.diff(indptr)))):
        if not len(parts):
            continue
        order = np.argsort(parts, kind="stable")
        parts = parts[order]
        rows = order if rows is None else rows[order]
        bounds = np.r_[0, np.flatnonzero(np.diff(parts)) + 1, len(parts)]
        visit = role is Role.VISIT
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            r = rows[lo:hi]
            yield int(parts[lo]), Piece(role, assigned.part, gids[r],
                                        homes=home[r] if visit else None,
                                        spill=None if visit else Spill.of_rows(indptr, spill, r),
                                        vecs=None if vecs is None else vecs[r])


def assign(block: Block, centroids: np.ndarray, params: DedupParams):
    """Block -> (partition, Piece) per touched partition and role (:func:`assign_block`, :func:`assigned_pieces`)."""
    yield from assigned_pieces(assign_block(block, centroids, params))


MERGE_BYTES = 256 << 20
"""Assignment bytes an :class:`AssignPiecesFn` holds before it emits its pieces."""


class AssignPiecesFn(beam.DoFn):
    """Block -> (partition, Piece): a bundle's blocks assigned (:func:`assign_block`) and held, per newness,
    until they pass ``max_bytes`` and at the bundle's end, then cut into one piece per partition and role
    (:func:`assigned_pieces`).

    Every block has rows in almost every partition, so cutting each block apart made N K / block rows
    pieces (10M x 256: ~2M of ~10 rows each, and the assign step took 251 s; cut from the held blocks at
    once, ~10k pieces and 234 s), and a search task met one piece per block and role. Memory: at most
    ``max_bytes`` of assignments (20 B a row plus 4 a visit, and the stored rows with ``--vectors shuffle``) and
    their pieces, and the centroid distances the spill test computed (:class:`models.dedup.partition.CentroidDistances`,
    at most 64 MiB); nothing is lost or repeated (a retried bundle re-emits its own rows only).
    """

    def __init__(self, params: DedupParams, max_bytes: int = MERGE_BYTES):
        self.params = params
        self.max_bytes = int(max_bytes)
        self._distances = (None, None)  # (centroids, their CentroidDistances): kept while the side input is

    def start_bundle(self):
        self._held: dict = {}
        self._bytes = 0

    def process(self, block, centroids):
        if self._distances[0] is not centroids:
            fine = centroids.fine if isinstance(centroids, partition.TwoLevel) else centroids
            self._distances = (centroids, partition.CentroidDistances(fine))
        assigned = assign_block(block, centroids, self.params, self._distances[1])
        self._held.setdefault(self.params.is_new(block.part), []).append(assigned)
        self._bytes += assigned.nbytes
        if self._bytes >= self.max_bytes:
            yield from self._flush()

    def finish_bundle(self):
        for element in self._flush():
            yield GlobalWindows.windowed_value(element)

    def _flush(self):
        held, self._held, self._bytes = self._held, {}, 0
        while held:  # each newness's blocks are dropped once joined, before their pieces are cut
            yield from assigned_pieces(BlockAssignment.concat(held.popitem()[1]))


class PartitionRows:
    """The rows of one partition in node order: new homes, old homes, new visitors, old visitors.

    gids (n,) int64; vecs (n, D) float32 unit rows (of the pieces' vectors,
    :func:`with_vectors`); home (n,) int64 each
    row's home partition; ``counts``: rows per section in that order;
    ``spill_keys``: sorted int64 ``node * M + q`` for every home node that
    also visits partition q (``M`` = ``self.modulus``). Memory O(n D) float32.
    """

    SECTIONS = ((Role.HOME, True), (Role.HOME, False), (Role.VISIT, True), (Role.VISIT, False))

    def __init__(self, pieces: list[Piece], params: DedupParams, partition: int):
        ordered = [[b for b in pieces if (b.role, params.is_new(b.part)) == key] for key in self.SECTIONS]
        flat = [b for section in ordered for b in section]
        self.counts = [sum(len(b.gids) for b in section) for section in ordered]
        self.gids = np.concatenate([b.gids for b in flat]) if flat else np.zeros(0, np.int64)
        self.home = np.concatenate([np.full(len(b.gids), partition, np.int64) if b.homes is None
                                    else b.homes.astype(np.int64) for b in flat] or [np.zeros(0, np.int64)])
        self.vecs = self._vectors(flat, params)
        nodes, visited, start = [], [], 0
        for b in flat:
            if b.spill is not None:
                nodes.append(start + np.repeat(np.arange(len(b.gids)), np.diff(b.spill.indptr)))
                visited.append(b.spill.parts.astype(np.int64))
            start += len(b.gids)
        visited = np.concatenate(visited) if visited else np.zeros(0, np.int64)
        self.modulus = int(max(partition, self.home.max(initial=0), visited.max(initial=0))) + 1
        self.spill_keys = np.sort(np.concatenate(nodes) * self.modulus + visited) if nodes else visited

    def _vectors(self, flat: list[Piece], params: DedupParams) -> np.ndarray:
        """Unit rows from the pieces' own vectors (:func:`with_vectors` fills those of ``reread`` pieces)."""
        if any(b.vecs is None for b in flat):
            raise ValueError("a piece reached the search without its vectors (see with_vectors)")
        if not flat:
            return np.zeros((0, params.dim), np.float32)
        return unit_float32(np.concatenate([b.vecs for b in flat]))


def with_vectors(pieces: list[Piece], params: DedupParams) -> list[Piece]:
    """The pieces, each with its rows as stored: ``--vectors shuffle`` pieces and old rows from the increment index
    carry them; ``reread`` pieces get them here, read from their parts in one batch (:func:`transforms.dedup.read.stored_rows`).

    Raises:
      ValueError: ``--vectors shuffle`` and a piece arrived without its vectors.
    """
    missing = [i for i, b in enumerate(pieces) if b.vecs is None]
    if not missing:
        return pieces
    if params.vectors is VectorTransport.SHUFFLE:
        raise ValueError("--vectors shuffle: a piece arrived without its vectors (was it assigned with reread?)")
    rows = stored_rows(params, np.concatenate([pieces[i].gids for i in missing]))
    out, start = list(pieces), 0
    for i in missing:
        n = len(pieces[i].gids)
        out[i] = dataclasses.replace(pieces[i], vecs=rows[start:start + n])
        start += n
    return out


def owned_pairs(rows: "PartitionRows", x: np.ndarray, y: np.ndarray, partition: int) -> np.ndarray:
    """(m,) bool: which pairs (home node ``x``, node ``y``) this partition counts, so each pair counts once.

    Home x home pairs are found only here. A pair of home x and visitor y
    homed in q is also found in q exactly when x visits q (q then holds y as
    a home and x as a visitor, and searches homes x visitors: also in
    increments, see :meth:`transforms.dedup.strategy.IncrementalRun.select_pieces`);
    then the smaller partition index counts it.
    """
    q = rows.home[y]
    visitor = q != partition
    twice = visitor & np.isin(x * rows.modulus + q, rows.spill_keys)
    return ~twice | (partition < q)


class SearchPartitionFn(beam.DoFn):
    """(task key, pieces) -> its owned near edges, one :class:`EdgeBatch` per part of their first endpoint
    (tag ``edges``, :func:`edge_batches`), ``(gid, local_root)`` (tag ``roots``)
    and ``(gid, max_cos)`` (tag ``max_cos``) per node with an edge; ``(gid, nearest cosine in this task)`` of
    its sampled new rows (tag ``nn_best``, maximised over a row's tasks: :meth:`_nn`); the number of near pairs
    it owns (tag ``pairs``, :func:`owned_pairs`).

    The key is a :class:`models.dedup.balance.TaskKey` (as a tuple): a whole
    partition, or one block pair of a split one, where off the diagonal only
    homes x "visitors" are searched.
    Searched: new homes x (new homes, old homes, all visitors), and old homes x
    new visitors -- every pair the one-shot search would find that has at
    least one new row, never old x old (in a from-scratch run every row is
    new: homes x homes and homes x visitors). The boundary pruning of
    :func:`models.dedup.search.partition_pairs` is not used: it cut the pair
    work 2.7x on the 64-d planted test set, but on 1M x 256 topic-clustered
    rows its per-source small GEMMs made the search slower (measured).
    Edges: with ``--edges spanning`` a maximum spanning forest of the
    task's owned pairs (:class:`models.dedup.spanning.PairReducer`, reduced
    tile by tile), with ``all`` every owned pair; each pair is owned by one
    task (:func:`owned_pairs`), so the files never repeat a pair and no
    shuffle makes edges distinct. ``max_cos`` is the maximum over every pair
    found either way. Vectors come in the pieces (``--vectors shuffle``:
    no part is read) or from the parts (``reread``).
    Every task first writes its new rows to this run's increment index
    (``partitions/{q}/{a}-{b}.parquet``, :func:`transforms.dedup.store.stored_pieces`),
    before any early return: a partition with visitors only still records them.
    Memory: the partition's rows, O(n D) float32, plus one O(block^2) tile and
    the forest (O(n)); with ``--edges all`` also every pair.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.edges = Metrics.counter(NAMESPACE, "near_edges")
        self.sizes = Metrics.distribution(NAMESPACE, "partition_rows")
        self.stored = Metrics.counter(NAMESPACE, "partition_rows_stored")

    def process(self, element, centroids):
        key, pieces = element
        task = TaskKey(*key) if isinstance(key, tuple) else TaskKey(int(key))
        part = task.partition
        p = self.params
        pieces = with_vectors(list(pieces), p)
        keep = store.stored_pieces(task, pieces, p)
        self.stored.inc(store.write_partition_task(task, keep, p))
        rows = PartitionRows(pieces + store.old_rows_for_task(task, pieces, p), p, part)
        n_hn, n_ho, n_vn, _ = rows.counts
        if not n_hn and not (n_ho and n_vn):
            return
        self.sizes.update(n_hn + n_ho)
        reducer = spanning.PairReducer(len(rows.gids), keep_all=p.edges is EdgeMode.ALL)
        homes, n = n_hn + n_ho, len(rows.gids)
        searches = []  # (query rows q0:q1, candidate rows c0:c1, whether the queries also meet each other)
        if task.diagonal:
            if n_hn:  # new homes x (new and old homes, all visitors); old homes are homed here: never pruned
                searches.append((0, n_hn, n_hn, n, True))
            if n_ho and n_vn:  # old homes x new visitors
                searches.append((n_hn, homes, homes, homes + n_vn, False))
        else:  # a block of a split partition: homes x "visitors" only (models.dedup.balance)
            if n_hn:
                searches.append((0, n_hn, homes, n, False))
            if n_ho and n_vn:
                searches.append((n_hn, homes, homes, homes + n_vn, False))
        yield from self._nn(task, rows)
        for q0, q1, c0, c1, self_pairs in searches:
            for r, c, cos in search.tile_pairs(rows.vecs[q0:q1], rows.vecs[c0:c1], p.threshold, self_pairs=self_pairs):
                x = r + q0
                y = np.where(c < q1 - q0, c + q0, c - (q1 - q0) + c0)
                reducer.add(x, y, cos, owned_pairs(rows, x, y, part))
        found = reducer.result()
        self.edges.inc(found.n_pairs)
        yield pvalue.TaggedOutput("pairs", found.n_pairs)
        if not found.n_pairs:
            return
        ga, gb = rows.gids[found.a], rows.gids[found.b]
        for batch in edge_batches(ga, gb, found.cos):
            yield pvalue.TaggedOutput("edges", batch)
        nodes, roots = components.local_components(np.zeros(0, np.int64), ga, gb)
        for node, root in zip(nodes.tolist(), roots.tolist()):
            yield pvalue.TaggedOutput("roots", (node, root))
        paired = np.flatnonzero(found.max_cos > -np.inf)
        for node, c in zip(rows.gids[paired].tolist(), found.max_cos[paired].tolist()):
            yield pvalue.TaggedOutput("max_cos", (node, c))

    def _nn(self, task: TaskKey, rows: "PartitionRows"):
        """``(gid, best cosine)`` (tag ``nn_best``) of the task's sampled new rows against every row of the task.

        The queries are the sampled new homes and new visitors (or, off the
        diagonal of a split partition, the other chunk's homes presented as
        visitors); the maximum per row over its tasks is its nearest
        neighbour among its home partition and every partition it visits,
        exact above the threshold: of a pair homed apart one row visits the
        other's home (the two-sided spill bound, :mod:`models.dedup.partition`),
        and that row's query there meets the other.
        """
        n_hn, n_ho, n_vn, _ = rows.counts
        homes = n_hn + n_ho
        for q0, q1 in ((0, n_hn), (homes, homes + n_vn)):
            found = self._nearest(rows.gids[q0:q1], rows.vecs[q0:q1], rows.gids, rows.vecs) if q1 > q0 else None
            if found is not None:
                for gid, best in zip(*(x.tolist() for x in found)):
                    yield pvalue.TaggedOutput("nn_best", (gid, best))

    def _nearest(self, gids: np.ndarray, vecs: np.ndarray, cand_gids: np.ndarray, cand_vecs: np.ndarray):
        """(sampled gids, their nearest-neighbour cosines among the candidates), or None when none is sampled."""
        pick = nn_similarity.sampled(gids, self.params.nn_rate, self.params.seed)
        if not pick.any():
            return None
        return gids[pick], nn_similarity.nearest_similarities(gids[pick], vecs[pick], cand_gids, cand_vecs)


class NNHistogram(beam.CombineFn):
    """Cosines -> their fixed-bin histogram (:func:`models.dedup.nn_similarity.histogram`); the accumulator
    is one (BINS,) int64 array, whatever the number of inputs."""

    def create_accumulator(self):
        return np.zeros(nn_similarity.BINS, np.int64)

    def add_input(self, acc, value):
        acc += nn_similarity.histogram(np.asarray([value]))
        return acc

    def add_inputs(self, acc, values):
        acc += nn_similarity.histogram(np.fromiter(values, np.float64))
        return acc

    def merge_accumulators(self, accs):
        return np.sum(list(accs), axis=0, dtype=np.int64)

    def extract_output(self, acc):
        return acc


def write_nn_histogram(counts: np.ndarray, params: DedupParams) -> int:
    """``nn_similarity.json`` from the summed histogram; returns the number of sampled rows."""
    record = nn_similarity.record(counts, params.threshold)
    layout.write_json(params.out.nn_similarity, record)
    return record["n_sampled"]


class EdgeBatch(NamedTuple):
    """Near edges as arrays: ``a`` < ``b`` (m,) int64 gids, ``cos`` (m,) float32; ``key_a`` (m,) object (the
    plain keys of ``a``, once attached by :func:`attach_keys_a`, else None)."""

    a: np.ndarray
    b: np.ndarray
    cos: np.ndarray
    key_a: np.ndarray | None = None

    def take(self, sel: np.ndarray) -> "EdgeBatch":
        return EdgeBatch(*(None if x is None else x[sel] for x in self))

    @staticmethod
    def concat(batches) -> "EdgeBatch":
        batches = list(batches)
        return EdgeBatch(*(None if parts[0] is None else np.concatenate(parts) for parts in zip(*batches)))


def _by_part(gids: np.ndarray, batch: EdgeBatch):
    """``(part, batch.take(rows of that part))`` per part among ``gids`` (one endpoint of each edge)."""
    parts = split_gid(gids)[0]
    for part in np.unique(parts).tolist():
        yield part, batch.take(np.flatnonzero(parts == part))


def edge_batches(ga: np.ndarray, gb: np.ndarray, cos: np.ndarray):
    """A task's owned edges -> ``(part of a, EdgeBatch)`` per part, ``a = min(ga, gb)`` (so ``a < b``)."""
    a, b = np.minimum(ga, gb), np.maximum(ga, gb)
    yield from _by_part(a, EdgeBatch(a, b, np.asarray(cos, np.float32)))


def _keys_of(params: DedupParams, part: int, gids: np.ndarray) -> np.ndarray:
    """(n,) gids of one part -> (n,) object array of their plain keys (one metadata read per part and process)."""
    return np.asarray(part_ids(params, part).keys, object)[split_gid(gids)[1]]


def attach_keys_a(element, params: DedupParams):
    """(part, [EdgeBatch]) of edges whose ``a`` is in that part -> ``(part of b, EdgeBatch with key_a)`` per
    part: the keys come from this part's metadata only."""
    part, batches = element
    batch = EdgeBatch.concat(batches)
    yield from _by_part(batch.b, batch._replace(key_a=_keys_of(params, part, batch.a)))


def write_edges(element, params: DedupParams) -> int:
    """(part, [EdgeBatch]) of edges whose ``b`` is in that part -> ``edges/edges_{part}.parquet`` (sorted by
    gids; ``key_b`` from this part's metadata); returns the count. Each pair is owned by one search task
    (:func:`owned_pairs`), so no pair repeats across files."""
    part, batches = element
    batch = EdgeBatch.concat(batches)
    batch = batch.take(np.lexsort((batch.b, batch.a)))
    columns = {"key_a": batch.key_a.tolist(), "key_b": _keys_of(params, part, batch.b).tolist(),
               "cosine": batch.cos.tolist(), "kind": ["near"] * len(batch.a)}
    layout.write_parquet(params.out.edges(params.parts[part]), pa.table(columns, schema=schemas.DEDUP_EDGES))
    return len(batch.a)


def exact_groups(element, params: DedupParams):
    """(shuffle key, [HashRows]) -> (gid, root) for the hash groups of 2+ among them, plus one edges file and
    the key's increment-index buckets (:func:`transforms.dedup.store.write_hash_index`; their row count is
    tagged ``index_rows``).

    Every row of a hash is in the same shuffle key (:func:`transforms.dedup.store.hash_batches`). The edges of
    a hash group are a star from its first member (smallest gid; cosine 1.0 by definition: identical bytes give
    identical embeddings), so every member also gets ``(gid, 1.0)`` (tag ``max_cos``). Incremental runs: only
    hash groups with a new row count, and only the edges to new rows are written (the old ones are in a
    previous run's files). The key's edges go to ``edges/exact_hash-{key}.parquet`` (none: no file).
    """
    shuffle_key, batches = element
    rows = store.HashRows.concat(batches)
    if params.write_index:
        yield pvalue.TaggedOutput("index_rows", store.write_hash_index(params, shuffle_key, rows))
    if len(rows) < 2:
        return
    hashes, gids = rows.hashes, rows.gids
    order = np.lexsort((gids, hashes))
    hashes, gids = hashes[order], gids[order]
    starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]])
    sizes = np.diff(np.r_[starts, len(hashes)])
    edges = []
    for s, n in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = gids[s:s + n].tolist()
        if not is_new_gid(members[-1], params.n_old):
            continue
        keys = [k.decode() for k in rows.keys[order[s:s + n]].tolist()]
        edges += [{"key_a": keys[0], "key_b": key, "cosine": 1.0, "kind": "exact"}
                  for gid, key in zip(members[1:], keys[1:]) if is_new_gid(gid, params.n_old)]
        for gid in members:
            yield gid, members[0]
            yield pvalue.TaggedOutput("max_cos", (gid, 1.0))
    if edges:
        layout.write_parquet(params.out.exact_edges(f"hash-{shuffle_key:05d}"), schemas.table(edges, schemas.DEDUP_EDGES))


# The pieces go to the search through SHUFFLES GroupByKeys (partition mod SHUFFLES): Beam's in-process
# runner holds a GroupByKey's whole input decoded, then encodes all of it again before the consuming stage
# runs, and frees it once consumed, so smaller shuffles searched one after another lower its peak (measured
# at 1M x 256 with --vectors shuffle: 12.0 GB through one GroupByKey, 6.9 GB through 8). Distributed
# runners shuffle each one as they would the whole.
SHUFFLES = 8
_TAGS = ("roots", "max_cos", "edges", "nn_best", "pairs")


class AssignAndSearch(beam.PTransform):
    """``{"blocks", "hashes", "centroids"}`` (:class:`transforms.dedup.read.ReadParts`' blocks and hashes) -> ``{"roots", "max_cos", "edges_written", "nn_sampled", "hash_index_rows"}``.

    ``roots``: (gid, local root) from partitions and hash groups; ``max_cos``:
    (gid, cosine) per edge endpoint (not yet maximised over partitions);
    ``edges_written``: one count per written near-edges file; ``near_pairs``:
    the number of distinct near pairs found (one element); ``nn_sampled``:
    the number of rows in ``nn_similarity.json`` (:mod:`models.dedup.nn_similarity`); ``hash_index_rows``: rows
    written to the hash buckets of the increment index, per exact-hash key. ``old_hashes`` (from the run
    strategy) gives the old rows whose exact hash equals a new row's; an increment's search tasks read the
    old rows of their partition themselves (:func:`transforms.dedup.store.old_rows_for_task`).
    """

    def __init__(self, params: DedupParams, old_hashes):
        super().__init__()
        self.params = params
        self.old_hashes = old_hashes

    def expand(self, inputs):
        p = self.params
        blocks = inputs["blocks"]
        centroids = pvalue.AsSingleton(inputs["centroids"])
        pieces = blocks | "AssignPartitions" >> beam.ParDo(AssignPiecesFn(p), centroids)
        balanced = pieces | "BalancePartitions" >> BalancePartitions(p.max_partition_rows)
        shares = balanced["tasks"] | "SplitShuffle" >> beam.Partition(lambda e, n: e[0][0] % n, SHUFFLES)
        outputs = [share | f"GroupByPartition{s}" >> beam.GroupByKey()
                   | f"SearchPartitions{s}" >> beam.ParDo(SearchPartitionFn(p), centroids).with_outputs(*_TAGS)
                   for s, share in enumerate(shares)]
        searched = SimpleNamespace(**{tag: tuple(o[tag] for o in outputs) | f"All_{tag}" >> beam.Flatten()
                                      for tag in _TAGS})
        near_pairs = searched.pairs | "CountNearPairs" >> beam.CombineGlobally(sum)
        nn_sampled = (searched.nn_best | "BestOverTasks" >> beam.CombinePerKey(max) | "NNCosines" >> beam.Values()
                      | "NNHistogram" >> beam.CombineGlobally(NNHistogram())
                      | "WriteNNHistogram" >> beam.Map(write_nn_histogram, p))
        # Keys are attached in two hops so a worker reads one part's metadata per hop: by the part of a, then of b.
        edges_written = (
            searched.edges
            | "EdgesByPartA" >> beam.GroupByKey()
            | "AttachKeysA" >> beam.FlatMap(attach_keys_a, p)
            | "EdgesByPartB" >> beam.GroupByKey()
            | "WriteEdges" >> beam.Map(write_edges, p)
        )
        new_hashes = inputs["hashes"]
        exact = (
            (new_hashes, self.old_hashes(new_hashes))
            | "NewAndOldHashes" >> beam.Flatten()
            | "GroupByHash" >> store.GroupHashes(p)
            | "ExactGroups" >> beam.FlatMap(exact_groups, p).with_outputs("max_cos", "index_rows", main="roots")
        )
        roots = (searched.roots, exact.roots) | "SearchAndHashRoots" >> beam.Flatten()
        max_cos = (searched.max_cos, exact.max_cos) | "SearchAndHashCosines" >> beam.Flatten()
        return {"roots": roots, "max_cos": max_cos, "edges_written": edges_written, "nn_sampled": nn_sampled,
                "near_pairs": near_pairs, "partitions_split": balanced["partitions_split"],
                "hash_index_rows": exact.index_rows}
