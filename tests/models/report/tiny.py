"""Hand-made stage folders for the report's unit tests: every row known, no pipeline run.

Embeddings (one webdataset shard ``00000``, six rows k0..k5, k5's image bytes broken)::

    group "k0": k0 (representative), k1, k2      cosines to k0: 1, 0.8, 0.6
    group "k4": k3, k4 (representative)         cosine 0.0
    singleton k5

Mine: three keywords (``beta`` flagged rank 3, ``alpha`` rank 1 and ``gamma``
rank 2 not flagged), one object trigger ``"red" -> "ball"`` (k0, k1 and k3 tagged
``ball``; only k0's and k1's captions say "red"), two flagged prompts. Score:
two prompts' checks, three extractions, two SIDE grids, one saved generation.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from models.storage import ids, layout, schemas

CAPTIONS = {"k0": "a red ball <b>bold</b>", "k1": "red balls", "k2": "a blue cube", "k3": "a green ball",
            "k4": "green", "k5": "broken image"}
COLORS = {"k0": (200, 0, 0), "k1": (190, 10, 10), "k2": (0, 0, 200), "k3": (0, 200, 0), "k4": (10, 190, 10)}
VECTORS = {"k0": [1.0, 0.0, 0.0], "k1": [0.8, 0.6, 0.0], "k2": [0.6, 0.0, 0.8], "k3": [0.0, 1.0, 0.0],
           "k4": [0.0, 0.0, 1.0], "k5": [0.0, 0.6, 0.8]}
KEYS = list(CAPTIONS)


class Tiny(NamedTuple):
    embeddings: Path
    dedup: Path
    mine: Path
    score: Path


def sid(root: Path, key: str) -> str:
    """The sample id of ``key`` in the tiny shard under ``root`` (as the embed stage writes it)."""
    return ids.sample_id(ids.absolute_url(str(root / "00000.tar")), key)


def png(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(color, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def write_shard(path: Path, images: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, data in images.items():
            for ext, payload in (("jpg", data), ("txt", CAPTIONS[key].encode()), ("json", json.dumps({"key": key}).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_embeddings(root: Path, with_shards: bool = True) -> Path:
    emb = root / "emb"
    (emb / "metadata").mkdir(parents=True)
    images = {k: jpeg(COLORS[k]) for k in COLORS} | {"k5": b"\xff\xd8 not a jpeg"}
    write_shard(root / "00000.tar", images)
    meta = pa.table({"key": KEYS, "sample_id": [sid(root, k) for k in KEYS], "caption": [CAPTIONS[k] for k in KEYS],
                     "shard": ["00000"] * len(KEYS)})
    pq.write_table(meta, emb / "metadata" / "metadata_00000.parquet")
    layout.write_npy(str(emb / "img_emb" / "img_emb_00000.npy"), np.array([VECTORS[k] for k in KEYS], np.float16))
    shards = [{"path": str(root / "00000.tar"), "format": "webdataset", "shard_id": "00000"}] if with_shards else []
    layout.write_json(str(emb / "config.json"), {"shards": shards})
    layout.write_json(str(emb / "_done" / "00000.json"), {"rows": len(KEYS)})   # dupmine-made parts count once marked
    layout.write_json(str(emb / "stats.json"), {"rows": len(KEYS), "rejects": 1})
    rejects = [{"key": "k9", "shard": "00000", "url": "http://x.invalid/9", "reason": "corrupt-image: bad header", "stage": "embed"}]
    layout.write_parquet(str(emb / "rejects" / "rejects_00000.parquet"), schemas.table(rejects, schemas.REJECTS))
    return emb


def group_rows(root: Path | None = None) -> list[dict]:
    """Group rows; with ``root``, each carries its sample id (as the dedup stage writes them), else keys only."""
    def row(key, gid, size, rep, cos):
        return {"key": key, "sample_id": None if root is None else sid(root, key), "group_id": gid, "group_size": size,
                "is_representative": key == rep, "representative_key": rep, "max_cosine": cos, "part": "00000"}

    return [row("k0", "k0", 3, "k0", 0.8), row("k1", "k0", 3, "k0", 0.8), row("k2", "k0", 3, "k0", 0.6),
            row("k3", "k4", 2, "k4", 0.0), row("k4", "k4", 2, "k4", 0.0), row("k5", "k5", 1, "k5", None)]


def write_dedup(root: Path, summary: bool = True) -> Path:
    dd = root / "dd"
    layout.write_parquet(str(dd / "groups" / "groups_00000.parquet"), schemas.table(group_rows(root), schemas.DEDUP_GROUPS))
    if summary:
        layout.write_json(str(dd / "summary.json"), {"groups": 3, "duplicate_groups": 2, "rows_in_duplicate_groups": 5,
                                                     "rows_dropped": 3, "duplicate_fraction": 0.5})
    rejects = [{"key": "k8", "shard": "00000", "url": None, "reason": "zero-vector", "stage": "dedup"},
               {"key": "k7", "shard": "00000", "url": None, "reason": "zero-vector: norm 0", "stage": "dedup"}]
    layout.write_parquet(str(dd / "rejects" / "rejects_00000.parquet"), schemas.table(rejects, schemas.REJECTS))
    return dd


def write_mine(root: Path) -> Path:
    mine = root / "mine"
    words = [
        {"keyword": "alpha", "n": 10, "n_in_groups": 2, "top_group_id": "k4", "top_group_share": 0.2, "lift": 1.5,
         "q_value": 0.5, "example_keys": ["k3"], "flagged": False, "rank": 1},
        {"keyword": "gamma", "n": 4, "n_in_groups": 0, "top_group_id": None, "top_group_share": 0.0, "lift": None,
         "q_value": 1.0, "example_keys": [], "flagged": False, "rank": 2},
        {"keyword": "beta", "n": 3, "n_in_groups": 3, "top_group_id": "k0", "top_group_share": 1.0, "lift": 8.0,
         "q_value": 0.01, "example_keys": ["k0", "k1", "k2", "k5"], "flagged": True, "rank": 3},
    ]
    layout.write_parquet(str(mine / "keyword_triggers.parquet"), schemas.table(words, schemas.KEYWORD_TRIGGERS))
    obj = {"keyword": "red", "object": "ball", "n_w": 2, "n_o": 3, "n_wo": 2, "p_o_given_w": 1.0, "p_o_given_not_w": 0.25,
           "lift": 4.0, "absent_fraction": 0.5, "p_value": 0.01, "q_value": 0.02, "flagged": True, "rank": 1}
    layout.write_parquet(str(mine / "object_triggers.parquet"), schemas.table([obj], schemas.OBJECT_TRIGGERS))
    tags = [{"key": k, "object": "ball", "score": 1.0} for k in ("k0", "k1", "k3")]
    layout.write_parquet(str(mine / "object_tags" / "object_tags_00000.parquet"), schemas.table(tags, schemas.OBJECT_TAGS))
    prompts = [
        {"prompt": "green", "kind": "duplicate-caption", "keyword": None, "object": None, "group_ids": ["k4"], "support": 2,
         "evidence": json.dumps({"group_size": 2}), "rank": 2},
        {"prompt": "a red ball", "kind": "word-trigger", "keyword": "beta", "object": None, "group_ids": ["k0"], "support": 3,
         "evidence": json.dumps({"lift": 8.0, "q": 0.01}), "rank": 1},
    ]
    layout.write_parquet(str(mine / "flagged_prompts.parquet"), schemas.table(prompts, schemas.FLAGGED_PROMPTS))
    return mine


def write_score(root: Path) -> Path:
    score = root / "score"
    rows = [{"prompt": p, "check": c, "statistic": s, "threshold": 0.5, "decision": s > 0.5, "role": "flagged",
             "n_samples": 4, "seed": 0, "cost_evals": 40}
            for p, c, s in (("a red ball", "wen", 0.9), ("a red ball", "plaplace", 0.7), ("green", "wen", 0.1))]
    layout.write_parquet(str(score / "prompt_scores.parquet"), schemas.table(rows, schemas.PROMPT_SCORES))
    ext = [
        {"generation_id": "r01g000000", "prompt": "a red ball", "matched_key": "k1", "similarity": 0.95, "band": "high", "group_id": "k0"},
        {"generation_id": "r01g000001", "prompt": "a red ball", "matched_key": "k0", "similarity": 0.7, "band": "mid", "group_id": "k0"},
        {"generation_id": "r00g000000", "prompt": None, "matched_key": "k3", "similarity": 0.99, "band": "high", "group_id": "k4"},
    ]
    layout.write_parquet(str(score / "extractions.parquet"), schemas.table(ext, schemas.EXTRACTIONS))
    (score / "grids").mkdir()
    (score / "grids" / "side_00.png").write_bytes(png((0, 0, 0), (80, 40)))
    (score / "grids" / "side_01.png").write_bytes(png((255, 255, 255), (80, 40)))
    (score / "generations").mkdir()
    (score / "generations" / "r01g000000.png").write_bytes(png((250, 0, 0)))
    layout.write_json(str(score / "side_summary.json"), {"K": 4, "bands": {"mid": {"AMS": 0.5, "UMS": 0.25},
                                                                            "high": {"AMS": 0.25, "UMS": 0.25}}})
    return score


def write_all(root: Path) -> Tiny:
    return Tiny(write_embeddings(root), write_dedup(root), write_mine(root), write_score(root))
