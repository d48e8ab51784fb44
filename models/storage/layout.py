"""Output folders, atomic writes and completion markers (local or fsspec URLs).

Embedding folders use the layout LAION and clip-retrieval publish::

    img_emb/img_emb_{i}.npy          (N_i, D) float16, L2-normalised
    text_emb/text_emb_{i}.npy        (N_i, D) float16 (when the model has a text tower)
    metadata/metadata_{i}.parquet    N_i rows, same order
    rejects/rejects_{i}.parquet      dupmine only: samples without an embedding
    _done/{i}.json                   dupmine only: completion marker (written last)
    config.json, stats.json          dupmine only

``{i}`` is any suffix (``0`` in LAION, ``00000`` shard ids in dupmine); parts
are matched by it. Every write goes to a temporary name and is renamed into
place, and a shard's marker is written after all its files, so a crash
leaves either a complete shard or one a rerun redoes.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


def _fs(path: str):
    return fsspec.core.url_to_fs(path)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary sibling and a rename."""
    fs, p = _fs(path)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    tmp = f"{p}.tmp-{uuid.uuid4().hex}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, p)


def write_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_npy(path: str, mmap: bool = True) -> np.ndarray:
    fs, p = _fs(path)
    if mmap and fs.protocol in ("file", ("file", "local"), "local"):
        return np.load(p, mmap_mode="r", allow_pickle=False)
    with fs.open(p, "rb") as f:
        return np.load(io.BytesIO(f.read()), allow_pickle=False)


def write_parquet(path: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, or a folder of them read as one table (``drop_keys.parquet/``, ``groups/``)."""
    fs, p = _fs(path)
    if fs.isdir(p):
        return pq.read_table(p, columns=columns, filesystem=fs)
    with fs.open(p, "rb") as f:
        return pq.read_table(f, columns=columns)


def write_json(path: str, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str):
    fs, p = _fs(path)
    with fs.open(p, "rb") as f:
        return json.loads(f.read())


def exists(path: str) -> bool:
    fs, p = _fs(path)
    return fs.exists(p)


def remove(path: str) -> None:
    fs, p = _fs(path)
    fs.rm(p)


def clear_outputs(root: str, names: list[str]) -> None:
    """Remove a stage's own output entries under ``root`` before it is rerun (stale parts must not mix in)."""
    fs, base = _fs(root)
    for name in names:
        path = join(base, name)
        if fs.exists(path):
            fs.rm(path, recursive=True)


def fingerprint(obj) -> str:
    """Stable short hash of a JSON-able object (the parameters that made an output)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EmbeddingFolder:
    """Paths inside an embedding folder (ours, LAION's or clip-retrieval's)."""

    root: str

    def img_emb(self, i: str) -> str:
        return join(self.root, "img_emb", f"img_emb_{i}.npy")

    def text_emb(self, i: str) -> str:
        return join(self.root, "text_emb", f"text_emb_{i}.npy")

    def metadata(self, i: str) -> str:
        return join(self.root, "metadata", f"metadata_{i}.parquet")

    def rejects(self, i: str) -> str:
        return join(self.root, "rejects", f"rejects_{i}.parquet")

    def marker(self, i: str) -> str:
        return join(self.root, "_done", f"{i}.json")

    @property
    def config(self) -> str:
        return join(self.root, "config.json")

    @property
    def stats(self) -> str:
        return join(self.root, "stats.json")

    def parts(self) -> list[str]:
        """Suffixes ``i`` with both an ``img_emb_i.npy`` and a ``metadata_i.parquet``, sorted.

        Shards with a dupmine marker count only when the marker exists, so a
        half-written shard from a crashed run is never read.

        Raises:
          FileNotFoundError: no ``img_emb/`` folder. ValueError: an img_emb part without metadata.
        """
        fs, root = _fs(self.root)
        emb_dir = join(root, "img_emb")
        if not fs.exists(emb_dir):
            raise FileNotFoundError(f"{self.root!r} is not an embedding folder: no img_emb/ inside")
        suffixes = []
        for name in fs.ls(emb_dir, detail=False):
            m = re.fullmatch(r"img_emb_(.+)\.npy", name.rsplit("/", 1)[-1])
            if m:
                suffixes.append(m.group(1))
        dupmine_made = fs.exists(join(root, "_done"))
        out = []
        for i in suffixes:
            if dupmine_made and not fs.exists(_fs(self.marker(i))[1]):
                continue
            if not fs.exists(_fs(self.metadata(i))[1]):
                raise ValueError(f"{self.img_emb(i)} has no row-aligned {self.metadata(i)}")
            out.append(i)
        return sorted(out, key=lambda s: (len(s), s) if s.isdigit() else (0, s))
