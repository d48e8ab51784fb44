"""SIDE v7: Surrogate condItional Data Extraction (METHODS.md §1.2, Algorithm 1).

Plain numpy / torch / faiss; the target is any object with the
``models.score.targets.closed_form`` interface (``schedule``: VPSchedule,
``eps(x_t, t, cond)``, and ``dim`` or an explicit ``dim=`` argument), e.g. a
:class:`~models.score.targets.closed_form.MemorizerTarget` (METHODS §5.2, §5.5).

Part 1 (surrogate condition), :func:`build_side_stage`:

1. sample N_syn points from the target itself (unguided DDIM);
2. features F(x₀) via ``embed_fn`` (default: identity), L2-normalised;
3. spherical k-means with K clusters (:func:`models.dedup.kernels.train_centroids`);
4. cohesion filter: keep cluster k iff mean_{z∈C_k} cos(z, μ_k) ≥ τ (K′ kept);
5. label every synthetic sample with its nearest kept centroid (or drop the
   samples of rejected clusters, ``drop_rejected`` [INF]);
6. train a time-dependent classifier p_φ(y | x_t) on forward-noised samples
   (:func:`train_classifier`; the LoRA path for large DPMs is out of scope).

Part 2 (extraction), :func:`run_side`: N_G generations with target clusters
c ~ U{0..K′−1}, guided DDIM ε̂_guided = ε̂ − λ√(1−ᾱ_t)∇log p_φ(c | x_t)
(:func:`classifier_guidance` + :func:`models.score.targets.closed_form.ddim_sample`),
then matching to the training set and AMS / UMS per band
(:mod:`models.score.extraction_metrics`, METHODS §1.4).

Determinism: every random draw comes from ``SideConfig.seed`` through
``numpy.random.SeedSequence(seed).spawn(4)`` (synthetic noise, k-means seed,
classifier torch generator, extraction labels and noise); torch's global RNG
is never consumed. The extraction draws do not depend on λ, so runs that differ
only in λ share their x_T and target clusters (paired comparison).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import faiss
import numpy as np
import torch
from torch import nn

from models.dedup.kernels import train_centroids
from models.score.targets.closed_form import VPSchedule, ddim_sample
from models.score.extraction_metrics import (
    SimilarityBands,
    ams_ums,
    ams_ums_full,
    match_to_train,
    match_to_train_l2,
    percentile_max_similarity,
)

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

# SideConfig fields that determine Part 1; a reused SideStage must agree on them.
_STAGE_FIELDS = (
    "n_syn", "k", "tau", "drop_rejected", "steps", "hidden", "time_dim", "train_steps",
    "batch_size", "lr", "weight_decay", "kmeans_niter", "kmeans_n_init", "seed",
)


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #
def _pos_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _finite(name: str, v, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo):
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must be finite and in {rng}, got {v!r}")
    return f


@dataclass(frozen=True)
class SideConfig:
    """All SIDE sizes and hyperparameters (METHODS §1.3; [INF] where marked).

    Attributes:
        n_syn: synthetic samples N_syn drawn from the target (Part 1 step 1).
        k: k-means clusters K (paper: 100); clamped to n_syn by k-means.
        tau: cohesion threshold τ in [−1, 1] (paper: 0.5).
        drop_rejected: False (paper, as written): samples of rejected clusters
            are relabelled to the nearest kept centroid; True [INF]: they are
            left out of classifier training.
        lambda_: guidance scale λ ≥ 0 [INF: the paper's optimum is unreported;
            METHODS suggests the grid {0, 1, 2, 5, 10, 20}; 2 is the UMS peak
            of the perfect-memorizer toy in tests/models/score/test_side.py].
        n_g: number of generations N_G (the AMS / UMS denominator).
        steps: DDIM steps, for synthetic sampling and for extraction.
        hidden: classifier MLP widths (>= 1 layer); time_dim: even sinusoidal
            embedding size.
        train_steps, batch_size, lr, weight_decay: AdamW classifier training
            (paper: lr 1e-4, batch 64; toys converge faster with ~1e-3).
        kmeans_niter: Lloyd iterations of the spherical k-means.
        kmeans_n_init: k-means restarts, best objective kept
            (:func:`build_surrogate_condition`).
        sample_batch: rows per DDIM call (bounds memory; results do not depend
            on it because x_T and labels are drawn up front).
        threads: torch intra-op and faiss OpenMP thread counts while SIDE
            clusters, trains, guides and matches (set for the duration of those calls,
            then restored; process-wide settings, so not for concurrent use
            from several Python threads); None leaves both unchanged. Default
            1: the toy-sized calls are dominated by OpenMP barriers, and faiss
            and torch ship separate OpenMP runtimes that spin against each
            other on a small shared machine (measured on 2 loaded cores: a
            classifier step 45 ms at 2 threads vs 1.7 ms at 1; five 500-point
            k-means runs 3.1 s vs 0.02 s).
        bands: :class:`~models.score.extraction_metrics.SimilarityBands` for AMS / UMS;
            their measure picks the matching space (cosine on features, or
            normalised L2 on raw data).
        seed: root seed of every random draw.
    """

    n_syn: int = 2000
    k: int = 100
    tau: float = 0.5
    drop_rejected: bool = False
    lambda_: float = 2.0
    n_g: int = 1000
    steps: int = 50
    hidden: tuple[int, ...] = (256, 256)
    time_dim: int = 64
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-2
    kmeans_niter: int = 20
    kmeans_n_init: int = 5
    sample_batch: int = 1024
    threads: Optional[int] = 1
    bands: SimilarityBands = field(default_factory=SimilarityBands)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_syn", "k", "n_g", "steps", "train_steps", "batch_size", "kmeans_niter", "kmeans_n_init",
                     "sample_batch"):
            _pos_int(name, getattr(self, name))
        _pos_int("seed", self.seed, minimum=0)
        if self.threads is not None:
            _pos_int("threads", self.threads)
        _finite("tau", self.tau, -1.0, 1.0)
        _finite("lambda_", self.lambda_, 0.0)
        _finite("lr", self.lr, 0.0, lo_open=True)
        _finite("weight_decay", self.weight_decay, 0.0)
        if not isinstance(self.drop_rejected, bool):
            raise ValueError(f"drop_rejected must be a bool, got {self.drop_rejected!r}")
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else ()
        if not hidden:
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(_pos_int("hidden width", h) for h in hidden))
        if _pos_int("time_dim", self.time_dim, minimum=2) % 2:
            raise ValueError(f"time_dim must be even, got {self.time_dim!r}")
        if not isinstance(self.bands, SimilarityBands):
            raise ValueError(f"bands must be a SimilarityBands, got {self.bands!r}")


@contextlib.contextmanager
def _threads(n: Optional[int]) -> Iterator[None]:
    """Set torch's intra-op and faiss' OpenMP thread counts (process-wide) to
    ``n`` inside the block, restoring them after; None = unchanged."""
    if n is None:
        yield
        return
    n = _pos_int("threads", n)
    prev_torch, prev_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev_torch)
        faiss.omp_set_num_threads(prev_faiss)


def _seeds(seed: int) -> list[np.random.SeedSequence]:
    """[synthetic noise, k-means, classifier, extraction] child seed sequences."""
    return np.random.SeedSequence(int(seed)).spawn(4)


# --------------------------------------------------------------------------- #
# Part 1, steps 3-5: surrogate condition
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, eq=False)
class SurrogateCondition:
    """Output of :func:`build_surrogate_condition` (METHODS §1.2 Part 1 steps 3-5).

    Attributes:
        centroids: (K′, D) float32 unit centroids of the kept clusters, in
            increasing k-means cluster order; label y refers to row y.
        labels: (N,) int64 surrogate labels in [0, K′); −1 for samples left out
            (only with ``drop_rejected``).
        sample_mask: (N,) bool, True where the sample has a label.
        kept: (K,) bool, cohesion filter result per k-means cluster.
        cohesion: (K,) float64 mean cos(z, μ_k) over the cluster's members
            (NaN for an empty cluster, which is rejected).
        assignment: (N,) int64 k-means cluster (nearest of the K centroids).
        all_centroids: (K, D) float32 unit centroids of every cluster.
        tau: the threshold used.
    """

    centroids: np.ndarray
    labels: np.ndarray
    sample_mask: np.ndarray
    kept: np.ndarray
    cohesion: np.ndarray
    assignment: np.ndarray
    all_centroids: np.ndarray
    tau: float

    @property
    def k(self) -> int:
        """K: number of k-means clusters (after clamping to the sample count)."""
        return int(self.kept.size)

    @property
    def k_kept(self) -> int:
        """K′: number of clusters that pass the cohesion filter."""
        return int(self.centroids.shape[0])


def _normalise_features(name: str, feats, n: Optional[int] = None) -> np.ndarray:
    """(n, D) real → float32 unit rows (normalised in float64, then cast)."""
    f = np.asarray(feats)
    if f.ndim != 2 or f.shape[1] == 0 or f.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real (n, D) array with D >= 1, got {f.dtype} {f.shape}")
    if n is not None and f.shape[0] != n:
        raise ValueError(f"{name} has {f.shape[0]} rows, expected {n}")
    f = f.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} contains non-finite values")
    norms = np.linalg.norm(f, axis=1)
    if norms.size and norms.min() <= 0.0:
        raise ValueError(f"{name} row {int(np.argmin(norms))} has zero norm; cannot normalise")
    return (f / norms[:, None]).astype(np.float32)


def _argmax_cos(z: np.ndarray, c: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Nearest unit centroid of each unit row in float64: (argmax (n,) int64, max cos (n,) float64)."""
    c64 = c.astype(np.float64)
    idx = np.empty(z.shape[0], np.int64)
    best = np.empty(z.shape[0], np.float64)
    for lo in range(0, z.shape[0], block):
        s = z[lo : lo + block].astype(np.float64) @ c64.T
        idx[lo : lo + block] = np.argmax(s, axis=1)
        best[lo : lo + block] = s[np.arange(s.shape[0]), idx[lo : lo + block]]
    return idx, best


def build_surrogate_condition(
    features,
    k: int,
    tau: float,
    seed: int,
    drop_rejected: bool = False,
    niter: int = 20,
    n_init: int = 5,
    threads: Optional[int] = 1,
) -> SurrogateCondition:
    """Cluster features, filter by cohesion, relabel (METHODS §1.2 Part 1 steps 3-5).

    Args:
        features: (N, D) real features F(x₀⁽ⁱ⁾); rows are L2-normalised here
            (float64, then float32 for :func:`models.dedup.kernels.train_centroids`), so
            every similarity below is a cosine. A zero row is a ValueError.
        k: K, number of spherical k-means clusters (clamped to N).
        tau: cohesion threshold τ ∈ [−1, 1]: keep cluster k iff
            (1/|C_k|) Σ_{z∈C_k} cos(z, μ_k) ≥ τ.
        seed: faiss k-means seed.
        drop_rejected: False: every sample gets y = argmax_{k≤K′} cos(z, μ_k)
            (step 5 as written); True [INF]: samples whose own cluster was
            rejected get label −1 and ``sample_mask`` False.
        niter: Lloyd iterations.
        n_init: k-means restarts with seeds ``seed, seed+1, …``; the run with the
            largest spherical objective Σ_i max_k cos(z_i, μ_k) is kept (first
            on ties). faiss seeds with k random points, so one run can merge two
            true clusters and split another; restarts make that unlikely.
        threads: torch / faiss thread count during the k-means (restored
            after); None = unchanged (see ``SideConfig.threads``).

    Clusters are C_k = {i : argmax_j cos(z_i, μ_j) = k} for the final centroids
    μ (recomputed in float64). Kept-cluster members always keep their own
    cluster's label, so the two modes differ only on rejected-cluster samples.

    Raises:
        ValueError: bad arguments, or no cluster reaches τ (names τ and the best
            cohesion).
    """
    z = _normalise_features("features", features)
    if z.shape[0] == 0:
        raise ValueError("features must contain at least one row")
    k = _pos_int("k", k)
    tau = _finite("tau", tau, -1.0, 1.0)
    if not isinstance(drop_rejected, bool):
        raise ValueError(f"drop_rejected must be a bool, got {drop_rejected!r}")
    niter = _pos_int("niter", niter)
    n_init = _pos_int("n_init", n_init)
    seed = _pos_int("seed", seed, minimum=0)
    if seed + n_init > 2**31:
        raise ValueError(f"seed + n_init must fit faiss' int32 seed; got seed={seed!r}, n_init={n_init!r}")
    best = None
    with _threads(threads):
        for r in range(n_init):
            c = train_centroids(z, k, seed + r, niter=niter)
            a, cos = _argmax_cos(z, c)
            if best is None or cos.sum() > best[2].sum():
                best = (c, a, cos)
    cents, assign, cos_own = best
    K = cents.shape[0]
    counts = np.bincount(assign, minlength=K)
    sums = np.bincount(assign, weights=cos_own, minlength=K)
    with np.errstate(invalid="ignore", divide="ignore"):
        cohesion = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    kept = np.nan_to_num(cohesion, nan=-np.inf) >= tau
    if not kept.any():
        raise ValueError(f"no cluster reaches cohesion tau={tau}; best cohesion is {np.nanmax(cohesion):.4f}")
    kept_idx = np.flatnonzero(kept)
    if drop_rejected:
        remap = np.full(K, -1, np.int64)
        remap[kept_idx] = np.arange(kept_idx.size)
        labels = remap[assign]
    else:
        labels, _ = _argmax_cos(z, cents[kept_idx])
    return SurrogateCondition(
        centroids=np.ascontiguousarray(cents[kept_idx]),
        labels=labels,
        sample_mask=labels >= 0,
        kept=kept,
        cohesion=cohesion,
        assignment=assign,
        all_centroids=cents,
        tau=tau,
    )


# --------------------------------------------------------------------------- #
# Part 1, step 6: time-dependent classifier
# --------------------------------------------------------------------------- #
def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer/DDPM sinusoidal embedding of timesteps.

    Args:
        t: (B,) timesteps (int or float tensor).
        dim: even embedding size.

    Returns:
        (B, dim) float32 [sin(t·f_j), cos(t·f_j)], f_j = 10000^{−j/(dim/2)}.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class TimeConditionedClassifier(nn.Module):
    """p_φ(y | x_t, t): an MLP with a time module after its first normalisation
    (METHODS §1.2 step 6, Fig. 9 analogue for flattened vector data).

    Layout: Linear(d, h₀) → LayerNorm → **time module** (FiLM:
    h ← h·(1 + scale(t)) + shift(t), scale/shift from an MLP on the sinusoidal
    embedding of t) → SiLU → [Linear → LayerNorm → SiLU] per further width →
    Linear(h_last, K′) logits.

    LayerNorm replaces the paper's BatchNorm: its output for a row does not
    depend on the rest of the batch or on train/eval mode, so the guidance
    gradient of one sample is independent of the DDIM batch it is sampled in.

    Args:
        d: input dimension (flattened x_t); n_classes: K′; T: number of
            diffusion timesteps (valid t are 0..T−1); hidden: MLP widths;
        time_dim: even sinusoidal embedding size.

    ``forward(x (B, d) float, t (B,) int) -> (B, K′) logits``.
    """

    def __init__(
        self, d: int, n_classes: int, T: int, hidden: tuple[int, ...] = (256, 256), time_dim: int = 64
    ) -> None:
        super().__init__()
        self.d = _pos_int("d", d)
        self.n_classes = _pos_int("n_classes", n_classes)
        self.T = _pos_int("T", T)
        hidden = tuple(_pos_int("hidden width", h) for h in hidden)
        if not hidden:
            raise ValueError("hidden must have at least one width")
        if _pos_int("time_dim", time_dim, minimum=2) % 2:
            raise ValueError(f"time_dim must be even, got {time_dim!r}")
        self.time_dim = int(time_dim)
        h0 = hidden[0]
        self.inp = nn.Linear(self.d, h0)
        self.norm0 = nn.LayerNorm(h0)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, h0), nn.SiLU(), nn.Linear(h0, 2 * h0))
        layers: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Linear(a, b), nn.LayerNorm(b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(hidden[-1], self.n_classes)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.norm0(self.inp(x))
        scale, shift = self.time_mlp(sinusoidal_embedding(t, self.time_dim)).to(h.dtype).chunk(2, dim=1)
        h = nn.functional.silu(h * (1.0 + scale) + shift)
        return self.out(self.body(h))


def _check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {generator!r}")
    return generator


def train_classifier(
    x0,
    labels,
    schedule: VPSchedule,
    cfg: SideConfig,
    generator: torch.Generator,
    n_classes: Optional[int] = None,
) -> tuple[TimeConditionedClassifier, np.ndarray]:
    """Train p_φ(y | x_t) with L = E_{t,(x₀,y),ε}[−log p_φ(y | x_t)] (METHODS §1.2 step 6).

    Each step draws ``cfg.batch_size`` examples (with replacement), t ~ U{0..T−1}
    and ε ~ N(0, I), forms x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (``schedule.alphas_cumprod``)
    and takes one AdamW step (``cfg.lr``, ``cfg.weight_decay``) on the
    cross-entropy; ``cfg.train_steps`` steps in all, float32.

    Args:
        x0: (N, d) clean samples (flattened).
        labels: (N,) int labels in [0, n_classes).
        schedule: the target's VP schedule.
        cfg: uses hidden, time_dim, train_steps, batch_size, lr, weight_decay,
            threads.
        generator: torch.Generator for the initial weights and every draw
            (torch's global RNG is left untouched).
        n_classes: K′; default labels.max() + 1.

    Returns:
        ``(classifier, losses)``: the model in eval mode and (train_steps,)
        float64 per-step training losses.
    """
    x = np.asarray(x0)
    if x.ndim != 2 or x.shape[0] == 0 or x.dtype.kind not in "fiu":
        raise ValueError(f"x0 must be a non-empty real (N, d) array, got {x.dtype} {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x0 contains non-finite values")
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be an int array of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    K = int(y.max()) + 1 if n_classes is None else _pos_int("n_classes", n_classes)
    if y.min() < 0 or y.max() >= K:
        raise ValueError(f"labels must lie in [0, {K}), got range [{int(y.min())}, {int(y.max())}]")
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a VPSchedule, got {schedule!r}")
    if not isinstance(cfg, SideConfig):
        raise ValueError(f"cfg must be a SideConfig, got {cfg!r}")
    gen = _check_generator(generator)
    init_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = TimeConditionedClassifier(x.shape[1], K, schedule.T, cfg.hidden, cfg.time_dim)
    xt_all = torch.as_tensor(x, dtype=torch.float32)
    yt_all = torch.as_tensor(y.astype(np.int64))
    abar = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = np.empty(cfg.train_steps, np.float64)
    model.train()
    with _threads(cfg.threads):
        for step in range(cfg.train_steps):
            idx = torch.randint(0, x.shape[0], (cfg.batch_size,), generator=gen)
            t = torch.randint(0, schedule.T, (cfg.batch_size,), generator=gen)
            noise = torch.randn((cfg.batch_size, x.shape[1]), generator=gen)
            a = abar[t][:, None]
            xt = a.sqrt() * xt_all[idx] + (1.0 - a).sqrt() * noise
            loss = nn.functional.cross_entropy(model(xt, t), yt_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses[step] = float(loss.detach())
    model.eval()
    return model, losses


def classifier_guidance(
    classifier: nn.Module,
    schedule: VPSchedule,
    target_label: Union[int, np.ndarray],
    dtype: torch.dtype = torch.float32,
    threads: Optional[int] = 1,
) -> Callable[[np.ndarray, Union[int, np.ndarray]], np.ndarray]:
    """Guidance callable ∇_{x_t} log p_φ(c | x_t) for :func:`~models.score.targets.closed_form.ddim_sample`.

    ``ddim_sample(target, n, d, steps, guidance=g, guidance_scale=λ)`` then uses
    ε̂_guided = ε̂ − λ√(1−ᾱ_t)·g(x_t, t) (METHODS §1.2 [INF]). ddim_sample's
    guidance has no cond argument, so the target clusters are bound here.

    Args:
        classifier: module with ``forward(x (B, d), t (B,) int64) -> (B, K′)``
            logits (e.g. :class:`TimeConditionedClassifier`); its train/eval mode
            is left as it is.
        schedule: the target's schedule (t must lie in [0, T−1]).
        target_label: an int c, or a (B,) int array binding one cluster per row;
            the callable then only accepts batches of exactly B rows, row i
            guided towards target_label[i].
        dtype: torch dtype of the forward / backward pass.
        threads: torch / faiss thread count during each call (restored
            after); None = unchanged (see ``SideConfig.threads``).

    Returns:
        ``guidance(x_t (B, d), t int or (B,) int) -> (B, d) float64`` (numpy in
        and out; torch autograd inside, parameter gradients are not touched).
    """
    if not isinstance(schedule, VPSchedule):
        raise ValueError(f"schedule must be a VPSchedule, got {schedule!r}")
    lab = np.asarray(target_label)
    if lab.ndim > 1 or lab.dtype.kind not in "iu" or lab.size == 0:
        raise ValueError(f"target_label must be an int or a 1-D int array, got {target_label!r}")
    clf_T = getattr(classifier, "T", None)
    if clf_T is not None and clf_T != schedule.T:
        raise ValueError(f"classifier was built for T={clf_T} timesteps, schedule has T={schedule.T}")
    n_classes = getattr(classifier, "n_classes", None)
    if lab.min() < 0 or (n_classes is not None and lab.max() >= n_classes):
        raise ValueError(f"target_label must lie in [0, {n_classes}), got range [{int(lab.min())}, {int(lab.max())}]")
    lab = lab.astype(np.int64)

    def guidance(x_t: np.ndarray, t: Union[int, np.ndarray]) -> np.ndarray:
        x = np.asarray(x_t)
        if x.ndim != 2:
            raise ValueError(f"x_t must be 2-D (B, d), got shape {x.shape}")
        B = x.shape[0]
        rows = np.full(B, int(lab)) if lab.ndim == 0 else lab
        if rows.shape != (B,):
            raise ValueError(f"guidance bound to {lab.size} target labels got a batch of {B} rows")
        tt = np.asarray(t)
        if tt.dtype.kind not in "iu" or tt.ndim > 1 or (tt.ndim == 1 and tt.shape != (B,)):
            raise ValueError(f"t must be an int or an int array of shape ({B},), got {t!r}")
        if tt.size and (tt.min() < 0 or tt.max() >= schedule.T):
            raise ValueError(f"t out of range [0, {schedule.T - 1}]: {t!r}")
        t_rows = torch.as_tensor(np.broadcast_to(tt, (B,)).astype(np.int64))
        xin = torch.tensor(x, dtype=dtype, requires_grad=True)
        with torch.enable_grad(), _threads(threads):
            logp = torch.log_softmax(classifier(xin, t_rows), dim=1)
            sel = logp.gather(1, torch.as_tensor(rows)[:, None]).sum()
            (grad,) = torch.autograd.grad(sel, xin)
        return grad.detach().numpy().astype(np.float64)

    return guidance


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
    """Part 1 output (METHODS §1.2 steps 1-6), reusable across λ / N_G.

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
    return _pos_int("dim", dim)


def _embed(embed_fn: Optional[EmbedFn], x: np.ndarray, name: str) -> np.ndarray:
    return _normalise_features(name, x if embed_fn is None else embed_fn(x), x.shape[0])


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
    """Part 1 of SIDE (METHODS §1.2 steps 1-6).

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
    s_noise, s_km, s_clf, _ = _seeds(cfg.seed)
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
    """SIDE end to end (METHODS §1.2 Algorithm 1, metrics §1.4).

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
        diff = [f for f in _STAGE_FIELDS if getattr(stage.config, f) != getattr(cfg, f)]
        if diff:
            raise ValueError(f"stage was built with a different Part 1 config; differing fields {diff}")
        if stage.dim != d:
            raise ValueError(f"stage dimension {stage.dim} does not match d={d}")
    train = np.asarray(train_set)
    if train.ndim != 2 or train.shape[0] == 0:
        raise ValueError(f"train_set must be a non-empty 2-D array, got shape {train.shape}")
    if not train_is_features and train.shape[1] != d:
        raise ValueError(f"train_set has {train.shape[1]} columns, expected d={d} (or pass train_is_features=True)")

    _, _, _, s_ext = _seeds(cfg.seed)
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
            train_f = _normalise_features("train_set", train)
        else:
            train_f = _embed(embed_fn, train, "embed_fn(train_set)")
        with _threads(cfg.threads):
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
