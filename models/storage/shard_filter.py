"""Write filtered copies of img2dataset shards: dropped samples gone, kept ones byte-identical.

Per format:

* ``webdataset``: the tar is streamed member by member and kept members are
  copied with their original headers and bytes; the sidecar ``.parquet``
  (and ``_stats.json``) keep only the kept keys plus img2dataset's failed
  rows (they were never in the tar), so the filtered folder is again a valid
  img2dataset output;
* ``parquet``: rows of dropped keys are removed, all columns kept;
* ``files``: kept files are copied unchanged.

A shard's output is written to temporary names and renamed, so a rerun after
a crash rewrites whole shards only.
"""
from __future__ import annotations

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass

import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.storage import layout
from models.storage.shards import ShardFormat, ShardRef


@dataclass
class ApplyCounts:
    """What happened to one shard (summed into the manifest)."""

    shard: str
    kept: int = 0
    dropped: int = 0
    output: str = ""

    def as_dict(self) -> dict:
        return {"shard": self.shard, "kept": self.kept, "dropped": self.dropped, "output": self.output}


def _key_of(name: str) -> str:
    return posixpath.basename(name).split(".", 1)[0]


def _member_key(name: str, data: bytes | None, ext: str) -> str | None:
    """A sample's key: from its ``.json`` when that is what we hold, else from the file name."""
    if ext == "json" and data is not None:
        try:
            key = json.loads(data).get("key")
            return str(key) if key is not None else None
        except (ValueError, AttributeError):
            return None
    return None


def _filter_sidecar(src: str, dst: str, drop: frozenset) -> None:
    fs, path = fsspec.core.url_to_fs(src)
    if not fs.exists(path):
        return
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    if "key" in table.column_names:
        keep = pc.invert(pc.is_in(table.column("key").cast("string"), value_set=_value_set(drop)))
        table = table.filter(keep)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    layout.atomic_write_bytes(dst, buf.getvalue())


def _value_set(drop: frozenset):
    import pyarrow as pa

    return pa.array(sorted(drop), pa.string())


def filter_tar(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Copy ``shard`` without the samples whose key is in ``drop``; members are grouped by file-name key.

    The key used is the ``key`` field of the sample's ``.json`` when present
    (img2dataset writes it equal to the file name), else the file name.
    """
    name = posixpath.basename(shard.path)
    counts = ApplyCounts(shard.shard_id, output=layout.join(out_dir, name))
    buf = io.BytesIO()
    fs, path = fsspec.core.url_to_fs(shard.path)
    pending: list[tuple[tarfile.TarInfo, bytes]] = []
    current = None

    def flush(out: tarfile.TarFile) -> None:
        if not pending:
            return
        key = next((k for m, d in pending if (k := _member_key(m.name, d, m.name.rsplit(".", 1)[-1].lower()))), _key_of(pending[0][0].name))
        if key in drop:
            counts.dropped += 1
        else:
            counts.kept += 1
            for member, data in pending:
                out.addfile(member, io.BytesIO(data))
        pending.clear()

    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as out:
        for member in src:
            data = src.extractfile(member).read() if member.isfile() else None
            key = _key_of(member.name)
            if key != current:
                flush(out)
                current = key
            pending.append((member, data if data is not None else b""))
        flush(out)
    layout.atomic_write_bytes(counts.output, buf.getvalue())
    base = shard.path[: -len(".tar")]
    _filter_sidecar(base + ".parquet", layout.join(out_dir, name[: -len(".tar")] + ".parquet"), drop)
    return counts


def filter_parquet(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Copy a parquet shard without the rows of dropped keys (all columns, same schema)."""
    name = posixpath.basename(shard.path)
    fs, path = fsspec.core.url_to_fs(shard.path)
    with fs.open(path, "rb") as f:
        table = pq.read_table(f)
    keep = pc.invert(pc.is_in(table.column("key").cast("string"), value_set=_value_set(drop)))
    kept = table.filter(keep)
    buf = io.BytesIO()
    pq.write_table(kept, buf)
    out = layout.join(out_dir, name)
    layout.atomic_write_bytes(out, buf.getvalue())
    return ApplyCounts(shard.shard_id, kept=kept.num_rows, dropped=table.num_rows - kept.num_rows, output=out)


def filter_files(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Copy a files-format folder without the files of dropped keys."""
    fs, path = fsspec.core.url_to_fs(shard.path)
    name = posixpath.basename(path.rstrip("/"))
    out = layout.join(out_dir, name)
    keys_kept, keys_dropped = set(), set()
    for src in sorted(fs.ls(path, detail=False)):
        key = _key_of(src)
        with fs.open(src, "rb") as f:
            data = f.read()
        if key in drop:
            keys_dropped.add(key)
            continue
        keys_kept.add(key)
        layout.atomic_write_bytes(layout.join(out, posixpath.basename(src)), data)
    _filter_sidecar(path.rstrip("/") + ".parquet", layout.join(out_dir, name + ".parquet"), drop)
    return ApplyCounts(shard.shard_id, kept=len(keys_kept), dropped=len(keys_dropped), output=out)


def filter_shard(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Dispatch on the shard's format."""
    if shard.format == ShardFormat.WEBDATASET:
        return filter_tar(shard, out_dir, drop)
    if shard.format == ShardFormat.PARQUET:
        return filter_parquet(shard, out_dir, drop)
    if shard.format == ShardFormat.FILES:
        return filter_files(shard, out_dir, drop)
    raise ValueError(f"unknown shard format {shard.format!r}; expected one of {ShardFormat.ALL}")


def load_drop_keys(path: str) -> frozenset:
    """Keys to drop: a dedup output folder (the union over its run chain), a Parquet file or folder with a
    ``key`` column (``drop_keys.parquet``), or a text file with one key per line.

    Memory: about 60 bytes per key.
    """
    from models.storage import run_chain

    if layout.exists(layout.join(path, run_chain.MANIFEST)):  # a dedup output folder: its whole chain's drop list
        return frozenset(str(k) for k in run_chain.load_drop_keys(path).column("key").to_pylist())
    if path.endswith(".txt"):
        fs, p = fsspec.core.url_to_fs(path)
        with fs.open(p, "rt") as f:
            return frozenset(line.strip() for line in f if line.strip())
    table = layout.read_parquet(path, ["key"])
    return frozenset(str(k) for k in table.column("key").to_pylist())
