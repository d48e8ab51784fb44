"""Read embedding parts into blocks: valid rows, rejects and (increments) the old rows' previous groups."""
from __future__ import annotations

import os

import apache_beam as beam
import fsspec
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.dedup.plan import DedupParams
from models.storage import layout
from models.storage.folders.embed import PartIds, exact_hashes
from transforms.dedup import store
from transforms.dedup.rows import NAMESPACE, Block, Reject, gid_of, split_gid

_KEYS: dict = {}  # per-process caches of parts' keys / sample ids and of remote parts' .npy headers
_HEADERS: dict = {}  # (shape, dtype, offset) per remote part file, read once by range
_CACHE_ENTRIES = 64  # remote headers held
_KEY_ENTRIES = 256  # parts' keys / sample ids (~1 MB a 10k-row part): the edge writer meets rows of many parts
REMOTE_GAP_BYTES = 1 << 20
"""Remote rows closer than this (bytes between them) are fetched in one range: fewer requests for at most this
much unread data a range. Local rows are read run by run (a run: consecutive rows), with no gap."""


def _identity(path: str) -> tuple:
    """(path, size, modification stamp): a rewritten file (atomic rename) is never served from a cache."""
    fs, p = fsspec.core.url_to_fs(path)
    info = fs.info(p)
    return path, info.get("size"), info.get("mtime") or info.get("updated") or info.get("ETag")


def _cached(cache: dict, key: tuple, load, limit: int = _CACHE_ENTRIES):
    """Least-recently-used cache of at most ``limit`` entries (a hit moves the entry to the end)."""
    if key in cache:
        cache[key] = value = cache.pop(key)
        return value
    while len(cache) >= limit:
        cache.pop(next(iter(cache)))
    cache[key] = value = load()
    return value


_LOCATIONS: dict = {}  # path -> (local path or None, filesystem, path inside it)
_LOCAL_PARTS: dict = {}  # (path, size, mtime) -> (header, open file descriptor) of local parts
_FD_ENTRIES = 256  # local parts held open (the soft descriptor limit is usually 1024)


def _where(path: str) -> tuple:
    """(local path or None, filesystem, path inside it), resolved once per path and process."""
    hit = _LOCATIONS.get(path)
    if hit is None:
        fs, p = fsspec.core.url_to_fs(path)
        hit = (p if layout.is_local(fs) else None, fs, p)
        if len(_LOCATIONS) < 1 << 16:
            _LOCATIONS[path] = hit
    return hit


def _local_part(path: str, local: str) -> tuple:
    """(header, file descriptor) of a local ``.npy``, cached by (path, size, mtime): one ``stat`` per read, so
    a rewritten file is re-read; the least recently used of :data:`_FD_ENTRIES` open files is closed."""
    st = os.stat(local)
    key = (path, st.st_size, st.st_mtime_ns)
    hit = _LOCAL_PARTS.pop(key, None)
    if hit is None:
        while len(_LOCAL_PARTS) >= _FD_ENTRIES:
            os.close(_LOCAL_PARTS.pop(next(iter(_LOCAL_PARTS)))[1])
        header = layout.npy_header(path, st.st_size)
        hit = (header, os.open(local, os.O_RDONLY))
    _LOCAL_PARTS[key] = hit
    return hit


def _header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file, cached per process.

    Local files are keyed by (path, size, mtime) (:func:`_local_part`: a rewritten file is re-read). Remote
    ones by path: an object-store metadata request per read would cost as much as the read (a search task
    reads a few rows of most parts), and the parts are inputs no step rewrites while the run reads them.
    """
    local, _, _ = _where(path)
    if local is not None:
        return _local_part(path, local)[0]
    return _cached(_HEADERS, (path,), lambda: layout.npy_header(path, _identity(path)[1]))


def npy_shape(path: str) -> tuple[int, ...]:
    """The shape of a ``.npy`` file from its header (:func:`_header`)."""
    return _header(path)[0]


def read_npy_rows(path: str, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (sorted, distinct int64) of a 2-D ``.npy`` file, as stored: (len(rows), D).

    Reads only those rows, never the whole file: the header once per file and
    process (by range, :func:`_header`), then one read per run of rows -- ``os.pread`` of each
    run of consecutive rows when local (no memory map: a search task meets a
    few rows of most parts, and the mapped pages of every part it touched were
    resident memory, 5 GB at 10M x 256, while releasing them after each read
    cost more than the reads; the file stays open, so a read costs one
    ``stat`` plus its ``pread``s), and one ranged request per run of rows less
    than :data:`REMOTE_GAP_BYTES` apart on an object store (``cat_ranges``,
    issued concurrently by async filesystems such as s3fs and gcsfs).
    Memory: the rows plus, remote, the gaps inside each range.

    Raises:
      ValueError: the file is not 2-D, a row is out of range, or it is shorter than its header says.
    """
    rows = np.asarray(rows, np.int64)
    local, fs, p = _where(path)
    if local is not None:
        (shape, dtype, offset), fd = _local_part(path, local)
    else:
        shape, dtype, offset = _header(path)
    if len(shape) != 2 or (len(rows) and not (0 <= rows[0] and rows[-1] < shape[0])):
        raise ValueError(f"{path} has shape {shape}; cannot read rows {rows[:1].tolist()}..{rows[-1:].tolist()}")
    if not len(rows):
        return np.zeros((0, shape[1]), dtype)
    row = shape[1] * dtype.itemsize
    cut = np.flatnonzero(np.diff(rows) > (1 if local is not None else max(1, REMOTE_GAP_BYTES // row))) + 1
    lo = rows[np.r_[0, cut]]
    hi = rows[np.r_[cut - 1, len(rows) - 1]] + 1
    starts, ends = (offset + lo * row).tolist(), (offset + hi * row).tolist()
    if local is not None:
        chunks = [os.pread(fd, e - s, s) for s, e in zip(starts, ends)]
    else:
        chunks = fs.cat_ranges([p] * len(starts), starts, ends, on_error="raise")
    data = b"".join(chunks)
    if len(data) != int((hi - lo).sum()) * row:
        raise ValueError(f"{path} is shorter than its header says ({shape} {dtype}): truncated part")
    data = np.frombuffer(data, dtype).reshape(-1, shape[1])
    if len(data) == len(rows):
        return data
    run = np.repeat(np.arange(len(lo)), np.diff(np.r_[0, cut, len(rows)]))
    first = np.r_[0, np.cumsum(hi - lo)[:-1]]
    return data[first[run] + rows - lo[run]]


def block_rows(params: DedupParams, block: Block, select: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``block`` (or ``block.gids[select]``) as stored in the block's own part, (n, D).

    Reads only the block's part, one read of the block's row span (a block is
    at most ``block_rows`` consecutive rows of one part). The sample and assign
    steps read through here, so no step before the search touches another
    part. Memory: the span.
    """
    gids = block.gids if select is None else block.gids[select]
    parts, rows = split_gid(gids)
    if len(parts) and (parts != block.part).any():
        raise ValueError(f"block of part {block.part} holds rows of parts {np.unique(parts).tolist()}")
    path = params.folder(block.part).img_emb(params.parts[block.part])
    lo = int(rows.min()) if len(rows) else 0
    return read_npy_rows(path, np.arange(lo, int(rows.max()) + 1 if len(rows) else 0))[rows - lo]


def stored_rows(params: DedupParams, gids: np.ndarray) -> np.ndarray:
    """(n,) gids -> (n, D) rows as stored in their parts (the parts' common dtype), read by
    :func:`read_npy_rows` part by part. Memory: the returned rows (plus remote range gaps)."""
    gids = np.asarray(gids, np.int64)
    parts, rows = split_gid(gids)
    found = []
    for part in np.unique(parts).tolist():
        sel = np.flatnonzero(parts == part)
        distinct, inverse = np.unique(rows[sel], return_inverse=True)
        path = params.folder(part).img_emb(params.parts[part])
        found.append((sel, read_npy_rows(path, distinct)[inverse]))
    dtype = np.result_type(*[r.dtype for _, r in found]) if found else np.float32
    out = np.empty((len(gids), params.dim), dtype)
    for sel, r in found:
        out[sel] = r
    return out


def part_ids(params: DedupParams, part_index: int) -> PartIds:
    """The part's keys and sample ids by row, cached per process (one metadata read per part and process)."""
    folder = params.folder(part_index)
    part = params.parts[part_index]
    path = folder.metadata(part)
    return _cached(_KEYS, _identity(path), lambda: folder.part_ids(part, layout.read_parquet(path)), _KEY_ENTRIES)


def column(table, name: str, n: int, fill) -> list:
    """``table[name]`` as a list, or ``n`` copies of ``fill`` where the column is absent."""
    return table.column(name).to_pylist() if name in table.column_names else [fill] * n


def _product(meta, a: str, b: str) -> np.ndarray:
    n = meta.num_rows
    x = np.asarray([v or 0 for v in column(meta, a, n, 0)], np.int64)
    y = np.asarray([v or 0 for v in column(meta, b, n, 0)], np.int64)
    return x * y


def row_areas(meta) -> np.ndarray:
    """(n,) int64 pixel area per row for the representative rule (0 where unknown).

    ``original_width * original_height`` (img2dataset's size before resizing)
    where both are present, else the stored ``width * height``: every image
    resized to the same size ties on the latter.
    """
    original = _product(meta, "original_width", "original_height")
    return np.where(original > 0, original, _product(meta, "width", "height"))


class ReadPartFn(beam.DoFn):
    """Part index -> Blocks of valid rows (main), ``(shuffle key, HashRows)`` of their rows with an exact hash
    (tag ``hashes``, :func:`transforms.dedup.store.hash_batches`) and ``(part, Reject)`` rows (tag ``rejects``).

    Rejects: ``non-finite-embedding``, ``zero-embedding``, ``duplicate-sample-id``. Memory: one block of
    the part at a time (one read of its rows, :func:`read_npy_rows`). Increments
    read only their new parts: old rows come from the chain's increment index
    (:mod:`transforms.dedup.store`).
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.read = Metrics.counter(NAMESPACE, "rows_read")
        self.rejected = Metrics.counter(NAMESPACE, "rows_rejected")

    def process(self, part_index: int):
        p = self.params
        folder = p.folder(part_index)
        part = p.parts[part_index]
        emb_path = folder.img_emb(part)
        meta = layout.read_parquet(folder.metadata(part))
        n = meta.num_rows
        stored = npy_shape(emb_path)[0]
        if stored != n:
            raise ValueError(f"{emb_path} has {stored} rows but {folder.metadata(part)} has {n}")
        ids = p.folder(part_index).part_ids(part, meta)
        keys = np.asarray(ids.keys, dtype=object)
        sample_ids = np.asarray(ids.sample_ids, dtype=object)
        hashes = store.utf8_array(exact_hashes(meta).values)
        repeated = _repeated_ids(sample_ids)
        for start in range(0, n, p.block_rows):
            stop = min(n, start + p.block_rows)
            x = np.asarray(read_npy_rows(emb_path, np.arange(start, stop)), dtype=np.float32)
            finite = np.isfinite(x).all(axis=1)
            norms = np.linalg.norm(np.where(finite[:, None], x, 0), axis=1)
            first = np.asarray([start + r not in repeated for r in range(stop - start)], bool)
            ok = finite & (norms > 1e-6) & first
            for r in np.flatnonzero(~ok):
                if not first[r]:
                    reason = f"duplicate-sample-id: same sample id as row {repeated[start + r]}"
                else:
                    reason = "non-finite-embedding" if not finite[r] else "zero-embedding"
                self.rejected.inc()
                yield pvalue.TaggedOutput("rejects", (part_index, Reject(int(start + r), str(keys[start + r]), reason)))
            rows = np.flatnonzero(ok) + start
            self.read.inc(stop - start)
            if len(rows):
                gids = gid_of(part_index, rows)
                yield Block(part_index, gids)
                hashed = np.flatnonzero(hashes[rows] != b"")
                for key, batch in store.hash_batches(hashes[rows[hashed]], gids[hashed],
                                                     [str(k) for k in keys[rows[hashed]].tolist()], p.index_buckets):
                    yield pvalue.TaggedOutput("hashes", (key, batch))


def _repeated_ids(sample_ids: np.ndarray) -> dict:
    """{row: first row with the same sample id} for every repeat inside one part (a part is one shard)."""
    first: dict = {}
    repeated = {}
    for row, sid in enumerate(sample_ids.tolist()):
        if sid in first:
            repeated[row] = first[sid]
        else:
            first[sid] = row
    return repeated


class ReadParts(beam.PTransform):
    """Part indices -> ``{"blocks", "hashes", "rejects"}`` of the new parts (every part in a fresh run).

    ``blocks``: Blocks of valid rows; ``hashes``: (shuffle key, HashRows) of those with an exact hash; ``rejects``: ``(part, Reject)`` for
    unusable embeddings and sample ids repeated inside a part (decided per
    part: a sample id names its shard, so it cannot repeat across parts).
    Plain keys may repeat (img2dataset restarts them in every download).
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, part_indices):
        p = self.params
        read = (part_indices | "NewPartsOnly" >> beam.Filter(p.is_new)
                | "ReadPartFiles" >> beam.ParDo(ReadPartFn(p)).with_outputs("hashes", "rejects", main="blocks"))
        return {"blocks": read.blocks, "hashes": read.hashes, "rejects": read.rejects}
