"""dupmine score against diffusion models trained inside the test (seeded, 8x8, about a minute each).

The planted set has one image copied x50 among 40 unique ones (real MNIST digits when ../shared/data/mnist
is present, else the demo's procedural drawings). Memorization is measured first (Carlini et al.'s
criterion, models/score/memorized.py): the x50 copy is generated, unique images are not. Then the stage,
run end to end on the shards (embed -> dedup -> score), must put the copy above every reference item.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from models.storage import layout, run_chain, schemas
from pipelines import dedup, embed, score


def digits():
    from models.demo.mnist import Digits, load_mnist
    from pipelines.common import shared_data_file

    folder = shared_data_file("mnist")
    if folder is not None:
        return load_mnist(folder, limit=200)
    from models.demo.synthetic import drawing

    rng = np.random.default_rng(0)
    images = np.stack([np.asarray(drawing(rng, size=28).convert("L"), np.uint8) for _ in range(60)])
    return Digits(images, np.zeros(len(images), np.int64))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Shards, embeddings, dedup groups and the training images of the planted set."""
    from models.demo.planted import PlantedSpec, build_planted_set, groups_of, read_truth
    from models.score.training.data import images_from_shards

    root = tmp_path_factory.mktemp("planted")
    ps = build_planted_set(digits(), str(root / "set"), PlantedSpec(exact_copies=(50,), near_copies=2,
                                                                    trigger_copies=2, n_unique=40, n_heldout=0))
    emb, dd = str(root / "emb"), str(root / "dd")
    embed.run(["--input", ps.train, "--output", emb, "--model", "pixel"])
    dedup.run(["--embeddings", emb, "--output", dd])
    data = images_from_shards(ps.train, 8, 1)
    truth = read_truth(ps.truth)
    group_ids, names = groups_of(truth, data.keys)
    copy_key = next(r["key"] for r in truth if r["group"] == "exact:x50")
    groups = {r["key"]: r["group_id"] for r in run_chain.load_groups(dd, ["key", "group_id"]).to_pylist()}
    return {"root": root, "ps": ps, "emb": emb, "dd": dd, "data": data, "group_ids": group_ids, "names": names,
            "truth": truth, "copy_group": groups[copy_key], "copy_caption": data.captions[data.keys.index(copy_key)]}


def trained(planted, conditional: bool, clip_sample: bool = True):
    from models.score.training.config import TrainConfig
    from models.score.training.trainer import train

    cfg = TrainConfig(resolution=8, channels=1, conditional=conditional, steps=800, batch_size=32,
                      block_out_channels=(16, 32), clip_sample=clip_sample, seed=0)
    return train(planted["data"], cfg, str(planted["root"] / ("cond" if conditional else "uncond")))


def memorized_share(images, planted) -> dict:
    """{group name: memorized generations} by the Carlini criterion."""
    from models.score.memorized import match_generations

    m = match_generations(images[..., :1], planted["data"].images, planted["group_ids"])
    out: dict = {}
    for g in m.group[m.memorized]:
        out[planted["names"][int(g)]] = out.get(planted["names"][int(g)], 0) + 1
    return out


def flagged_file(planted, path, rows):
    layout.write_parquet(str(path), schemas.table(rows, schemas.FLAGGED_PROMPTS))
    return str(path)


@pytest.mark.slow
def test_unconditional_model_x50_copy_is_memorized_and_the_stage_separates_it(planted, tmp_path):
    from models.score.targets.loading import load_target

    model = trained(planted, conditional=False)
    target = load_target(model.spec, device="cpu")
    gen = target.generate(48, steps=25, generator=torch.Generator().manual_seed(0))
    share = memorized_share(gen.images, planted)
    assert share.get("exact:x50", 0) >= 5 and share.get("unique", 0) == 0, share  # verifiably memorized

    groups = sorted({r["group_id"] for r in run_chain.load_groups(planted["dd"], ["group_id", "group_size"]).to_pylist()
                     if r["group_size"] > 1})
    assert planted["copy_group"] in groups
    flagged = flagged_file(planted, tmp_path / "flagged.parquet", [
        {"prompt": f"group {g}", "kind": "duplicate-caption", "keyword": None, "object": None, "group_ids": [g],
         "support": 2, "evidence": "{}", "rank": i + 1} for i, g in enumerate(groups)])
    out = tmp_path / "score"
    score.run(["--flagged", flagged, "--target", model.spec, "--output", str(out), "--train", planted["emb"],
               "--groups", planted["dd"], "--device", "cpu", "--steps", "25", "--n-dirs", "32", "--n-reference", "30",
               "--side-k", "10", "--side-n-syn", "128", "--side-n-g", "128", "--fpr", "0.05"])
    rows = pq.read_table(out / "prompt_scores.parquet").to_pylist()
    for check in ("plaplace-train", "side"):
        copy = [r for r in rows if r["check"] == check and planted["copy_group"] in r["group_ids"]]
        ref = [r["statistic"] for r in rows if r["check"] == check and r["role"] == "reference"]
        assert len(copy) == 1 and len(ref) == 30
        assert copy[0]["statistic"] > max(ref), (check, copy[0]["statistic"], sorted(ref)[-3:])
        assert copy[0]["decision"]
    side = json.load(open(out / "side_summary.json"))
    assert side["match_space"] == "pixels" and side["metrics"]["high"]["ams"] > 0


@pytest.mark.slow
def test_conditional_model_x50_prompt_is_memorized_and_the_checks_separate_it(planted, tmp_path):
    from models.score.targets.loading import load_target

    # DDIM's x0 clip off: with it, CFG-3 generations of MNIST models lose their copies (benchmarks/bench_memorization.py)
    model = trained(planted, conditional=True, clip_sample=False)
    target = load_target(model.spec, device="cpu")
    copy_prompt = planted["copy_caption"]
    unique = [r["caption"] for r in planted["truth"] if r["group"] == "unique"][:20]
    gen = target.generate([copy_prompt], n_per_prompt=32, steps=25, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(0))
    # verifiably memorized: measured 11 of 32 without the x0 clip, 1 with it
    assert memorized_share(gen.images, planted).get("exact:x50", 0) >= 5
    gen_u = target.generate(unique[:8], n_per_prompt=2, steps=25, guidance_scale=3.0,
                            generator=torch.Generator().manual_seed(1))
    assert sum(memorized_share(gen_u.images, planted).values()) == 0

    flagged = flagged_file(planted, tmp_path / "flagged.parquet", [
        {"prompt": copy_prompt, "kind": "duplicate-caption", "keyword": None, "object": None,
         "group_ids": [planted["copy_group"]], "support": 50, "evidence": "{}", "rank": 1}])
    ref = tmp_path / "reference.txt"
    ref.write_text("\n".join(unique))
    out = tmp_path / "score"
    summary = score.run(["--flagged", flagged, "--target", model.spec, "--output", str(out), "--train", planted["emb"],
                         "--groups", planted["dd"], "--reference", str(ref), "--checks", "plaplace,wen,jeon",
                         "--device", "cpu", "--steps", "25", "--n-dirs", "32", "--n-samples", "4",
                         "--guidance-scale", "3", "--n-reference", "20"])
    rows = pq.read_table(out / "prompt_scores.parquet").to_pylist()
    for check in ("wen", "jeon", "plaplace", "plaplace-train"):
        copy = [r["statistic"] for r in rows if r["check"] == check and r["role"] == "flagged"]
        ref_stats = [r["statistic"] for r in rows if r["check"] == check and r["role"] == "reference"]
        assert len(copy) == 1 and len(ref_stats) == 20 and np.isfinite(copy[0]), check
    # at its own training images the memorized prompt's score points inward more than at ordinary images
    # (at the defaults, t = 200 and the max over images; Wen, Jeon and the generated-sample statistic are measured
    # on larger models in benchmarks/bench_memorization.py)
    from models.score.plaplace import roc_auc

    copy = next(r for r in rows if r["check"] == "plaplace-train" and r["role"] == "flagged")
    ref_stats = [r["statistic"] for r in rows if r["check"] == "plaplace-train" and r["role"] == "reference"]
    assert roc_auc(np.asarray([copy["statistic"]]), np.asarray(ref_stats)) >= 0.9, (copy["statistic"], sorted(ref_stats)[-3:])
    assert summary["prompts_scored"] == 1 and summary["reference_images"] == 20
