"""Write filtered copies of img2dataset shards: dropped samples gone, kept ones byte-identical.

Per format:

* ``webdataset``: the tar is streamed member by member and kept members are
  copied with their original headers and bytes;
* ``parquet``: rows of dropped keys are removed, all columns kept;
* ``files``: kept files are copied unchanged;

and beside tar and files shards the sidecar ``NNNNN.parquet`` keeps only the
kept keys plus img2dataset's failed rows (they were never in the shard).
``NNNNN_stats.json`` is rewritten with the counts of the filtered shard
(``count``, ``successes``, ``status_dict.success`` less the dropped samples)
and a ``dupmine_apply`` entry with the number dropped, so the filtered folder
is again a valid img2dataset output whose stats add up.

``drop`` is the set of *plain keys of this shard* to remove: the caller has
already resolved sample ids (``SHARD_URL::KEY``) to the shard they name
(:mod:`transforms.apply`), so keys that repeat in other shards are never
touched. Keys are read exactly as :mod:`models.storage.shards` reads them
(the members' file-name stem; parquet: ``ids.row_keys``).

Outputs are named by the shard id (the input's name, qualified by its parent
folder where two inputs share a name: ``a_00000.tar``), each written to a
temporary name and renamed, so a rerun after a crash rewrites whole shards.
"""
from __future__ import annotations

import io
import posixpath
import tarfile
from dataclasses import asdict, dataclass
from enum import Enum
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.storage import ids, layout
from models.storage.shards import ShardFormat, ShardRef, parquet_row_keys


@dataclass
class ApplyCounts:
    """What happened to one shard (summed into the manifest)."""

    shard: str
    kept: int = 0
    dropped: int = 0
    output: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _key_of(name: str) -> str:
    return posixpath.basename(name).split(".", 1)[0]


def _is_in(column: pa.ChunkedArray, drop: frozenset) -> pa.ChunkedArray:
    return pc.is_in(column.cast(pa.string()), value_set=pa.array(sorted(drop), pa.string()))


def _filter_sidecar(src_base: str, dst_base: str, drop: frozenset, dropped: int) -> None:
    """Filter ``SRC.parquet`` by key and rewrite ``SRC_stats.json`` for the ``dropped`` samples; absent ones are skipped."""
    try:
        table = pq.read_table(pa.BufferReader(layout.read_bytes(src_base + ".parquet")))
    except FileNotFoundError:
        pass
    else:
        if "key" in table.column_names:
            table = table.filter(pc.invert(_is_in(table.column("key"), drop)))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        layout.atomic_write_bytes(dst_base + ".parquet", buf.getvalue())
    _filter_stats(src_base + "_stats.json", dst_base + "_stats.json", dropped)


def _filter_stats(src: str, dst: str, dropped: int) -> None:
    """img2dataset's ``_stats.json`` with the dropped samples taken out of ``count``, ``successes`` and ``status_dict``."""
    try:
        stats = layout.read_json(src)
    except FileNotFoundError:
        return
    if isinstance(stats, dict):
        for name in ("count", "successes"):
            if isinstance(stats.get(name), int):
                stats[name] = max(0, stats[name] - dropped)
        status = stats.get("status_dict")
        if isinstance(status, dict) and isinstance(status.get("success"), int):
            status["success"] = max(0, status["success"] - dropped)
        stats["dupmine_apply"] = {"dropped": dropped}
    layout.write_json(dst, stats)


def filter_tar(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Copy ``shard`` without the samples whose key is in ``drop``; members are grouped by file-name key.

    The key is the members' file-name stem, as :mod:`models.storage.shards` reads it.
    Memory: the filtered tar is built in memory (one shard, ~ its size).
    """
    counts = ApplyCounts(shard.shard_id, output=layout.join(out_dir, f"{shard.shard_id}.tar"))
    buf = io.BytesIO()
    fs, path = layout.filesystem(shard.path)
    pending: list[tuple[tarfile.TarInfo, bytes]] = []
    current = None

    def flush(out: tarfile.TarFile) -> None:
        if not pending:
            return
        if _key_of(pending[0][0].name) in drop:
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
    _filter_sidecar(shard.path[: -len(".tar")], layout.join(out_dir, shard.shard_id), drop, counts.dropped)
    return counts


def filter_parquet(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Copy a parquet shard without the rows of dropped keys (all columns, same schema).

    Shards without a ``key`` column are keyed as the reader keys them
    (``image_path``, else ``url``, else ``STEM:ROW``).
    """
    pf = pq.ParquetFile(pa.BufferReader(layout.read_bytes(shard.path)))
    keys = parquet_row_keys(pf, shard)
    table = pf.read()
    kept = table.filter(pc.invert(_is_in(pa.chunked_array([pa.array(keys.keys, pa.string())]), drop)))
    buf = io.BytesIO()
    pq.write_table(kept, buf)
    out = layout.join(out_dir, f"{shard.shard_id}.parquet")
    layout.atomic_write_bytes(out, buf.getvalue())
    counts = ApplyCounts(shard.shard_id, kept=kept.num_rows, dropped=table.num_rows - kept.num_rows, output=out)
    _filter_stats(shard.path[: -len(".parquet")] + "_stats.json", layout.join(out_dir, f"{shard.shard_id}_stats.json"),
                  counts.dropped)
    return counts


def filter_files(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Copy a files-format folder without the files of dropped keys."""
    fs, path = layout.filesystem(shard.path)
    out = layout.join(out_dir, shard.shard_id)
    keys_kept, keys_dropped = set(), set()
    for src in sorted(fs.ls(path, detail=False)):
        key = _key_of(src)
        if key in drop:
            keys_dropped.add(key)
            continue
        keys_kept.add(key)
        layout.atomic_write_bytes(layout.join(out, posixpath.basename(src)), fs.cat_file(src))
    _filter_sidecar(shard.path.rstrip("/"), out, drop, len(keys_dropped))
    return ApplyCounts(shard.shard_id, kept=len(keys_kept), dropped=len(keys_dropped), output=out)


def filter_shard(shard: ShardRef, out_dir: str, drop: frozenset) -> ApplyCounts:
    """Dispatch on the shard's format."""
    if shard.format == ShardFormat.WEBDATASET:
        return filter_tar(shard, out_dir, drop)
    if shard.format == ShardFormat.PARQUET:
        return filter_parquet(shard, out_dir, drop)
    if shard.format == ShardFormat.FILES:
        return filter_files(shard, out_dir, drop)
    raise ValueError(f"unknown shard format {shard.format!r}; expected one of {[f.value for f in ShardFormat]}")


# --- drop lists ---------------------------------------------------------------


class DropListKind(str, Enum):
    """What ``--drop`` names."""

    DEDUP_RUN = "dedup"      # a dedup output folder: every drop_keys.parquet of its run chain
    PARQUET = "parquet"      # a Parquet file or folder with a sample_id and/or key column (drop_keys.parquet)
    TEXT = "text"            # a .txt file: one sample id or key per line


@dataclass(frozen=True)
class DropList:
    """The files of a drop list (small: names, not rows; the rows are read by workers)."""

    kind: DropListKind
    files: tuple[str, ...]


class DropRow(NamedTuple):
    """One sample to drop: the absolute URL of its shard and its plain key (``source_url=""``: a bare key)."""

    source_url: str
    key: str


def _parquet_files(path: str) -> list[str]:
    fs, p = layout.filesystem(path)
    if not fs.isdir(p):
        return [path]
    return sorted(layout.join(path, n) for n in layout.list_names(path) if n.endswith(".parquet"))


def resolve_drop_list(path: str) -> DropList:
    """Which kind of drop list ``path`` is, and its files (one listing per folder, on the driver).

    Raises:
      FileNotFoundError: ``path`` does not exist.
    """
    from models.storage import run_chain
    from models.storage.folders.dedup import DedupFolder

    if not layout.exists(path):
        raise FileNotFoundError(f"--drop {path!r} does not exist")
    if layout.exists(DedupFolder(path).manifest):
        files = [f for entry in run_chain.read_chain(path) if layout.exists(DedupFolder(entry.run).drop_keys)
                 for f in _parquet_files(DedupFolder(entry.run).drop_keys)]
        return DropList(DropListKind.DEDUP_RUN, tuple(files))
    if path.endswith(".txt"):
        return DropList(DropListKind.TEXT, (path,))
    return DropList(DropListKind.PARQUET, tuple(_parquet_files(path)))


def _drop_row(value: str) -> DropRow:
    try:
        return DropRow(*ids.split_sample_id(value))
    except ValueError:
        return DropRow("", value)


def read_drop_rows(path: str, kind: DropListKind) -> list[DropRow]:
    """The rows of one drop-list file: sample ids split into (shard URL, key); bare keys keep ``source_url=""``.

    Parquet files are read by their ``sample_id`` column where it is set,
    else ``key`` (drop lists written before sample ids existed).

    Raises:
      ValueError: a Parquet file with neither column.
    """
    if kind == DropListKind.TEXT:
        return [_drop_row(line.strip()) for line in layout.read_bytes(path).decode("utf-8").splitlines() if line.strip()]
    table = pq.read_table(pa.BufferReader(layout.read_bytes(path)))
    names = table.column_names
    if "sample_id" not in names and "key" not in names:
        raise ValueError(f"drop list {path} has neither a sample_id nor a key column (columns: {names})")
    sids = table.column("sample_id").to_pylist() if "sample_id" in names else [None] * table.num_rows
    keys = table.column("key").to_pylist() if "key" in names else [None] * table.num_rows
    return [_drop_row(s) if s else DropRow("", str(k)) for s, k in zip(sids, keys) if s or k is not None]
