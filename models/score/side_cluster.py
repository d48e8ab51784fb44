"""SIDE Part 1, steps 3-5: the surrogate condition (Chen et al., SIDE v7, arXiv:2410.02467, Algorithm 1).

Spherical k-means of the features of the target's own samples, a cohesion
filter, and one surrogate label per sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from models.dedup.kernels import train_centroids
from models.score.side_config import finite, pos_int, threads_scope


# --------------------------------------------------------------------------- #
# Part 1, steps 3-5: surrogate condition
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, eq=False)
class SurrogateCondition:
    """Output of :func:`build_surrogate_condition` (SIDE arXiv:2410.02467 v7, Algorithm 1, Part 1 steps 3-5).

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


def normalise_features(name: str, feats, n: Optional[int] = None) -> np.ndarray:
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
    """Cluster features, filter by cohesion, relabel (SIDE arXiv:2410.02467 v7, Algorithm 1, Part 1 steps 3-5).

    Args:
        features: (N, D) real features F(x₀⁽ⁱ⁾); rows are L2-normalised here
            (float64, then float32 for :func:`models.dedup.kernels.train_centroids`), so
            every similarity below is a cosine. A zero row is a ValueError.
        k: K, number of spherical k-means clusters (clamped to N).
        tau: cohesion threshold τ ∈ [−1, 1]: keep cluster k iff
            (1/|C_k|) Σ_{z∈C_k} cos(z, μ_k) ≥ τ.
        seed: faiss k-means seed.
        drop_rejected: False: every sample gets y = argmax_{k≤K′} cos(z, μ_k)
            (step 5 as written); True (our option): samples whose own cluster was
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
    z = normalise_features("features", features)
    if z.shape[0] == 0:
        raise ValueError("features must contain at least one row")
    k = pos_int("k", k)
    tau = finite("tau", tau, -1.0, 1.0)
    if not isinstance(drop_rejected, bool):
        raise ValueError(f"drop_rejected must be a bool, got {drop_rejected!r}")
    niter = pos_int("niter", niter)
    n_init = pos_int("n_init", n_init)
    seed = pos_int("seed", seed, minimum=0)
    if seed + n_init > 2**31:
        raise ValueError(f"seed + n_init must fit faiss' int32 seed; got seed={seed!r}, n_init={n_init!r}")
    best = None
    with threads_scope(threads):
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

