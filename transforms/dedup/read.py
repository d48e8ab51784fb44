"""Read embedding parts into blocks: valid rows, rejects and (increments) the old rows' previous groups."""
from __future__ import annotations

import mmap

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

_ARRAYS: dict = {}  # per-process caches of opened parts (memory-mapped when local) and of their keys / sample ids
_KEYS: dict = {}
_HEADERS: dict = {}  # (shape, dtype, offset) of remote parts read by range
_CACHE_ENTRIES = 64  # remote parts held whole, and remote headers
_KEY_ENTRIES = 256  # parts' keys / sample ids (~1 MB a 10k-row part): the edge writer meets rows of many parts
_MMAP_ENTRIES = 512  # memory-mapped local parts: no resident memory, but one file descriptor each (soft limit
#                      1024); a search task meets rows of most parts, and 64 entries reopened every part each time


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


def _part_array(params: DedupParams, part_index: int) -> np.ndarray:
    path = params.folder(part_index).img_emb(params.parts[part_index])
    local = layout.is_local(fsspec.core.url_to_fs(path)[0])
    return _cached(_ARRAYS, _identity(path), lambda: layout.read_npy(path), _MMAP_ENTRIES if local else _CACHE_ENTRIES)


def _npy_layout(path: str, size: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file of ``size`` bytes from range reads of its header."""
    want = min(size, layout.NPY_HEADER_GUESS)  # an object store refuses a range past the end
    while True:
        try:
            return layout.parse_npy_header(layout.read_bytes(path, 0, want))
        except layout.ShortNpyHeader as e:
            if e.need > size:
                raise ValueError(f"{path}: .npy header needs {e.need} bytes but the file has {size}") from None
            want = e.need


def _npy_row_range(path: str, lo: int, hi: int) -> np.ndarray:
    """Rows ``[lo, hi)`` of a 2-D ``.npy`` file, as stored, with one range read (remote: no whole-file GET)."""
    identity = _identity(path)
    shape, dtype, offset = _cached(_HEADERS, identity, lambda: _npy_layout(path, identity[1]))
    if len(shape) != 2 or not 0 <= lo <= hi <= shape[0]:
        raise ValueError(f"{path} has shape {shape}; cannot read rows [{lo}, {hi})")
    row = shape[1] * dtype.itemsize
    data = layout.read_bytes(path, offset + lo * row, offset + hi * row) if hi > lo else b""
    return np.frombuffer(data, dtype).reshape(hi - lo, shape[1])


def _released(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` copied out of a memory-mapped part, whose pages then leave this process's resident set.

    The pages stay in the page cache (a later read maps them back with a minor fault), but a search task
    that meets rows of most parts no longer holds every part it touched as resident memory: at 10M x 256
    the mapped parts were 5 GB of the process's RSS.
    """
    out = np.asarray(array[rows])
    mm = getattr(array, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)
    return out


def block_rows(params: DedupParams, block: Block, select: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``block`` (or ``block.gids[select]``) as stored in the block's own part, (n, D).

    Reads only the block's part: memory-mapped when local, else one range
    read of the block's row span (a block is at most ``block_rows`` consecutive
    rows of one part). The sample and assign steps read through here, so no
    step before the search touches another part. Memory: the returned rows
    (plus the span when remote).
    """
    gids = block.gids if select is None else block.gids[select]
    parts, rows = split_gid(gids)
    if len(parts) and (parts != block.part).any():
        raise ValueError(f"block of part {block.part} holds rows of parts {np.unique(parts).tolist()}")
    path = params.folder(block.part).img_emb(params.parts[block.part])
    if layout.is_local(fsspec.core.url_to_fs(path)[0]):
        return _released(_part_array(params, block.part), rows)
    if not len(rows):
        return _npy_row_range(path, 0, 0)
    lo = int(rows.min())
    return _npy_row_range(path, lo, int(rows.max()) + 1)[rows - lo]


def stored_rows(params: DedupParams, gids: np.ndarray) -> np.ndarray:
    """(n,) gids -> (n, D) rows as stored in their parts (memory-mapped when local; the parts' common dtype).

    Memory: the returned rows only; pages of a local ``.npy`` are shared and evictable.
    """
    gids = np.asarray(gids, np.int64)
    parts, rows = split_gid(gids)
    arrays = {part: _part_array(params, part) for part in np.unique(parts).tolist()}
    dtype = np.result_type(*[a.dtype for a in arrays.values()]) if arrays else np.float32
    out = np.empty((len(gids), params.dim), dtype)
    for part, array in arrays.items():
        sel = np.flatnonzero(parts == part)
        order = np.argsort(rows[sel], kind="stable")  # sorted reads of the memory map
        out[sel[order]] = _released(array, rows[sel][order])
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
    the part at a time (the ``.npy`` is memory-mapped when local). Increments
    read only their new parts: old rows come from the chain's increment index
    (:mod:`transforms.dedup.store`).
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.shuffles = store.hash_shuffles(params)
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
        ids = p.folder(part_index).part_ids(part, meta)
        keys = np.asarray(ids.keys, dtype=object)
        sample_ids = np.asarray(ids.sample_ids, dtype=object)
        hashes = np.asarray(exact_hashes(meta).values, dtype=object)
        repeated = _repeated_ids(sample_ids)
        for start in range(0, n, p.block_rows):
            stop = min(n, start + p.block_rows)
            x = np.asarray(emb[start:stop], dtype=np.float32)
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
                hashed = np.flatnonzero(hashes[rows] != "")
                for key, batch in store.hash_batches(hashes[rows[hashed]].tolist(), gids[hashed].tolist(),
                                                     [str(k) for k in keys[rows[hashed]].tolist()], self.shuffles):
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
