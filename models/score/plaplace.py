"""p-Laplace memorization detector (Brokman et al., arXiv:2505.08246) and its metrics.

The operator is Δ_p u = div(|∇u|^{p−2}∇u) on u = log p_t (arXiv:2505.08246, Sec. 3); with
s = ∇log p_t the score, Δ_p log p_t = div V with V = |s|^{p−2} s.
Memorized samples are sharp local maxima of p_t: the score points *inward* on a
small sphere around them, so the flux is negative (arXiv:2505.08246; checked on a closed-form GMM in tests/models/score/test_plaplace.py).

Estimators:

* :func:`flux_estimator` (boundary / flux form, arXiv:2505.08246 boundary form):
  mean_j |s(y_j)|^{p−2} s(y_j)·u_j with y_j = x + r u_j, u_j ~ Unif(S^{d−1}).
  By the divergence theorem this equals (r/d)·avg_{B_r(x)} Δ_p log p_t
  (:func:`ball_average_from_flux` inverts it). For p = 1 it is mean cos(s, u).
  **This is the corrected formula.** The reference torch code multiplies the
  *cosine* by |s|^{p−2} (i.e. returns |s|^{p−2}·cos), which is wrong for p ≠ 1:
  it gives −1.0 instead of −3.0 at a GMM mode with p = 2, r = 0.3 (closed-form GMM, tests/models/score/test_plaplace.py).
* :func:`volume_estimator_hutchinson` (volume form, arXiv:2505.08246 volume form; Hutchinson is our choice):
  avg over uniform points of the ball of div V, with the divergence estimated
  by Hutchinson E_v[vᵀ J_V v] (Rademacher v, one forward-mode JVP per probe).
* :func:`noise_cosine_statistic`: the hippo experiment's statistic written as
  E[cos(ε̂(x_t, t, c), ε̃)] over forward-noised x_t (the hippo experiment of arXiv:2505.08246's code,
  an exact equivalence). Memorized ⇒ ≈ 1.

**Radius convention.** Every estimator here takes an *absolute* radius r. The
reference code instead takes ``radius_factor`` ρ and uses r = ρ·√d; convert with
:func:`radius_from_factor`. In the SD "hippo" setting ρ = √(1−ᾱ_t).

Metrics: :func:`roc_curve`, :func:`roc_auc` (ties count ½), and
:func:`tpr_at_fpr` (Wen et al.'s convention by default, arXiv:2407.21720). In all metric
helpers, larger scores mean "more likely positive/memorized".
"""
from __future__ import annotations

import math
from typing import Callable, Union

import numpy as np
import torch

__all__ = [
    "radius_from_factor",
    "ball_average_from_flux",
    "sample_unit_sphere",
    "sample_ball",
    "flux_estimator",
    "volume_estimator_hutchinson",
    "noise_cosine_statistic",
    "noise_flux_statistics",
    "roc_curve",
    "roc_auc",
    "tpr_at_fpr",
]

ScoreFn = Callable[[np.ndarray], np.ndarray]
TorchScoreFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _check_points(x, name: str = "x") -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, d) with d >= 1, got {arr.shape}")
    if arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite real array (dtype {arr.dtype})")
    return arr


def _check_radius(radius: float) -> float:
    try:
        r = float(radius)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a positive real number, got {radius!r}") from None
    if not (math.isfinite(r) and r > 0.0):
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    return r


def _check_p(p: float) -> float:
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a real number >= 1, got {p!r}") from None
    if not (math.isfinite(pf) and pf >= 1.0):
        raise ValueError(f"p must be a finite real number >= 1, got {p!r}")
    return pf


def _check_count(n, name: str, minimum: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


def _check_rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {rng!r}")
    return rng


def _float_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


# --------------------------------------------------------------------------- #
# Geometry
# --------------------------------------------------------------------------- #
def radius_from_factor(factor: float, d: int) -> float:
    """Absolute radius r = factor·√d: the reference code's ``radius_factor``
    convention (the reference code's boundary estimator). E.g. hippo: factor = √(1−ᾱ_t)."""
    d = _check_count(d, "d", 1)
    f = float(factor)
    if not (math.isfinite(f) and f > 0.0):
        raise ValueError(f"factor must be a positive finite number, got {factor!r}")
    return f * math.sqrt(d)


def ball_average_from_flux(flux_mean: np.ndarray, radius: float, d: int) -> np.ndarray:
    """avg_{B_r} Δ_p log p = (d/r)·(mean flux): inverts the divergence-theorem
    identity of arXiv:2505.08246 (divergence theorem). Works elementwise on arrays (and stderrs)."""
    return np.asarray(flux_mean, dtype=np.float64) * (_check_count(d, "d", 1) / _check_radius(radius))


def sample_unit_sphere(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """(n, d) float64 points uniform on S^{d−1} (normalised Gaussians)."""
    n, d = _check_count(n, "n", 0), _check_count(d, "d", 1)
    g = _check_rng(rng).standard_normal((n, d))
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def sample_ball(n: int, d: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """(n, d) float64 points uniform in the ball of ``radius`` about 0:
    direction uniform on the sphere, norm r·U^{1/d} (arXiv:2505.08246 volume form)."""
    r = _check_radius(radius)
    u = sample_unit_sphere(n, d, rng)
    return u * (r * rng.random(n) ** (1.0 / d))[:, None]


# --------------------------------------------------------------------------- #
# Boundary (flux) estimator
# --------------------------------------------------------------------------- #
def _flux_terms(s: np.ndarray, u: np.ndarray, p: float) -> np.ndarray:
    """|s|^{p−2}(s·u) per row (p = 1: cos(s, u)); 0 where s = 0."""
    s = np.asarray(s, dtype=np.float64)
    ns = np.linalg.norm(s, axis=1)
    su = np.einsum("md,md->m", s, u)
    out = np.zeros_like(ns)
    nz = ns > 0.0
    out[nz] = ns[nz] ** (p - 2.0) * su[nz]
    return out


def _sphere_terms(
    field_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    x: np.ndarray,
    radius: float,
    p: "float | tuple",
    n_dirs: int,
    rng: np.random.Generator,
    chunk_size: int,
) -> np.ndarray:
    """(B, n_dirs) terms |f(y)|^{p−2} f(y)·u for y = x_b + r u, u uniform on the sphere.

    ``field_fn(y (m,d), rows (m,) int) -> (m,d)``; ``rows`` gives the batch index
    b of each evaluation point. Points are processed in chunks of ``chunk_size``.
    A tuple of exponents gives (len(p), B, n_dirs) from the same evaluations.
    """
    B, d = x.shape
    dtype = _float_dtype(x)
    xf = x.astype(np.float64, copy=False)
    total = B * n_dirs
    exps = p if isinstance(p, tuple) else (p,)
    terms = np.empty((len(exps), total), dtype=np.float64)
    for lo in range(0, total, chunk_size):
        hi = min(total, lo + chunk_size)
        rows = np.arange(lo, hi) // n_dirs
        u = sample_unit_sphere(hi - lo, d, rng)
        y = xf[rows] + radius * u
        f = np.asarray(field_fn(y.astype(dtype, copy=False), rows))
        if f.shape != y.shape:
            raise ValueError(f"score function returned shape {f.shape}, expected {y.shape}")
        for k, e in enumerate(exps):
            terms[k, lo:hi] = _flux_terms(f, u, e)
    terms = terms.reshape(len(exps), B, n_dirs)
    return terms if isinstance(p, tuple) else terms[0]


def _mean_se(terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = terms.shape[1]
    return terms.mean(axis=1), terms.std(axis=1, ddof=1) / math.sqrt(n)


def flux_estimator(
    score_fn: ScoreFn,
    x: np.ndarray,
    radius: float,
    p: float,
    n_dirs: int,
    rng: np.random.Generator,
    *,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Boundary (flux) estimator of the p-Laplacian (arXiv:2505.08246 boundary form, corrected).

    For each centre x_b: mean_j |s(y_j)|^{p−2} (s(y_j)·u_j), y_j = x_b + r u_j,
    u_j i.i.d. uniform on S^{d−1} (normalised Gaussians). Identity (divergence theorem):
    E[mean] = (r/d)·avg_{B_r(x_b)} Δ_p log p. p = 1 gives mean cos(s(y_j), u_j)
    (scale-invariant, so −ε̂ works as well as the score). Terms where s = 0 are 0.
    Negative = inward score = local maximum ("memorized").

    Args:
        score_fn: numpy (m, d) -> (m, d) score ∇log p (row-wise). Called on
            chunks of at most ``chunk_size`` points, in ``x``'s float dtype.
        x: (B, d) centres, float32 or float64.
        radius: absolute radius r (see :func:`radius_from_factor` for ρ√d).
        p: exponent, p >= 1.
        n_dirs: directions per centre (>= 2). n = 2000 gives SE ≈ 0.01 for p = 1.
        rng: numpy Generator for the directions.

    Returns:
        (mean, stderr): two (B,) float64 arrays; stderr = std(ddof=1)/√n_dirs.
    """
    xa = _check_points(x)
    r, pf = _check_radius(radius), _check_p(p)
    n = _check_count(n_dirs, "n_dirs", 2)
    chunk = _check_count(chunk_size, "chunk_size", 1)
    terms = _sphere_terms(lambda y, rows: score_fn(y), xa, r, pf, n, _check_rng(rng), chunk)
    return _mean_se(terms)


# --------------------------------------------------------------------------- #
# Volume estimator (Hutchinson divergence)
# --------------------------------------------------------------------------- #
def volume_estimator_hutchinson(
    score_fn: TorchScoreFn,
    x: Union[np.ndarray, torch.Tensor],
    radius: float,
    p: float,
    n_points: int,
    n_probes: int,
    rng: np.random.Generator,
    *,
    chunk_size: int = 4096,
    dtype: torch.dtype = torch.float64,
) -> tuple[np.ndarray, np.ndarray]:
    """Volume estimator avg_{B_r(x)} Δ_p log p (arXiv:2505.08246 volume form; Hutchinson estimator, our choice).

    Points y_i uniform in the ball (radius r·U^{1/d}); at each, div V with
    V = |s|^{p−2} s is estimated as mean over ``n_probes`` Rademacher probes v of
    vᵀ J_V(y_i) v, where J_V v comes from one forward-mode JVP
    (:func:`torch.func.jvp`). The estimate is unbiased for the ball average,
    which equals (d/r)× the :func:`flux_estimator` mean (divergence theorem).

    Args:
        score_fn: torch (m, d) -> (m, d) score, differentiable by forward-mode
            AD and **row-wise** (row i of the output depends only on row i of
            the input; no batch statistics), e.g. ``lambda y: target.score_torch(y, t)``.
        x: (B, d) centres (numpy or torch).
        radius: absolute ball radius r.
        p: exponent, p >= 1 (p < 2 is singular where s = 0; those points are
            measure-zero but can make the variance large).
        n_points: uniform points per centre (>= 2).
        n_probes: Rademacher probes per point (>= 1).
        rng: numpy Generator for points and probes.
        chunk_size: points per JVP call (each point contributes n_probes rows).
        dtype: torch dtype for the computation (float64 by default).

    Returns:
        (mean, stderr): (B,) float64; stderr over the n_points per-point estimates.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    xa = _check_points(x).astype(np.float64, copy=False)
    r, pf = _check_radius(radius), _check_p(p)
    n_points = _check_count(n_points, "n_points", 2)
    n_probes = _check_count(n_probes, "n_probes", 1)
    chunk = _check_count(chunk_size, "chunk_size", 1)
    rng = _check_rng(rng)
    B, d = xa.shape

    def V(y: torch.Tensor) -> torch.Tensor:
        s = score_fn(y)
        if pf == 2.0:
            return s
        ns = torch.linalg.vector_norm(s, dim=-1, keepdim=True)
        return ns ** (pf - 2.0) * s

    total = B * n_points
    per_point = np.empty(total, dtype=np.float64)
    for lo in range(0, total, chunk):
        hi = min(total, lo + chunk)
        m = hi - lo
        rows = np.arange(lo, hi) // n_points
        y = xa[rows] + sample_ball(m, d, r, rng)
        v = rng.integers(0, 2, size=(m, n_probes, d)).astype(np.float64) * 2.0 - 1.0
        Y = torch.as_tensor(np.repeat(y, n_probes, axis=0), dtype=dtype)
        Vt = torch.as_tensor(v.reshape(m * n_probes, d), dtype=dtype)
        out, jv = torch.func.jvp(V, (Y,), (Vt,))
        if out.shape != Y.shape:
            raise ValueError(f"score function returned shape {tuple(out.shape)}, expected {tuple(Y.shape)}")
        q = (Vt * jv).sum(-1).detach().cpu().numpy().astype(np.float64)
        per_point[lo:hi] = q.reshape(m, n_probes).mean(axis=1)
    return _mean_se(per_point.reshape(B, n_points))


# --------------------------------------------------------------------------- #
# Noise-cosine statistic (hippo experiment)
# --------------------------------------------------------------------------- #
def noise_cosine_statistic(
    target,
    x0: np.ndarray,
    t: int,
    n: int,
    rng: np.random.Generator,
    cond=None,
    *,
    chunk_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """E[cos(ε̂(x_t, t, c), ε̃)] over x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε̃, |ε̃| = √d,
    direction uniform (the hippo experiment of arXiv:2505.08246's code: an exact equivalence).

    This is exactly the reference p = 1 boundary estimator on ε̂ (sign-flipped
    score) centred at √ᾱ x₀ with radius_factor √(1−ᾱ), i.e. r = √(1−ᾱ)·√d.
    Memorized ⇒ ≈ 1 (inward score); generic points ⇒ ≈ 0 (the exact empirical score, tests/models/score/test_plaplace.py).

    Args:
        target: object with ``schedule.abar(t)`` and ``eps(x_t, t, cond)``
            (e.g. :class:`models.score.targets.closed_form.MemorizerTarget`).
        x0: (B, d) clean samples (latents), float32/64.
        t: integer timestep (e.g. 10 of 1000, the hippo setting of arXiv:2505.08246).
        n: noise draws per sample (>= 2); the reference uses 128.
        rng: numpy Generator.
        cond: passed to ``target.eps``; an int, None, or a (B,) array with one
            condition per sample.

    Returns:
        (mean, stderr): (B,) float64.
    """
    return noise_flux_statistics(target, x0, t, n, rng, cond, ps=(1.0,), chunk_size=chunk_size)[1.0]


def noise_flux_statistics(
    target,
    x0: np.ndarray,
    t: int,
    n: int,
    rng: np.random.Generator,
    cond=None,
    *,
    ps: tuple = (1.0, 2.0),
    chunk_size: int = 8192,
) -> dict:
    """The boundary (flux) estimator on ε̂ at every exponent p of ``ps``, from one set of evaluations.

    Same points as :func:`noise_cosine_statistic` (x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε̃, |ε̃| = √d);
    per exponent mean_j |ε̂_j|^{p−2} (ε̂_j·u_j) (arXiv:2505.08246 boundary form, corrected as in
    :func:`flux_estimator`): p = 1 is the cosine statistic (→ 1 memorized), p = 2 the plain flux
    ε̂·u (→ |ε̂| ≈ √d memorized), whose magnitude also carries the prediction's norm.
    Cost: B * n evaluations whatever ``ps`` holds.

    Returns:
        {p: (mean (B,), stderr (B,))}, float64.
    """
    xa = _check_points(x0, "x0")
    if t is None or isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise ValueError(f"t must be an integer timestep, got {t!r}")
    n = _check_count(n, "n", 2)
    chunk = _check_count(chunk_size, "chunk_size", 1)
    exps = tuple(_check_p(p) for p in ps)
    if not exps:
        raise ValueError("ps must name at least one exponent p >= 1")
    B, d = xa.shape
    abar = float(target.schedule.abar(int(t)))
    if not abar < 1.0:
        raise ValueError(f"noise_cosine_statistic needs ᾱ_t < 1, got ᾱ={abar} at t={t}")
    centre = math.sqrt(abar) * xa.astype(np.float64)
    radius = radius_from_factor(math.sqrt(1.0 - abar), d)
    per_row = cond is not None and np.ndim(cond) > 0
    if per_row:
        cond = np.asarray(cond)
        if cond.shape != (B,):
            raise ValueError(f"cond array must have shape ({B},), got {cond.shape}")

    def field(y: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return target.eps(y, int(t), cond[rows] if per_row else cond)

    terms = _sphere_terms(field, centre.astype(_float_dtype(xa)), radius, exps, n, _check_rng(rng), chunk)
    return {p: _mean_se(terms[k]) for k, p in enumerate(exps)}


# --------------------------------------------------------------------------- #
# Detection metrics
# --------------------------------------------------------------------------- #
def _check_scores(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values: {arr[~np.isfinite(arr)][:5].tolist()}")
    return arr


def roc_curve(scores_pos, scores_neg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC curve, predicting positive when score >= threshold.

    Thresholds are +inf followed by every distinct score, descending (no
    thinning of collinear points, unlike sklearn's default
    ``drop_intermediate=True``). Returns (fpr, tpr, thresholds), each (n_thr,)
    float64, fpr and tpr non-decreasing from (0, 0) to (1, 1).
    """
    pos = np.sort(_check_scores(scores_pos, "scores_pos"))
    neg = np.sort(_check_scores(scores_neg, "scores_neg"))
    thr = np.concatenate([[np.inf], np.unique(np.concatenate([pos, neg]))[::-1]])
    tpr = (pos.size - np.searchsorted(pos, thr, side="left")) / pos.size
    fpr = (neg.size - np.searchsorted(neg, thr, side="left")) / neg.size
    return fpr, tpr, thr


def roc_auc(scores_pos, scores_neg) -> float:
    """AUC = P(S_pos > S_neg) + ½·P(S_pos = S_neg) (Mann-Whitney; ties count ½).

    Args: 1-D arrays of scores for positives (memorized) and negatives.
    """
    pos = _check_scores(scores_pos, "scores_pos")
    neg = _check_scores(scores_neg, "scores_neg")
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side="left")
    at_or_below = np.searchsorted(neg_sorted, pos, side="right")
    wins = below.sum() + 0.5 * (at_or_below - below).sum()
    return float(wins / (pos.size * neg.size))


def tpr_at_fpr(scores_pos, scores_neg, fpr: float = 0.01, convention: str = "wen") -> float:
    """TPR at a target FPR on the full :func:`roc_curve` (Wen et al., arXiv:2407.21720).

    Conventions:
        ``"wen"`` (default, conservative): tpr[last index with fpr < target],
            i.e. the best TPR over thresholds whose FPR is *strictly* below the
            target (Wen et al.'s notebook). Always defined: the +inf threshold
            has FPR 0.
        ``"jeon"``: tpr[argmin |fpr − target|] (first minimiser; Jeon et al.).
    Note: Wen/Jeon apply this to sklearn's thinned curve; on the full curve
    used here the "wen" value is never lower than on the thinned one.
    """
    f = float(fpr)
    if not (math.isfinite(f) and 0.0 < f <= 1.0):
        raise ValueError(f"fpr must lie in (0, 1], got {fpr!r}")
    fprs, tprs, _ = roc_curve(scores_pos, scores_neg)
    if convention == "wen":
        return float(tprs[np.nonzero(fprs < f)[0][-1]])
    if convention == "jeon":
        return float(tprs[int(np.argmin(np.abs(fprs - f)))])
    raise ValueError(f"convention must be 'wen' or 'jeon', got {convention!r}")
