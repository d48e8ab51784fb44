"""Tests for models.score.plaplace against closed forms (GMM score and the exact empirical score; arXiv:2505.08246).

Monte-Carlo checks use fixed seeds and a 4-standard-error tolerance
(n = 2000 directions gives SE ≈ 0.01 for p = 1).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from models.score.targets.closed_form import GMMTarget, MemorizerTarget, VPSchedule, triangle_gmm
from models.score.plaplace import (
    ball_average_from_flux,
    flux_estimator,
    noise_cosine_statistic,
    noise_flux_statistics,
    radius_from_factor,
    roc_auc,
    roc_curve,
    sample_ball,
    sample_unit_sphere,
    tpr_at_fpr,
    volume_estimator_hutchinson,
)


@pytest.fixture(scope="module")
def tri() -> GMMTarget:
    return triangle_gmm()


def _pts(g: GMMTarget) -> np.ndarray:
    mu = g.means
    return np.array([mu[0], 0.5 * (mu[0] + mu[1]), np.zeros(2)])  # mode, edge midpoint, centroid


def _score(g, t=None):
    return lambda y: g.score(y, t)


# --------------------------------------------------------------------------- #
# Geometry
# --------------------------------------------------------------------------- #
def test_samplers_and_radius_helpers():
    rng = np.random.default_rng(0)
    u = sample_unit_sphere(5000, 3, rng)
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0)
    assert np.all(np.abs(u.mean(0)) < 0.05)
    b = sample_ball(20000, 2, 2.0, rng)
    rad = np.linalg.norm(b, axis=1)
    assert rad.max() <= 2.0
    assert abs(np.mean(rad <= 1.0) - 0.25) < 0.01  # uniform in area
    assert radius_from_factor(0.1, 16384) == pytest.approx(12.8)
    assert ball_average_from_flux(-3.0, 0.3, 2) == pytest.approx(-20.0)
    with pytest.raises(ValueError, match="-1"):
        radius_from_factor(-1, 4)


# --------------------------------------------------------------------------- #
# Flux estimator (closed-form GMM values)
# --------------------------------------------------------------------------- #
def test_flux_p1_r1_triangle(tri):
    mean, se = flux_estimator(_score(tri), _pts(tri), 1.0, 1.0, 2000, np.random.default_rng(0))
    expected = np.array([-1.000, 0.370, 0.687])
    assert np.all(se[1:] < 0.02)
    assert np.all(np.abs(mean - expected) <= 4 * se + 1e-3), (mean, se)


def test_flux_p2_at_mode_and_buggy_formula(tri):
    x = tri.means[:1]
    r, d = 0.3, 2
    mean, se = flux_estimator(_score(tri), x, r, 2.0, 2000, np.random.default_rng(1))
    assert mean[0] == pytest.approx(-3.0, abs=1e-6)
    # divergence theorem: (d/r)·mean = ball-average Laplacian = −20 (total flux −20·π·r²)
    avg_lap = tri.laplacian(x + sample_ball(20000, d, r, np.random.default_rng(2))).mean()
    assert ball_average_from_flux(mean, r, d)[0] == pytest.approx(avg_lap, abs=1e-3)
    assert mean[0] * 2 * math.pi * r == pytest.approx(-5.655, abs=1e-3)
    # The reference torch code's |s|^{p-2}·cos (not |s|^{p-2}(s·u)) gives −1.0 here: wrong.
    u = sample_unit_sphere(2000, d, np.random.default_rng(1))
    s = tri.score(x + r * u)
    ns = np.linalg.norm(s, axis=1)
    buggy = np.mean(ns ** (2.0 - 2.0) * np.einsum("nd,nd->n", s, u) / ns)
    assert buggy == pytest.approx(-1.0, abs=1e-6)
    assert abs(buggy - mean[0]) > 1.9


def test_flux_p2_matches_ball_average_laplacian_at_saddle(tri):
    x = _pts(tri)[1:2]
    r, d = 0.5, 2
    mean, se = flux_estimator(_score(tri), x, r, 2.0, 4000, np.random.default_rng(3))
    avg_lap = tri.laplacian(x + sample_ball(200000, d, r, np.random.default_rng(4))).mean()
    # ball average is itself MC (rel. error ~0.3 %), flux SE ~1 %
    tol = 4 * ball_average_from_flux(se, r, d)[0] + 0.01 * abs(avg_lap)
    assert abs(ball_average_from_flux(mean, r, d)[0] - avg_lap) < tol


@pytest.mark.parametrize("t", [None, 25])
def test_single_gaussian_at_mean(t):
    d, sigma = 5, 0.7
    g = GMMTarget(np.full((1, d), 0.5), np.array([sigma]), np.array([1.0]), VPSchedule.linear(100))
    a = g.schedule.abar(t)
    s2 = a * sigma**2 + 1 - a
    centre = math.sqrt(a) * g.means
    rng = np.random.default_rng(5)
    for r in (0.05, 1.0, 5.0):
        m1, _ = flux_estimator(_score(g, t), centre, r, 1.0, 500, rng)
        assert m1[0] == pytest.approx(-1.0, abs=1e-12)
        m2, _ = flux_estimator(_score(g, t), centre, r, 2.0, 500, rng)
        assert m2[0] == pytest.approx(-r / s2, rel=1e-10)


def test_flux_float32_and_chunking(tri):
    x = _pts(tri)
    a = flux_estimator(_score(tri), x, 1.0, 1.0, 300, np.random.default_rng(7))
    b = flux_estimator(_score(tri), x, 1.0, 1.0, 300, np.random.default_rng(7), chunk_size=37)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    c = flux_estimator(_score(tri), x.astype(np.float32), 1.0, 1.0, 300, np.random.default_rng(7))
    np.testing.assert_allclose(a[0], c[0], atol=1e-4)


def test_flux_input_validation(tri):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="0.0"):
        flux_estimator(_score(tri), _pts(tri), 0.0, 1.0, 10, rng)
    with pytest.raises(ValueError, match="0.5"):
        flux_estimator(_score(tri), _pts(tri), 1.0, 0.5, 10, rng)
    with pytest.raises(ValueError, match="n_dirs"):
        flux_estimator(_score(tri), _pts(tri), 1.0, 1.0, 1, rng)
    with pytest.raises(ValueError, match="Generator"):
        flux_estimator(_score(tri), _pts(tri), 1.0, 1.0, 10, 0)
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        flux_estimator(_score(tri), np.zeros(2), 1.0, 1.0, 10, rng)
    with pytest.raises(ValueError, match="shape"):
        flux_estimator(lambda y: y[:, :1], _pts(tri), 1.0, 1.0, 10, rng)


# --------------------------------------------------------------------------- #
# Volume (Hutchinson) estimator vs flux: divergence theorem
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("p", [2.0, 1.5])
def test_hutchinson_agrees_with_flux(tri, p):
    x = np.array([[0.4, -0.3], 0.5 * (tri.means[0] + tri.means[1])])
    r, d = 0.6, 2
    fm, fs = flux_estimator(_score(tri), x, r, p, 3000, np.random.default_rng(8))
    vm, vs = volume_estimator_hutchinson(lambda y: tri.score_torch(y), x, r, p, 3000, 2,
                                         np.random.default_rng(9))
    favg, fse = ball_average_from_flux(fm, r, d), ball_average_from_flux(fs, r, d)
    assert np.all(np.abs(vm - favg) < 4 * np.sqrt(vs**2 + fse**2)), (vm, vs, favg, fse)
    # and both agree with the closed-form p-Laplacian averaged over the ball
    q = np.array([tri.p_laplacian(xi + sample_ball(50000, d, r, np.random.default_rng(10)), None, p).mean()
                  for xi in x])
    assert np.all(np.abs(favg - q) < 4 * fse + 0.01 * np.abs(q))


def test_hutchinson_small_ball_is_pointwise_p_laplacian(tri):
    x = np.array([[0.4, -0.3], [1.0, 1.2]])
    vm, vs = volume_estimator_hutchinson(lambda y: tri.score_torch(y), x, 1e-6, 3.0, 64, 64,
                                         np.random.default_rng(12))
    exact = tri.p_laplacian(x, None, 3.0)
    assert np.all(np.abs(vm - exact) < 4 * vs + 1e-6 * np.abs(exact))


def test_hutchinson_on_memorizer_torch_path():
    rng = np.random.default_rng(13)
    m = MemorizerTarget(rng.standard_normal((20, 8)), None, VPSchedule.linear(200))
    t = 40
    x = math.sqrt(m.schedule.abar(t)) * m.train[:2] + 0.05
    r, d = 0.5, 8
    fm, fs = flux_estimator(lambda y: m.score(y, t), x, r, 2.0, 2000, np.random.default_rng(14))
    vm, vs = volume_estimator_hutchinson(lambda y: m.score_torch(y, t), x, r, 2.0, 1000, 1,
                                         np.random.default_rng(15))
    favg, fse = ball_average_from_flux(fm, r, d), ball_average_from_flux(fs, r, d)
    assert np.all(np.abs(vm - favg) < 4 * np.sqrt(vs**2 + fse**2)), (vm, vs, favg, fse)
    assert np.all(favg < 0)  # sharp maximum near a training point


# --------------------------------------------------------------------------- #
# Noise-cosine statistic on the perfect memorizer (exact empirical score)
# --------------------------------------------------------------------------- #
def test_noise_cosine_memorizer_separates_train_from_fresh():
    rng = np.random.default_rng(0)
    m = MemorizerTarget(rng.standard_normal((20, 8)), None, VPSchedule.linear(200, 1e-4, 0.02))
    fresh = rng.standard_normal((20, 8))
    pos, pos_se = noise_cosine_statistic(m, m.train, 10, 2000, np.random.default_rng(1))
    neg, neg_se = noise_cosine_statistic(m, fresh, 10, 2000, np.random.default_rng(2))
    assert np.all(pos > 0.95)
    assert abs(neg.mean()) < 0.3 and np.all(neg < 0.5)
    assert roc_auc(pos, neg) == 1.0
    assert tpr_at_fpr(pos, neg, 0.01) == 1.0


def test_noise_cosine_is_flux_estimator_on_eps():
    rng = np.random.default_rng(3)
    m = MemorizerTarget(rng.standard_normal((10, 8)), None, VPSchedule.linear(200), np.arange(10) % 2)
    x0 = m.train[:4] + 0.3 * rng.standard_normal((4, 8))
    t = 10
    a = m.schedule.abar(t)
    stat, se = noise_cosine_statistic(m, x0, t, 300, np.random.default_rng(4), cond=1)
    fm, fse = flux_estimator(lambda y: m.eps(y, t, 1), math.sqrt(a) * x0,
                             radius_from_factor(math.sqrt(1 - a), 8), 1.0, 300, np.random.default_rng(4))
    np.testing.assert_allclose(stat, fm, rtol=1e-12)
    np.testing.assert_allclose(se, fse, rtol=1e-12)
    # per-sample conditions
    conds = np.array([0, 1, 0, 1])
    per, _ = noise_cosine_statistic(m, x0, t, 50, np.random.default_rng(5), cond=conds, chunk_size=7)
    rows = [noise_cosine_statistic(m, x0[i:i + 1], t, 50, np.random.default_rng(0), cond=int(conds[i]))[0][0]
            for i in range(4)]
    assert np.all(np.abs(per - np.array(rows)) < 0.5)  # same statistic, different draws
    with pytest.raises(ValueError, match="None"):
        noise_cosine_statistic(m, x0, None, 10, np.random.default_rng(0))


def test_noise_flux_statistics_closed_form_and_shared_evaluations():
    """One training point: eps* = (x_t - sqrt(abar) x0)/sqrt(1 - abar) is exactly the drawn noise, |noise| = sqrt(d),
    so at x0 the p = 1 flux is 1 and the p = 2 flux sqrt(d) for every draw; both come from the same evaluations."""
    rng = np.random.default_rng(6)
    d = 8
    m = MemorizerTarget(rng.standard_normal((1, d)), None, VPSchedule.linear(200, 1e-4, 0.02))
    calls = []
    real_eps = m.eps
    m.eps = lambda y, t, c=None: (calls.append(len(y)), real_eps(y, t, c))[1]
    out = noise_flux_statistics(m, m.train, 10, 64, np.random.default_rng(7), ps=(1.0, 2.0))
    np.testing.assert_allclose(out[1.0][0], 1.0, atol=1e-9)
    np.testing.assert_allclose(out[2.0][0], math.sqrt(d), rtol=1e-9)
    assert sum(calls) == 64  # 64 evaluations serve both exponents
    # away from the point, its p = 1 part is the cosine statistic itself (same generator, same draws)
    x0 = m.train + 2.0
    both = noise_flux_statistics(m, x0, 50, 500, np.random.default_rng(8), ps=(1.0, 2.0))
    one = noise_cosine_statistic(m, x0, 50, 500, np.random.default_rng(8))
    np.testing.assert_allclose(both[1.0][0], one[0], rtol=1e-12)  # same draws as the cosine statistic
    with pytest.raises(ValueError, match="p must be"):
        noise_flux_statistics(m, x0, 50, 10, np.random.default_rng(0), ps=(0.5,))
    with pytest.raises(ValueError, match="at least one"):
        noise_flux_statistics(m, x0, 50, 10, np.random.default_rng(0), ps=())


# --------------------------------------------------------------------------- #
# AUC / TPR helpers vs brute force
# --------------------------------------------------------------------------- #
def _brute_auc(pos, neg) -> float:
    tot = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return tot / (len(pos) * len(neg))


def _brute_curve(pos, neg):
    thr = [np.inf] + sorted(set(pos) | set(neg), reverse=True)
    fpr = np.array([np.mean(np.asarray(neg) >= t) for t in thr])
    tpr = np.array([np.mean(np.asarray(pos) >= t) for t in thr])
    return fpr, tpr


@pytest.mark.parametrize("seed", range(6))
def test_auc_and_tpr_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_pos, n_neg = rng.integers(1, 30, 2)
    pos = rng.integers(0, 8, n_pos).astype(float) + (seed % 2) * rng.random(n_pos)  # ties for even seeds
    neg = rng.integers(-3, 6, n_neg).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(_brute_auc(pos, neg), abs=1e-12)
    fpr, tpr = _brute_curve(pos, neg)
    f2, t2, _ = roc_curve(pos, neg)
    np.testing.assert_allclose(f2, fpr)
    np.testing.assert_allclose(t2, tpr)
    for target in (0.01, 0.1, 0.3):
        wen = max(t for f, t in zip(fpr, tpr) if f < target)
        assert tpr_at_fpr(pos, neg, target) == pytest.approx(wen)
        jeon = tpr[int(np.argmin(np.abs(fpr - target)))]
        assert tpr_at_fpr(pos, neg, target, convention="jeon") == pytest.approx(jeon)


def test_metric_edge_cases():
    assert roc_auc([1.0, 2.0], [0.0]) == 1.0
    assert roc_auc([0.0], [1.0, 2.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0]) == 0.5
    # 100 negatives: FPR 1 % needs > 1 false positive forbidden under Wen (strict <)
    neg = np.arange(100, dtype=float)
    pos = np.array([98.5, 50.0])
    assert tpr_at_fpr(pos, neg, 0.01) == 0.0  # thr 99 has fpr 0.01, not < 0.01: only +inf qualifies
    assert tpr_at_fpr(pos, neg, 0.02) == 0.5
    assert tpr_at_fpr(pos, neg, 0.01, convention="jeon") == 0.0
    with pytest.raises(ValueError, match="nan"):
        roc_auc([np.nan], [1.0])
    with pytest.raises(ValueError, match="1.5"):
        tpr_at_fpr([1.0], [0.0], 1.5)
    with pytest.raises(ValueError, match="'x'"):
        tpr_at_fpr([1.0], [0.0], 0.1, convention="x")
