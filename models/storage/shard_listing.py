"""Listing img2dataset shards: input specs -> :class:`models.storage.shards.ShardRef` s, on the driver.

Cost on an object store: one listing per folder (plus one per unmarked
sub-folder and one parquet footer per folder), one ``info`` per named path,
never one request per shard of a folder and never a sidecar's footer (a
sidecar is known by its name: ``NNNNN.parquet`` beside ``NNNNN.tar``).
"""
from __future__ import annotations

import hashlib
import re

import pyarrow.parquet as pq
from braceexpand import braceexpand

from models.storage import layout
from models.storage.shards import IMAGE_COLUMNS, IMAGE_EXTS, InputError, ShardFormat, ShardRef, shard_stem

_DESCENDING = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """Shell brace expansion (``braceexpand``): ``{a..b}`` zero-padded like ``a``, ``{x,y}`` lists.

    >>> expand_braces("s/{00000..00002}.tar")
    ['s/00000.tar', 's/00001.tar', 's/00002.tar']

    Raises:
      InputError: a numeric range runs backwards (``{5..1}``): shard ranges are ascending.
    """
    for m in _DESCENDING.finditer(pattern):
        if int(m.group(2)) < int(m.group(1)):
            raise InputError(f"brace range {m.group(0)!r} in {pattern!r} is empty (end < start)")
    return list(braceexpand(pattern))


def _unstrip(fs, path: str) -> str:
    """Turn an fs-internal path back into a URL the same fs reopens (local paths stay paths)."""
    return path if layout.is_local(fs) else fs.unstrip_protocol(path)


def _has_images(names) -> bool:
    return any(n.rsplit(".", 1)[-1].lower() in IMAGE_EXTS for n in names)


def _shards_in_dir(fs, root: str) -> list[tuple[str, ShardFormat]]:
    """The shards of one folder, from one listing.

    A ``NNNNN.parquet`` beside ``NNNNN.tar`` or ``NNNNN/`` is img2dataset's
    sidecar, known by name: no footer is opened here. A sub-folder with a
    sidecar or ``NNNNN_stats.json`` is a files shard without listing it;
    others are listed once to see whether they hold images. Standalone
    parquet files are parquet shards: the first one's schema is checked here
    (a folder of URL lists fails at once), the rest by the workers that read
    them (no image column -> a ``corrupt-shard`` reject).
    """
    entries = fs.ls(root, detail=True)
    names = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries}
    tar_or_dir = {shard_stem(e["name"]) for e in entries if e["type"] == "directory" or e["name"].endswith(".tar")}
    found, parquets = [], []
    for e in entries:
        name = e["name"].rstrip("/")
        stem = shard_stem(name)
        if e["type"] == "directory":
            marked = f"{stem}.parquet" in names or f"{stem}_stats.json" in names
            if marked or _has_images(fs.ls(name, detail=False)):
                found.append((name, ShardFormat.FILES))
        elif name.endswith(".tar"):
            found.append((name, ShardFormat.WEBDATASET))
        elif name.endswith(".parquet") and stem not in tar_or_dir:
            parquets.append(name)
    if parquets:
        first = sorted(parquets)[0]
        with fs.open(first, "rb") as f:
            columns = pq.ParquetFile(f).schema_arrow.names
        if not any(c in columns for c in IMAGE_COLUMNS):
            if not found:
                raise InputError(f"{_unstrip(fs, first)} has no image column (expected one of {IMAGE_COLUMNS}): "
                                 f"not an img2dataset parquet shard (a URL list? run dupmine download first)")
        else:
            found += [(p, ShardFormat.PARQUET) for p in parquets]
    return found


def _matches(fs, root: str) -> dict[str, str]:
    """``path -> "file" | "directory"`` for a glob (one listing) or a plain path (one ``info``).

    Raises:
      InputError: nothing matches.
    """
    if any(ch in root for ch in "*?["):
        matches = {p: info["type"] for p, info in fs.glob(root, detail=True).items()}
    else:
        try:
            matches = {root: fs.info(root)["type"]}
        except (FileNotFoundError, NotADirectoryError):
            matches = {}
    if not matches:
        raise InputError(f"input {fs.unstrip_protocol(root) if not layout.is_local(fs) else root!r} matches no file or folder")
    return matches


def list_shards(spec: str | list[str]) -> list[ShardRef]:
    """Expand an input spec into shards, sorted by path.

    Args:
      spec: one or more (comma-separated, or a list) paths, globs, brace
        patterns or folders, local or fsspec URLs. A folder contributes its
        ``*.tar`` shards, its parquet shards (sidecars, named like a tar or
        folder beside them, do not count) and its sub-folders of images
        (``files`` format). Cost: one listing per folder (plus one per
        unmarked sub-folder and one parquet footer), never one per shard.

    Raises:
      InputError: a pattern matches nothing, naming the pattern.
    """
    patterns = [s for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",") if s.strip()]
    found: dict[str, ShardFormat] = {}
    for pattern in patterns:
        for expanded in expand_braces(pattern.strip()):
            fs, root = layout.filesystem(expanded)
            for path, kind in sorted(_matches(fs, root).items()):
                if kind == "directory":
                    sub = _shards_in_dir(fs, path)
                    if not sub and not _has_images(fs.ls(path, detail=False)):
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
        return re.sub(r"[^A-Za-z0-9._-]", "_", "_".join(parts[-1 - depth:-1] + [shard_stem(parts[-1])]))

    for depth in range(0, 8):
        shard_ids = [stem(p, depth) for p in paths]
        if len(set(shard_ids)) == len(shard_ids):
            return shard_ids
    return [hashlib.sha1(p.encode()).hexdigest()[:12] for p in paths]
