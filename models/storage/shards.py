"""Reading img2dataset output: webdataset tars, parquet with image bytes, files folders.

This is the I/O edge of the embed stage, so it works on per-sample records.
:func:`models.storage.shard_listing.list_shards` (re-exported here) expands an
input spec (paths, globs, brace patterns such as ``{00000..00099}.tar``,
folders, and fsspec URLs like ``gs://bucket/x``) into :class:`ShardRef` s;
:func:`read_shard` streams one shard as
:class:`Sample` (something to embed) and :class:`Reject` (something that
cannot be, with a reason), so that ``samples + rejects == input rows``.

img2dataset writes, per shard ``NNNNN``:

* ``webdataset``: ``NNNNN.tar`` with members ``KEY.jpg``, ``KEY.txt``,
  ``KEY.json``; only successful downloads are in the tar;
* ``parquet``: ``NNNNN.parquet`` with an image-bytes column (``jpg``, ``png``
  or ``webp``) next to the metadata columns;
* ``files``: a folder ``NNNNN/`` with ``KEY.jpg``, ``KEY.txt``, ``KEY.json``;

and beside tar and files shards a sidecar ``NNNNN.parquet`` with one row per
*input URL*, failed downloads included (``status``, ``error_message``). Rows of
the sidecar that are not in the shard become rejects: ``failed_to_download``
etc. for img2dataset failures, ``missing-from-shard`` for successful rows the
shard lost (a truncated tar).

Errors. Only what the bytes in hand prove is a reject: ``shard-missing`` (the
filesystem says the file does not exist), ``truncated-shard`` (the file ends
before its end-of-archive marker, and every byte of it was read),
``corrupt-shard`` (undecodable tar headers or parquet pages). Any error raised
by the filesystem itself (timeouts, throttling, resets, permissions) is
re-raised, so Beam retries the bundle and no completion marker is written.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from models.storage import ids, layout

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image")
# img2dataset's per-sample metadata columns, in its order (md5 when it was run with --compute_hash md5).
META_FIELDS = (
    "url", "caption", "status", "error_message", "width", "height",
    "original_width", "original_height", "exif", "sha256", "md5",
)


_NUMERIC_FIELDS = ("width", "height", "original_width", "original_height")


class ShardFormat(str, Enum):
    """The three img2dataset output formats."""

    WEBDATASET = "webdataset"
    PARQUET = "parquet"
    FILES = "files"


@dataclass(frozen=True)
class ShardRef:
    """One input shard: its URL/path, format, the id used in output names, and its absolute URL."""

    path: str
    format: str
    shard_id: str
    url: str = ""  # ids.absolute_url(path); the prefix of every sample id of this shard

    def __post_init__(self):
        if not self.url:
            object.__setattr__(self, "url", ids.absolute_url(self.path))


@dataclass
class Sample:
    """One sample to embed: encoded image bytes plus img2dataset metadata."""

    key: str
    shard: str
    image: bytes
    caption: str | None
    meta: dict = field(default_factory=dict)
    sample_id: str = ""
    key_source: str = "key"  # where the key came from (ids.KEY_SOURCES or ids.ROW_NUMBER)


@dataclass(frozen=True)
class Reject:
    """A sample (or, with ``key=""``, a whole shard) that produced no embedding."""

    key: str
    shard: str
    reason: str
    url: str | None = None
    sample_id: str = ""


class InputError(ValueError):
    """An input spec that names nothing readable."""


def __getattr__(name: str):
    if name in ("list_shards", "expand_braces"):  # listing lives in models.storage.shard_listing
        from models.storage import shard_listing

        return getattr(shard_listing, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def shard_stem(name: str) -> str:
    """A shard's file or folder name without ``.tar`` / ``.parquet``."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar", ".parquet"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _decode_text(raw: bytes) -> str:
    """UTF-8 with a lossless-enough fallback; captions are never dropped for encoding."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


def _meta_from_json(raw: bytes | None) -> dict:
    """A member's JSON object; ``{}`` when absent, not JSON, or not an object (the sample is still embedded)."""
    if raw is None:
        return {}
    try:
        meta = json.loads(_decode_text(raw))
    except (json.JSONDecodeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _text(value) -> str | None:
    return None if value is None else value if isinstance(value, str) else json.dumps(value, default=str)


def _make_sample(shard: ShardRef, key: str, files: dict[str, bytes], meta: dict | None = None,
                 key_source: str = "key") -> Sample | Reject:
    """One sample from its members (``ext -> bytes``); ``meta`` overrides the ``.json`` member.

    ``key`` is the members' file-name stem (webdataset's grouping; img2dataset
    writes the ``.json`` ``key`` equal to it), never a ``key`` inside the
    JSON, so a damaged ``.json`` cannot rename a sample.
    """
    meta = _meta_from_json(files.get("json")) if meta is None else meta
    sid = ids.sample_id(shard.url, key)
    url = _text(meta.get("url"))
    image_ext = next((e for e in IMAGE_EXTS if files.get(e)), None)
    if meta.get("status") not in (None, "success"):
        reason = f"{_text(meta['status'])}: {_text(meta.get('error_message')) or ''}".strip()
        return Reject(key, shard.shard_id, reason, url, sid)
    if image_ext is None:
        return Reject(key, shard.shard_id, "missing-image", url, sid)
    caption = _decode_text(files["txt"]) if "txt" in files else _text(meta.get("caption"))
    image = files[image_ext]
    meta = {k: meta[k] if k in _NUMERIC_FIELDS else _text(meta[k]) for k in META_FIELDS if k in meta}
    if not meta.get("sha256"):
        meta["sha256"] = hashlib.sha256(image).hexdigest()
    return Sample(key, shard.shard_id, image, caption, meta, sid, key_source)


class _IOGuard:
    """A file wrapper that remembers an exception raised by the file itself.

    Parsers (tarfile, pyarrow) re-raise or wrap what the file raises; the
    guard lets the caller tell an I/O failure (retry) from bad bytes (reject).
    ``position`` counts the bytes actually delivered.
    """

    def __init__(self, f):
        self.f, self.error, self.position = f, None, 0

    def _guard(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:
            self.error = exc
            raise

    def read(self, n=-1):
        data = self._guard(self.f.read, n)
        self.position += len(data)
        return data

    def seek(self, *args):
        self.position = self._guard(self.f.seek, *args)
        return self.position

    def tell(self):
        return self._guard(self.f.tell)

    def __getattr__(self, name):
        return getattr(self.f, name)


def _open(fs, path: str, size: int):
    """Open for reading; remote files get the size already known, so opening costs no second ``info``."""
    return fs.open(path, "rb") if layout.is_local(fs) else fs.open(path, "rb", size=size)


def _sidecar_rows(shard: ShardRef) -> dict[str, dict] | Reject | None:
    """img2dataset's per-URL sidecar parquet beside a tar/files shard, by key; None when there is none."""
    base = shard.path.rstrip("/")
    base = base[:-4] if base.endswith(".tar") else base
    try:
        data = layout.read_bytes(base + ".parquet")
    except FileNotFoundError:
        return None
    try:  # the bytes are in memory: any error from here on is in the data, not the filesystem
        table = pq.read_table(pa.BufferReader(data))
        cols = [c for c in ("key", "url", "status", "error_message") if c in table.column_names]
        rows = table.select(cols).to_pylist() if "key" in cols else None
    except (pa.ArrowException, OSError, ValueError) as exc:
        return Reject("", shard.shard_id, f"corrupt-sidecar: {base}.parquet: {type(exc).__name__}: {exc}")
    return None if rows is None else {_text(r["key"]): r for r in rows if r["key"] is not None}


def _with_sidecar(shard: ShardRef, items: Iterator[Sample | Reject]) -> Iterator[Sample | Reject]:
    sidecar = _sidecar_rows(shard)
    if isinstance(sidecar, Reject):
        yield sidecar
        sidecar = None
    seen = set()
    for item in items:
        seen.add(item.key)
        yield item
    for key, row in (sidecar or {}).items():
        if key in seen:
            continue
        status = _text(row.get("status")) or "unknown"
        if status == "success":
            reason = "missing-from-shard: listed as downloaded in the sidecar parquet but absent from the shard"
        else:
            reason = f"{status}: {_text(row.get('error_message')) or ''}".strip()
        yield Reject(key, shard.shard_id, reason, _text(row.get("url")), ids.sample_id(shard.url, key))


_TRUNCATION_MESSAGES = ("unexpected end of data", "empty file", "truncated header")


def _damage(shard: ShardRef, exc: Exception, guard: _IOGuard, size: int, current_key, last_key) -> Reject:
    """The reject for a tar that stopped decoding; re-raises where the filesystem, not the data, failed."""
    if guard.error is not None:
        raise guard.error
    if not isinstance(exc, (tarfile.TarError, EOFError)):
        raise exc
    message = str(exc)
    truncated = isinstance(exc, EOFError) or any(m in message for m in _TRUNCATION_MESSAGES)
    if truncated and guard.position < size:  # short data that is not the end of the file: not a verified truncation
        raise OSError(f"{shard.path}: read stopped at byte {guard.position} of {size}; retrying") from exc
    kind = "truncated-shard" if truncated else "corrupt-shard"
    detail = f"{type(exc).__name__}: {message}"
    if current_key is not None:
        return Reject(current_key, shard.shard_id, f"{kind}: {detail}", None, ids.sample_id(shard.url, current_key))
    where = f"after key {last_key}" if last_key else "before the first sample"
    return Reject("", shard.shard_id, f"{kind} {where}: {detail}")


def _end_of_archive(shard: ShardRef, fs, root: str, offset: int, size: int, last_key) -> Reject | None:
    """Check that an uncompressed tar stopped at its zero end block, not at a bad or missing header.

    tarfile ends iteration silently on an invalid or truncated header after
    the first member; one range read of the block it stopped at tells which.
    """
    block = fs.cat_file(root, start=offset, end=min(offset + tarfile.BLOCKSIZE, size)) if offset < size else b""
    if len(block) == tarfile.BLOCKSIZE and not any(block):
        return None
    where = f"after key {last_key}" if last_key else "before the first sample"
    if len(block) < tarfile.BLOCKSIZE:
        return Reject("", shard.shard_id, f"truncated-shard {where}: no end-of-archive block (file ends at byte {size})")
    return Reject("", shard.shard_id, f"corrupt-shard {where}: undecodable tar header at byte {offset}; the rest is unread")


def _read_tar(shard: ShardRef, fs, root: str, size: int) -> Iterator[Sample | Reject]:
    current_key, files, last_key, stop = None, {}, None, None
    guard = _IOGuard(_open(fs, root, size))
    try:
        with guard.f, tarfile.open(fileobj=guard, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = posixpath.basename(member.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                if key != current_key:
                    if current_key is not None:
                        yield _make_sample(shard, current_key, files)
                        last_key = current_key
                    current_key, files = key, {}
                files[ext.lower()] = tar.extractfile(member).read()
            if current_key is not None:
                yield _make_sample(shard, current_key, files)
                last_key, current_key = current_key, None
            if getattr(tar.fileobj, "comptype", "tar") == "tar":  # compressed streams verify themselves (CRC)
                stop = tar.offset
    except Exception as exc:  # noqa: BLE001 - _damage re-raises all but tar data errors
        yield _damage(shard, exc, guard, size, current_key, last_key)
        return
    end = None if stop is None else _end_of_archive(shard, fs, root, stop, size, last_key)
    if end is not None:
        yield end


def _read_files(shard: ShardRef, fs, root: str) -> Iterator[Sample | Reject]:
    names = sorted(fs.ls(root, detail=False))
    for key, group in itertools.groupby(names, key=lambda n: posixpath.basename(n).split(".", 1)[0]):
        files = {posixpath.basename(n).split(".", 1)[1].lower(): fs.cat_file(n)
                 for n in group if "." in posixpath.basename(n)}
        if files:
            yield _make_sample(shard, key, files)


def parquet_row_keys(pf: pq.ParquetFile, shard: ShardRef) -> ids.RowKeys:
    """Plain keys of a parquet shard's rows (:func:`models.storage.ids.row_keys`; reads only the key columns)."""
    key_cols = [c for c in ids.KEY_SOURCES if c in pf.schema_arrow.names]
    table = pf.read(columns=key_cols) if key_cols else pa.table({"row": pa.nulls(pf.metadata.num_rows)})
    return ids.row_keys(table, shard_stem(shard.path))


def _read_parquet(shard: ShardRef, fs, root: str, size: int, batch_rows: int = 256) -> Iterator[Sample | Reject]:
    """Rows of a parquet shard; rows its pages cannot give back are rejects by key (pyarrow can stop silently)."""
    guard = _IOGuard(_open(fs, root, size))
    done, keys, problem = 0, None, None
    try:
        with guard.f:
            pf = pq.ParquetFile(guard)
            names = pf.schema_arrow.names
            image_col = next((c for c in IMAGE_COLUMNS if c in names), None)
            if image_col is None:
                yield Reject("", shard.shard_id, f"corrupt-shard: no image column (expected one of {IMAGE_COLUMNS})")
                return
            keys = parquet_row_keys(pf, shard)
            meta_cols = [c for c in META_FIELDS if c in names]
            for batch in pf.iter_batches(batch_size=batch_rows):
                for row in batch.to_pylist():
                    if done >= len(keys.keys):
                        raise pa.ArrowInvalid(f"pages hold more rows than the {len(keys.keys)} the footer declares")
                    files = {image_col: row.get(image_col)}
                    if row.get("caption") is not None:
                        files["txt"] = _text(row["caption"]).encode("utf-8", errors="replace")
                    meta = {k: row.get(k) for k in meta_cols}
                    done += 1
                    yield _make_sample(shard, keys.keys[done - 1], files, meta, keys.source)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a damaged page can hold invalid UTF-8
        if guard.error is not None:
            raise guard.error
        problem = f"{type(exc).__name__}: {exc}"
    if keys is not None and done < len(keys.keys):  # the footer and key column are readable: name the lost rows
        reason = f"corrupt-shard: row unreadable ({problem or f'pages ended after {done} of {len(keys.keys)} rows'})"
        for key in keys.keys[done:]:
            yield Reject(key, shard.shard_id, reason, None, ids.sample_id(shard.url, key))
    elif problem is not None:
        where = f"after {done} rows" if done else "before the first row"
        yield Reject("", shard.shard_id, f"corrupt-shard {where}: {problem}")


def read_shard(shard: ShardRef) -> Iterator[Sample | Reject]:
    """Stream a shard's samples and rejects, in shard order.

    Memory: one sample at a time (tar, files) or ``batch_rows`` rows
    (parquet), plus the sidecar's key/status columns. Cost: one ``info``,
    one streaming read (tar, parquet) and one range read of the tar's end block.

    A shard the filesystem reports missing yields one shard-level reject
    (``key=""``, reason ``shard-missing``); a truncated tar yields the
    samples before the damage, a ``truncated-shard`` reject, and one
    ``missing-from-shard`` reject per sidecar row that was lost.

    Raises:
      OSError (or the filesystem's own error): any failure of the filesystem
      other than a verified absence or truncation, so the caller retries.
    """
    fs, root = layout.filesystem(shard.path)
    try:
        info = fs.info(root)
    except FileNotFoundError:
        yield Reject("", shard.shard_id, f"shard-missing: {shard.path} vanished before it was read")
        return
    if shard.format == ShardFormat.WEBDATASET:
        yield from _with_sidecar(shard, _read_tar(shard, fs, root, int(info.get("size") or 0)))
    elif shard.format == ShardFormat.FILES:
        yield from _with_sidecar(shard, _read_files(shard, fs, root))
    elif shard.format == ShardFormat.PARQUET:
        yield from _read_parquet(shard, fs, root, int(info.get("size") or 0))
    else:
        raise ValueError(f"unknown shard format {shard.format!r}; expected one of {[f.value for f in ShardFormat]}")
