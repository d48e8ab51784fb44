"""Closed-form isotropic Gaussian-mixture targets with an exact score.

* :class:`GMMTarget`: p_0 = sum_k pi_k N(mu_k, sigma_k^2 I), noised in closed form
  under the VP process, with score, Hessian, Laplacian and p-Laplacian of log p_t
  (the p-Laplace memorization paper, arXiv:2505.08246).
* :class:`MemorizerTarget`: the exact empirical-score "perfect memorizer", the
  minimiser of the DDPM loss on a finite training set (the sigma_k -> 0 limit;
  Gu et al. 2023, arXiv:2310.02664 §3), optionally label-conditional.

All numpy computations run in float64; numpy outputs take the input's floating
dtype (float32 in, float32 out; anything else gives float64). Memory: rows are
processed in chunks so one (rows, K, d) float64 array stays near 32 MiB.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import torch

from models.score.targets.schedule import CondArg, TimeArg, VPSchedule, label_rows

# Rows per chunk are chosen so one (rows, K, d) float64 array stays near 32 MiB.
_CHUNK_ELEMS = 1 << 22


def _out_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


class _IsotropicMixture:
    """p_t(x) = Σ_k π_k N(x; √ᾱ μ_k, (ᾱσ_k² + 1 − ᾱ) I): the VP-noised isotropic
    mixture (the memorizer is the σ_k = 0 case).

    Subclasses set ``_mu`` (K, d), ``_var0`` (K,) = σ_k², ``_logw`` (K,) = log π_k
    (unnormalised is fine), ``_labels`` (K,) int or None, ``schedule``.
    """

    _mu: np.ndarray
    _var0: np.ndarray
    _logw: np.ndarray
    _labels: Optional[np.ndarray]
    schedule: Optional[VPSchedule]

    @property
    def dim(self) -> int:
        """Data dimension d."""
        return int(self._mu.shape[1])

    # ----- argument handling ------------------------------------------------ #
    def _prep_x(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"x must be a real array, got dtype {arr.dtype}")
        return arr

    def _abar_rows(self, t: TimeArg, B: int) -> np.ndarray:
        if t is None:
            abar = np.ones(B)
        else:
            if self.schedule is None:
                raise ValueError(f"{type(self).__name__} has no schedule; only t=None (ᾱ=1) is allowed, got t={t!r}")
            a = np.asarray(self.schedule.abar(t), dtype=np.float64)
            if a.ndim == 0:
                abar = np.full(B, float(a))
            elif a.shape == (B,):
                abar = a
            else:
                raise ValueError(f"t must be an int, None, or an int array of shape ({B},); got shape {a.shape}")
        var = abar[:, None] * self._var0[None, :] + (1.0 - abar)[:, None]
        if np.any(var <= 0.0):
            raise ValueError(
                f"{type(self).__name__}: zero component variance at ᾱ=1 (σ_k=0 and t={t!r}); "
                "use an integer timestep"
            )
        return abar

    def _mask_rows(self, cond: CondArg, B: int) -> Optional[np.ndarray]:
        """(B, K) bool mask of allowed components, or None for the union."""
        if cond is None:
            return None
        if self._labels is None:
            raise ValueError(f"{type(self).__name__} is unconditional (no labels); got cond={cond!r}")
        c = label_rows(cond, B)
        missing = np.setdiff1d(np.unique(c), self._labels)
        if missing.size:
            raise ValueError(f"cond labels with no training points: {missing[:10].tolist()}")
        return c[:, None] == self._labels[None, :]

    # ----- numpy core ------------------------------------------------------- #
    def _terms(self, x: np.ndarray, abar: np.ndarray, mask: Optional[np.ndarray]):
        """Per-component pieces for rows x (b, d) float64.

        Returns r (b,K) responsibilities, g (b,K,d) = −(x−m_k)/s_k², s2 (b,K),
        logp (b,) = log p_t(x) (restricted to masked components when given).
        """
        d = self.dim
        m = np.sqrt(abar)[:, None, None] * self._mu[None, :, :]
        s2 = abar[:, None] * self._var0[None, :] + (1.0 - abar)[:, None]
        diff = x[:, None, :] - m
        sq = np.einsum("bkd,bkd->bk", diff, diff)
        logits = self._logw[None, :] - 0.5 * d * np.log(2.0 * np.pi * s2) - sq / (2.0 * s2)
        if mask is not None:
            logits = np.where(mask, logits, -np.inf)
        mx = logits.max(axis=1, keepdims=True)
        logp = (mx + np.log(np.exp(logits - mx).sum(axis=1, keepdims=True)))[:, 0]
        r = np.exp(logits - logp[:, None])
        g = -diff / s2[:, :, None]
        return r, g, s2, logp

    def _map_rows(self, fn: Callable, x: np.ndarray, t: TimeArg, cond: CondArg) -> list:
        """Apply fn(r, g, s2, logp) chunk-wise over rows; returns list of stacked outputs."""
        x = self._prep_x(x)
        B = x.shape[0]
        xf = x.astype(np.float64, copy=False)
        abar = self._abar_rows(t, B)
        mask = self._mask_rows(cond, B)
        step = max(1, _CHUNK_ELEMS // max(1, self._mu.size))
        outs: list[list[np.ndarray]] = []
        for lo in range(0, B, step):
            hi = min(B, lo + step)
            res = fn(*self._terms(xf[lo:hi], abar[lo:hi], None if mask is None else mask[lo:hi]))
            res = res if isinstance(res, tuple) else (res,)
            if not outs:
                outs = [[] for _ in res]
            for acc, val in zip(outs, res):
                acc.append(val)
        if not outs:  # B == 0: run on an empty chunk to get the shapes
            res = fn(*self._terms(xf, abar, mask))
            return list(res) if isinstance(res, tuple) else [res]
        return [np.concatenate(acc, axis=0) for acc in outs]

    # ----- public numpy API ------------------------------------------------- #
    def log_prob(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """log p_t(x) (Gaussian normaliser included), shape (B,) float64."""
        (out,) = self._map_rows(lambda r, g, s2, lp: lp, x, t, cond)
        return out

    def score(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Score s = ∇log p_t(x) = Σ_k r_k g_k, shape (B, d)."""
        xa = self._prep_x(x)
        (out,) = self._map_rows(lambda r, g, s2, lp: np.einsum("bk,bkd->bd", r, g), xa, t, cond)
        return out.astype(_out_dtype(xa), copy=False)

    def eps(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Predicted noise ε*(x_t) = −√(1−ᾱ_t)·s(x_t) (Ho et al. 2020, arXiv:2006.11239, Eq. 11 parametrisation), shape (B, d).

        Zero for t=None (ᾱ=1).
        """
        xa = self._prep_x(x)
        abar = self._abar_rows(t, xa.shape[0])
        s = self.score(xa.astype(np.float64, copy=False), t, cond)
        return (-np.sqrt(1.0 - abar)[:, None] * s).astype(_out_dtype(xa), copy=False)

    def hessian(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Hessian of log p_t: H = Σ_k r_k(g_k g_kᵀ − I/s_k²) − s sᵀ.

        Returns (B, d, d) float64.
        """

        def fn(r, g, s2, lp):
            s = np.einsum("bk,bkd->bd", r, g)
            H = np.einsum("bk,bki,bkj->bij", r, g, g) - np.einsum("bi,bj->bij", s, s)
            diag = (r / s2).sum(axis=1)
            idx = np.arange(self.dim)
            H[:, idx, idx] -= diag[:, None]
            return H

        (out,) = self._map_rows(fn, x, t, cond)
        return out

    def laplacian(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Δ log p_t = −d Σ_k r_k/s_k² + Σ_k r_k|g_k|² − |s|², (B,) float64."""

        def fn(r, g, s2, lp):
            s = np.einsum("bk,bkd->bd", r, g)
            return (
                -self.dim * (r / s2).sum(axis=1)
                + np.einsum("bk,bkd,bkd->b", r, g, g)
                - np.einsum("bd,bd->b", s, s)
            )

        (out,) = self._map_rows(fn, x, t, cond)
        return out

    def p_laplacian(self, x: np.ndarray, t: TimeArg = None, p: float = 2.0, cond: CondArg = None) -> np.ndarray:
        """Δ_p log p_t = div(|s|^{p−2} s) = |s|^{p−2} tr H + (p−2)|s|^{p−4} sᵀHs
        (arXiv:2505.08246 §3), shape (B,) float64.

        At a critical point (s = 0): p = 2 gives the Laplacian, p > 2 gives the
        limit 0, and p < 2 is singular and returns NaN.
        """
        p = _check_p(p)

        def fn(r, g, s2, lp):
            s = np.einsum("bk,bkd->bd", r, g)
            ss = np.einsum("bd,bd->b", s, s)
            inv = (r / s2).sum(axis=1)
            trH = -self.dim * inv + np.einsum("bk,bkd,bkd->b", r, g, g) - ss
            gs = np.einsum("bkd,bd->bk", g, s)
            sHs = np.einsum("bk,bk->b", r, gs * gs) - ss * inv - ss * ss
            return trH, ss, sHs

        trH, ss, sHs = self._map_rows(fn, x, t, cond)
        if p == 2.0:
            return trH
        n = np.sqrt(ss)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out = n ** (p - 2.0) * trH + (p - 2.0) * n ** (p - 4.0) * sHs
        zero = ss == 0.0
        if np.any(zero):
            out[zero] = 0.0 if p > 2.0 else np.nan
        return out

    # ----- torch path ------------------------------------------------------- #
    def score_torch(self, x: torch.Tensor, t: TimeArg = None, cond: CondArg = None) -> torch.Tensor:
        """Score ∇log p_t(x) on a torch tensor (B, d); same dtype/device as ``x``.

        Differentiable in ``x`` (autograd and forward-mode, e.g. torch.func.jvp),
        so divergences can be taken by JVP. Same formulas as :meth:`score`.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a torch tensor of shape (B, {self.dim}), got {getattr(x, 'shape', type(x))}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor, got dtype {x.dtype}")
        B = x.shape[0]
        kw = dict(dtype=x.dtype, device=x.device)
        abar = torch.as_tensor(self._abar_rows(t, B), **kw)
        mask = self._mask_rows(cond, B)
        mu = torch.as_tensor(self._mu, **kw)
        var0 = torch.as_tensor(self._var0, **kw)
        logw = torch.as_tensor(self._logw, **kw)
        m = torch.sqrt(abar)[:, None, None] * mu[None]
        s2 = abar[:, None] * var0[None] + (1.0 - abar)[:, None]
        diff = x[:, None, :] - m
        sq = (diff * diff).sum(-1)
        logits = logw[None] - 0.5 * self.dim * torch.log(2.0 * math.pi * s2) - sq / (2.0 * s2)
        if mask is not None:
            logits = logits.masked_fill(~torch.as_tensor(mask, device=x.device), float("-inf"))
        r = torch.softmax(logits, dim=1)
        return -(r[:, :, None] * diff / s2[:, :, None]).sum(1)

    def eps_torch(self, x: torch.Tensor, t: TimeArg = None, cond: CondArg = None) -> torch.Tensor:
        """ε*(x_t) = −√(1−ᾱ_t)·s(x_t) on torch tensors (see :meth:`score_torch`)."""
        abar = torch.as_tensor(self._abar_rows(t, x.shape[0]), dtype=x.dtype, device=x.device)
        return -torch.sqrt(1.0 - abar)[:, None] * self.score_torch(x, t, cond)


def _check_p(p: float) -> float:
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be a real number >= 1, got {p!r}") from None
    if not math.isfinite(pf) or pf < 1.0:
        raise ValueError(f"p must be a finite real number >= 1, got {p!r}")
    return pf


# --------------------------------------------------------------------------- #
# Targets
# --------------------------------------------------------------------------- #
class GMMTarget(_IsotropicMixture):
    """Isotropic Gaussian mixture p_0 = Σ_k π_k N(μ_k, σ_k² I_d) under the VP
    forward process, in closed form:

        p_t = Σ_k π_k N(m_k, s_k² I), m_k = √ᾱ_t μ_k, s_k² = ᾱ_t σ_k² + 1 − ᾱ_t.

    Args:
        means: (K, d) component means μ_k.
        sigmas: (K,) component **standard deviations** σ_k ≥ 0 (covariance σ_k² I;
            e.g. "covariance 0.1 I" is σ = √0.1). σ_k = 0 is allowed
            for t ≥ 0 integer timesteps only (it is then the memorizer).
        weights: (K,) positive mixture weights; normalised to sum to 1.
        schedule: VP schedule for integer timesteps; ``None`` allows only
            ``t=None`` (ᾱ = 1, the data density p_0 itself).

    Methods (numpy, x of shape (B, d)): :meth:`log_prob`, :meth:`score`,
    :meth:`eps`, :meth:`hessian`, :meth:`laplacian`, :meth:`p_laplacian`; torch:
    :meth:`score_torch`, :meth:`eps_torch`. ``cond`` must be None (unconditional).
    """

    def __init__(
        self,
        means: np.ndarray,
        sigmas: np.ndarray,
        weights: np.ndarray,
        schedule: Optional[VPSchedule] = None,
    ) -> None:
        mu = np.asarray(means, dtype=np.float64)
        if mu.ndim != 2 or mu.shape[0] == 0 or mu.shape[1] == 0:
            raise ValueError(f"means must have shape (K, d) with K, d >= 1, got {mu.shape}")
        K = mu.shape[0]
        sig = np.asarray(sigmas, dtype=np.float64)
        if sig.shape != (K,):
            raise ValueError(f"sigmas must have shape ({K},), got {sig.shape}")
        if not np.all(np.isfinite(sig)) or np.any(sig < 0):
            raise ValueError(f"sigmas must be finite and >= 0, got {sig.tolist()[:10]}")
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (K,):
            raise ValueError(f"weights must have shape ({K},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"weights must be finite and > 0, got {w.tolist()[:10]}")
        if not np.all(np.isfinite(mu)):
            raise ValueError("means must be finite")
        if schedule is not None and not isinstance(schedule, VPSchedule):
            raise ValueError(f"schedule must be a VPSchedule or None, got {schedule!r}")
        self.means = mu
        self.sigmas = sig
        self.weights = w / w.sum()
        self.schedule = schedule
        self._mu = mu
        self._var0 = sig * sig
        self._logw = np.log(self.weights)
        self._labels = None


class MemorizerTarget(_IsotropicMixture):
    """Exact empirical-score "perfect memorizer" (the minimiser of the DDPM loss on a finite set, arXiv:2310.02664 §3).

    x̂₀(x_t) = Σ_i softmax_i(log w_i − |x_t − √ᾱ x_i|²/(2(1−ᾱ))) x_i,
    ε*(x_t) = (x_t − √ᾱ x̂₀)/√(1−ᾱ).

    It is the minimiser of the DDPM loss on the training set, i.e. the GMM target
    above with σ_k → 0, so it also has :meth:`score`, :meth:`hessian`, … .

    Args:
        train: (N, d) training points x_i.
        multiplicities: (N,) positive duplicate counts w_i (None = all ones).
        schedule: VP schedule (required: the memorizer needs t integer, ᾱ < 1).
        cond_labels: optional (N,) integer labels. ``cond=c`` restricts the
            softmax to points with label c (a conditional memorizer);
            ``cond=None`` uses the union. ``cond`` may be an int or an int array
            (B,) with one label per row.
    """

    def __init__(
        self,
        train: np.ndarray,
        multiplicities: Optional[np.ndarray],
        schedule: VPSchedule,
        cond_labels: Optional[np.ndarray] = None,
    ) -> None:
        x = np.asarray(train, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
            raise ValueError(f"train must have shape (N, d) with N, d >= 1, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("train must be finite")
        N = x.shape[0]
        w = np.ones(N) if multiplicities is None else np.asarray(multiplicities, dtype=np.float64)
        if w.shape != (N,):
            raise ValueError(f"multiplicities must have shape ({N},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ValueError(f"multiplicities must be finite and > 0, got {w.tolist()[:10]}")
        if not isinstance(schedule, VPSchedule):
            raise ValueError(f"schedule must be a VPSchedule, got {schedule!r}")
        labels = None
        if cond_labels is not None:
            labels = np.asarray(cond_labels)
            if labels.shape != (N,) or labels.dtype.kind not in "iu":
                raise ValueError(f"cond_labels must be an int array of shape ({N},), got {labels.dtype} {labels.shape}")
            labels = labels.astype(np.int64)
        self.train = x
        self.multiplicities = w
        self.labels = labels
        self.schedule = schedule
        self._mu = x
        self._var0 = np.zeros(N)
        self._logw = np.log(w)
        self._labels = labels

    def x0_hat(self, x: np.ndarray, t: TimeArg, cond: CondArg = None) -> np.ndarray:
        """Posterior mean x̂₀(x_t) = Σ_i r_i x_i, shape (B, d)."""
        if t is None:
            raise ValueError("MemorizerTarget needs an integer timestep t (ᾱ < 1); got t=None")
        xa = self._prep_x(x)
        (out,) = self._map_rows(lambda r, g, s2, lp: r @ self.train, xa, t, cond)
        return out.astype(_out_dtype(xa), copy=False)

    def eps(self, x: np.ndarray, t: TimeArg, cond: CondArg = None) -> np.ndarray:
        """ε*(x_t) = (x_t − √ᾱ x̂₀)/√(1−ᾱ), shape (B, d)."""
        if t is None:
            raise ValueError("MemorizerTarget needs an integer timestep t (ᾱ < 1); got t=None")
        xa = self._prep_x(x)
        xf = xa.astype(np.float64, copy=False)
        abar = self._abar_rows(t, xa.shape[0])[:, None]
        x0 = self.x0_hat(xf, t, cond)
        return ((xf - np.sqrt(abar) * x0) / np.sqrt(1.0 - abar)).astype(_out_dtype(xa), copy=False)


def triangle_gmm(side: float = 5.0, variance: float = 0.1, schedule: Optional[VPSchedule] = None) -> GMMTarget:
    """The 3-mode d=2 GMM of the p-Laplace paper's toy (arXiv:2505.08246), placed exactly as the reference
    ``script_gmm_score_function.py``: μ = (0,0), (M,0), (M/2, √3 M/2) minus their
    centroid, covariance ``variance``·I, equal weights."""
    M = float(side)
    mu = np.array([[0.0, 0.0], [M, 0.0], [0.5 * M, math.sqrt(3.0) / 2.0 * M]])
    mu -= mu.mean(axis=0)
    return GMMTarget(mu, np.full(3, math.sqrt(variance)), np.ones(3), schedule)


# --------------------------------------------------------------------------- #
