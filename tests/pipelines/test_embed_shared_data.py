"""Real data: the CC3M shard embedded with the shared pretrained MobileNet (skips without ../shared/data)."""
from collections import defaultdict

import numpy as np

from models.storage import layout
from pipelines import dedup, embed

MOBILENET_PRE = '{"size": 224, "resize": "squash", "offset": 128, "scale": 128}'


def test_cc3m_placeholder_duplicates_have_cosine_near_one_and_end_in_one_group(shared_data, tmp_path):
    out = str(tmp_path / "emb")
    stats = embed.run(["--input", str(shared_data / "cc3m" / "00000.tar"), "--output", out,
                       "--model", f"onnx:{shared_data / 'models' / 'mobilenet_v1_embedding.onnx'}",
                       "--preprocess", MOBILENET_PRE, "--batch-size", "32"])
    folder = layout.EmbeddingFolder(out)
    (part,) = folder.parts()
    meta = layout.read_parquet(folder.metadata(part), ["key", "url", "sha256"]).to_pylist()
    assert stats["rows"] + stats["rejects"] == 3650 and stats["rows"] == len(meta)
    emb = np.asarray(layout.read_npy(folder.img_emb(part)), np.float32)
    groups = groups_by_sha(meta)
    assert groups, "the CC3M shard should contain exact duplicates (dead-link placeholders)"
    for rows in groups:
        assert len({meta[j]["url"] for j in rows}) == len(rows)  # different URLs, same bytes
        sims = emb[rows] @ emb[rows].T
        assert sims.min() >= 0.99

    # dedup: every equal-sha256 set lands in one group (exact edges, and cosine >= 0.99 >= threshold)
    summary = dedup.run(["--embeddings", out, "--output", str(tmp_path / "dd")])
    groups = {r["key"]: r for r in layout.read_parquet(str(tmp_path / "dd" / "groups")).to_pylist()}
    assert summary["rows_grouped"] == len(meta)
    for rows in groups_by_sha(meta):
        assert len({groups[meta[j]["key"]]["group_id"] for j in rows}) == 1
        assert groups[meta[rows[0]]["key"]]["group_size"] >= len(rows)


def groups_by_sha(meta):
    by_sha = defaultdict(list)
    for j, m in enumerate(meta):
        by_sha[m["sha256"]].append(j)
    return [rows for rows in by_sha.values() if len(rows) > 1]
