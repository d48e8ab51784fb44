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
    cfg = ScoreConfig(n_samples=4, steps=20, n_dirs=32, wen_n=4)
    mem = plaplace_at_points(target, 0, "m", x[:3], cfg)
    gen = plaplace_at_points(target, None, "g", x[10:13] + 0.7, cfg)
    assert mem.statistic > 0.95 and gen.statistic < 0.5
    assert mem.cost_evals == 3 * 32 and mem.check == "plaplace-train"
    p = plaplace_check(target, 0, "m", cfg)
    assert p.statistic > 0.95 and p.cost_evals == 4 * 21 + 4 * 32
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
    item = ScoreItem(Role.FLAGGED.value, "p", ("G1",))
    assert item._asdict() == {"role": "flagged", "prompt": "p", "group_ids": ("G1",)}
