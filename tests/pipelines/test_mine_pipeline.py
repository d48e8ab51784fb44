"""mine end to end on a synthetic corpus with planted word triggers and decoys."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage import layout
from models.storage import schemas
from pipelines import mine

FILLER = ("red", "blue", "green", "small", "large", "bright", "wooden", "table", "garden", "city", "river", "street",
          "sunset", "window", "flower", "mountain", "bicycle", "coffee", "winter", "summer", "forest", "market")


def write_corpus(root, n_parts=2, rows_per_part=800, seed=0, dim=16):
    """Captions + groups with planted triggers.

    * "starry night": 40 rows, 36 of them in one duplicate group G_star (a word trigger);
    * "placeholder": 60 rows, all in a 300-row group (concentrated but the group is 19% of the corpus: lift too low);
    * "poster": 160 rows spread at random (frequent, not concentrated: a decoy);
    * "vintage": 12 rows, 6 in one group (concentration 0.5 but support 6 < 10: not flagged).
    """
    rng = np.random.default_rng(seed)
    n = n_parts * rows_per_part
    captions = [" ".join(rng.choice(FILLER, 4)) for _ in range(n)]
    group = [None] * n
    order = rng.permutation(n)
    star_group, place_group, vint_group = order[:36], order[36:336], order[336:342]
    for i in star_group:
        group[i] = "G_star"
    for i in place_group:
        group[i] = "G_place"
    for i in vint_group:
        group[i] = "G_vint"
    for i in list(star_group) + list(order[400:404]):
        captions[i] = f"the starry night {captions[i]}"
    for i in place_group[:60]:
        captions[i] = f"{captions[i]} placeholder"
    for i in rng.choice(order[500:], 160, replace=False):
        captions[i] = f"{captions[i]} poster"
    for i in list(vint_group) + list(order[420:426]):
        captions[i] = f"vintage {captions[i]}"
    captions[order[-1]] = "   "  # empty after normalisation -> reject row
    keys = [f"{i:09d}" for i in range(n)]
    folder = layout.EmbeddingFolder(str(root / "emb"))
    for p in range(n_parts):
        rows = range(p * rows_per_part, (p + 1) * rows_per_part)
        i = f"{p:05d}"
        layout.write_npy(folder.img_emb(i), rng.standard_normal((rows_per_part, dim)).astype(np.float16))
        os.makedirs(os.path.dirname(folder.metadata(i)), exist_ok=True)
        pq.write_table(pa.table({"key": [keys[r] for r in rows], "caption": [captions[r] for r in rows]}), folder.metadata(i))
        layout.write_json(folder.marker(i), {})
        sizes = {g: group.count(g) for g in ("G_star", "G_place", "G_vint")}
        grows = [{"key": keys[r], "group_id": group[r] or keys[r], "group_size": sizes.get(group[r], 1),
                  "is_representative": True, "representative_key": keys[r], "max_cosine": None, "part": i} for r in rows]
        layout.write_parquet(str(root / "dd" / "groups" / f"groups_{i}.parquet"), schemas.table(grows, schemas.DEDUP_GROUPS))
    return keys, captions, group


def test_word_triggers_found_and_decoys_not_flagged(tmp_path):
    keys, captions, group = write_corpus(tmp_path)
    out = str(tmp_path / "mine")
    summary = mine.run(["--embeddings", str(tmp_path / "emb"), "--groups", str(tmp_path / "dd"), "--output", out, "--tagger", "none"])
    words = pq.read_table(os.path.join(out, "keyword_triggers.parquet")).to_pylist()
    flagged = {r["keyword"] for r in words if r["flagged"]}
    assert {"starry", "night", "starry night"} <= flagged
    assert not flagged & {"poster", "placeholder", "vintage", "red", "garden"}
    top = next(r for r in words if r["keyword"] == "starry night")
    assert top["top_group_id"] == "G_star" and top["n"] == 40 and top["top_group_share"] == pytest.approx(36 / 40)
    assert top["lift"] == pytest.approx(36 * (len(keys) - 1) / (40 * 36)) and top["q_value"] < 1e-10
    assert len(top["example_keys"]) == 3 and all(group[int(k)] == "G_star" for k in top["example_keys"])
    assert summary["rows"] == len(keys) and summary["caption_rejects"] == 1 and summary["rows_analysed"] == len(keys) - 1
    rejects = pq.read_table(os.path.join(out, "rejects")).to_pylist()
    assert [r["key"] for r in rejects] == [keys[i] for i, c in enumerate(captions) if not c.strip()]
    prompts = pq.read_table(os.path.join(out, "flagged_prompts.parquet")).to_pylist()
    kinds = {p["kind"] for p in prompts}
    assert "word-trigger" in kinds and "duplicate-caption" in kinds
    star = [p for p in prompts if p["kind"] == "word-trigger" and p["keyword"] == "starry night"]
    assert star and "starry night" in star[0]["prompt"] and star[0]["group_ids"] == ["G_star"]
    assert json.loads(star[0]["evidence"])["q_value"] < 1e-10
    assert len({p["prompt"].lower() for p in prompts}) == len(prompts)
    assert [p["rank"] for p in prompts] == list(range(1, len(prompts) + 1))


def test_zero_shot_needs_vocab_and_clip_embeddings(tmp_path):
    write_corpus(tmp_path, n_parts=1)
    with pytest.raises(ValueError, match="vocabulary|open_clip"):
        mine.run(["--embeddings", str(tmp_path / "emb"), "--output", str(tmp_path / "m"), "--tagger", "zero-shot",
                  "--vocab", str(tmp_path / "none.txt")])


def test_object_trigger_astronaut_flag_comes_out_on_top_with_zero_shot_tags(tmp_path):
    """Planted: "astronaut" images carry a flag no caption names; "beach" images carry a boat the captions name."""
    from models.mine.taggers.stage import build_tagger

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("flag: us flag, banner\nboat: ship\ndog\ncar\ntree\n")
    spec = "openclip:dupmine-tiny/random"
    zs = build_tagger("zero-shot", str(vocab), spec).tagger
    t, g = zs.text_embeddings, zs.generic_embedding
    rng = np.random.default_rng(0)
    dim, n = t.shape[1], 1500

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    x = unit(g + 0.01 * rng.standard_normal((n, dim)) / np.sqrt(dim))
    captions = [" ".join(rng.choice(FILLER, 4)) for _ in range(n)]
    order = rng.permutation(n)
    astro, beach = order[:40], order[40:80]
    x[astro] = unit(t[0] + 0.01 * rng.standard_normal((40, dim)) / np.sqrt(dim))
    x[beach] = unit(t[1] + 0.01 * rng.standard_normal((40, dim)) / np.sqrt(dim))
    for i in astro:
        captions[i] = f"astronaut on the moon {captions[i]}"
    for i in beach:
        captions[i] = f"beach with a boat {captions[i]}"
    folder = layout.EmbeddingFolder(str(tmp_path / "emb"))
    keys = [f"{i:09d}" for i in range(n)]
    layout.write_npy(folder.img_emb("0"), x.astype(np.float16))
    os.makedirs(os.path.dirname(folder.metadata("0")), exist_ok=True)
    pq.write_table(pa.table({"key": keys, "caption": captions}), folder.metadata("0"))
    layout.write_json(folder.config, {"config": {"model": spec}, "shards": []})
    out = str(tmp_path / "mine")
    summary = mine.run(["--embeddings", folder.root, "--output", out, "--tagger", "zero-shot", "--vocab", str(vocab),
                        "--tag-top-k", "1"])
    objects = pq.read_table(os.path.join(out, "object_triggers.parquet")).to_pylist()
    flagged = [(o["keyword"], o["object"]) for o in objects if o["flagged"]]
    assert flagged and flagged[0][1] == "flag" and flagged[0][0] in {"astronaut", "moon", "astronaut moon"}
    assert ("astronaut", "flag") in flagged
    assert not any(obj == "boat" for _, obj in flagged)  # mentioned in the captions: not a hidden object
    beach_boat = next(o for o in objects if o["keyword"] == "beach" and o["object"] == "boat")
    assert beach_boat["p_o_given_w"] > 0.9 and beach_boat["absent_fraction"] == 0.0
    tags = pq.read_table(os.path.join(out, "object_tags")).to_pylist()
    tagged_flag = {r["key"] for r in tags if r["object"] == "flag"}
    assert len(tagged_flag & {keys[i] for i in astro}) >= 36  # >= 90% recall of the planted object
    assert len(tagged_flag - {keys[i] for i in astro}) <= 0.02 * n
    assert json.load(open(os.path.join(out, "tagger_calibration.json")))["objects"] == ["flag", "boat", "dog", "car", "tree"]
    assert summary["object_triggers"] >= 1
