"""Every stage's output schema, in one place.

Stages write Parquet with these explicit schemas (``pa.Table.from_pylist(rows,
schema=...)``), and readers validate against them, so a schema change is one
edit here plus the test in ``tests/models/test_schemas.py``.
"""
from __future__ import annotations

import pyarrow as pa

# --- embed --------------------------------------------------------------------
# metadata/metadata_{shard}.parquet, row-aligned with img_emb/img_emb_{shard}.npy
EMBED_METADATA = pa.schema([
    ("key", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("sha256", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("original_width", pa.int32()),
    ("original_height", pa.int32()),
    ("status", pa.string()),
    ("error_message", pa.string()),
    ("exif", pa.string()),
    ("shard", pa.string()),
])

# rejects/rejects_{shard}.parquet: one row per input sample that has no embedding
# (key "" means the whole shard, e.g. it vanished or was truncated before its first sample).
REJECTS = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("url", pa.string()),
    ("reason", pa.string()),
    ("stage", pa.string()),
])

ALL = {
    "embed.metadata": EMBED_METADATA,
    "rejects": REJECTS,
}


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> table with exactly ``schema``'s columns (missing keys become null).

    Raises:
      ValueError: a row carries a column the schema does not have.
    """
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise ValueError(f"columns {sorted(extra)} are not in the schema {schema.names}")
    return pa.Table.from_pylist(rows, schema=schema)
