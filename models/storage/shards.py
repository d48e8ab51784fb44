"""Reading img2dataset output: webdataset tars, parquet with image bytes, files folders.

This is the I/O edge of the embed stage, so it works on per-sample records.
:func:`list_shards` expands an input spec (paths, globs, brace patterns such
as ``{00000..00099}.tar``, folders, and fsspec URLs like ``gs://bucket/x``)
into :class:`ShardRef` s; :func:`read_shard` streams one shard as
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
"""
from __future__ import annotations

import hashlib
import itertools
import json
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

import fsspec
import pyarrow.parquet as pq

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
IMAGE_COLUMNS = ("jpg", "png", "webp", "jpeg", "image")
# img2dataset's per-sample metadata columns, in its order.
META_FIELDS = (
    "url", "caption", "status", "error_message", "width", "height",
    "original_width", "original_height", "exif", "sha256",
)


class ShardFormat:
    """The three img2dataset output formats (string constants)."""

    WEBDATASET = "webdataset"
    PARQUET = "parquet"
    FILES = "files"
    ALL = (WEBDATASET, PARQUET, FILES)


@dataclass(frozen=True)
class ShardRef:
    """One input shard: its URL/path, format and the id used in output names."""

    path: str
    format: str
    shard_id: str


@dataclass
class Sample:
    """One sample to embed: encoded image bytes plus img2dataset metadata."""

    key: str
    shard: str
    image: bytes
    caption: str | None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reject:
    """A sample (or, with ``key=""``, a whole shard) that produced no embedding."""

    key: str
    shard: str
    reason: str
    url: str | None = None


class InputError(ValueError):
    """An input spec that names nothing readable."""


_BRACE_RANGE = re.compile(r"\{(\d+)\.\.(\d+)\}")
_BRACE_LIST = re.compile(r"\{([^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a..b}`` (zero-padded to the width of ``a``) and ``{x,y}``.

    >>> expand_braces("s/{00000..00002}.tar")
    ['s/00000.tar', 's/00001.tar', 's/00002.tar']
    """
    matches = [m for m in (_BRACE_RANGE.search(pattern), _BRACE_LIST.search(pattern)) if m]
    if not matches:
        return [pattern]
    m = min(matches, key=lambda m: m.start())  # leftmost brace first, like the shell
    head, tail = pattern[: m.start()], pattern[m.end():]
    if m.re is _BRACE_LIST:
        return [p for alt in m.group(1).split(",") for p in expand_braces(f"{head}{alt}{tail}")]
    lo, hi = int(m.group(1)), int(m.group(2))
    if hi < lo:
        raise InputError(f"brace range {m.group(0)!r} in {pattern!r} is empty (end < start)")
    width = len(m.group(1))
    return [p for i in range(lo, hi + 1) for p in expand_braces(f"{head}{i:0{width}d}{tail}")]


def _fs(path: str):
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root


def _unstrip(fs, path: str) -> str:
    """Turn an fs-internal path back into a URL the same fs reopens."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (list, tuple)) else fs.protocol
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _parquet_has_images(fs, path: str) -> bool:
    with fs.open(path, "rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return any(c in names for c in IMAGE_COLUMNS)


def _shards_in_dir(fs, root: str) -> list[tuple[str, str]]:
    found = []
    for info in fs.ls(root, detail=True):
        name = info["name"]
        if info["type"] == "directory":
            if any(n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS for n in fs.ls(name, detail=False)):
                found.append((name, ShardFormat.FILES))
        elif name.endswith(".tar"):
            found.append((name, ShardFormat.WEBDATASET))
        elif name.endswith(".parquet") and _parquet_has_images(fs, name):
            found.append((name, ShardFormat.PARQUET))
    return found


def list_shards(spec: str | list[str]) -> list[ShardRef]:
    """Expand an input spec into shards, sorted by path.

    Args:
      spec: one or more (comma-separated, or a list) paths, globs, brace
        patterns or folders, local or fsspec URLs. A folder contributes its
        ``*.tar`` shards, its parquet files that hold image bytes (sidecars
        do not count) and its sub-folders of images (``files`` format).

    Raises:
      InputError: a pattern matches nothing, naming the pattern.
    """
    patterns = [s for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",") if s.strip()]
    found: dict[str, str] = {}
    for pattern in patterns:
        for expanded in expand_braces(pattern.strip()):
            fs, root = _fs(expanded)
            paths = fs.glob(root) if any(ch in root for ch in "*?[") else ([root] if fs.exists(root) else [])
            if not paths:
                raise InputError(f"input {expanded!r} matches no file or folder")
            for path in sorted(paths):
                if fs.isdir(path):
                    sub = _shards_in_dir(fs, path)
                    if not sub and not any(n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS for n in fs.ls(path, detail=False)):
                        raise InputError(f"folder {expanded!r} holds no img2dataset shards (.tar, image parquet, or image folders)")
                    for p, fmt in sub or [(path, ShardFormat.FILES)]:
                        found[_unstrip(fs, p)] = fmt
                elif path.endswith(".tar"):
                    found[_unstrip(fs, path)] = ShardFormat.WEBDATASET
                elif path.endswith(".parquet"):
                    found[_unstrip(fs, path)] = ShardFormat.PARQUET
                else:
                    raise InputError(f"{path!r} is not a .tar, .parquet or folder shard")
    paths = sorted(found)
    return [ShardRef(p, found[p], sid) for p, sid in zip(paths, _shard_ids(paths))]


def _shard_ids(paths: list[str]) -> list[str]:
    """Output-name ids: the shard stem, made unique with parent folders if needed."""
    def stem(p: str, depth: int) -> str:
        parts = p.rstrip("/").split("/")
        last = parts[-1]
        for suffix in (".tar", ".parquet"):
            if last.endswith(suffix):
                last = last[: -len(suffix)]
        return re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(parts[-1 - depth:-1] + [last]))

    for depth in range(0, 8):
        ids = [stem(p, depth) for p in paths]
        if len(set(ids)) == len(ids):
            return ids
    return [hashlib.sha1(p.encode()).hexdigest()[:12] for p in paths]


def _decode_text(raw: bytes) -> str:
    """UTF-8 with a lossless-enough fallback; captions are never dropped for encoding."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace")


def _meta_from_json(raw: bytes | None) -> dict:
    if raw is None:
        return {}
    try:
        meta = json.loads(_decode_text(raw))
    except json.JSONDecodeError:
        return {"_json_error": True}
    return meta if isinstance(meta, dict) else {"_json_error": True}


def _make_sample(shard: ShardRef, key: str, files: dict[str, bytes]) -> Sample | Reject:
    meta = _meta_from_json(files.get("json"))
    key = str(meta.get("key") or key)
    image_ext = next((e for e in IMAGE_EXTS if e in files), None)
    if meta.get("status") not in (None, "success"):
        return Reject(key, shard.shard_id, f"{meta['status']}: {meta.get('error_message') or ''}".strip(), meta.get("url"))
    if image_ext is None:
        return Reject(key, shard.shard_id, "missing-image", meta.get("url"))
    caption = _decode_text(files["txt"]) if "txt" in files else meta.get("caption")
    image = files[image_ext]
    meta = {k: meta.get(k) for k in META_FIELDS if k in meta}
    if not meta.get("sha256"):
        meta["sha256"] = hashlib.sha256(image).hexdigest()
    return Sample(key, shard.shard_id, image, caption, meta)


def _sidecar_rows(shard: ShardRef) -> dict[str, dict] | None:
    """img2dataset's per-URL sidecar parquet beside a tar/files shard, by key."""
    base = shard.path.rstrip("/")
    if base.endswith(".tar"):
        base = base[:-4]
    fs, root = _fs(base + ".parquet")
    if not fs.exists(root):
        return None
    with fs.open(root, "rb") as f:
        table = pq.read_table(f, columns=None)
    cols = [c for c in ("key", "url", "status", "error_message") if c in table.column_names]
    if "key" not in cols:
        return None
    return {str(r["key"]): r for r in table.select(cols).to_pylist()}


def _with_sidecar(shard: ShardRef, items: Iterator[Sample | Reject]) -> Iterator[Sample | Reject]:
    sidecar = _sidecar_rows(shard)
    seen = set()
    for item in items:
        seen.add(item.key)
        yield item
    for key, row in (sidecar or {}).items():
        if key in seen:
            continue
        status = row.get("status") or "unknown"
        if status == "success":
            reason = "missing-from-shard: listed as downloaded in the sidecar parquet but absent from the shard"
        else:
            reason = f"{status}: {row.get('error_message') or ''}".strip()
        yield Reject(key, shard.shard_id, reason, row.get("url"))


def _read_tar(shard: ShardRef) -> Iterator[Sample | Reject]:
    fs, root = _fs(shard.path)
    current_key, files, last_key = None, {}, None
    try:
        with fs.open(root, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
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
    except (tarfile.TarError, EOFError, OSError) as exc:
        where = f"after key {last_key}" if last_key else "before the first sample"
        if current_key is not None:
            yield Reject(current_key, shard.shard_id, f"truncated-shard: {type(exc).__name__}: {exc}")
        else:
            yield Reject("", shard.shard_id, f"truncated-shard {where}: {type(exc).__name__}: {exc}")
        return
    if current_key is not None:
        yield _make_sample(shard, current_key, files)


def _read_files(shard: ShardRef) -> Iterator[Sample | Reject]:
    fs, root = _fs(shard.path)
    names = sorted(fs.ls(root, detail=False))
    for key, group in itertools.groupby(names, key=lambda n: posixpath.basename(n).split(".", 1)[0]):
        files = {}
        for name in group:
            base = posixpath.basename(name)
            if "." in base:
                with fs.open(name, "rb") as f:
                    files[base.split(".", 1)[1].lower()] = f.read()
        if files:
            yield _make_sample(shard, key, files)


def _read_parquet(shard: ShardRef, batch_rows: int = 256) -> Iterator[Sample | Reject]:
    fs, root = _fs(shard.path)
    with fs.open(root, "rb") as f:
        pf = pq.ParquetFile(f)
        names = pf.schema_arrow.names
        image_col = next((c for c in IMAGE_COLUMNS if c in names), None)
        if image_col is None:
            yield Reject("", shard.shard_id, f"no image column (expected one of {IMAGE_COLUMNS})")
            return
        for i, batch in enumerate(pf.iter_batches(batch_size=batch_rows)):
            for j, row in enumerate(batch.to_pylist()):
                key = str(row.get("key") or f"{shard.shard_id}{i * batch_rows + j:06d}")
                files = {"json": json.dumps({k: row.get(k) for k in META_FIELDS if k in row} | {"key": key}).encode()}
                if row.get(image_col):
                    files[image_col] = row[image_col]
                if row.get("caption") is not None:
                    files["txt"] = str(row["caption"]).encode("utf-8")
                yield _make_sample(shard, key, files)


def read_shard(shard: ShardRef) -> Iterator[Sample | Reject]:
    """Stream a shard's samples and rejects, in shard order.

    Memory: one sample at a time (tar, files) or ``batch_rows`` rows
    (parquet), plus the sidecar's key/status columns.

    A shard that is missing when read yields one shard-level reject
    (``key=""``, reason ``shard-missing``); a truncated tar yields the
    samples before the damage, a ``truncated-shard`` reject, and one
    ``missing-from-shard`` reject per sidecar row that was lost.
    """
    fs, root = _fs(shard.path)
    if not fs.exists(root):
        yield Reject("", shard.shard_id, f"shard-missing: {shard.path} vanished before it was read")
        return
    if shard.format == ShardFormat.WEBDATASET:
        yield from _with_sidecar(shard, _read_tar(shard))
    elif shard.format == ShardFormat.FILES:
        yield from _with_sidecar(shard, _read_files(shard))
    elif shard.format == ShardFormat.PARQUET:
        yield from _read_parquet(shard)
    else:
        raise ValueError(f"unknown shard format {shard.format!r}; expected one of {ShardFormat.ALL}")
