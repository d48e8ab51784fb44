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
from models.storage.ids import KEY_SOURCES


class ExampleQuery(NamedTuple):
    """Rows to find for one object trigger: tagged with its object and captioned with its keyword."""

    keyword: str
    tagged: set[str]


class MetadataScan(NamedTuple):
    rows: dict[str, ShownRow]      # reference (sample id, or the plain key asked for) -> row
    examples: list[list[str]]      # per query, up to ``per_query`` sample ids in metadata order


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

    References in ``wanted`` and in the queries' ``tagged`` sets are sample ids
    or plain keys (stages that name rows by key only). Rows are identified as
    :meth:`EmbeddingFolder.part_ids` identifies them (``sample_id``, else
    :func:`models.storage.ids.row_keys` qualified by the metadata file's URL).
    ``rows`` holds each found row under its sample id and, when it was asked for
    by key, under that key too; a key that names rows of several shards resolves
    to the first in part order (a plain key cannot tell them apart). Examples are
    listed by sample id.
    """
    folder = layout.EmbeddingFolder(embeddings)
    found: dict[str, ShownRow] = {}
    examples: list[list[str]] = [[] for _ in queries]
    wanted_arr = pa.array(sorted(wanted), pa.string())
    patterns = [(keyword_regex(q.keyword), pa.array(sorted(q.tagged), pa.string())) for q in queries]
    for part in folder.parts():
        meta = read_table(folder.metadata(part), [*KEY_SOURCES, "sample_id", "caption", "shard"])
        n = meta.num_rows
        ids = folder.part_ids(part, meta)
        keys, sample_ids = pa.array(ids.keys, pa.string()), pa.array(ids.sample_ids, pa.string())
        captions = meta.column("caption").cast(pa.string()) if "caption" in meta.column_names else pa.nulls(n, pa.string())
        shards = meta.column("shard").to_pylist() if "shard" in meta.column_names else [None] * n

        def named(refs: pa.Array) -> pa.Array:
            return pc.or_(pc.is_in(sample_ids, value_set=refs), pc.is_in(keys, value_set=refs))

        picked = set(_mask_rows(named(wanted_arr)).tolist())
        for q, (pattern, tagged) in enumerate(patterns):
            if pattern is None or len(examples[q]) >= per_query or len(tagged) == 0:
                continue
            mask = pc.and_(named(tagged), pc.match_substring_regex(captions, pattern, ignore_case=True))
            for i in _mask_rows(mask)[: per_query - len(examples[q])]:
                examples[q].append(ids.sample_ids[int(i)])
                picked.add(int(i))
        for i in sorted(picked):
            row = ShownRow(ids.keys[i], ids.sample_ids[i], captions[i].as_py(), shards[i], part, i)
            found.setdefault(row.sample_id, row)
            if row.key in wanted:
                found.setdefault(row.key, row)
    return MetadataScan(found, examples)


def count_rows(embeddings: str) -> int:
    """Metadata rows of the complete parts, from the Parquet footers (no data read)."""
    folder = layout.EmbeddingFolder(embeddings)
    return sum(parquet_rows(folder.metadata(part)) for part in folder.parts())
