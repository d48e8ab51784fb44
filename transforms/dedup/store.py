"""The increment index of a dedup run: what the next increment reads instead of every old part.

Every run (fresh or increment) writes, beside its outputs:

* ``partitions/{q}/{a}-{b}.parquet`` -- the rows it added to partition q
  (search task (a, b)), as the search saw them: home or visitor, home
  partition, visited partitions, vector as stored in its part. An increment
  assigns only its new rows and shuffles only their pieces; each search task
  then reads the files of its own partition (one listing and the files per
  chain run, :func:`old_rows_for_task`): old vectors are never re-read from
  their parts, re-assigned or shuffled.
* ``index/hashes/bucket-{b}.parquet`` -- (hash, gid, key) of its new rows,
  written by the task that groups those hashes (:func:`write_hash_index`);
  an increment reads only the buckets of its new rows' hashes.
* ``index/rows/bucket-{b}.parquet`` (gid -> group id) and
  ``index/groups/bucket-{b}.parquet`` (group id -> members, with key, sample
  id, area and group fields) for every row it labelled (a fresh run: every
  grouped row; an increment: every member of the components it relabelled,
  so the whole current membership of each such group). An increment looks
  up the old rows its new edges reach, then the members of their groups:
  the newest run of the chain holding a row (a group) has its current state,
  because a run that changes a group rewrites all of its members.

``b`` is a hash of the key modulo the run's bucket count
(:func:`models.dedup.plan.index_buckets` of its new rows, recorded in its manifest entry), so a
lookup costs one read per chain run and touched bucket, never a scan of the
chain. Every bucket file is written, empty ones too: a missing one is an
error, not "no rows".
"""
from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.dedup.balance import TaskKey, chunk_of
from models.dedup.plan import ChainRun, DedupParams
from models.storage import layout, schemas
from models.storage.folders.dedup import DedupFolder
from transforms.dedup.rows import Piece, PreviousGroup, Role, Spill, gid_of, split_gid

def gid_bucket(gid: int, buckets: int) -> int:
    """A gid's bucket in [0, buckets): the Fibonacci hash that also picks a row's chunk of a split partition
    (:func:`models.dedup.balance.chunk_of`), the same on every worker."""
    return int(chunk_of(np.asarray([gid], np.int64), buckets)[0])


def text_bucket(text: str | bytes, buckets: int) -> int:
    """A string key's bucket in [0, buckets): crc32 of its UTF-8 bytes (``text`` may be those bytes)."""
    return zlib.crc32(text if isinstance(text, bytes) else text.encode()) % buckets


# --- partition files --------------------------------------------------------------------------------------

def partition_schema(width: int, dtype: np.dtype) -> pa.Schema:
    """PARTITION_ROW_FIELDS plus ``vec`` (``width`` bytes a row) and the vectors' dtype as metadata."""
    return pa.schema(schemas.PARTITION_ROW_FIELDS + [("vec", pa.binary(width))],
                     metadata={b"dtype": np.dtype(dtype).str.encode()})


def stored_pieces(task: TaskKey, pieces: list[Piece], params: DedupParams) -> list[Piece]:
    """The pieces of a search task that this run stores: its new rows, each once over the partition's tasks.

    A whole partition (one task) stores its new homes and visitors; a split one
    (:mod:`models.dedup.balance`) stores home chunk a in task (a, a) and visitor
    chunk j in task (0, m + j); other tasks hold copies of those rows. None
    with ``--no-increment-index``.
    """
    new = [b for b in pieces if params.is_new(b.part)] if params.write_index else []
    if task.home_chunks == 1:
        return new
    if task.diagonal:
        return [b for b in new if b.role is Role.HOME]
    if not task.home_block and task.a == 0:
        return [b for b in new if b.role is Role.VISIT]
    return []


def encode_pieces(pieces: list[Piece], partition: int) -> pa.Table:
    """Pieces of one partition, each with its rows as stored (``vecs``, (n_i, D)) -> a PARTITION_ROWS table."""
    raw = [np.ascontiguousarray(b.vecs) for b in pieces]
    dtype = np.result_type(*[r.dtype for r in raw]) if raw else np.dtype(np.float16)
    width = (raw[0].shape[1] if raw else 0) * dtype.itemsize
    gids, homes, is_home, counts, visited, vecs = [], [], [], [], [], []
    for b, r in zip(pieces, raw):
        n = len(b.gids)
        gids.append(b.gids)
        is_home.append(np.full(n, b.role is Role.HOME))
        homes.append(np.full(n, partition, np.int32) if b.homes is None else b.homes.astype(np.int32))
        counts.append(np.diff(b.spill.indptr) if b.spill is not None else np.zeros(n, np.int64))
        if b.spill is not None:
            visited.append(b.spill.parts[b.spill.indptr[0]:b.spill.indptr[-1]].astype(np.int32))
        vecs.append(r.astype(dtype, copy=False))
    flat = np.ascontiguousarray(np.concatenate(vecs)) if vecs else np.zeros((0, 0), dtype)
    vec = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(flat), [None, pa.py_buffer(flat)])
    offsets = np.zeros(sum(len(c) for c in counts) + 1, np.int32)
    np.cumsum(np.concatenate(counts) if counts else np.zeros(0, np.int64), out=offsets[1:])
    spill = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                     pa.array(np.concatenate(visited) if visited else np.zeros(0, np.int32), pa.int32()))
    schema = partition_schema(width, dtype)
    return pa.table({"gid": pa.array(np.concatenate(gids) if gids else np.zeros(0, np.int64), pa.int64()),
                     "is_home": pa.array(np.concatenate(is_home) if is_home else np.zeros(0, bool)),
                     "home": pa.array(np.concatenate(homes) if homes else np.zeros(0, np.int32), pa.int32()),
                     "spill": spill, "vec": vec}, schema=schema)


def decode_pieces(table: pa.Table, dim: int, visitors: bool = True) -> list[Piece]:
    """A PARTITION_ROWS table -> Pieces (one per role and part, vectors as stored); ``visitors=False`` keeps homes."""
    dtype = np.dtype((table.schema.metadata or {}).get(b"dtype", b"<f2").decode())
    if not table.num_rows:
        return []
    vec = table.column("vec").combine_chunks()
    width = vec.type.byte_width
    data = np.frombuffer(vec.buffers()[1], np.uint8, count=len(vec) * width, offset=vec.offset * width)
    x = data.view(dtype).reshape(len(vec), dim)
    gids = table.column("gid").to_numpy()
    is_home = table.column("is_home").to_numpy(zero_copy_only=False)
    home = table.column("home").to_numpy()
    spill = table.column("spill").combine_chunks()
    offsets = spill.offsets.to_numpy()
    values = spill.values.to_numpy() if len(spill.values) else np.zeros(0, np.int32)
    parts = split_gid(gids)[0]
    out = []
    for role in (Role.HOME, Role.VISIT) if visitors else (Role.HOME,):
        for part in np.unique(parts[is_home == (role is Role.HOME)]).tolist():
            idx = np.flatnonzero((parts == part) & (is_home == (role is Role.HOME)))
            if role is Role.HOME:
                out.append(Piece(role, int(part), gids[idx], spill=Spill.of_rows(offsets, values, idx), vecs=x[idx]))
            else:
                out.append(Piece(role, int(part), gids[idx], homes=home[idx].astype(np.int32), vecs=x[idx]))
    return out


def write_partition_task(task: TaskKey, pieces: list[Piece], params: DedupParams) -> int:
    """``partitions/{q}/{a}-{b}.parquet`` of this run (nothing when the task stores no rows); returns rows written."""
    if not pieces:
        return 0
    table = encode_pieces(pieces, task.partition)
    layout.write_parquet(params.out.partition_task(task.partition, task.a, task.b), table, uncompressed=("vec",))
    return table.num_rows


def read_stored_partition(partition: int, params: DedupParams, visitors: bool) -> list[Piece]:
    """The old rows the chain stored in ``partition``: its homes, and its visitors when ``visitors``.

    Cost: one listing and the partition's files per chain run; memory: those rows as stored.
    """
    out: list[Piece] = []
    for run in params.chain:
        folder = DedupFolder(run.run)
        for name in sorted(layout.list_names(folder.partition_dir(partition))):
            if name.endswith(".parquet"):
                table = layout.read_parquet(layout.join(folder.partition_dir(partition), name))
                out += decode_pieces(table, params.dim, visitors=visitors)
    return out


def old_rows_for_task(task: TaskKey, new_pieces: list[Piece], params: DedupParams) -> list[Piece]:
    """The old rows an increment's search task reads from the chain's partition files (none in a fresh run).

    Only pairs with a new row are searched, so the tasks of a partition are
    planned on its new rows (:mod:`models.dedup.balance`) and the old rows join
    where they meet each new row once: a whole partition (one task) gets its
    old homes, and its old visitors when a new row is homed there (new homes x
    old visitors); a split one gets old homes and visitors in every diagonal
    task (a, a) (new home chunk a x everything old) and old homes in the tasks
    (0, m + j) (old homes x new visitor chunk j); other tasks none. Old vectors
    never pass through a shuffle: each task reads its own partition's files.
    """
    if not params.incremental:
        return []
    if task.home_chunks == 1:
        return read_stored_partition(task.partition, params, any(b.role is Role.HOME for b in new_pieces))
    if task.diagonal:
        return read_stored_partition(task.partition, params, True)
    if not task.home_block and task.a == 0:
        return read_stored_partition(task.partition, params, False)
    return []


# --- index buckets ----------------------------------------------------------------------------------------

def _write_bucket(element, params: DedupParams, kind: str, schema: pa.Schema) -> int:
    """(bucket, {"rows": [dict or pa.Table], "bucket": [None]}) -> ``index/{kind}/bucket-{b}.parquet``, sorted by
    its first two columns; returns the rows written."""
    bucket, grouped = element
    items = list(grouped["rows"])
    tables = [t for t in items if isinstance(t, pa.Table)]
    dicts = [r for r in items if not isinstance(r, pa.Table)]
    table = pa.concat_tables(tables + [schemas.table(dicts, schema)]).cast(schema)
    table = table.sort_by([(name, "ascending") for name in schema.names[:2]])
    layout.write_parquet(params.out.index_bucket(kind, bucket), table)
    return table.num_rows


class WriteIndexBuckets(beam.PTransform):
    """``(bucket, row dict)`` -> every ``index/{kind}/bucket-{b}.parquet`` of this run; returns a Counter."""

    def __init__(self, params: DedupParams, kind: str, schema: pa.Schema):
        super().__init__()
        self.params, self.kind, self.schema = params, kind, schema

    def expand(self, keyed):
        p, kind = self.params, self.kind
        every = (keyed.pipeline | "EveryBucket" >> beam.Create(list(range(p.index_buckets)))
                 | "BucketKeys" >> beam.Map(lambda b: (b, None)))
        return ({"rows": keyed, "bucket": every}
                | "GroupByBucket" >> beam.CoGroupByKey()
                | "WriteBuckets" >> beam.Map(_write_bucket, p, kind, self.schema)
                | "IndexRows" >> beam.CombineGlobally(sum)
                | "IndexStat" >> beam.Map(lambda n: Counter({f"index_{kind}_rows": n})))


def utf8_array(values) -> np.ndarray:
    """Strings (or an ``S`` array) -> a fixed-width ``S`` array of their UTF-8 bytes: one buffer, no object a row."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "S":
        return values
    return np.asarray([v.encode() if isinstance(v, str) else bytes(v) for v in values], dtype=np.bytes_).reshape(-1)


@dataclass(frozen=True)
class HashRows:
    """Rows with an exact hash, batched as arrays: ``hashes`` (n,) ``ALGO:HEX`` and ``keys`` (n,) plain keys as
    fixed-width UTF-8 ``S`` arrays, ``gids`` (n,) int64 (a dataclass, which Beam's coders keep, where a
    NamedTuple may arrive as a plain tuple). Arrays, not lists of str: a sha256 row pickles to < 100 B
    (tested) where lists of str held ~250 B a row decoded; at 10M x 256 this took the run's resident memory
    after the read from 4.8 to 2.6 GB. Lists of str are converted on construction."""

    hashes: np.ndarray
    gids: np.ndarray
    keys: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "hashes", utf8_array(self.hashes))
        object.__setattr__(self, "gids", np.asarray(self.gids, np.int64).reshape(-1))
        object.__setattr__(self, "keys", utf8_array(self.keys))
        if not len(self.hashes) == len(self.gids) == len(self.keys):
            raise ValueError(f"HashRows columns differ in length: {len(self.hashes)}, {len(self.gids)}, {len(self.keys)}")

    def __len__(self) -> int:
        return len(self.gids)

    def take(self, rows) -> "HashRows":
        rows = np.asarray(rows, np.int64)
        return HashRows(self.hashes[rows], self.gids[rows], self.keys[rows])

    def hash_strings(self) -> list[str]:
        return [h.decode() for h in self.hashes.tolist()]

    def key_strings(self) -> list[str]:
        return [k.decode() for k in self.keys.tolist()]

    def rows(self) -> list[tuple[str, int, str]]:
        """(hash, gid, key) per row, as Python values."""
        return list(zip(self.hash_strings(), self.gids.tolist(), self.key_strings()))

    @classmethod
    def concat(cls, batches) -> "HashRows":
        batches = list(batches)
        if not batches:
            return cls(np.zeros(0, "S1"), np.zeros(0, np.int64), np.zeros(0, "S1"))
        return cls(*(np.concatenate([getattr(b, c) for b in batches]) for c in ("hashes", "gids", "keys")))


HASH_SHUFFLE_INDEX_BUCKETS = 16
"""Increment-index hash buckets per exact-hash shuffle key: ~1M new rows a key. Key k holds index buckets
[16 k, 16 k + 16), so the task that groups a key's rows also writes those buckets (no second shuffle)."""


def hash_shuffles(params: DedupParams) -> int:
    """Keys of the exact-hash shuffle: one per ``HASH_SHUFFLE_INDEX_BUCKETS`` index buckets, so a block sends one
    batch per key it touches, whatever the number of rows (at 400M rows, 382 keys)."""
    return max(1, -(-params.index_buckets // HASH_SHUFFLE_INDEX_BUCKETS))


def _by_text_bucket(texts, buckets: int, per: int = 1) -> list[tuple[int, np.ndarray]]:
    """[(bucket // per, rows)] for the buckets (:func:`text_bucket`) the texts (str, or UTF-8 bytes) fall in,
    in bucket order."""
    if not len(texts):
        return []
    if buckets <= 1:
        return [(0, np.arange(len(texts)))]
    of = np.fromiter((text_bucket(t, buckets) // per for t in texts), np.int64, count=len(texts))
    order = np.argsort(of, kind="stable")
    starts = np.flatnonzero(np.r_[True, of[order][1:] != of[order][:-1]])
    ends = np.r_[starts[1:], len(of)]
    return [(int(of[order[s]]), order[s:e]) for s, e in zip(starts.tolist(), ends.tolist())]


def hash_batches(hashes, gids, keys, index_buckets: int) -> list[tuple[int, HashRows]]:
    """Rows with an exact hash (strings or ``S`` arrays, gids) -> ``(shuffle key, HashRows)``, one element per
    key they touch; a row's key is its index bucket (of ``index_buckets``) // ``HASH_SHUFFLE_INDEX_BUCKETS``."""
    rows = HashRows(hashes, gids, keys)
    return [(key, rows.take(idx))
            for key, idx in _by_text_bucket(rows.hashes.tolist(), index_buckets, HASH_SHUFFLE_INDEX_BUCKETS)]


def write_hash_index(params: DedupParams, shuffle_key: int, rows: HashRows) -> int:
    """Writes the index buckets of one exact-hash shuffle key (every one of its buckets, empty ones too) with
    its new rows (gids of this run's parts; old rows that joined from lookups are in their runs' index),
    each sorted by (hash, gid). Returns the rows written."""
    new = rows.take(np.flatnonzero(split_gid(rows.gids)[0] >= params.n_old))
    n = params.index_buckets
    by_bucket = dict(_by_text_bucket(new.hashes.tolist(), n))
    first = shuffle_key * HASH_SHUFFLE_INDEX_BUCKETS
    for b in range(first, min(first + HASH_SHUFFLE_INDEX_BUCKETS, n)):
        part = new.take(by_bucket.get(b, np.zeros(0, np.int64)))
        table = pa.table({"hash": pa.array(part.hash_strings(), pa.string()), "gid": pa.array(part.gids, pa.int64()),
                          "key": pa.array(part.key_strings(), pa.string())}, schema=schemas.HASH_INDEX)
        layout.write_parquet(params.out.index_bucket("hashes", b),
                             table.sort_by([("hash", "ascending"), ("gid", "ascending")]))
    return len(new)


class GroupHashes(beam.PTransform):
    """``(shuffle key, HashRows)`` -> ``(shuffle key, [HashRows])`` for every key of the run, empty ones too (a
    key's task writes its index buckets, which must exist even when no row falls in them)."""

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, keyed):
        every = (keyed.pipeline | "EveryHashKey" >> beam.Create(list(range(hash_shuffles(self.params))))
                 | "EmptyHashRows" >> beam.Map(lambda k: (k, HashRows.concat([]))))
        return (keyed, every) | "WithEveryKey" >> beam.Flatten() | "GroupByHashKey" >> beam.GroupByKey()


def group_index_rows(element):
    """(part, GroupRow) -> ("rows", gid, ROW_INDEX row) and ("groups", group id, GROUP_INDEX row)."""
    part, row = element
    gid = int(gid_of(part, np.asarray([row.row]))[0])
    yield "rows", gid, {"gid": gid, "group_id": row.group_id}
    yield "groups", row.group_id, {"group_id": row.group_id, "gid": gid, "key": row.key, "sample_id": row.sample_id,
                                   "area": row.area, "group_size": row.group_size,
                                   "is_representative": row.is_representative,
                                   "representative_key": row.representative_key, "max_cosine": row.max_cos}


class WriteIndex(beam.PTransform):
    """``{"hash_rows": rows written per exact-hash key, "rows": (part, GroupRow) labelled}`` -> the index buckets.

    The hash buckets are written by the exact-hash grouping (:func:`write_hash_index`, one task per shuffle
    key, which holds those rows anyway); the row and group buckets here. Returns one stats Counter per kind
    (rows written); each waits on its files.
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, inputs):
        p = self.params
        n = p.index_buckets
        if not p.write_index:
            return inputs["rows"].pipeline | "NoIndex" >> beam.Create([])
        hashes = (inputs["hash_rows"] | "HashIndexRows" >> beam.CombineGlobally(sum)
                  | "HashIndexStat" >> beam.Map(lambda n: Counter({"index_hashes_rows": n})))
        split = inputs["rows"] | "GroupIndexRows" >> beam.FlatMap(group_index_rows)
        rows = (split | "RowKind" >> beam.Filter(lambda e: e[0] == "rows")
                | "RowBuckets" >> beam.Map(lambda e: (gid_bucket(e[1], n), e[2]))
                | "WriteRowIndex" >> WriteIndexBuckets(p, "rows", schemas.ROW_INDEX))
        groups = (split | "GroupKind" >> beam.Filter(lambda e: e[0] == "groups")
                  | "GroupBuckets" >> beam.Map(lambda e: (text_bucket(e[1], n), e[2]))
                  | "WriteGroupIndex" >> WriteIndexBuckets(p, "groups", schemas.GROUP_INDEX))
        return (hashes, rows, groups) | "IndexStats" >> beam.Flatten()


def _read_bucket(run: ChainRun, kind: str, bucket: int, column: str, wanted: list) -> pa.Table:
    """The rows of a chain run's bucket whose ``column`` is in ``wanted``."""
    path = DedupFolder(run.run).index_bucket(kind, bucket)
    try:  # one GET; only a verified absence is this error (every bucket is written, empty ones too)
        table = layout.read_parquet(path)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing: the runs of a chain must stay where they were written") from None
    return table.filter(pc.is_in(table.column(column), value_set=pa.array(wanted, table.schema.field(column).type)))


def _by_run_bucket(value, chain: tuple[ChainRun, ...], bucket_of):
    """A lookup key -> ((run index, bucket), key) for every run of the chain."""
    for r, run in enumerate(chain):
        yield (r, bucket_of(value, run.buckets)), value


def lookup_rows(element, params: DedupParams):
    """((run index, bucket), [gid]) -> (gid, (run index, group id)) for the gids that run labelled."""
    (r, bucket), gids = element
    table = _read_bucket(params.chain[r], "rows", bucket, "gid", sorted(set(gids)))
    for gid, group_id in zip(table.column("gid").to_pylist(), table.column("group_id").to_pylist()):
        yield gid, (r, group_id)


def lookup_groups(element, params: DedupParams):
    """((run index, bucket), [group id]) -> (group id, (run index, [member dicts])) for the groups that run holds."""
    (r, bucket), group_ids = element
    table = _read_bucket(params.chain[r], "groups", bucket, "group_id", sorted(set(group_ids)))
    members: dict = {}
    for row in table.to_pylist():
        members.setdefault(row["group_id"], []).append(row)
    for group_id, rows in members.items():
        yield group_id, (r, rows)


def newest(values):
    """(run index, value) candidates -> the value of the newest run (the chain's current state)."""
    return max(values, key=lambda v: v[0])


class MemberMeta(NamedTuple):
    """What the representative rule needs of an old member, from the index (no part is read)."""

    key: str
    sample_id: str
    area: int


def group_members(element):
    """(group id, (run, [member dicts])) -> (gid, PreviousGroup) per member, and (gid, MemberMeta) (tag ``meta``)."""
    _, (_, rows) = element
    for row in rows:
        yield row["gid"], PreviousGroup(row["group_id"], int(row["group_size"]), bool(row["is_representative"]),
                                        row["representative_key"], row["max_cosine"])
        yield beam.pvalue.TaggedOutput("meta", (row["gid"], MemberMeta(row["key"], row["sample_id"],
                                                                       int(row["area"]))))


class LookupPreviousGroups(beam.PTransform):
    """Old gids an increment's edges reach -> ``{"state": (gid, PreviousGroup), "meta": (gid, MemberMeta)}``.

    For every member of every previous group one of them belongs to: the
    row index gives each old gid's current group (singletons have none), the
    group index that group's members. Cost: O(touched rows + their groups'
    members) plus one bucket read per chain run and touched bucket.
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, old_gids):
        p = self.params
        group_ids = (old_gids
                     | "DistinctOldRows" >> beam.Distinct()
                     | "RowLookups" >> beam.FlatMap(_by_run_bucket, p.chain, gid_bucket)
                     | "GroupRowLookups" >> beam.GroupByKey()
                     | "ReadRowIndex" >> beam.FlatMap(lookup_rows, p)
                     | "CurrentGroupOfRow" >> beam.CombinePerKey(newest)
                     | "GroupIds" >> beam.Map(lambda e: e[1][1])
                     | "DistinctGroups" >> beam.Distinct())
        found = (group_ids
                 | "GroupLookups" >> beam.FlatMap(_by_run_bucket, p.chain, text_bucket)
                 | "GroupGroupLookups" >> beam.GroupByKey()
                 | "ReadGroupIndex" >> beam.FlatMap(lookup_groups, p)
                 | "CurrentMembers" >> beam.CombinePerKey(newest)
                 | "Members" >> beam.FlatMap(group_members).with_outputs("meta", main="state"))
        return {"state": found.state, "meta": found.meta}


def hash_lookups(element, chain: tuple[ChainRun, ...]):
    """(shuffle key, HashRows) of new rows -> ((run index, bucket), [hash]) for every run of the chain."""
    distinct = sorted(set(element[1].hash_strings()))
    for r, run in enumerate(chain):
        for bucket, rows in _by_text_bucket(distinct, run.buckets):
            yield (r, bucket), [distinct[i] for i in rows.tolist()]


def lookup_hashes(element, params: DedupParams):
    """((run index, bucket), [[hash]]) -> (shuffle key, HashRows) of the old rows with one of those hashes."""
    (r, bucket), lists = element
    table = _read_bucket(params.chain[r], "hashes", bucket, "hash", sorted({h for hs in lists for h in hs}))
    if table.num_rows:
        yield from hash_batches(*(table.column(c).to_pylist() for c in ("hash", "gid", "key")), params.index_buckets)


class LookupOldHashes(beam.PTransform):
    """New rows' ``(shuffle key, HashRows)`` -> the old rows' with an equal hash, keyed the same way (one bucket
    read per run and bucket)."""

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, new_hashes):
        p = self.params
        return (new_hashes
                | "HashLookups" >> beam.FlatMap(hash_lookups, p.chain)
                | "GroupHashLookups" >> beam.GroupByKey()
                | "ReadHashIndex" >> beam.FlatMap(lookup_hashes, p))
