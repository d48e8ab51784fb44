"""Filesystem access, atomic writes and completion markers (local paths or fsspec URLs).

Every path may be a local path or an fsspec URL (``s3://``, ``gs://``,
``memory://``). This module is the one place that resolves a path to its
filesystem (:func:`filesystem`); every other module goes through it.

Remote cost per call, which matters on object stores:

* whole-file reads (:func:`read_bytes`, :func:`read_npy`, :func:`read_parquet`,
  :func:`read_json`) are one ``cat_file`` (one GET, no ``info``); a Parquet
  *folder* costs one failed GET, one ``isdir`` and one listing more;
* :func:`npy_shape` is a range read of the header (about 128 bytes), never the
  whole array;
* :func:`exists` is one ``info``, and only a verified absence
  (``FileNotFoundError``) is ``False``: a transient error (timeout,
  throttling, permission) raises, so it is retried rather than taken as
  "missing" (fsspec's own ``exists`` swallows every error).

Writes go to a temporary sibling and are renamed into place. The embedding
folder class lives in :mod:`models.storage.folders.embed` (re-exported here as
``layout.EmbeddingFolder``).
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import struct
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NPY_HEADER_GUESS = 1024  # bytes fetched for a .npy header; numpy pads headers to 64 (v1) or more (v2/v3)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def filesystem(path: str):
    """``(fsspec filesystem, path inside it)`` for a local path or URL."""
    return fsspec.core.url_to_fs(path)


_fs = filesystem  # the name other stages already import


def is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename."""
    fs, p = filesystem(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, p)


def read_bytes(path: str, start: int | None = None, end: int | None = None) -> bytes:
    """The file's bytes ``[start, end)`` (all by default) in one request."""
    fs, p = filesystem(path)
    return fs.cat_file(p, start=start, end=end)


def write_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_npy(path: str, mmap: bool = True) -> np.ndarray:
    """A ``.npy`` array: memory-mapped when local and ``mmap``, else one whole-file GET."""
    fs, p = filesystem(path)
    if mmap and is_local(fs):
        return np.load(p, mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(fs.cat_file(p)), allow_pickle=False)


class ShortNpyHeader(ValueError):
    """The bytes given end inside the ``.npy`` header; ``need`` is how many the header takes."""

    def __init__(self, need: int, got: int):
        super().__init__(f".npy header needs {need} bytes, got {got}")
        self.need = need


def parse_npy_header(head: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` from the first bytes of a ``.npy`` file.

    Raises:
      ShortNpyHeader: ``head`` ends inside the header. ValueError: not a ``.npy`` file.
    """
    if head[:6] != b"\x93NUMPY":
        raise ValueError("not a .npy file (bad magic)")
    major = head[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", head[8:10]), 10
    elif major in (2, 3):
        (hlen,), start = struct.unpack("<I", head[8:12]), 12
    else:
        raise ValueError(f".npy format version {major} unknown; expected 1, 2 or 3")
    if len(head) < start + hlen:
        raise ShortNpyHeader(start + hlen, len(head))
    header = ast.literal_eval(head[start:start + hlen].decode("latin-1" if major < 3 else "utf-8"))
    if header.get("fortran_order"):
        raise ValueError("Fortran-ordered .npy arrays are not supported")
    return tuple(header["shape"]), np.dtype(header["descr"]), start + hlen


def npy_header(path: str, size: int | None = None) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a ``.npy`` file from range reads of its header (remote: ~1 KiB, not the
    array). ``size`` (the file's bytes, when known) keeps the first range inside the file."""
    want = NPY_HEADER_GUESS if size is None else min(int(size), NPY_HEADER_GUESS)
    try:
        try:
            return parse_npy_header(read_bytes(path, 0, want))
        except ShortNpyHeader as short:  # a header longer than the guess (very many dimensions or fields)
            if size is not None and short.need > size:
                raise ValueError(f"the header needs {short.need} bytes but the file has {size}") from None
            return parse_npy_header(read_bytes(path, 0, short.need))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def npy_shape(path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file (:func:`npy_header`)."""
    shape, dtype, _ = npy_header(path)
    return shape, dtype


def write_parquet(path: str, table: pa.Table, uncompressed: tuple[str, ...] = ()) -> None:
    """Write ``table`` zstd-compressed; the ``uncompressed`` columns (e.g. float16 vectors, which zstd barely
    shrinks at a large CPU cost) are stored plain."""
    buf = io.BytesIO()
    compression = {c: ("none" if c in uncompressed else "zstd") for c in table.column_names} if uncompressed else "zstd"
    pq.write_table(table, buf, compression=compression)
    atomic_write_bytes(path, buf.getvalue())


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file (one GET), or a folder of them read as one table (``drop_keys.parquet/``, ``groups/``)."""
    fs, p = filesystem(path)
    try:
        data = fs.cat_file(p)
    except (FileNotFoundError, IsADirectoryError):
        if not fs.isdir(p):
            raise
        return pq.read_table(p, columns=columns, filesystem=fs)
    return pq.read_table(pa.BufferReader(data), columns=columns)


def write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str):
    return json.loads(read_bytes(path))


def exists(path: str) -> bool:
    """True when ``path`` exists; False only on a verified absence. Other errors raise (one ``info`` call)."""
    fs, p = filesystem(path)
    try:
        fs.info(p)
    except (FileNotFoundError, NotADirectoryError):  # NotADirectoryError: a parent is a file
        return False
    return True


def remove(path: str) -> None:
    fs, p = filesystem(path)
    fs.rm(p)


def remove_if_present(path: str) -> None:
    """Remove ``path``; a path already gone is fine (other errors raise)."""
    fs, p = filesystem(path)
    try:
        fs.rm(p)
    except FileNotFoundError:
        pass


def list_names(folder: str) -> set[str]:
    """Base names of the entries of ``folder`` (one listing); empty when the folder does not exist."""
    fs, p = filesystem(folder)
    try:
        return {name.rstrip("/").rsplit("/", 1)[-1] for name in fs.ls(p, detail=False)}
    except FileNotFoundError:
        return set()


def clear_outputs(root: str, names: list[str]) -> None:
    """Remove a stage's own output entries under ``root`` before it is rerun (stale parts must not mix in)."""
    fs, base = filesystem(root)
    for name in names:
        path = join(base, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def fingerprint(obj) -> str:
    """Stable short hash of a JSON-able object (the parameters that made an output)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def __getattr__(name: str):
    if name == "EmbeddingFolder":  # moved to models.storage.folders.embed; kept here for every stage's imports
        from models.storage.folders.embed import EmbeddingFolder

        return EmbeddingFolder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
