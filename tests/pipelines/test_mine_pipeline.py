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
    layout.write_json(folder.marker("0"), {})  # a complete dupmine part
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


def _tag_corpus(root, n=240, seed=1):
    """One part; astronaut images carry a flag no caption names, beach images a boat the captions name."""
    rng = np.random.default_rng(seed)
    captions = [" ".join(rng.choice(FILLER, 3)) for _ in range(n)]
    labels = [[] for _ in range(n)]
    order = rng.permutation(n)
    astro, beach = order[:24], order[24:48]
    for j, i in enumerate(astro):
        captions[i] = f"astronaut on the moon {captions[i]}"
        if j < 21:
            labels[i].append("flag")
    for i in beach:
        captions[i] = f"beach with a boat {captions[i]}"
        labels[i].append("boat")
    for i in order[48:52]:
        labels[i].append("flag")
    for i in order[52:60]:
        labels[i] += ["boat", "tree"]
    keys = [f"{i:09d}" for i in range(n)]
    folder = layout.EmbeddingFolder(str(root / "emb"))
    layout.write_npy(folder.img_emb("00000"), rng.standard_normal((n, 8)).astype(np.float16))
    os.makedirs(os.path.dirname(folder.metadata("00000")), exist_ok=True)
    pq.write_table(pa.table({"key": keys, "caption": captions}), folder.metadata("00000"))
    from models.storage import ids

    url = ids.absolute_url(folder.metadata("00000"))
    sample_ids = [ids.sample_id(url, k) for k in keys]
    tagged = [i for i in range(n) if labels[i]]
    tags = pa.table({"sample_id": [sample_ids[i] for i in tagged] + ["file:///elsewhere/x.tar::1"],
                     "labels": [labels[i] for i in tagged] + [["flag"]]})
    pq.write_table(tags, str(root / "tags.parquet"))
    return folder.root, captions, labels


def _bh(p, m):
    """Benjamini-Hochberg by hand: q_(i) = min over j >= i of min(1, m p_(j) / j), over a family of m tests."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    q, running = [0.0] * len(p), 1.0
    for rank in range(len(order), 0, -1):
        i = order[rank - 1]
        running = min(running, m * p[i] / rank)
        q[i] = min(1.0, running)
    return q


def test_given_tags_table_equals_the_hand_computed_one(tmp_path):
    """--tags joined by sample id; counts, lift, Fisher p and BH q over the full family computed here by loops."""
    from scipy import stats

    from models.mine.keywords import KeywordExtractor

    emb, captions, labels = _tag_corpus(tmp_path)
    out = str(tmp_path / "mine")
    ms = 6
    summary = mine.run(["--embeddings", emb, "--output", out, "--tags", str(tmp_path / "tags.parquet"),
                        "--mention", "string", "--min-support", str(ms), "--naming-threshold", "1"])
    table = pq.read_table(os.path.join(out, "object_triggers.parquet"))
    got = {(r["keyword"], r["object"]): r for r in table.to_pylist()}

    words = KeywordExtractor().extract_batch(captions)
    n = len(captions)
    objects = sorted({o for row in labels for o in row})
    n_w = {w: sum(w in ws for ws in words) for w in {w for ws in words for w in ws}}
    n_o = {o: sum(o in row for row in labels) for o in objects}
    kept = sorted(w for w, c in n_w.items() if c >= ms)
    family = len(kept) * sum(c >= ms for c in n_o.values())
    assert table.schema.metadata[b"bh_family"] == str(family).encode()
    assert summary["object_pairs_tested"] == family
    pairs, pvals = [], []
    for w in kept:
        for o in objects:
            n_wo = sum(w in ws and o in row for ws, row in zip(words, labels))
            said = sum(w in ws and o in c.split() for ws, c in zip(words, captions))
            if n_wo == 0 and said == 0:
                continue
            p = stats.fisher_exact([[n_wo, n_w[w] - n_wo], [n_o[o] - n_wo, n - n_w[w] - n_o[o] + n_wo]],
                                   alternative="greater")[1]
            pairs.append((w, o, n_wo, said))
            pvals.append(p if n_o[o] >= ms else float("nan"))
    in_family = [i for i, p in enumerate(pvals) if p == p]
    q_family = _bh([pvals[i] for i in in_family], family)
    q = {i: v for i, v in zip(in_family, q_family)}
    flagged = set()
    for i, (w, o, n_wo, said) in enumerate(pairs):
        lift = n_wo * n / (n_w[w] * n_o[o])
        if (w, o) not in got:  # listed pairs: max(tagged, mentioning) >= ms // 2
            assert max(n_wo, said) < ms // 2, (w, o)
            continue
        r = got[(w, o)]
        assert (r["n_w"], r["n_o"], r["n_wo"]) == (n_w[w], n_o[o], n_wo), (w, o)
        assert r["absent_fraction"] == pytest.approx(1 - said / n_w[w])
        assert r["lift"] == pytest.approx(lift) and r["p_value"] == pytest.approx(pvals[i] if i in q else r["p_value"])
        if i in q:
            assert r["q_value"] == pytest.approx(q[i], rel=1e-9)
        want = (i in q and q[i] <= 0.05 and n_wo >= ms and n_wo / n_w[w] >= 0.3 and lift >= 5 and 1 - said / n_w[w] >= 0.9)
        assert r["flagged"] == want, (w, o)
        if want:
            flagged.add((w, o))
            assert "string test" in r["unmentioned_reason"]
    assert ("astronaut", "flag") in flagged and not any(o == "boat" for _, o in flagged)
    tags = pq.read_table(os.path.join(out, "object_tags")).to_pylist()
    assert len(tags) == sum(len(row) for row in labels) and all("::" in t["sample_id"] for t in tags)
    prompts = [p for p in pq.read_table(os.path.join(out, "flagged_prompts.parquet")).to_pylist() if p["kind"] == "object-trigger"]
    astro = [p for p in prompts if p["keyword"] == "astronaut"]
    assert astro and all(p["prompt"].startswith("astronaut on the moon") for p in astro)  # real captions, no template
    assert summary["tagger"] == f"tags:{tmp_path / 'tags.parquet'}"


def test_pixel_embeddings_default_to_no_object_tags(tmp_path):
    from models.mine.taggers.spec import default_tagger_for

    write_corpus(tmp_path, n_parts=1)
    layout.write_json(layout.EmbeddingFolder(str(tmp_path / "emb")).config, {"config": {"model": "pixel"}, "shards": []})
    assert str(default_tagger_for({"config": {"model": "pixel"}})) == "none"
    assert str(default_tagger_for({"model": "openclip:ViT-B-32/laion2b_s34b_b79k"})) == "zero-shot"
    summary = mine.run(["--embeddings", str(tmp_path / "emb"), "--output", str(tmp_path / "m")])
    assert summary["tagger"] == "none" and "no text tower" in summary["tagger_note"]
    assert summary["object_tags"] == 0


def test_embedding_model_flag_enables_zero_shot_on_a_folder_without_config(tmp_path):
    """A LAION / clip-retrieval folder: no config.json, no markers; --embedding-model declares the open_clip model."""
    from models.mine.taggers.stage import build_tagger

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("flag\nboat\n")
    spec = "openclip:dupmine-tiny/random"
    zs = build_tagger("zero-shot", str(vocab), spec).tagger
    rng = np.random.default_rng(0)
    t, g = zs.text_embeddings, zs.generic_embedding
    x = g + 0.01 * rng.standard_normal((300, t.shape[1])) / np.sqrt(t.shape[1])
    x[:30] = t[0] + 0.01 * rng.standard_normal((30, t.shape[1])) / np.sqrt(t.shape[1])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    folder = layout.EmbeddingFolder(str(tmp_path / "laion"))
    layout.write_npy(folder.img_emb("0"), x.astype(np.float16))
    os.makedirs(os.path.dirname(folder.metadata("0")), exist_ok=True)
    caps = [f"astronaut on the moon {i}" if i < 30 else f"{FILLER[i % len(FILLER)]} street" for i in range(300)]
    pq.write_table(pa.table({"image_path": [f"{i}.jpg" for i in range(300)], "caption": caps}), folder.metadata("0"))
    with pytest.raises(ValueError, match="--embedding-model"):
        mine.run(["--embeddings", folder.root, "--output", str(tmp_path / "m0"), "--tagger", "zero-shot", "--vocab", str(vocab)])
    summary = mine.run(["--embeddings", folder.root, "--output", str(tmp_path / "m"), "--vocab", str(vocab),
                        "--embedding-model", spec, "--tag-top-k", "1"])
    assert summary["tagger"] == "zero-shot" and summary["object_tags"] >= 27
    flagged = [(r["keyword"], r["object"]) for r in pq.read_table(str(tmp_path / "m" / "object_triggers.parquet")).to_pylist()
               if r["flagged"]]
    assert ("astronaut", "flag") in flagged
