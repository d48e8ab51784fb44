"""score end to end on a conditional perfect memorizer built from a planted embedding folder (METHODS 5.2-5.3)."""
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage import layout
from models.storage import schemas
from models.score.targets.closed_form import MemorizerTarget, VPSchedule, save_memorizer
from models.score.plaplace import roc_auc
from pipelines import score

D = 16


def build(tmp_path, n_groups=6, copies=8, n_generic=6, per_generic=15, seed=0):
    """Memorized prompts: one image duplicated `copies` times. Generic prompts: `per_generic` distinct images."""
    rng = np.random.default_rng(seed)
    rows, labels, keys, group_of = [], [], [], {}
    for g in range(n_groups):
        base = rng.standard_normal(D)
        for c in range(copies):
            v = base + 1e-3 * rng.standard_normal(D)
            rows.append(v / np.linalg.norm(v))
            labels.append(g)
            keys.append(f"m{g}_{c}")
            group_of[keys[-1]] = f"G{g}"
    for j in range(n_generic):
        for c in range(per_generic):
            v = rng.standard_normal(D)
            rows.append(v / np.linalg.norm(v))
            labels.append(n_groups + j)
            keys.append(f"s{j}_{c}")
    x = np.asarray(rows)
    folder = layout.EmbeddingFolder(str(tmp_path / "emb"))
    layout.write_npy(folder.img_emb("0"), x.astype(np.float16))
    os.makedirs(os.path.dirname(folder.metadata("0")), exist_ok=True)
    pq.write_table(pa.table({"key": keys, "caption": [f"caption {k}" for k in keys]}), folder.metadata("0"))
    sizes = {g: sum(1 for v in group_of.values() if v == g) for g in set(group_of.values())}
    grows = [{"key": k, "group_id": group_of.get(k, k), "group_size": sizes.get(group_of.get(k), 1), "is_representative": True,
              "representative_key": k, "max_cosine": None, "part": "0"} for k in keys]
    layout.write_parquet(str(tmp_path / "dd" / "groups" / "groups_0.parquet"), schemas.table(grows, schemas.DEDUP_GROUPS))
    x16 = np.asarray(layout.read_npy(folder.img_emb("0")), np.float64)
    target = MemorizerTarget(x16 / np.linalg.norm(x16, axis=1, keepdims=True), None, VPSchedule.linear(200), cond_labels=np.asarray(labels))
    path = str(tmp_path / "target.npz")
    save_memorizer(path, target)
    mapping = {f"memorized prompt {g}": g for g in range(n_groups)} | {f"generic prompt {j}": n_groups + j for j in range(n_generic)}
    with open(path + ".prompts.json", "w") as f:
        json.dump(mapping, f)
    flagged = [{"prompt": f"memorized prompt {g}", "kind": "duplicate-caption", "keyword": None, "object": None,
                "group_ids": [f"G{g}"], "support": copies, "evidence": "{}", "rank": g + 1} for g in range(n_groups)]
    layout.write_parquet(str(tmp_path / "flagged.parquet"), schemas.table(flagged, schemas.FLAGGED_PROMPTS))
    (tmp_path / "reference.txt").write_text("\n".join(f"generic prompt {j}" for j in range(n_generic)))
    return f"memorizer:{path}"


def test_score_separates_memorized_prompts_and_side_extracts(tmp_path):
    spec = build(tmp_path)
    out = str(tmp_path / "score")
    summary = score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", out,
                         "--train", str(tmp_path / "emb"), "--groups", str(tmp_path / "dd"),
                         "--reference", str(tmp_path / "reference.txt"), "--n-samples", "4", "--steps", "20",
                         "--n-dirs", "32", "--side-k", "8", "--side-n-syn", "64", "--side-n-g", "64", "--fpr", "0.2",
                         "--side-prompts", "2"])
    rows = pq.read_table(os.path.join(out, "prompt_scores.parquet")).to_pylist()
    for check in ("wen", "plaplace"):
        pos = [r["statistic"] for r in rows if r["check"] == check and r["role"] == "flagged"]
        neg = [r["statistic"] for r in rows if r["check"] == check and r["role"] == "reference"]
        assert len(pos) == 6 and len(neg) == 6
        if check == "wen":
            assert roc_auc(np.asarray(pos), np.asarray(neg)) == 1.0
            assert summary["memorized"]["wen"] == 6
        thr = {r["threshold"] for r in rows if r["check"] == check}
        assert len(thr) == 1 and thr.pop() == pytest.approx(np.quantile(neg, 0.8, method="higher"))
    # around the duplicated training images of each flagged prompt's group, the learned score points inward
    train_rows = [r for r in rows if r["check"] == "plaplace-train" and r["role"] == "flagged"]
    assert len(train_rows) == 6 and all(r["statistic"] > 0.9 for r in train_rows)
    # ordinary training images calibrate that check: its threshold is a number, never NaN
    assert all(np.isfinite(r["threshold"]) for r in rows if r["check"] == "plaplace-train")
    assert all(r["cost_evals"] > 0 for r in rows if r["check"] != "wen" or r["role"] == "flagged")
    ext = pq.read_table(os.path.join(out, "extractions.parquet")).to_pylist()
    side = json.load(open(os.path.join(out, "side_summary.json")))
    assert len(ext) == 3 * side["N_G"] and side["N_G"] == 64 and side["K"] == 8
    assert all(e["matched_key"] for e in ext) and {e["band"] for e in ext} <= {"low", "mid", "high", None}
    uncond = [e for e in ext if e["prompt"] is None]
    assert side["metrics"]["high"]["ams"] == pytest.approx(sum(e["band"] == "high" for e in uncond) / 64)
    # conditioned on a memorized prompt, SIDE lands on that prompt's duplicated image
    assert [r["prompt"] for r in side["conditional_runs"]] == ["memorized prompt 0", "memorized prompt 1"]
    for g in (0, 1):
        hits = [e for e in ext if e["prompt"] == f"memorized prompt {g}"]
        assert len(hits) == 64 and all(e["group_id"] == f"G{g}" for e in hits)
    assert summary["side"] == side["metrics"]


def test_score_config_errors(tmp_path):
    spec = build(tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", str(tmp_path / "o"), "--checks", "magic"])
    with pytest.raises(ValueError, match="--train"):
        score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", str(tmp_path / "o"), "--checks", "side"])
    with pytest.raises((ValueError, FileNotFoundError)):
        score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", "diffusers:/nope", "--output", str(tmp_path / "o"), "--checks", "wen"])


def test_score_against_a_tiny_diffusers_text_to_image_folder(synthetic_shards, tmp_path):
    """The diffusers:PATH target through the whole stage (random-init weights saved in diffusers layout).

    SIDE decodes its latents to images and embeds them with the training set's embed model (pixel) to match.
    """
    from pipelines import embed
    from tests.models.score.test_diffusers_targets import make_tiny_sd

    root, _ = synthetic_shards
    emb = str(tmp_path / "emb")
    embed.run(["--input", str(root), "--output", emb, "--model", "pixel"])
    folder = make_tiny_sd(tmp_path / "sd")
    flagged = [{"prompt": p, "kind": "word-trigger", "keyword": None, "object": None, "group_ids": [], "support": 10,
                "evidence": "{}", "rank": i + 1} for i, p in enumerate(["the starry night by van gogh", "a red bicycle"])]
    layout.write_parquet(str(tmp_path / "flagged.parquet"), schemas.table(flagged, schemas.FLAGGED_PROMPTS))
    (tmp_path / "ref.txt").write_text("a house\na tree\na cloud\n")
    out = str(tmp_path / "score")
    summary = score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", f"diffusers:{folder}", "--output", out,
                         "--checks", "plaplace,wen,side", "--reference", str(tmp_path / "ref.txt"), "--device", "cpu",
                         "--n-samples", "2", "--steps", "3", "--n-dirs", "4", "--wen-n", "2", "--t-small", "10",
                         "--train", emb, "--side-k", "3", "--side-n-syn", "12", "--side-n-g", "6", "--side-prompts", "1"])
    rows = pq.read_table(os.path.join(out, "prompt_scores.parquet")).to_pylist()
    # the flagged prompts name no group; ordinary training images (re-read from the shards, VAE-encoded) are the
    # reference of the checks at training images
    assert {(r["check"], r["role"]) for r in rows} == (
        {(c, role) for c in ("plaplace", "wen") for role in ("flagged", "reference")}
        | {(c, "reference") for c in ("plaplace-train", "side", "side-baseline")})
    for r in rows:
        assert np.isfinite(r["statistic"]) and r["cost_evals"] > 0
        if r["check"] in ("plaplace", "plaplace-train"):
            assert -1.0 <= r["statistic"] <= 1.0
        elif r["check"] == "wen":
            assert r["statistic"] > 0  # a real prompt differs from the empty prompt
        else:
            assert 0.0 <= r["statistic"] <= 1.0
    assert summary["prompts_scored"] == 2 and summary["reference_prompts"] == 3
    ext = pq.read_table(os.path.join(out, "extractions.parquet")).to_pylist()
    assert len(ext) == 12 and {e["prompt"] for e in ext} == {None, "the starry night by van gogh"}
    assert all(-1.0 <= e["similarity"] <= 1.0 and e["matched_key"] for e in ext)
    from PIL import Image

    for name in ("side_00.png", "side_01.png"):
        with Image.open(os.path.join(out, "grids", name)) as grid:
            assert grid.size[0] > 0 and grid.mode == "RGB"


def test_score_loads_the_target_once(tmp_path, monkeypatch):
    """The preflight load is the workers' load: an in-process run loads the target (and training set) once."""
    from transforms import score as score_transforms

    spec = build(tmp_path)
    calls = []
    real = score_transforms.load_context

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(score_transforms, "load_context", counting)
    score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", str(tmp_path / "o"),
               "--train", str(tmp_path / "emb"), "--groups", str(tmp_path / "dd"), "--reference", str(tmp_path / "reference.txt"),
               "--checks", "wen,side", "--wen-n", "2", "--steps", "10", "--side-k", "4", "--side-n-syn", "32", "--side-n-g", "16"])
    assert len(calls) == 1


def base_args(tmp_path, spec, out="o"):
    return ["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", str(tmp_path / out),
            "--train", str(tmp_path / "emb"), "--groups", str(tmp_path / "dd")]


def test_unconditional_target_scores_each_flagged_group(tmp_path):
    """A target no prompt conditions (the memorizer without its prompt map): one answer per flagged group.

    Before: every prompt got the same generated-sample statistic. Now each group is checked at its own training
    images (plaplace-train) and by the SIDE generations matched back to it, against ordinary training images.
    """
    spec = build(tmp_path)
    os.remove(spec.split(":", 1)[1] + ".prompts.json")
    out = tmp_path / "o"
    summary = score.run(base_args(tmp_path, spec) + ["--steps", "20", "--n-dirs", "16", "--side-k", "8",
                                                      "--side-n-syn", "64", "--side-n-g", "128", "--fpr", "0.2",
                                                      "--n-reference", "30"])
    rows = pq.read_table(out / "prompt_scores.parquet").to_pylist()
    assert {r["check"] for r in rows} == {"plaplace-train", "side", "side-baseline"}
    for check in ("plaplace-train", "side", "side-baseline"):
        flagged = [r for r in rows if r["check"] == check and r["role"] == "flagged"]
        assert sorted(g for r in flagged for g in r["group_ids"]) == [f"G{g}" for g in range(6)]
        assert all(np.isfinite(r["threshold"]) for r in rows if r["check"] == check)
    # the perfect memorizer samples training points by multiplicity: x8 groups are extracted far more than
    # ordinary images
    pos = [r["statistic"] for r in rows if r["check"] == "side" and r["role"] == "flagged"]
    neg = [r["statistic"] for r in rows if r["check"] == "side" and r["role"] == "reference"]
    assert len(neg) == 30 and roc_auc(np.asarray(pos), np.asarray(neg)) >= 0.9
    assert summary["memorized"]["side"] >= 4
    assert set(summary["skipped_checks"]) == {"wen", "jeon", "plaplace (generated samples)"}
    assert summary["no_reference_rows"] == []


def test_side_runs_a_lambda_zero_baseline_at_equal_n_g(tmp_path):
    spec = build(tmp_path)
    out = tmp_path / "o"
    score.run(base_args(tmp_path, spec) + ["--checks", "side", "--steps", "20", "--side-k", "8", "--side-n-syn", "64",
                                           "--side-n-g", "48", "--side-prompts", "1", "--side-lambda", "5",
                                           "--reference", str(tmp_path / "reference.txt")])
    side = json.load(open(out / "side_summary.json"))
    assert side["lambda"] == 5.0 and side["baseline"]["lambda"] == 0.0
    assert set(side["baseline"]["metrics"]) == set(side["metrics"])
    assert side["conditional_runs"][0]["baseline"]["lambda"] == 0.0
    base = pq.read_table(out / "extractions_baseline.parquet").to_pylist()
    lam = pq.read_table(out / "extractions.parquet").to_pylist()
    assert len(base) == len(lam) == 2 * 48  # equal N_G, one baseline per run
    # the baseline reuses the run's Part 1 and x_T: its cost is the extraction alone
    assert side["baseline"]["cost"]["eps_evals_extraction"] == side["cost"]["eps_evals_extraction"] == 48 * 20
    assert side["baseline"]["cost"]["classifier_grad_evals"] == 0 < side["cost"]["classifier_grad_evals"]


def test_side_bands_are_calibrated_in_the_embedding_space_not_sscd(tmp_path):
    from models.score.extraction_metrics import DEFAULT_BANDS

    spec = build(tmp_path)
    out = tmp_path / "o"
    score.run(base_args(tmp_path, spec) + ["--checks", "side", "--steps", "10", "--side-k", "8", "--side-n-syn", "32",
                                           "--side-n-g", "16", "--reference", str(tmp_path / "reference.txt")])
    side = json.load(open(out / "side_summary.json"))
    cal = side["calibration"]
    assert side["match_space"] == "target" and side["bands"]["measure"] == "cosine"
    assert [(b["lo"], b["hi"]) for b in side["bands"]["bands"]] != [(b.lo, b.hi) for b in DEFAULT_BANDS]
    high = next(b for b in side["bands"]["bands"] if b["name"] == "high")
    # planted copies (cosine ~1) sit above every ordinary nearest neighbour: high starts above q99 of the ordinary
    assert cal["copies_separable"] and high["lo"] >= cal["ordinary_nn_cosine_q50_q95_q99"][2] and cal["copy_pairs"] == 42


def test_empty_prompt_list_is_an_error(tmp_path):
    spec = build(tmp_path)
    layout.write_parquet(str(tmp_path / "flagged.parquet"), schemas.table([], schemas.FLAGGED_PROMPTS))
    with pytest.raises(ValueError, match="holds no prompt"):
        score.run(base_args(tmp_path, spec) + ["--checks", "wen"])


def test_missing_reference_set_is_an_error_not_nan_thresholds(tmp_path):
    spec = build(tmp_path)
    with pytest.raises(ValueError, match="no reference items.*--reference FILE.*--train"):
        score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", str(tmp_path / "o"),
                   "--checks", "wen"])


@pytest.mark.parametrize("spec", ["none", "sd15", "gmm:"])
def test_target_spec_errors_name_every_accepted_form(tmp_path, spec):
    build(tmp_path)
    with pytest.raises(ValueError) as err:
        score.run(["--flagged", str(tmp_path / "flagged.parquet"), "--target", spec, "--output", str(tmp_path / "o"),
                   "--checks", "wen"])
    for form in ("diffusers:PATH", "diffusers-uncond:PATH", "gmm:FILE", "memorizer:FILE"):
        assert form in str(err.value)


def make_gray_uncond(root, seed=0):
    """A tiny random-init 1-channel UNet2DModel (1x8x8 pixels) + DDPM scheduler in diffusers layout."""
    import torch

    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    unet.save_pretrained(str(root / "unet"))
    DDPMScheduler(num_train_timesteps=100).save_pretrained(str(root / "scheduler"))
    return root


def test_grayscale_pixel_target_scores_groups_and_writes_grids(synthetic_shards, tmp_path):
    """A 1-channel pixel-space target: images decode to (H, W, 1) (Image.fromarray crashed on them), group
    images are re-read from the shards as grayscale, and SIDE matches in pixel space with L2 bands."""
    from PIL import Image

    from pipelines import dedup, embed

    root, _ = synthetic_shards
    emb, dd = str(tmp_path / "emb"), str(tmp_path / "dd")
    embed.run(["--input", str(root), "--output", emb, "--model", "pixel"])
    dedup.run(["--embeddings", emb, "--output", dd])
    from models.storage import run_chain

    groups = sorted({r["group_id"] for r in run_chain.load_groups(dd, ["group_id", "group_size"]).to_pylist()
                     if r["group_size"] > 1})
    assert groups
    flagged = [{"prompt": f"caption of {g}", "kind": "duplicate-caption", "keyword": None, "object": None,
                "group_ids": [g], "support": 3, "evidence": "{}", "rank": i + 1} for i, g in enumerate(groups)]
    layout.write_parquet(str(tmp_path / "flagged.parquet"), schemas.table(flagged, schemas.FLAGGED_PROMPTS))
    folder = make_gray_uncond(tmp_path / "gray")
    out = tmp_path / "o"
    summary = score.run(base_args(tmp_path, f"diffusers-uncond:{folder}") + [
        "--device", "cpu", "--steps", "3", "--n-dirs", "4", "--n-samples", "2", "--side-k", "3", "--side-n-syn", "12",
        "--side-n-g", "8", "--n-reference", "5"])
    rows = pq.read_table(out / "prompt_scores.parquet").to_pylist()
    for check in ("plaplace-train", "side", "side-baseline"):
        got = sorted(g for r in rows if r["check"] == check and r["role"] == "flagged" for g in r["group_ids"])
        assert got == groups and sum(r["role"] == "reference" for r in rows if r["check"] == check) == 5
    assert all(np.isfinite(r["statistic"]) and np.isfinite(r["threshold"]) for r in rows)
    side = json.load(open(out / "side_summary.json"))
    assert side["match_space"] == "pixels" and side["bands"]["measure"] == "normalized_l2"
    with Image.open(out / "grids" / "side_00.png") as grid:
        assert grid.mode == "RGB" and grid.size == (4 * 8, 2 * 8)
    assert summary["prompts_scored"] == len(groups)
