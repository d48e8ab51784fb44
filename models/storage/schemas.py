"""Every stage's output schema, in one place.

Stages write Parquet with these explicit schemas (``pa.Table.from_pylist(rows,
schema=...)``), and readers validate against them, so a schema change is one
edit here plus the test in ``tests/models/test_schemas.py``.
"""
from __future__ import annotations

import pyarrow as pa

# --- embed --------------------------------------------------------------------
# metadata/metadata_{shard}.parquet, row-aligned with img_emb/img_emb_{shard}.npy.
# sample_id = "<absolute shard URL>::<key>" (models.storage.ids); sha256 is always set (computed when the
# shard lacks it), md5 only when the shard carries one (img2dataset --compute_hash md5).
EMBED_METADATA = pa.schema([
    ("key", pa.string()),
    ("sample_id", pa.string()),
    ("url", pa.string()),
    ("caption", pa.string()),
    ("sha256", pa.string()),
    ("md5", pa.string()),
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
# (key "" means the whole shard, e.g. it vanished or was truncated before its first sample;
# sample_id is then "" too).
REJECTS = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("url", pa.string()),
    ("reason", pa.string()),
    ("stage", pa.string()),
    ("sample_id", pa.string()),
])

# --- dedup -------------------------------------------------------------------
# groups/groups_{part}.parquet: one row per input row of embedding part {part}, same order.
DEDUP_GROUPS = pa.schema([
    ("key", pa.string()),
    ("sample_id", pa.string()),         # the row's identity (models.storage.ids); keys may repeat across folders
    ("group_id", pa.string()),          # sample_id of the group's first member (smallest part/row id); own for singletons
    ("group_size", pa.int64()),
    ("is_representative", pa.bool_()),
    ("representative_key", pa.string()),
    ("max_cosine", pa.float32()),       # to any other member; null for singletons
    ("part", pa.string()),
])

# The increment index of a dedup run (transforms/dedup/store.py): what the next increment reads instead of
# re-reading old parts. partitions/{q}/{a}-{b}.parquet: the rows this run added to partition q; "vec" is
# each row as stored in its part (fixed_size_binary of dim x itemsize bytes; the numpy dtype is the schema
# metadata b"dtype"), so the schema is completed per file by transforms.dedup.store.partition_schema.
PARTITION_ROW_FIELDS = [
    ("gid", pa.int64()),                # part index << 32 | row, stable along a run chain
    ("is_home", pa.bool_()),            # the row's nearest centroid is q (else a spilled visitor)
    ("home", pa.int32()),               # the row's home partition
    ("spill", pa.list_(pa.int32())),    # homes: the partitions the row also visits (empty for visitors)
]
# index/hashes/bucket-{b}.parquet: exact hashes of the run's new rows, bucket = crc32(hash) mod buckets
HASH_INDEX = pa.schema([("hash", pa.string()), ("gid", pa.int64()), ("key", pa.string())])
# index/rows/bucket-{b}.parquet: the group of every row the run labelled, bucket = hash of gid
ROW_INDEX = pa.schema([("gid", pa.int64()), ("group_id", pa.string())])
# index/groups/bucket-{b}.parquet: every member of every group the run labelled, bucket = crc32(group_id)
GROUP_INDEX = pa.schema([
    ("group_id", pa.string()),
    ("gid", pa.int64()),
    ("key", pa.string()),
    ("sample_id", pa.string()),
    ("area", pa.int64()),
    ("group_size", pa.int64()),
    ("is_representative", pa.bool_()),
    ("representative_key", pa.string()),
    ("max_cosine", pa.float32()),
])

# edges/edges_{partition}.parquet (near) and edges/exact_{n}.parquet (exact)
DEDUP_EDGES = pa.schema([
    ("key_a", pa.string()),
    ("key_b", pa.string()),
    ("cosine", pa.float32()),
    ("kind", pa.string()),              # "near" | "exact"
])

# drop_keys.parquet/part-{part}.parquet: the rows an upstream filter removes
DROP_KEYS = pa.schema([
    ("key", pa.string()),
    ("sample_id", pa.string()),         # what to drop: keys may repeat across folders, sample ids do not
    ("group_id", pa.string()),
    ("representative_key", pa.string()),
    ("reason", pa.string()),
])

# --- mine --------------------------------------------------------------------
# object_tags/object_tags_{part}.parquet
OBJECT_TAGS = pa.schema([
    ("key", pa.string()),
    ("object", pa.string()),
    ("score", pa.float32()),
    ("sample_id", pa.string()),        # models.storage.ids.sample_id of the row
])

# keyword_triggers.parquet (ranked; columns added by models.mine.statistics are kept)
KEYWORD_TRIGGERS = pa.schema([
    ("keyword", pa.string()),
    ("n", pa.int64()),
    ("n_in_groups", pa.int64()),
    ("top_group_id", pa.string()),
    ("top_group_share", pa.float64()),
    ("lift", pa.float64()),
    ("p_value", pa.float64()),
    ("q_value", pa.float64()),
    ("example_keys", pa.list_(pa.string())),
    ("flagged", pa.bool_()),
    ("rank", pa.int64()),
])

# object_triggers.parquet (ranked; schema metadata "bh_family" = the number of (keyword, object) pairs tested)
OBJECT_TRIGGERS = pa.schema([
    ("keyword", pa.string()),
    ("object", pa.string()),
    ("object_index", pa.int64()),         # the object's index in the tagger's vocabulary (names may repeat)
    ("n_w", pa.int64()),
    ("n_o", pa.int64()),
    ("n_wo", pa.int64()),
    ("p_o_given_w", pa.float64()),
    ("p_o_given_not_w", pa.float64()),
    ("lift", pa.float64()),
    ("absent_fraction", pa.float64()),
    ("p_value", pa.float64()),
    ("q_value", pa.float64()),
    ("flagged", pa.bool_()),
    ("rank", pa.int64()),
    ("unmentioned_reason", pa.string()),  # flagged pairs: why the captions were judged not to name the object
])

# flagged_prompts.parquet: the hand-off to scoring
FLAGGED_PROMPTS = pa.schema([
    ("prompt", pa.string()),
    ("kind", pa.string()),             # duplicate-caption | word-trigger | object-trigger
    ("keyword", pa.string()),
    ("object", pa.string()),
    ("group_ids", pa.list_(pa.string())),
    ("support", pa.int64()),
    ("evidence", pa.string()),         # JSON of the statistics that flagged it
    ("rank", pa.int64()),
])

# --- score -------------------------------------------------------------------
# prompt_scores.parquet: one row per (prompt, check), flagged and reference prompts
PROMPT_SCORES = pa.schema([
    ("prompt", pa.string()),
    ("check", pa.string()),            # plaplace | plaplace-train | wen | jeon | side | side-baseline
    ("statistic", pa.float64()),
    ("spread", pa.float64()),          # std of the per-sample statistic
    ("threshold", pa.float64()),       # 1 - fpr quantile of the reference prompts (NaN without references)
    ("decision", pa.bool_()),          # statistic > threshold: memorized
    ("role", pa.string()),             # flagged | reference
    ("n_samples", pa.int64()),
    ("seed", pa.int64()),
    ("cost_evals", pa.int64()),        # model (eps) evaluations
    ("seconds", pa.float64()),
    ("group_ids", pa.list_(pa.string())),  # duplicate groups the item stands for (per-group rows of unconditional targets)
])

# extractions.parquet (lambda runs) and extractions_baseline.parquet (lambda = 0): SIDE generations matched to the training set
EXTRACTIONS = pa.schema([
    ("generation_id", pa.string()),
    ("prompt", pa.string()),
    ("matched_key", pa.string()),
    ("similarity", pa.float64()),
    ("band", pa.string()),             # low | mid | high | null (below every band)
    ("group_id", pa.string()),         # duplicate group of the matched image, null for singletons
])

ALL = {
    "embed.metadata": EMBED_METADATA,
    "rejects": REJECTS,
    "dedup.groups": DEDUP_GROUPS,
    "dedup.edges": DEDUP_EDGES,
    "dedup.drop_keys": DROP_KEYS,
    "mine.object_tags": OBJECT_TAGS,
    "mine.keyword_triggers": KEYWORD_TRIGGERS,
    "mine.object_triggers": OBJECT_TRIGGERS,
    "mine.flagged_prompts": FLAGGED_PROMPTS,
    "score.prompt_scores": PROMPT_SCORES,
    "score.extractions": EXTRACTIONS,
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
