"""Tests for models.score.wen and models.score.jeon: Wen (arXiv:2407.21720) and Jeon (arXiv:2412.04140) metrics.

Main check: the conditional perfect memorizer (exact empirical score). Prompts c0…c9
each map to one training point duplicated 20× ("memorized"), c10…c19 each map
to 50 distinct points ("generic"); the unconditional score (cond=None) is the
empirical score of the union. Both metrics must separate the two groups with
AUC 1.0 at DDIM step 1. Schedule: SD's scaled-linear betas (T = 1000).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.score.targets.closed_form import MemorizerTarget, VPSchedule
from models.score.plaplace import roc_auc
from models.score.jeon import jeon_metric, jeon_sharpness, sharpness_fd, sharpness_jvp
from models.score.wen import MetricResult, ddim_timesteps, initial_noise, wen_metric

D = 8
N_MEM = N_GEN = 10
PROMPTS = list(range(N_MEM + N_GEN))  # int labels; 0..9 memorized, 10..19 generic


@pytest.fixture(scope="module")
def toy() -> MemorizerTarget:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((N_MEM + 50 * N_GEN, D))
    mult = np.concatenate([np.full(N_MEM, 20.0), np.ones(50 * N_GEN)])
    labels = np.concatenate([np.arange(N_MEM), np.repeat(np.arange(N_MEM, N_MEM + N_GEN), 50)])
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    return MemorizerTarget(train, mult, VPSchedule(betas), cond_labels=labels)


def _auc(values: np.ndarray) -> float:
    return roc_auc(values[:N_MEM], values[N_MEM:])


# --------------------------------------------------------------------------- #
# Detection on the conditional toy
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("n, steps_used", [(1, 1), (4, 1), (4, 5)])
def test_wen_separates_memorized_prompts(toy, n, steps_used):
    res = wen_metric(toy, PROMPTS, None, n=n, steps_used=steps_used, rng=1)
    assert isinstance(res, MetricResult)
    assert res.values.shape == (20,) and res.per_sample.shape == (20, n) and res.per_step.shape == (20, n, steps_used)
    assert _auc(res.values) == 1.0
    assert res.evals == 2 * 20 * n * steps_used and res.jvp_evals == 0 and res.seconds >= 0.0
    assert res.timesteps.tolist() == toy.schedule.timesteps(50)[:steps_used].tolist()


@pytest.mark.parametrize("n", [1, 4])
def test_jeon_separates_memorized_prompts(toy, n):
    res = jeon_metric(toy, PROMPTS, None, n=n, rng=1)
    assert res.values.shape == (20,) and res.per_sample.shape == (20, n) and res.per_step is None
    assert _auc(res.values) == 1.0
    assert res.evals == 2 * 20 * n and res.jvp_evals == 2 * 20 * n
    assert res.timesteps.tolist() == [999]
    assert res.evals_per_prompt == 4 * n


def test_wen_step1_is_scaled_score_difference(toy):
    """At step 1, ‖ε̂_c − ε̂_∅‖ = √(1−ᾱ_t)‖s^Δ‖ on the same x_T (arXiv:2412.04140 notation)."""
    noise = initial_noise(20, D, 3).reshape(20, 1, D)
    w = wen_metric(toy, PROMPTS, None, n=1, steps_used=1, noise=noise)
    j = jeon_sharpness(toy, np.arange(20), None, noise[:, 0], 999)
    np.testing.assert_allclose(w.per_sample[:, 0], np.sqrt(1 - toy.schedule.abar(999)) * j.s_delta_norm, rtol=1e-10)


def test_wen_follows_cfg_ddim_between_steps(toy):
    noise = initial_noise(2, D, 4).reshape(2, 1, D)
    res = wen_metric(toy, [0, 15], None, n=1, steps_used=2, noise=noise, guidance_scale=3.0, num_inference_steps=10)
    ts = toy.schedule.timesteps(10)
    x = noise[:, 0]
    e_c, e_u = toy.eps(x, int(ts[0]), np.array([0, 15])), toy.eps(x, int(ts[0]), None)
    x1 = toy.schedule.ddim_step(x, e_u + 3.0 * (e_c - e_u), int(ts[0]), int(ts[1]))
    step2 = np.linalg.norm(toy.eps(x1, int(ts[1]), np.array([0, 15])) - toy.eps(x1, int(ts[1]), None), axis=1)
    np.testing.assert_allclose(res.per_step[:, 0, 0], np.linalg.norm(e_c - e_u, axis=1), rtol=1e-12)
    np.testing.assert_allclose(res.per_step[:, 0, 1], step2, rtol=1e-10)
    np.testing.assert_allclose(res.values, res.per_step.mean(axis=(1, 2)))


# --------------------------------------------------------------------------- #
# Jeon's JVP: closed form and finite differences
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("t", [999, 500, 100])
def test_jeon_jvp_matches_closed_form_hessian(toy, t):
    """H^Δ s^Δ by JVP equals (H(x,c) − H(x,∅)) s^Δ from the closed-form Hessian."""
    x = initial_noise(20, D, 5)
    cond = np.arange(20)
    s, hv = sharpness_jvp(toy, cond, None, x, t)
    s_ref = toy.score(x, t, cond) - toy.score(x, t, None)
    H = toy.hessian(x, t, cond) - toy.hessian(x, t, None)
    np.testing.assert_allclose(s, s_ref, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(hv, np.einsum("bij,bj->bi", H, s_ref), rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("t", [999, 500])
def test_jeon_jvp_matches_central_fd(toy, t):
    """Stated tolerance: max |JVP − FD| ≤ 1e-6 · max |JVP| with step h = 1e-3 (float64)."""
    x = initial_noise(20, D, 6)
    cond = np.arange(20)
    s, hv = sharpness_jvp(toy, cond, None, x, t, chunk_size=7)
    s_fd, hv_fd = sharpness_fd(toy, cond, None, x, t, h=1e-3)
    np.testing.assert_array_equal(s, s_fd)
    assert np.abs(hv - hv_fd).max() <= 1e-6 * np.abs(hv).max()
    res = jeon_sharpness(toy, cond, None, x, t)
    np.testing.assert_allclose(res.values, (hv_fd**2).sum(axis=1), rtol=1e-5)
    assert res.evals == 40 and res.jvp_evals == 40


# --------------------------------------------------------------------------- #
# Arguments
# --------------------------------------------------------------------------- #
def test_rejects_bad_arguments(toy):
    with pytest.raises(ValueError, match="steps_used"):
        wen_metric(toy, PROMPTS, n=1, steps_used=11, num_inference_steps=10)
    with pytest.raises(ValueError, match="noise must have shape"):
        wen_metric(toy, PROMPTS, n=2, noise=np.zeros((20, 1, D)))
    with pytest.raises(ValueError, match="prompts_cond"):
        wen_metric(toy, "a prompt", n=1)
    with pytest.raises(ValueError, match="rng"):
        wen_metric(toy, PROMPTS, n=1, rng="seed")
    with pytest.raises(ValueError, match="score_torch"):
        jeon_sharpness(object(), 0, None, np.zeros((1, D)), 5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 999\]"):
        jeon_metric(toy, PROMPTS, t=1000)
    with pytest.raises(ValueError, match="h must be"):
        sharpness_fd(toy, 0, None, np.zeros((1, D)), 5, h=0.0)


def test_initial_noise_sources():
    a = initial_noise(3, 4, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a, torch.randn((3, 4), generator=torch.Generator().manual_seed(0)).double().numpy())
    np.testing.assert_array_equal(initial_noise(3, 4, 7), np.random.default_rng(7).standard_normal((3, 4)))


# --------------------------------------------------------------------------- #
# Diffusers target (tiny random-init SD folder)
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from models.score.targets.hf_diffusers import DiffusersTextToImageTarget
    from tests.models.score.test_diffusers_targets import make_tiny_sd

    return DiffusersTextToImageTarget.load(str(make_tiny_sd(tmp_path_factory.mktemp("wen_sd"))), device="cpu")


def test_metrics_run_on_diffusers_target(tiny_sd):
    prompts = ["Mothers influence on her young hippo", "Mother and her young hippo", "a red car"]
    before = tiny_sd.evals
    w = wen_metric(tiny_sd, prompts, "", n=2, steps_used=2, rng=torch.Generator().manual_seed(0),
                   num_inference_steps=10)
    assert w.values.shape == (3,) and np.all(np.isfinite(w.values)) and np.all(w.values > 0)
    assert w.timesteps.tolist() == ddim_timesteps(tiny_sd, 10)[:2].tolist() == [901, 801]
    assert w.evals == 2 * 3 * 2 * 2 == tiny_sd.evals - before
    w_emb = wen_metric(tiny_sd, tiny_sd.encode_prompts(prompts), None, n=2, steps_used=2,
                       rng=torch.Generator().manual_seed(0), num_inference_steps=10)
    np.testing.assert_allclose(w_emb.values, w.values, rtol=1e-4)
    j = jeon_metric(tiny_sd, prompts, None, n=1, rng=0, num_inference_steps=10)
    assert j.values.shape == (3,) and np.all(np.isfinite(j.values)) and j.timesteps.tolist() == [901]


def test_jeon_jvp_through_unet_matches_fd(tiny_sd):
    """JVP through the UNet (math SDPA) vs central FD, float32 model: tolerance 2e-2 relative."""
    x = initial_noise(2, tiny_sd.dim, 0)
    s, hv = sharpness_jvp(tiny_sd, "a hippo", None, x, 500)
    s_fd, hv_fd = sharpness_fd(tiny_sd, "a hippo", None, x, 500, h=1e-2)
    np.testing.assert_allclose(s, s_fd, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(hv - hv_fd) <= 2e-2 * np.linalg.norm(hv)
