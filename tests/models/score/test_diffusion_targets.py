"""Tests for models.score.targets.closed_form: the GMM and perfect-memorizer closed forms (arXiv:2505.08246 toy)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.score.targets.closed_form import (
    GMMTarget,
    MemorizerTarget,
    VPSchedule,
    ddim_sample,
    load_target,
    save_gmm,
    save_memorizer,
    save_target,
    triangle_gmm,
)


@pytest.fixture(scope="module")
def tri() -> GMMTarget:
    return triangle_gmm(schedule=VPSchedule.linear(100))


def _tri_points(g: GMMTarget) -> np.ndarray:
    mu = g.means
    return np.array([mu[0], 0.5 * (mu[0] + mu[1]), np.zeros(2)])  # mode, edge midpoint, centroid


def _memorizer(labels: bool = False, seed: int = 0) -> MemorizerTarget:
    rng = np.random.default_rng(seed)
    train = rng.standard_normal((20, 8))
    lab = np.repeat(np.arange(4), 5) if labels else None
    return MemorizerTarget(train, rng.integers(1, 4, 20), VPSchedule.linear(200), cond_labels=lab)


# --------------------------------------------------------------------------- #
# Schedule
# --------------------------------------------------------------------------- #
def test_linear_schedule_and_abar():
    s = VPSchedule.linear(200, 1e-4, 0.02)
    assert s.T == 200
    np.testing.assert_allclose(s.betas[[0, -1]], [1e-4, 0.02])
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(1 - np.linspace(1e-4, 0.02, 200)))
    assert s.abar(None) == 1.0
    assert s.abar(0) == pytest.approx(1 - 1e-4)
    np.testing.assert_allclose(s.abar(np.array([0, 10])), s.alphas_cumprod[[0, 10]])
    ts = s.timesteps(50)
    assert ts[0] == 199 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    assert s.timesteps(1).tolist() == [199]
    assert len(np.unique(s.timesteps(200))) == 200


@pytest.mark.parametrize("bad", [[0.0, 0.1], [0.5, 1.0], [[0.1]], []])
def test_schedule_rejects_bad_betas(bad):
    with pytest.raises(ValueError):
        VPSchedule(np.array(bad))


def test_schedule_rejects_bad_t():
    s = VPSchedule.linear(10)
    for t in (10, -1, 2.5):
        with pytest.raises(ValueError, match=str(t)):
            s.abar(t)
    with pytest.raises(ValueError, match="steps"):
        s.timesteps(11)


def test_ddim_step_final_returns_x0_hat():
    s = VPSchedule.linear(50)
    rng = np.random.default_rng(0)
    x0, e = rng.standard_normal((2, 4, 3))
    a = s.abar(20)
    xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * e
    np.testing.assert_allclose(s.ddim_step(xt, e, 20, None), x0, atol=1e-12)
    # with the true noise, DDIM moves exactly along the forward trajectory
    a5 = s.abar(5)
    np.testing.assert_allclose(s.ddim_step(xt, e, 20, 5), math.sqrt(a5) * x0 + math.sqrt(1 - a5) * e, atol=1e-12)


# --------------------------------------------------------------------------- #
# GMM closed forms (t=None means ᾱ = 1 exactly)
# --------------------------------------------------------------------------- #
def test_triangle_laplacian_values(tri):
    lap = tri.laplacian(_tri_points(tri))
    np.testing.assert_allclose(lap, [-20.0, 605.0, 813.333333], atol=1e-3)
    # Laplacian = trace of Hessian = p_laplacian at p=2
    np.testing.assert_allclose(np.trace(tri.hessian(_tri_points(tri)), axis1=1, axis2=2), lap, atol=1e-9)
    np.testing.assert_allclose(tri.p_laplacian(_tri_points(tri), None, 2.0), lap, atol=1e-9)


def test_triangle_3_laplace_values(tri):
    vals = tri.p_laplacian(_tri_points(tri) + 1e-3, None, 3.0)
    np.testing.assert_allclose(vals, [-0.424, 749.66, 692.60], atol=5e-3)


def _fd_div(field, x: np.ndarray, h: float) -> np.ndarray:
    d = x.shape[1]
    out = np.zeros(x.shape[0])
    for i in range(d):
        e = np.zeros(d)
        e[i] = h
        out += (field(x + e)[:, i] - field(x - e)[:, i]) / (2 * h)
    return out


@pytest.mark.parametrize("p", [1.5, 2.0, 3.0])
def test_p_laplacian_matches_finite_differences(tri, p):
    pts = np.concatenate([_tri_points(tri) + 1e-3, [[0.4, -0.3], [1.0, 1.2], [-2.0, 0.1]]])

    def V(y):
        s = tri.score(y)
        return np.linalg.norm(s, axis=1, keepdims=True) ** (p - 2) * s

    fd = _fd_div(V, pts, 1e-6)
    np.testing.assert_allclose(tri.p_laplacian(pts, None, p), fd, rtol=1e-3)


def test_p_laplacian_at_critical_point():
    g = GMMTarget(np.array([[1.0, 2.0]]), np.array([0.5]), np.array([1.0]))
    mode = g.means  # s = 0 exactly
    assert g.p_laplacian(mode, None, 2.0)[0] == pytest.approx(-8.0)
    assert g.p_laplacian(mode, None, 3.0)[0] == 0.0  # limit of |s|^{p-2}(...) for p > 2
    assert np.isnan(g.p_laplacian(mode, None, 1.5)[0])  # singular for p < 2
    with pytest.raises(ValueError, match="0.5"):
        g.p_laplacian(mode, None, 0.5)


@pytest.mark.parametrize("t", [None, 3, 40])
def test_score_and_hessian_vs_finite_differences(t):
    rng = np.random.default_rng(3)
    g = GMMTarget(rng.standard_normal((4, 3)) * 2, rng.uniform(0.3, 1.0, 4), rng.uniform(0.5, 2, 4),
                  VPSchedule.linear(100))
    x = rng.standard_normal((6, 3)) * 2
    h = 1e-5
    eye = np.eye(3) * h
    fd_score = np.stack([(g.log_prob(x + eye[i], t) - g.log_prob(x - eye[i], t)) / (2 * h) for i in range(3)], 1)
    np.testing.assert_allclose(g.score(x, t), fd_score, rtol=1e-6, atol=1e-7)
    fd_hess = np.stack([(g.score(x + eye[j], t) - g.score(x - eye[j], t)) / (2 * h) for j in range(3)], 2)
    np.testing.assert_allclose(g.hessian(x, t), fd_hess, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g.hessian(x, t), np.swapaxes(g.hessian(x, t), 1, 2), atol=1e-10)


def test_log_prob_normalised_single_gaussian():
    g = GMMTarget(np.array([[1.0, -1.0]]), np.array([0.5]), np.array([1.0]), VPSchedule.linear(20))
    x = np.array([[0.3, 0.2]])
    a = g.schedule.abar(7)
    s2 = a * 0.25 + 1 - a
    m = math.sqrt(a) * np.array([1.0, -1.0])
    expected = -np.log(2 * np.pi * s2) - np.sum((x - m) ** 2) / (2 * s2)
    np.testing.assert_allclose(g.log_prob(x, 7), [expected], rtol=1e-12)
    np.testing.assert_allclose(g.score(x, 7), -(x - m) / s2, rtol=1e-12)


def test_eps_score_relation_and_dtypes(tri):
    x = np.random.default_rng(0).standard_normal((5, 2))
    a = tri.schedule.abar(30)
    np.testing.assert_allclose(tri.eps(x, 30), -math.sqrt(1 - a) * tri.score(x, 30), rtol=1e-12)
    np.testing.assert_array_equal(tri.eps(x, None), np.zeros_like(x))
    assert tri.eps(x.astype(np.float32), 30).dtype == np.float32
    assert tri.score(x, 30).dtype == np.float64
    # per-row timesteps equal row-by-row evaluation
    ts = np.array([0, 10, 20, 50, 99])
    rows = np.concatenate([tri.score(x[i : i + 1], int(ts[i])) for i in range(5)])
    np.testing.assert_allclose(tri.score(x, ts), rows, rtol=1e-12)


def test_torch_score_matches_numpy():
    m = _memorizer(labels=True)
    g = triangle_gmm(schedule=VPSchedule.linear(100))
    rng = np.random.default_rng(1)
    x2 = rng.standard_normal((7, 2)) * 2
    np.testing.assert_allclose(g.score_torch(torch.from_numpy(x2), None).numpy(), g.score(x2), rtol=1e-10)
    np.testing.assert_allclose(g.score_torch(torch.from_numpy(x2), 20).numpy(), g.score(x2, 20), rtol=1e-10)
    x8 = rng.standard_normal((7, 8))
    cond = np.array([0, 1, 2, 3, 0, 1, 2])
    np.testing.assert_allclose(m.score_torch(torch.from_numpy(x8), 15, cond).numpy(), m.score(x8, 15, cond),
                               rtol=1e-9)
    np.testing.assert_allclose(m.eps_torch(torch.from_numpy(x8), 15).numpy(), m.eps(x8, 15), rtol=1e-9)
    assert g.score_torch(torch.from_numpy(x2).float(), 20).dtype == torch.float32


def test_gmm_input_validation(tri):
    with pytest.raises(ValueError, match=r"\(5,\)"):
        GMMTarget(np.zeros((3, 2)), np.ones(5), np.ones(3))
    with pytest.raises(ValueError, match="-1"):
        GMMTarget(np.zeros((3, 2)), np.ones(3), np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        tri.score(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unconditional"):
        tri.eps(np.zeros((1, 2)), 3, cond=1)
    with pytest.raises(ValueError, match="only t=None"):
        triangle_gmm().score(np.zeros((1, 2)), 5)


# --------------------------------------------------------------------------- #
# Memorizer (the DDPM-loss minimiser on a finite set, arXiv:2310.02664 §3)
# --------------------------------------------------------------------------- #
def test_memorizer_equals_zero_variance_gmm():
    m = _memorizer()
    g = GMMTarget(m.train, np.zeros(20), m.multiplicities, m.schedule)
    x = np.random.default_rng(5).standard_normal((9, 8))
    for t in (0, 10, 150):
        np.testing.assert_allclose(m.eps(x, t), g.eps(x, t), rtol=1e-9, atol=1e-12)
    # explicit formula of §5.2
    t = 60
    a = m.schedule.abar(t)
    logits = np.log(m.multiplicities) - ((x[:, None] - math.sqrt(a) * m.train[None]) ** 2).sum(-1) / (2 * (1 - a))
    w = np.exp(logits - logits.max(1, keepdims=True))
    x0 = (w / w.sum(1, keepdims=True)) @ m.train
    np.testing.assert_allclose(m.x0_hat(x, t), x0, rtol=1e-10)
    np.testing.assert_allclose(m.eps(x, t), (x - math.sqrt(a) * x0) / math.sqrt(1 - a), rtol=1e-10)
    with pytest.raises(ValueError, match="t=None"):
        m.eps(x, None)


def test_memorizer_conditioning():
    m = _memorizer(labels=True)
    x = np.random.default_rng(2).standard_normal((6, 8))
    sub = m.labels == 2
    m2 = MemorizerTarget(m.train[sub], m.multiplicities[sub], m.schedule)
    np.testing.assert_allclose(m.eps(x, 30, cond=2), m2.eps(x, 30), rtol=1e-10)
    np.testing.assert_allclose(m.eps(x, 30, cond=None), _memorizer().eps(x, 30), rtol=1e-10)
    per_row = np.array([0, 1, 2, 3, 2, 1])
    rows = np.concatenate([m.eps(x[i : i + 1], 30, int(per_row[i])) for i in range(6)])
    np.testing.assert_allclose(m.eps(x, 30, per_row), rows, rtol=1e-10)
    with pytest.raises(ValueError, match=r"\[7\]"):
        m.eps(x, 30, cond=7)
    with pytest.raises(ValueError, match="unconditional"):
        _memorizer().eps(x, 30, cond=1)


def test_ddim_memorizer_lands_on_training_points():
    m = _memorizer()
    rng = np.random.default_rng(11)
    xs = ddim_sample(m, 200, 8, 50, rng)
    dist = np.linalg.norm(xs[:, None] - m.train[None], axis=-1)
    nn = dist.min(1)
    tt = np.linalg.norm(m.train[:, None] - m.train[None], axis=-1)
    np.fill_diagonal(tt, np.inf)
    spacing = np.median(tt.min(1))
    assert np.median(nn) < 1e-3 and nn.max() < 1e-3
    assert spacing > 1.0  # ~2.44 for the reference draw
    assert len(np.unique(dist.argmin(1))) >= 15  # not collapsed onto a few points


def test_ddim_noise_injection_and_guidance_equals_conditional():
    m = _memorizer(labels=True)
    noise = np.random.default_rng(4).standard_normal((32, 8))
    a = ddim_sample(m, 32, 8, 25, noise=noise)
    b = ddim_sample(m, 32, 8, 25, np.random.default_rng(99), noise=noise)
    np.testing.assert_array_equal(a, b)
    # exact classifier guidance: ∇log p(c|x_t) = s(x_t|c) − s(x_t); λ = 1 gives ε̂(x_t, c).
    c = 3

    def grad_log_pc(x, t):
        return m.score(x, t, cond=c) - m.score(x, t)

    guided = ddim_sample(m, 32, 8, 25, noise=noise, guidance=grad_log_pc, guidance_scale=1.0)
    cond = ddim_sample(m, 32, 8, 25, noise=noise, cond=c)
    np.testing.assert_allclose(guided, cond, atol=1e-8)
    assert np.all(np.isin(np.linalg.norm(guided[:, None] - m.train[None], axis=-1).argmin(1),
                          np.nonzero(m.labels == c)[0]))
    np.testing.assert_array_equal(ddim_sample(m, 32, 8, 25, noise=noise, guidance=grad_log_pc, guidance_scale=0.0), a)
    with pytest.raises(ValueError, match="Generator"):
        ddim_sample(m, 4, 8, 10)
    with pytest.raises(ValueError, match="d=3"):
        ddim_sample(m, 4, 3, 10, np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
def test_save_load_roundtrip(tmp_path, tri):
    gpath = str(tmp_path / "g.npz")
    save_gmm(gpath, tri)
    g2 = load_target(f"gmm:{gpath}")
    assert isinstance(g2, GMMTarget)
    x = np.random.default_rng(0).standard_normal((3, 2))
    np.testing.assert_allclose(g2.eps(x, 12), tri.eps(x, 12), rtol=1e-12)
    m = _memorizer(labels=True)
    spec = save_target(str(tmp_path / "m.npz"), m)
    m2 = load_target(spec)
    assert isinstance(m2, MemorizerTarget)
    np.testing.assert_array_equal(m2.labels, m.labels)
    x8 = np.random.default_rng(0).standard_normal((3, 8))
    np.testing.assert_allclose(m2.eps(x8, 12, 1), m.eps(x8, 12, 1), rtol=1e-12)
    mp = str(tmp_path / "m_nolab.npz")
    save_memorizer(mp, _memorizer())
    assert load_target(f"memorizer:{mp}").labels is None


def test_load_errors(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, means=np.zeros((2, 2)), T=np.int64(10))
    with pytest.raises(ValueError, match=r"\['sigmas', 'weights', 'beta_start', 'beta_end'\]"):
        load_target(f"gmm:{p}")
    with pytest.raises(ValueError, match="train"):
        load_target(f"memorizer:{p}")
    with pytest.raises(ValueError, match="'kde'"):
        load_target(f"kde:{p}")
    with pytest.raises(ValueError, match="not found"):
        load_target(f"gmm:{tmp_path / 'missing.npz'}")
    with pytest.raises(ValueError, match="linear"):
        save_gmm(str(tmp_path / "x.npz"), triangle_gmm())
