"""Tolerant readers of stage files: a missing file reads as nothing, missing columns are skipped.

Every path may be a local path or an fsspec URL; all access goes through
:mod:`models.storage.layout` (``exists``, ``list_names``, ``read_bytes``,
``filesystem``).
"""
from __future__ import annotations

import io
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from models.storage import layout


def _is_dir(path: str) -> bool:
    fs, p = layout.filesystem(path)
    return fs.isdir(p)


def parquet_files(path: str) -> list[str]:
    """The ``*.parquet`` files directly inside folder ``path``, sorted; ``[path]`` when it is a file; ``[]`` when missing.

    A folder contributes its ``*.parquet`` files only, so the temporary files of
    an interrupted atomic write are ignored.
    """
    if not layout.exists(path):
        return []
    if not _is_dir(path):
        return [path]
    return sorted(layout.join(path, n) for n in layout.list_names(path) if n.endswith(".parquet"))


def read_each(path: str, columns: list[str] | None = None, filters=None) -> Iterator[pa.Table]:
    """The tables of a Parquet file or of each ``*.parquet`` file in a folder (nothing when missing).

    Only the requested columns that exist are read (LAION metadata may lack
    ``key`` or ``shard``). Memory: one file's bytes (one request per file).
    """
    for f in parquet_files(path):
        data = io.BytesIO(layout.read_bytes(f))
        names = pq.ParquetFile(data).schema_arrow.names
        cols = None if columns is None else [c for c in columns if c in names]
        data.seek(0)
        yield pq.read_table(data, columns=cols, filters=filters)


def read_table(path: str, columns: list[str] | None = None, filters=None) -> pa.Table | None:
    """:func:`read_each` as one table; ``None`` when the path is missing or holds no Parquet file."""
    tables = list(read_each(path, columns, filters))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def parquet_rows(path: str) -> int:
    """Rows of one Parquet file, from its footer (range reads of the footer, no data pages)."""
    fs, p = layout.filesystem(path)
    with fs.open(p, "rb") as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def read_json_object(path: str) -> dict | None:
    """A JSON file as a dict (a non-object value becomes ``{"value": v}``); ``None`` when missing."""
    if not layout.exists(path):
        return None
    obj = layout.read_json(path)
    return obj if isinstance(obj, dict) else {"value": obj}


def read_bytes(path: str) -> bytes:
    return layout.read_bytes(path)


def files_with_suffix(folder: str, suffix: str) -> dict[str, str]:
    """``{file stem: path}`` of the files directly inside ``folder`` whose name ends with ``suffix`` (any case).

    Sorted by path; ``{}`` when the folder is missing; folders with such names are skipped.
    """
    out = {}
    for name in sorted(layout.list_names(folder)):
        path = layout.join(folder, name)
        if name.lower().endswith(suffix) and not _is_dir(path):
            out[name[: -len(suffix)]] = path
    return out


def column(table: pa.Table | None, name: str) -> list:
    """A column as a list; ``[None] * rows`` when the table lacks it; ``[]`` when there is no table."""
    if table is None or name not in table.column_names:
        return [] if table is None else [None] * table.num_rows
    return table.column(name).to_pylist()
