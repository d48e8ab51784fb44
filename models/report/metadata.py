"""Captions and locations of the rows shown, and object-trigger examples, in one pass over the metadata.

Memory: one part's ``key``/``caption``/``shard`` columns at a time.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.report.reading import parquet_rows, read_table
from models.report.rows import ShownRow
from models.storage import layout
from models.storage.ids import KEY_SOURCES, row_keys


class ExampleQuery(NamedTuple):
    """Rows to find for one object trigger: tagged with its object and captioned with its keyword."""

    keyword: str
    tagged: set[str]


class MetadataScan(NamedTuple):
    rows: dict[str, ShownRow]      # key -> row, for the wanted keys and every example found
    examples: list[list[str]]      # per query, up to ``per_query`` keys in metadata order


def keyword_regex(keyword: str) -> str | None:
    """RE2 pattern: every token of a (lemmatised) keyword as a word prefix, in order; ``None`` for no token.

    Lemmas are prefixes of most surface forms (``paint`` / ``painting``), so
    this finds the captions the mine stage counted for the keyword, bar
    irregular forms (``mouse`` / ``mice``). Word boundaries use Unicode
    letter/number classes (RE2's ``\\b`` is ASCII only).
    """
    tokens = [t for t in re.split(r"[\W_]+", keyword) if t]
    if not tokens:
        return None
    word, sep = r"[\pL\pN]", r"[^\pL\pN]"
    return rf"(?:^|{sep})" + rf"{word}*{sep}+".join(re.escape(t) for t in tokens)


def _mask_rows(mask: pa.Array) -> np.ndarray:
    """Indices where a boolean Arrow mask is true (nulls count as false)."""
    return np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))


def scan_metadata(embeddings: str, wanted: set[str], queries: list[ExampleQuery], per_query: int) -> MetadataScan:
    """One pass over the metadata parts of an embedding folder.

    Keys come from :func:`models.storage.ids.row_keys` (``key``, else
    ``image_path``, else ``url``, else ``PART:ROW``), as the other stages name rows.
    """
    folder = layout.EmbeddingFolder(embeddings)
    found: dict[str, ShownRow] = {}
    examples: list[list[str]] = [[] for _ in queries]
    wanted_arr = pa.array(sorted(wanted), pa.string())
    patterns = [(keyword_regex(q.keyword), pa.array(sorted(q.tagged), pa.string())) for q in queries]
    for part in folder.parts():
        meta = read_table(folder.metadata(part), [*KEY_SOURCES, "caption", "shard"])
        n = meta.num_rows
        keys = pa.array(row_keys(meta, part).keys, pa.string())
        captions = meta.column("caption").cast(pa.string()) if "caption" in meta.column_names else pa.nulls(n, pa.string())
        shards = meta.column("shard").to_pylist() if "shard" in meta.column_names else [None] * n
        picked = set(_mask_rows(pc.is_in(keys, value_set=wanted_arr)).tolist())
        for q, (pattern, tagged) in enumerate(patterns):
            if pattern is None or len(examples[q]) >= per_query or len(tagged) == 0:
                continue
            mask = pc.and_(pc.is_in(keys, value_set=tagged), pc.match_substring_regex(captions, pattern, ignore_case=True))
            for i in _mask_rows(mask)[: per_query - len(examples[q])]:
                examples[q].append(keys[int(i)].as_py())
                picked.add(int(i))
        for i in sorted(picked):
            key = keys[i].as_py()
            if key not in found:
                found[key] = ShownRow(key, captions[i].as_py(), shards[i], part, i)
    return MetadataScan(found, examples)


def count_rows(embeddings: str) -> int:
    """Metadata rows of the complete parts, from the Parquet footers (no data read)."""
    folder = layout.EmbeddingFolder(embeddings)
    return sum(parquet_rows(folder.metadata(part)) for part in folder.parts())
