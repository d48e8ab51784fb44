"""SIDE v7: Surrogate condItional Data Extraction (Chen et al., arXiv:2410.02467 v7, Algorithm 1).

Plain numpy / torch / faiss; the target is any object with the
``models.score.targets.closed_form`` interface (``schedule``: VPSchedule,
``eps(x_t, t, cond)``, and ``dim`` or an explicit ``dim=`` argument), e.g. a
:class:`~models.score.targets.closed_form.MemorizerTarget` (the exact
empirical-score "perfect memorizer").

Part 1 (surrogate condition), :func:`build_side_stage`:

1. sample N_syn points from the target itself (unguided DDIM);
2. features F(x_0) via ``embed_fn`` (default: identity), L2-normalised;
3. spherical k-means with K clusters (:mod:`models.score.side_cluster`);
4. cohesion filter: keep cluster k iff mean_{z in C_k} cos(z, mu_k) >= tau (K' kept);
5. label every synthetic sample with its nearest kept centroid (or drop the
   samples of rejected clusters, ``drop_rejected``);
6. train a time-dependent classifier p_phi(y | x_t) on forward-noised samples
   (:mod:`models.score.side_classifier`; the LoRA path for large DPMs is out of scope).

Part 2 (extraction), :func:`run_side`: N_G generations with target clusters
c ~ U{0..K'-1}, guided DDIM eps_guided = eps - lambda sqrt(1 - abar_t) grad log p_phi(c | x_t),
then matching to the training set and AMS / UMS per band
(:mod:`models.score.extraction_metrics`, SIDE v7 Sec. 5 metrics).

Module layout: configuration and validators in :mod:`models.score.side_config`,
surrogate condition in :mod:`models.score.side_cluster`, classifier and guidance in
:mod:`models.score.side_classifier`; this module runs them and re-exports their
public names.

Determinism: every random draw comes from ``SideConfig.seed`` through
``numpy.random.SeedSequence(seed).spawn(4)`` (synthetic noise, k-means seed,
classifier torch generator, extraction labels and noise); torch's global RNG
is never consumed. The extraction draws do not depend on lambda, so runs that differ
only in lambda share their x_T and target clusters (paired comparison).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from models.score.extraction_metrics import (
    ams_ums,
    ams_ums_full,
    match_to_train,
    match_to_train_l2,
    percentile_max_similarity,
)
from models.score.side_classifier import (
    TimeConditionedClassifier,
    classifier_guidance,
    sinusoidal_embedding,
    train_classifier,
)
from models.score.side_cluster import SurrogateCondition, build_surrogate_condition, normalise_features
from models.score.side_config import STAGE_FIELDS, SideConfig, pos_int, seeds, threads_scope
from models.score.targets.closed_form import VPSchedule, ddim_sample

__all__ = [
    "SideConfig",
    "SurrogateCondition",
    "build_surrogate_condition",
    "TimeConditionedClassifier",
    "sinusoidal_embedding",
    "train_classifier",
    "classifier_guidance",
    "SideCost",
    "SideStage",
    "SideResult",
    "build_side_stage",
    "run_side",
]

EmbedFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- #
# Orchestration
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class SideCost:
    """Cost accounting of one SIDE run.

    Attributes:
        eps_evals_synthetic: per-row target ε̂ evaluations in Part 1
            (N_syn · steps for DDIM).
        eps_evals_extraction: per-row ε̂ evaluations in Part 2 (N_G · steps).
        classifier_grad_evals: per-row ∇log p_φ evaluations in Part 2
            (N_G · steps when λ > 0, else 0: ddim_sample skips guidance at λ = 0).
        classifier_train_examples: train_steps · batch_size.
        seconds: wall-clock seconds per phase (``synthetic``, ``cluster``,
            ``classifier``, ``extraction``, ``matching``).
    """

    eps_evals_synthetic: int
    eps_evals_extraction: int
    classifier_grad_evals: int
    classifier_train_examples: int
    seconds: dict

    @property
    def eps_evals(self) -> int:
        """Total per-row target ε̂ evaluations (N_syn·steps + N_G·steps)."""
        return self.eps_evals_synthetic + self.eps_evals_extraction

    def to_dict(self) -> dict:
        """JSON-ready cost summary."""
        return {
            "eps_evals": self.eps_evals,
            "eps_evals_synthetic": self.eps_evals_synthetic,
            "eps_evals_extraction": self.eps_evals_extraction,
            "classifier_grad_evals": self.classifier_grad_evals,
            "classifier_train_examples": self.classifier_train_examples,
            "seconds": {k: float(v) for k, v in self.seconds.items()},
        }


@dataclass(frozen=True, eq=False)
class SideStage:
    """Part 1 output (SIDE arXiv:2410.02467 v7, Algorithm 1, Part 1 steps 1-6), reusable across λ / N_G.

    Attributes:
        config: the SideConfig it was built with.
        dim: data dimension d.
        synthetic: (N_syn, d) float64 samples from the target.
        features: (N_syn, D) float32 unit features.
        condition: the :class:`SurrogateCondition`.
        classifier: trained :class:`TimeConditionedClassifier` (eval mode).
        train_losses: (train_steps,) float64 classifier losses.
        eps_evals: per-row ε̂ evaluations spent (N_syn · steps).
        seconds: ``synthetic``, ``cluster``, ``classifier`` wall-clock seconds.
    """

    config: SideConfig
    dim: int
    synthetic: np.ndarray
    features: np.ndarray
    condition: SurrogateCondition
    classifier: TimeConditionedClassifier
    train_losses: np.ndarray
    eps_evals: int
    seconds: dict


@dataclass(frozen=True, eq=False)
class SideResult:
    """Output of :func:`run_side`.

    Attributes:
        config: the SideConfig of the extraction (λ, N_G, bands).
        stage: the Part 1 :class:`SideStage` used.
        generations: (N_G, d) float64 extracted samples D_ext.
        target_labels: (N_G,) int64 target clusters c_i ∈ [0, K′).
        match_idx: (N_G,) int64 best training match; match_value: (N_G,)
            float64 its measure (max cosine, or min normalised L2).
        metrics: full AMS / UMS per band (paper's φ, :func:`~models.score.extraction_metrics.ams_ums_full`).
        metrics_top1: top-1 AMS / UMS per band (:func:`~models.score.extraction_metrics.ams_ums`).
        percentile95: 95th percentile of ``match_value``.
        cost: :class:`SideCost`.
    """

    config: SideConfig
    stage: SideStage
    generations: np.ndarray
    target_labels: np.ndarray
    match_idx: np.ndarray
    match_value: np.ndarray
    metrics: dict
    metrics_top1: dict
    percentile95: float
    cost: SideCost

    def summary(self) -> dict:
        """JSON-ready summary: K, K′, τ, λ, N_G, N_syn, steps, seed, bands,
        metrics (full and top-1), percentile95, cost."""
        cfg, cond = self.config, self.stage.condition
        return {
            "method": "SIDE-v7",
            "K": cond.k,
            "K_prime": cond.k_kept,
            "tau": float(cfg.tau),
            "drop_rejected": bool(cfg.drop_rejected),
            "lambda": float(cfg.lambda_),
            "N_G": int(cfg.n_g),
            "N_syn": int(cfg.n_syn),
            "steps": int(cfg.steps),
            "seed": int(cfg.seed),
            "bands": cfg.bands.to_dict(),
            "metrics": self.metrics,
            "metrics_top1": self.metrics_top1,
            "percentile95": float(self.percentile95),
            "cost": self.cost.to_dict(),
        }


class _CountingTarget:
    """Wraps a target; counts per-row ``eps`` evaluations (ddim_sample interface)."""

    def __init__(self, target, dim: int) -> None:
        self._target = target
        self.schedule = target.schedule
        self.dim = dim
        self.evals = 0

    def eps(self, x: np.ndarray, t, cond=None) -> np.ndarray:
        self.evals += int(np.shape(x)[0])
        return self._target.eps(x, t, cond)


def _target_dim(target, dim: Optional[int]) -> int:
    if not isinstance(getattr(target, "schedule", None), VPSchedule):
        raise ValueError(f"target must have a VPSchedule 'schedule', got {getattr(target, 'schedule', None)!r}")
    if dim is None:
        dim = getattr(target, "dim", None)
        if dim is None:
            raise ValueError("target has no 'dim' attribute; pass dim= explicitly")
    return pos_int("dim", dim)


def _embed(embed_fn: Optional[EmbedFn], x: np.ndarray, name: str) -> np.ndarray:
    return normalise_features(name, x if embed_fn is None else embed_fn(x), x.shape[0])


def _sample(counting: _CountingTarget, noise: np.ndarray, steps: int, batch: int,
            guidance_for: Optional[Callable[[int, int], Callable]] = None, lam: float = 0.0) -> np.ndarray:
    out = np.empty_like(noise)
    for lo in range(0, noise.shape[0], batch):
        hi = min(noise.shape[0], lo + batch)
        g = None if guidance_for is None else guidance_for(lo, hi)
        out[lo:hi] = ddim_sample(counting, hi - lo, counting.dim, steps, noise=noise[lo:hi],
                                 guidance=g, guidance_scale=lam)
    return out


def build_side_stage(
    target, cfg: SideConfig, embed_fn: Optional[EmbedFn] = None, dim: Optional[int] = None
) -> SideStage:
    """Part 1 of SIDE (SIDE arXiv:2410.02467 v7, Algorithm 1, Part 1 steps 1-6).

    Args:
        target: ``schedule`` + ``eps(x_t, t, cond)`` (+ ``dim``) target.
        cfg: uses n_syn, k, tau, drop_rejected, steps, classifier fields,
            kmeans_niter, sample_batch, seed.
        embed_fn: features F: (B, d) float64 → (B, D); None = identity. Outputs
            are L2-normalised here.
        dim: data dimension d; default ``target.dim``.

    Returns:
        :class:`SideStage`.
    """
    if not isinstance(cfg, SideConfig):
        raise ValueError(f"cfg must be a SideConfig, got {cfg!r}")
    d = _target_dim(target, dim)
    s_noise, s_km, s_clf, _ = seeds(cfg.seed)
    counting = _CountingTarget(target, d)
    t0 = time.perf_counter()
    noise = np.random.default_rng(s_noise).standard_normal((cfg.n_syn, d))
    synthetic = _sample(counting, noise, cfg.steps, cfg.sample_batch)
    t1 = time.perf_counter()
    feats = _embed(embed_fn, synthetic, "embed_fn(synthetic)")
    km_seed = int(s_km.generate_state(1)[0] & 0x3FFFFFFF)
    cond = build_surrogate_condition(feats, cfg.k, cfg.tau, km_seed, cfg.drop_rejected, cfg.kmeans_niter,
                                     cfg.kmeans_n_init, cfg.threads)
    t2 = time.perf_counter()
    gen = torch.Generator().manual_seed(int(s_clf.generate_state(1, dtype=np.uint64)[0] & 0x7FFFFFFFFFFFFFFF))
    m = cond.sample_mask
    clf, losses = train_classifier(synthetic[m], cond.labels[m], target.schedule, cfg, gen, n_classes=cond.k_kept)
    t3 = time.perf_counter()
    return SideStage(
        config=cfg, dim=d, synthetic=synthetic, features=feats, condition=cond, classifier=clf,
        train_losses=losses, eps_evals=counting.evals,
        seconds={"synthetic": t1 - t0, "cluster": t2 - t1, "classifier": t3 - t2},
    )


def run_side(
    target,
    embed_fn: Optional[EmbedFn],
    train_set,
    cfg: SideConfig,
    *,
    train_is_features: bool = False,
    stage: Optional[SideStage] = None,
    dim: Optional[int] = None,
) -> SideResult:
    """SIDE end to end (SIDE, arXiv:2410.02467 v7, Algorithm 1 and Sec. 5 metrics).

    Part 1 via :func:`build_side_stage` (or a given ``stage``), then N_G
    generations with c_i ~ U{0..K′−1} and guided DDIM at λ = ``cfg.lambda_``,
    matched to the training set and scored per band.

    Matching space follows ``cfg.bands.measure``:

    * ``"cosine"``: generations are embedded with ``embed_fn`` (L2-normalised)
      and compared with ``train_set`` embedded the same way, or with
      ``train_set`` itself (normalised here) when ``train_is_features``.
    * ``"normalized_l2"``: raw generations against raw ``train_set`` (N, d);
      ``train_is_features`` must be False.

    Args:
        target: ``schedule`` + ``eps`` (+ ``dim``) target.
        embed_fn: features F: (B, d) float64 → (B, D); None = identity.
        train_set: (N, d) training data, or (N, D) training features.
        cfg: the configuration.
        train_is_features: ``train_set`` already holds features (cosine only).
        stage: a Part 1 result to reuse (e.g. for a λ sweep); its config must
            agree with ``cfg`` on every Part 1 field. Its ε̂ evaluations are
            reported in the cost as if paid by this run.
        dim: data dimension d; default ``target.dim``.

    Returns:
        :class:`SideResult` (``summary()`` gives the JSON fields).
    """
    if not isinstance(cfg, SideConfig):
        raise ValueError(f"cfg must be a SideConfig, got {cfg!r}")
    d = _target_dim(target, dim)
    if not isinstance(train_is_features, bool):
        raise ValueError(f"train_is_features must be a bool, got {train_is_features!r}")
    if train_is_features and cfg.bands.measure != "cosine":
        raise ValueError(f"train_is_features=True needs cosine bands, got measure {cfg.bands.measure!r}")
    if stage is None:
        stage = build_side_stage(target, cfg, embed_fn, d)
    else:
        if not isinstance(stage, SideStage):
            raise ValueError(f"stage must be a SideStage, got {stage!r}")
        diff = [f for f in STAGE_FIELDS if getattr(stage.config, f) != getattr(cfg, f)]
        if diff:
            raise ValueError(f"stage was built with a different Part 1 config; differing fields {diff}")
        if stage.dim != d:
            raise ValueError(f"stage dimension {stage.dim} does not match d={d}")
    train = np.asarray(train_set)
    if train.ndim != 2 or train.shape[0] == 0:
        raise ValueError(f"train_set must be a non-empty 2-D array, got shape {train.shape}")
    if not train_is_features and train.shape[1] != d:
        raise ValueError(f"train_set has {train.shape[1]} columns, expected d={d} (or pass train_is_features=True)")

    _, _, _, s_ext = seeds(cfg.seed)
    rng = np.random.default_rng(s_ext)
    K_kept = stage.condition.k_kept
    labels = rng.integers(0, K_kept, cfg.n_g).astype(np.int64)
    noise = rng.standard_normal((cfg.n_g, d))
    counting = _CountingTarget(target, d)
    grad_evals = [0]

    def guidance_for(lo: int, hi: int) -> Callable:
        inner = classifier_guidance(stage.classifier, target.schedule, labels[lo:hi],
                                    threads=cfg.threads)

        def counted(x_t: np.ndarray, t) -> np.ndarray:
            grad_evals[0] += int(np.shape(x_t)[0])
            return inner(x_t, t)

        return counted

    t0 = time.perf_counter()
    gens = _sample(counting, noise, cfg.steps, cfg.sample_batch, guidance_for, cfg.lambda_)
    t1 = time.perf_counter()
    if cfg.bands.measure == "cosine":
        gen_f = _embed(embed_fn, gens, "embed_fn(generations)")
        if train_is_features:
            train_f = normalise_features("train_set", train)
        else:
            train_f = _embed(embed_fn, train, "embed_fn(train_set)")
        with threads_scope(cfg.threads):
            idx, val = match_to_train(gen_f, train_f)
        full = ams_ums_full(gen_f, train_f, cfg.bands, n_g=cfg.n_g)
    else:
        idx, val = match_to_train_l2(gens, train)
        full = ams_ums_full(gens, train, cfg.bands, n_g=cfg.n_g)
    idx, val = idx[:, 0], val[:, 0]
    top1 = ams_ums(val, idx, cfg.bands, n_g=cfg.n_g)
    t2 = time.perf_counter()
    cost = SideCost(
        eps_evals_synthetic=stage.eps_evals,
        eps_evals_extraction=counting.evals,
        classifier_grad_evals=grad_evals[0],
        classifier_train_examples=stage.config.train_steps * stage.config.batch_size,
        seconds={**stage.seconds, "extraction": t1 - t0, "matching": t2 - t1},
    )
    return SideResult(
        config=cfg, stage=stage, generations=gens, target_labels=labels, match_idx=idx, match_value=val,
        metrics=full, metrics_top1=top1, percentile95=percentile_max_similarity(val, 95.0), cost=cost,
    )

