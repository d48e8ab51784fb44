"""Tests for models.score.side: SIDE v7 on closed-form targets (arXiv:2410.02467 v7 Algorithm 1, on the exact empirical score)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models.score.targets.closed_form import MemorizerTarget, VPSchedule, ddim_sample
from models.score.extraction_metrics import SimilarityBands
from models.score.side import (
    SideConfig,
    TimeConditionedClassifier,
    build_side_stage,
    build_surrogate_condition,
    classifier_guidance,
    run_side,
    sinusoidal_embedding,
    train_classifier,
)

TOY = dict(hidden=(64, 64), time_dim=32, batch_size=128, lr=1e-3)  # small classifier for vector toys


# --------------------------------------------------------------------------- #
# Config
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "kwargs, match",
    [({"tau": 1.5}, "tau"), ({"lambda_": -1.0}, "lambda_"), ({"hidden": ()}, "hidden"),
     ({"time_dim": 3}, "time_dim"), ({"n_g": 0}, "n_g"), ({"lr": 0.0}, "lr"),
     ({"drop_rejected": 1}, "drop_rejected"), ({"bands": "cosine"}, "bands"), ({"threads": 0}, "threads")],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SideConfig(**kwargs)


def test_config_defaults_follow_paper():
    cfg = SideConfig()
    assert (cfg.k, cfg.tau, cfg.lr, cfg.batch_size, cfg.drop_rejected) == (100, 0.5, 1e-4, 64, False)
    assert SideConfig(hidden=[8, 4]).hidden == (8, 4)


# --------------------------------------------------------------------------- #
# Surrogate condition (Part 1 steps 3-5)
# --------------------------------------------------------------------------- #
def _planted(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """4 tight clusters (cos ≈ 0.997 to their axis e_0..e_3) + 1 diffuse cluster
    around e_4 with 11-d spread 0.8 (cohesion ≈ 0.4 < τ = 0.5); d = 16, 40 each."""
    rng = np.random.default_rng(seed)
    d = 16
    parts = []
    for c in range(4):
        v = np.zeros((40, d))
        v[:, c] = 1.0
        v[:, :4] += 0.05 * rng.standard_normal((40, 4))
        parts.append(v)
    diffuse = np.zeros((40, d))
    diffuse[:, 4] = 1.0
    diffuse[:, 5:] = 0.8 * rng.standard_normal((40, 11))
    x = np.vstack(parts + [diffuse])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(5), 40)


@pytest.mark.parametrize("data_seed", [0, 1, 2])
def test_surrogate_recovers_planted_clusters_and_rejects_diffuse(data_seed):
    x, y = _planted(data_seed)
    sc = build_surrogate_condition(x, k=5, tau=0.5, seed=0)
    assert (sc.k, sc.k_kept) == (5, 4)
    # tight clusters recovered up to a label permutation
    tight = y < 4
    pairs = set(zip(y[tight].tolist(), sc.labels[tight].tolist()))
    assert len(pairs) == 4 and len({p[1] for p in pairs}) == 4
    # the diffuse cluster (its majority k-means cluster) is rejected; tight ones kept
    diffuse_cluster = np.bincount(sc.assignment[~tight]).argmax()
    assert not sc.kept[diffuse_cluster] and sc.cohesion[diffuse_cluster] < 0.5
    assert np.all(sc.cohesion[sc.kept] > 0.99)
    np.testing.assert_allclose(np.linalg.norm(sc.centroids, axis=1), 1.0, atol=1e-5)
    # step 5 as written: every sample labelled by argmax cosine over kept centroids
    assert sc.sample_mask.all() and sc.labels.min() >= 0 and sc.labels.max() < 4
    np.testing.assert_array_equal(sc.labels, np.argmax(x.astype(np.float64) @ sc.centroids.T.astype(np.float64), 1))


def test_surrogate_drop_rejected():
    x, y = _planted(0)
    keep = build_surrogate_condition(x, k=5, tau=0.5, seed=0)
    drop = build_surrogate_condition(x, k=5, tau=0.5, seed=0, drop_rejected=True)
    rejected = ~keep.kept[keep.assignment]
    assert rejected.sum() >= 35  # (almost) all diffuse samples sit in the rejected cluster
    np.testing.assert_array_equal(drop.sample_mask, ~rejected)
    assert np.all(drop.labels[rejected] == -1)
    np.testing.assert_array_equal(drop.labels[~rejected], keep.labels[~rejected])
    np.testing.assert_array_equal(drop.centroids, keep.centroids)


def test_surrogate_errors():
    x, _ = _planted(0)
    with pytest.raises(ValueError, match="tau=1.0"):
        build_surrogate_condition(x, k=5, tau=1.0, seed=0)
    with pytest.raises(ValueError, match="zero norm"):
        build_surrogate_condition(np.zeros((3, 4)), k=2, tau=0.5, seed=0)
    with pytest.raises(ValueError, match="k must"):
        build_surrogate_condition(x, k=0, tau=0.5, seed=0)


# --------------------------------------------------------------------------- #
# Classifier (Part 1 step 6)
# --------------------------------------------------------------------------- #
def test_sinusoidal_embedding():
    e = sinusoidal_embedding(torch.tensor([0, 5]), 8)
    assert e.shape == (2, 8)
    np.testing.assert_allclose(e[0].numpy(), [0, 0, 0, 0, 1, 1, 1, 1])
    assert abs(float(e[1, 0]) - np.sin(5.0)) < 1e-6


def _labelled_memorizer() -> tuple[MemorizerTarget, np.ndarray, np.ndarray]:
    """d = 8, 20 points in 4 clusters (centres of norm 2, spread 0.3), T = 200 linear 1e-4..0.02."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 8))
    centres *= 2.0 / np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 5)
    x0 = centres[labels] + 0.3 * rng.standard_normal((20, 8))
    return MemorizerTarget(x0, None, VPSchedule.linear(200), cond_labels=labels), x0, labels


def test_classifier_accuracy_falls_with_t_and_matches_bayes():
    """Measured (seed 0, 600 AdamW steps at lr 1e-3, 2000 draws per t): accuracy
    1.000 / 1.000 / 0.998 / 0.911 / 0.672 / 0.526 at t = 0 / 10 / 50 / 100 / 150 / 199
    against Bayes 1.000 / 1.000 / 0.999 / 0.914 / 0.682 / 0.533 (the exact posterior
    of the labelled memorizer); chance 0.25. Tolerances: |acc − Bayes| < 0.05,
    acc > 0.9 at t ≤ 10, acc < 0.6 at t = 199."""
    tgt, x0, labels = _labelled_memorizer()
    sched = tgt.schedule
    cfg = SideConfig(train_steps=600, **TOY)
    model, losses = train_classifier(x0, labels, sched, cfg, torch.Generator().manual_seed(0))
    assert not model.training and losses.shape == (600,) and losses[-50:].mean() < losses[:50].mean()
    rng = np.random.default_rng(1)
    accs = []
    for t in (0, 10, 50, 100, 150, 199):
        i = rng.integers(0, 20, 2000)
        a = sched.abar(t)
        xt = np.sqrt(a) * x0[i] + np.sqrt(1 - a) * rng.standard_normal((2000, 8))
        with torch.no_grad():
            pred = model(torch.tensor(xt, dtype=torch.float32), torch.full((2000,), t)).argmax(1).numpy()
        bayes = np.stack([tgt.log_prob(xt, t, cond=c) for c in range(4)], 1).argmax(1)
        acc, acc_bayes = (pred == labels[i]).mean(), (bayes == labels[i]).mean()
        assert abs(acc - acc_bayes) < 0.05, (t, acc, acc_bayes)
        accs.append(acc)
    assert accs[0] > 0.9 and accs[1] > 0.9
    assert np.all(np.diff(accs) < 0.02)  # non-increasing up to MC noise
    assert accs[-1] < 0.6  # towards chance (0.25)


def test_train_classifier_deterministic_and_leaves_global_rng():
    _, x0, labels = _labelled_memorizer()
    cfg = SideConfig(train_steps=5, **TOY)
    state = torch.get_rng_state()
    m1, l1 = train_classifier(x0, labels, VPSchedule.linear(200), cfg, torch.Generator().manual_seed(3))
    m2, l2 = train_classifier(x0, labels, VPSchedule.linear(200), cfg, torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(l1, l2)
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(x0, labels, VPSchedule.linear(200), cfg, torch.Generator(), n_classes=3)


class _ExactPosterior(torch.nn.Module):
    """log p(c | x_t) logits of a labelled memorizer: log Σ_{i∈c} w_i N(x; √ᾱ x_i, (1−ᾱ) I)."""

    def __init__(self, tgt: MemorizerTarget) -> None:
        super().__init__()
        self.x = torch.tensor(tgt.train)
        self.logw = torch.tensor(np.log(tgt.multiplicities))
        self.onehot = torch.tensor(tgt.labels[:, None] == np.arange(tgt.labels.max() + 1)[None, :])
        self.abar = torch.tensor(tgt.schedule.alphas_cumprod)
        self.n_classes = int(tgt.labels.max() + 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.abar[t][:, None, None]
        sq = ((x[:, None, :] - a.sqrt() * self.x[None]) ** 2).sum(-1)
        logits = self.logw[None] - sq / (2 * (1 - a[:, :, 0]))
        return torch.logsumexp(logits[:, :, None].masked_fill(~self.onehot[None], -torch.inf), dim=1)


def test_guidance_with_exact_posterior_equals_conditional_sampling():
    """ε̂ − 1·√(1−ᾱ)∇log p(c|x_t) = ε̂(x_t | c) exactly (Bayes), so guided DDIM at
    λ = 1 with the exact posterior reproduces conditional DDIM, row label by row label."""
    tgt, _, _ = _labelled_memorizer()
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((12, 8))
    c = rng.integers(0, 4, 12)
    g = classifier_guidance(_ExactPosterior(tgt), tgt.schedule, c, dtype=torch.float64)
    guided = ddim_sample(tgt, 12, 8, 25, noise=noise, guidance=g, guidance_scale=1.0)
    cond = ddim_sample(tgt, 12, 8, 25, noise=noise, cond=c)
    np.testing.assert_allclose(guided, cond, atol=1e-6)
    # and the intermediate gradient equals the conditional-minus-unconditional score
    xt = rng.standard_normal((12, 8))
    np.testing.assert_allclose(g(xt, 120), tgt.score(xt, 120, cond=c) - tgt.score(xt, 120), atol=1e-9)


def test_guidance_binds_labels_per_row_and_validates():
    model = TimeConditionedClassifier(8, 4, 200, (16,), 8)
    sched = VPSchedule.linear(200)
    x = np.random.default_rng(0).standard_normal((5, 8))
    labels = np.array([0, 3, 1, 1, 2])
    rows = classifier_guidance(model, sched, labels)(x, 50)
    for i, c in enumerate(labels):
        np.testing.assert_allclose(rows[i], classifier_guidance(model, sched, int(c))(x[i : i + 1], 50)[0], atol=1e-6)
    assert rows.dtype == np.float64 and rows.shape == (5, 8)
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="batch of 4 rows"):
        classifier_guidance(model, sched, labels)(x[:4], 50)
    with pytest.raises(ValueError, match="target_label must lie"):
        classifier_guidance(model, sched, 4)
    with pytest.raises(ValueError, match="out of range"):
        classifier_guidance(model, sched, 0)(x, 200)


# --------------------------------------------------------------------------- #
# End to end
# --------------------------------------------------------------------------- #
def _small_memorizer() -> tuple[MemorizerTarget, np.ndarray]:
    rng = np.random.default_rng(7)
    train = rng.standard_normal((12, 4))
    return MemorizerTarget(train, np.r_[np.full(2, 5.0), np.ones(10)], VPSchedule.linear(50)), train


def test_cost_accounting_counts_eps_exactly_and_batches_do_not_matter():
    tgt, train = _small_memorizer()
    cfg = SideConfig(n_syn=40, k=4, tau=0.0, lambda_=2.0, n_g=30, steps=10, train_steps=20, sample_batch=7, seed=3,
                     **TOY)
    res = run_side(tgt, None, train, cfg)
    assert res.cost.eps_evals_synthetic == 40 * 10
    assert res.cost.eps_evals_extraction == 30 * 10
    assert res.cost.eps_evals == 40 * 10 + 30 * 10
    assert res.cost.classifier_grad_evals == 30 * 10
    assert res.cost.classifier_train_examples == 20 * 128
    assert set(res.cost.seconds) == {"synthetic", "cluster", "classifier", "extraction", "matching"}
    # sample_batch only bounds memory: same draws, same generations
    big = run_side(tgt, None, train, dataclasses.replace(cfg, sample_batch=1024), stage=res.stage)
    np.testing.assert_allclose(big.generations, res.generations, atol=1e-9)
    np.testing.assert_array_equal(big.target_labels, res.target_labels)
    # λ = 0: ddim_sample skips guidance entirely
    unguided = run_side(tgt, None, train, dataclasses.replace(cfg, lambda_=0.0), stage=res.stage)
    assert unguided.cost.classifier_grad_evals == 0 and unguided.cost.eps_evals == 700
    # cosine path (default bands) with identity features; summary is JSON-ready
    assert res.generations.shape == (30, 4) and res.target_labels.max() < res.stage.condition.k_kept
    s = json.loads(json.dumps(res.summary()))
    assert s["K"] == 4 and s["K_prime"] == res.stage.condition.k_kept and s["N_G"] == 30
    assert s["lambda"] == 2.0 and s["tau"] == 0.0 and set(s["metrics"]) == {"low", "mid", "high"}
    assert s["cost"]["eps_evals"] == 700
    # the same features passed in directly give the same metrics
    feats = train / np.linalg.norm(train, axis=1, keepdims=True)
    pre = run_side(tgt, None, feats, cfg, stage=res.stage, train_is_features=True)
    assert pre.metrics == res.metrics and pre.metrics_top1 == res.metrics_top1


def test_run_side_is_deterministic_and_checks_stage():
    tgt, train = _small_memorizer()
    cfg = SideConfig(n_syn=30, k=3, tau=0.0, n_g=10, steps=5, train_steps=10, seed=11,
                     bands=SimilarityBands.l2_exact(0.1), **TOY)
    a, b = run_side(tgt, None, train, cfg), run_side(tgt, None, train, cfg)
    np.testing.assert_array_equal(a.generations, b.generations)
    np.testing.assert_array_equal(a.stage.synthetic, b.stage.synthetic)
    with pytest.raises(ValueError, match=r"\['k'\]"):
        run_side(tgt, None, train, dataclasses.replace(cfg, k=4), stage=a.stage)
    with pytest.raises(ValueError, match="train_is_features"):
        run_side(tgt, None, train, cfg, stage=a.stage, train_is_features=True)
    with pytest.raises(ValueError, match="columns"):
        run_side(tgt, None, train[:, :3], cfg, stage=a.stage)


def test_side_extracts_more_unique_points_than_unguided_on_perfect_memorizer():
    """Headline check (SIDE on the perfect memorizer: guided UMS above unguided).

    Training set: d = 8, 4 points with multiplicity 50 and 96 singletons, so
    unguided DDIM lands on a duplicated point with probability 200/296. SIDE:
    N_syn = 400, K = 30, τ = 0.5, classifier 600 steps, N_G = 200, 50 DDIM
    steps, 'exact' band = normalised L2 ≤ 0.1 (raw vectors: cosine bands do not
    fit, distinct Gaussian points can have high cosine). Same seed ⇒ same x_T
    and target clusters for every λ (paired).

    Measured (seed 0): unique training points extracted (UMS · N_G) =
    58 / 82 / 48 at λ = 0 / 2 / 20 (UMS 0.290 / 0.410 / 0.240); AMS = 1.0 at every
    λ (every generation is an exact copy); the share of generations on a
    duplicated point falls from 0.565 (λ = 0) to 0.160 (λ = 2). UMS peaks at
    moderate λ, as in v7 Fig. 10 (seed 0, λ = 0/1/2/5/10/20: 58/77/82/74/59/48;
    seeds 1-3 give λ = 2 vs 0: 77 vs 64, 77 vs 65, 81 vs 61).
    Asserted: UMS(λ=2) ≥ UMS(λ=0) + 10/N_G, UMS(λ=2) > UMS(λ=20), duplicate
    share down by > 0.2.
    """
    rng = np.random.default_rng(0)
    train = rng.standard_normal((100, 8))
    tgt = MemorizerTarget(train, np.r_[np.full(4, 50.0), np.ones(96)], VPSchedule.linear(200))
    cfg = SideConfig(n_syn=400, k=30, tau=0.5, n_g=200, steps=50, train_steps=600,
                     bands=SimilarityBands.l2_exact(0.1), seed=0, **TOY)
    stage = build_side_stage(tgt, cfg)
    res = {lam: run_side(tgt, None, train, dataclasses.replace(cfg, lambda_=lam), stage=stage)
           for lam in (0.0, 2.0, 20.0)}
    n_ums = {lam: r.metrics["exact"]["n_ums"] for lam, r in res.items()}
    dup_share = {lam: float(np.isin(r.match_idx, np.arange(4)).mean()) for lam, r in res.items()}
    for r in res.values():
        assert r.metrics["exact"]["ams"] == 1.0 and r.metrics["exact"] == r.metrics_top1["exact"]
        assert r.cost.eps_evals == 400 * 50 + 200 * 50
    assert n_ums[2.0] >= n_ums[0.0] + 10, n_ums
    assert res[2.0].metrics["exact"]["ums"] > res[0.0].metrics["exact"]["ums"]
    assert n_ums[2.0] > n_ums[20.0], n_ums
    assert dup_share[2.0] < dup_share[0.0] - 0.2, dup_share
