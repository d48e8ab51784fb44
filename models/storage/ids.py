"""Sample identity: the plain key of a row and its fully qualified sample id.

img2dataset numbers keys from ``000000000`` in every download, so a bare key
is not unique across folders (two downloads into ``a/`` and ``b/`` both have
``000000000``). Every output row therefore carries both:

* ``key``: the plain per-shard key, as the source wrote it;
* ``sample_id``: ``SHARD_URL::KEY``, with ``SHARD_URL`` the absolute URL of the
  input shard (``file:///data/a/00000.tar``, ``s3://bucket/laion/00000.tar``),
  unique dataset-wide. Drop lists and joins use ``sample_id``.

Folders made elsewhere (LAION's or clip-retrieval's published embedding
folders) may lack ``key``: the plain key comes from the first of
:data:`KEY_SOURCES` present, else ``PART:ROW``; the qualifying URL is then the
metadata file's own URL.
"""
from __future__ import annotations

import posixpath
from typing import NamedTuple

import fsspec
import pyarrow as pa

KEY_SOURCES = ("key", "image_path", "url")
ROW_NUMBER = "row"  # the key source name when none of KEY_SOURCES is present
SEPARATOR = "::"


def absolute_url(path: str) -> str:
    """``path`` (local, relative, ``file://`` or any fsspec URL) as one canonical absolute URL."""
    fs, stripped = fsspec.core.url_to_fs(path)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        stripped = posixpath.normpath(stripped)
    return fs.unstrip_protocol(stripped)


def sample_id(source_url: str, key: str) -> str:
    """The fully qualified id of ``key`` in the shard at ``source_url`` (already absolute)."""
    return f"{source_url}{SEPARATOR}{key}"


class RowKeys(NamedTuple):
    """The plain keys of one metadata table and the column they came from."""

    keys: list[str]
    source: str  # one of KEY_SOURCES or ROW_NUMBER


def row_keys(meta: pa.Table, part: str) -> RowKeys:
    """Plain keys of ``meta``'s rows: ``key``, else ``image_path``, else ``url``, else ``PART:ROW``.

    A column counts only when every value is present; a column with nulls
    falls through to the next source so no two rows share ``None``.
    """
    for name in KEY_SOURCES:
        if name in meta.column_names and meta.column(name).null_count == 0:
            return RowKeys([str(k) for k in meta.column(name).to_pylist()], name)
    return RowKeys([f"{part}:{i}" for i in range(meta.num_rows)], ROW_NUMBER)


class SampleRef(NamedTuple):
    """A sample id split back into the absolute URL of its shard and its plain key."""

    source_url: str
    key: str


def split_sample_id(value: str) -> SampleRef:
    """``SHARD_URL::KEY`` -> :class:`SampleRef`; the first separator splits (URLs hold no ``::``, keys may).

    Raises:
      ValueError: ``value`` has no separator (a bare key, not a sample id).
    """
    url, sep, key = value.partition(SEPARATOR)
    if not sep:
        raise ValueError(f"{value!r} is not a sample id (expected SHARD_URL{SEPARATOR}KEY)")
    return SampleRef(url, key)
