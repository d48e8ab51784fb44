"""Tests for models.score.checks and models.score.conditioning: scoring, calibration, decisions, target specs."""
from __future__ import annotations

import numpy as np
import pytest

from models.score.checks import (
    Check,
    Role,
    ScoreConfig,
    ScoreItem,
    ScoreRow,
    calibrate,
    decide,
    item_rng,
    plaplace_at_points,
    statistic_timestep,
    wen_steps_used,
    plaplace_check,
    wen_check,
)
from models.score.conditioning import ACCEPTED_TARGETS, GuidedTarget, TargetKind, load_target, parse_target_spec
from models.score.targets.closed_form import MemorizerTarget, VPSchedule


def memorizer(d=6, seed=0):
    """Label 0: one point duplicated 10x (memorized); label 1: 10 distinct points."""
    rng = np.random.default_rng(seed)
    dup = np.repeat(rng.standard_normal((1, d)), 10, axis=0)
    generic = rng.standard_normal((10, d))
    x = np.concatenate([dup, generic])
    labels = np.array([0] * 10 + [1] * 10)
    return MemorizerTarget(x, None, VPSchedule.linear(200), cond_labels=labels), x


def test_check_parse_lists_allowed_names():
    assert Check.parse("wen,plaplace") == (Check.WEN, Check.PLAPLACE)
    with pytest.raises(ValueError, match=r"unknown; allowed \['plaplace', 'side', 'wen'"):
        Check.parse("wen,magic")


def test_calibrate_is_the_higher_quantile_and_nan_without_references():
    ref = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": []}
    t = calibrate(ref, 0.2)
    assert t["a"] == np.quantile(ref["a"], 0.8, method="higher") == 0.5
    assert np.isnan(t["b"])
    # at most fpr of the references exceed the threshold
    vals = np.random.default_rng(0).random(101)
    thr = calibrate({"x": list(vals)}, 0.05)["x"]
    assert (vals > thr).mean() <= 0.05


def test_decide_thresholds_from_reference_rows_only():
    def row(role, prompt, stat, check="wen"):
        return ScoreRow(role, prompt, check, stat, 0.0, 1, 0, 1, 0.0)

    rows = [row("flagged", "m1", 5.0), row("flagged", "m2", 0.15), row("reference", "r1", 0.1),
            row("reference", "r2", 0.2), row("flagged", "g", 9.0, check="plaplace")]
    out = decide(rows, 0.4)
    by = {(r["check"], r["prompt"]): r for r in out}
    assert by[("wen", "m1")]["threshold"] == 0.2 and by[("wen", "m1")]["decision"] is True
    assert by[("wen", "m2")]["decision"] is False
    # a check without reference rows gets no decision (NaN threshold), never a crash
    assert np.isnan(by[("plaplace", "g")]["threshold"]) and by[("plaplace", "g")]["decision"] is False
    assert [r["role"] for r in out][:3] == ["flagged"] * 3  # flagged first


def test_item_rng_depends_on_seed_prompt_and_check_only():
    cfg = ScoreConfig(seed=3)
    a = item_rng(cfg, "p", "wen").random(3)
    assert np.array_equal(a, item_rng(cfg, "p", "wen").random(3))
    assert not np.array_equal(a, item_rng(cfg, "q", "wen").random(3))
    assert not np.array_equal(a, item_rng(ScoreConfig(seed=4), "p", "wen").random(3))
    assert item_rng(cfg, None, "wen").random() == item_rng(cfg, "", "wen").random()


def test_plaplace_and_wen_separate_the_duplicated_condition():
    target, x = memorizer()
    # t = 10 of this target's 200 steps (t_small is on a 1000-step horizon), the mean over points
    cfg = ScoreConfig(n_samples=4, steps=20, n_dirs=32, wen_n=4, t_small=50, plaplace_aggregate="mean")
    assert statistic_timestep(cfg, target) == 10
    mem = plaplace_at_points(target, 0, "m", x[:3], cfg)
    gen = plaplace_at_points(target, None, "g", x[10:13] + 0.7, cfg)
    assert mem.statistic > 0.95 and gen.statistic < 0.5
    assert mem.cost_evals == 3 * 32 and mem.check == "plaplace-train"
    p = plaplace_check(target, 0, "m", cfg)
    assert p.statistic > 0.95 and p.cost_evals == 2 * 4 * 20 + 4 * 32  # CFG: 2 evaluations per row and step
    w_mem, w_gen = wen_check(target, 0, None, "m", cfg), wen_check(target, 1, None, "g", cfg)
    assert w_mem.statistic > w_gen.statistic > 0
    assert wen_check(target, None, None, "u", cfg).statistic == 0.0  # condition == null: exactly zero


def test_guided_target_is_cfg_and_counts_evaluations():
    target, _ = memorizer()
    g = GuidedTarget(target, 3.0)
    x = np.random.default_rng(1).standard_normal((5, target.dim))
    e_c, e_u = target.eps(x, 50, 0), target.eps(x, 50, None)
    np.testing.assert_allclose(g.eps(x, 50, 0), e_u + 3.0 * (e_c - e_u), atol=1e-12)
    assert g.evals == 10
    np.testing.assert_allclose(g.eps(x, 50, None), e_u)


@pytest.mark.parametrize("spec", ["none", "", "gmm", "gmm:", "sd:/x", "diffusers"])
def test_every_target_spec_error_lists_every_accepted_form(spec):
    with pytest.raises(ValueError) as err:
        parse_target_spec(spec)
    for kind in TargetKind:
        assert f"{kind.value}:" in str(err.value)
    with pytest.raises(ValueError, match="accepted forms"):
        load_target(spec)


def test_target_kinds_cover_the_loader_prefixes():
    from models.score.targets.hf_diffusers import TARGET_PREFIXES

    assert {f"{k.value}:" for k in TargetKind} == set(TARGET_PREFIXES)
    assert parse_target_spec("Memorizer:/a:b.npz") == (TargetKind.MEMORIZER, "/a:b.npz")
    assert "diffusers-uncond:PATH" in ACCEPTED_TARGETS


def test_score_item_and_roles():
    item = ScoreItem(Role.FLAGGED.value, "p", ("G1",), ("k1", "k2"))
    assert item._asdict() == {"role": "flagged", "prompt": "p", "group_ids": ("G1",), "keys": ("k1", "k2"),
                              "image_only": False}


def test_jeon_check_separates_the_duplicated_condition_and_counts_cost():
    from models.score.checks import jeon_check

    target, _ = memorizer()
    cfg = ScoreConfig(steps=20, jeon_n=3)
    mem, gen = jeon_check(target, 0, None, "m", cfg), jeon_check(target, 1, None, "g", cfg)
    assert mem.check == "jeon" and mem.statistic > gen.statistic > 0
    assert mem.cost_evals == 2 * 3 + 2 * 3  # 2 forward + 2 JVP'd evaluations per draw
    assert jeon_check(target, None, None, "u", cfg).statistic == 0.0


def test_plaplace_check_samples_with_cfg():
    """At w = 1 the guided sampler is plain conditional sampling; at w > 1 it pays the null prediction too."""
    target, _ = memorizer()
    plain = plaplace_check(target, 0, "m", ScoreConfig(n_samples=2, steps=10, n_dirs=4, guidance_scale=1.0))
    cfg_run = plaplace_check(target, 0, "m", ScoreConfig(n_samples=2, steps=10, n_dirs=4, guidance_scale=3.0))
    assert plain.cost_evals == 2 * 10 + 2 * 4 and cfg_run.cost_evals == 2 * 2 * 10 + 2 * 4  # steps evaluations per row
    with pytest.raises(ValueError, match="guidance_scale"):
        ScoreConfig(guidance_scale=-1.0)


def test_grid_png_takes_grayscale_images():
    from PIL import Image
    import io

    from models.score.images import grid_png, to_pil

    gray = np.random.default_rng(0).integers(0, 255, (5, 6, 7, 1), dtype=np.uint8)
    with Image.open(io.BytesIO(grid_png(gray))) as im:
        assert im.mode == "RGB" and im.size == (4 * 7, 2 * 6)
        assert np.array_equal(np.asarray(im)[:6, :7, 0], gray[0, :, :, 0])
    assert to_pil(gray[0, :, :, 0]).size == (7, 6)
    with pytest.raises(ValueError, match="uint8"):
        to_pil(np.zeros((4, 4, 2), np.uint8))


def test_calibrated_bands_put_planted_copies_high_and_ordinary_neighbours_below():
    from models.score.bands import calibrated_cosine_bands, pixel_l2_bands

    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, 32))
    copies = np.repeat(base, 4, axis=0) + 0.01 * rng.standard_normal((20, 32))
    ordinary = rng.standard_normal((200, 32))
    x = np.concatenate([copies, ordinary])
    by_group = {f"G{g}": list(range(4 * g, 4 * g + 4)) for g in range(5)}
    bands, cal = calibrated_cosine_bands(x, by_group, list(range(20, 220)))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    high = next(b for b in bands.bands if b.name == "high")
    assert high.contains(z[1] @ z[0]) and cal["copy_pairs"] == 15 and cal["copies_separable"]
    nn = (z[20:] @ z[20:].T - 2 * np.eye(200)).max(1)
    assert high.contains(nn).mean() <= 0.01
    l2 = pixel_l2_bands()
    assert l2.measure == "normalized_l2" and l2.band_of(0.2) == "high" and l2.band_of(0.25) == "mid" and l2.band_of(0.35) == "low"
    with pytest.raises(ValueError, match="no duplicate group"):
        calibrated_cosine_bands(x, by_group, [])


def test_statistic_timestep_aggregate_and_their_errors():
    """t_small is a timestep of a 1000-step horizon, mapped to the same fraction of a target's T; the item
    statistic is the max (default) or the mean of its points' values; bad values list what is accepted."""
    target, x = memorizer()  # T = 200
    assert statistic_timestep(ScoreConfig(), target) == 40  # the default t = 200 of 1000
    assert statistic_timestep(ScoreConfig(t_small=1), target) == 1  # never t = 0
    assert statistic_timestep(ScoreConfig(t_small=999), target) == 199
    pts = np.concatenate([x[:1], x[10:11] + 0.7])  # one memorized point, one generic
    both = {a: plaplace_at_points(target, None, "p", pts, ScoreConfig(n_dirs=64, plaplace_aggregate=a))
            for a in ("mean", "max")}
    from models.score.plaplace import noise_cosine_statistic

    per_point, _ = noise_cosine_statistic(target, pts, 40, 64, item_rng(ScoreConfig(), "p", "plaplace-train:directions"))
    assert both["max"].statistic == pytest.approx(per_point.max()) and both["mean"].statistic == pytest.approx(per_point.mean())
    assert both["max"].statistic > both["mean"].statistic
    with pytest.raises(ValueError, match="mean.*max"):
        ScoreConfig(plaplace_aggregate="median")
    with pytest.raises(ValueError, match="1000-step"):
        ScoreConfig(t_small=1000)
    with pytest.raises(ValueError, match="t_small"):
        ScoreConfig(t_small=0)


def test_wen_averages_the_steps_down_to_wen_until():
    """Wen's metric covers the DDIM steps at timesteps >= wen_until (scaled to the target's T), at least one; the
    statistic is then the per-step mean wen_metric reports over exactly those steps."""
    from models.score.wen import ddim_timesteps, wen_metric

    target, _ = memorizer()  # T = 200: wen_until 600 -> timesteps >= 120
    cfg = ScoreConfig(steps=20, wen_n=3)
    ts = ddim_timesteps(target, 20)
    k = wen_steps_used(cfg, target)
    assert k == int(np.sum(ts >= 120)) and 1 < k < 20
    assert wen_steps_used(ScoreConfig(steps=20, wen_until=999), target) == 1  # Wen's first-step form
    assert wen_steps_used(ScoreConfig(steps=20, wen_until=0), target) == 20
    r = wen_check(target, 0, None, "m", cfg)
    ref = wen_metric(target, [0], None, n=3, steps_used=k, rng=item_rng(cfg, "m", "wen"), num_inference_steps=20,
                     guidance_scale=cfg.guidance_scale)
    assert r.statistic == pytest.approx(float(ref.values[0])) and r.cost_evals == 2 * 3 * k
    with pytest.raises(ValueError, match="wen_until"):
        ScoreConfig(wen_until=1000)
