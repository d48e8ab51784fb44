"""Closed-form diffusion "targets": noise predictors with an exact score.

Every target implements the small interface the memorization scorers need
(METHODS.md §5.7: "an injected score_fn(x_t, t, cond)"):

* ``target.schedule``: a :class:`VPSchedule` (``alphas_cumprod``, ``T``);
* ``target.eps(x_t, t, cond=None) -> (B, d)``: the predicted noise ε̂(x_t, t, c);
* ``target.score(x_t, t, cond=None) -> (B, d)``: ∇ log p_t(x_t) = −ε̂/√(1−ᾱ_t);
* ``target.score_torch(x_t, t, cond=None)``: the same score on torch tensors,
  differentiable (reverse and forward mode, e.g. :func:`torch.func.jvp`).

Conventions (METHODS.md notation):

* VP diffusion x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε, with ``alphas_cumprod[t]`` = ᾱ_t for
  the integer timestep ``t`` in ``[0, T-1]`` (the DDPM / diffusers indexing, so
  ᾱ_0 = 1 − β_0 < 1).
* ``t=None`` means ᾱ = 1 exactly, i.e. the clean data density p_0. The GMM
  closed forms of METHODS §5.1 ("t = 0 meaning ᾱ = 1") are evaluated with
  ``t=None``. The memorizer's p_0 is a sum of deltas, so it rejects ``t=None``.
* ``t`` may also be an integer array of shape (B,), one timestep per row.

Targets:

* :class:`GMMTarget`: isotropic Gaussian mixture Σ_k π_k N(μ_k, σ_k² I), noised
  in closed form (METHODS §5.1), with score, Hessian, Laplacian and
  p-Laplacian of log p_t.
* :class:`MemorizerTarget`: the exact empirical-score "perfect memorizer"
  (METHODS §5.2), optionally label-conditional (METHODS §5.3).

Sampling: :func:`ddim_sample` (deterministic DDIM, η = 0) with optional
classifier guidance ε̂_guided = ε̂ − λ√(1−ᾱ_t)∇log p(c|x_t) (METHODS §1.2 [INF]).

Files: :func:`load_target` reads ``"gmm:FILE"`` / ``"memorizer:FILE"`` specs
(``.npz`` layouts documented on :func:`save_gmm` and :func:`save_memorizer`).

All numpy computations run in float64; numpy outputs take the input's floating
dtype (float32 in, float32 out; anything else gives float64).
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional, Union

import numpy as np
import torch

TimeArg = Union[int, np.integer, np.ndarray, None]
CondArg = Union[int, np.integer, np.ndarray, None]

__all__ = [
    "VPSchedule",
    "GMMTarget",
    "MemorizerTarget",
    "triangle_gmm",
    "ddim_sample",
    "load_target",
    "save_gmm",
    "save_memorizer",
    "save_target",
]

# Rows per chunk are chosen so one (rows, K, d) float64 array stays near 32 MiB.
_CHUNK_ELEMS = 1 << 22


# --------------------------------------------------------------------------- #
# Schedule
# --------------------------------------------------------------------------- #
class VPSchedule:
    """Variance-preserving (DDPM) noise schedule.

    Args:
        betas: (T,) per-step variances β_t, each in (0, 1).

    Attributes:
        betas, alphas, alphas_cumprod: (T,) float64 arrays; ᾱ_t = Π_{s≤t}(1−β_s).
        T: number of timesteps; valid integer timesteps are 0..T-1.
        linear_params: ``(T, beta_start, beta_end)`` when built by
            :meth:`linear` (needed to save the schedule to a file), else None.
    """

    def __init__(self, betas: np.ndarray) -> None:
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim != 1 or b.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {b.shape}")
        if not np.all(np.isfinite(b)) or np.any(b <= 0.0) or np.any(b >= 1.0):
            bad = b[~(np.isfinite(b) & (b > 0.0) & (b < 1.0))]
            raise ValueError(f"betas must lie in (0, 1); bad values {bad[:5].tolist()}")
        self.betas = b
        self.alphas = 1.0 - b
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.linear_params: Optional[tuple[int, float, float]] = None

    @classmethod
    def linear(cls, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> "VPSchedule":
        """DDPM linear schedule: β = linspace(beta_start, beta_end, T) (METHODS §2.3, §5.2)."""
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
            raise ValueError(f"T must be a positive integer, got {T!r}")
        beta_start, beta_end = float(beta_start), float(beta_end)
        for name, val in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not (0.0 < val < 1.0):
                raise ValueError(f"{name} must lie in (0, 1), got {val!r}")
        sched = cls(np.linspace(beta_start, beta_end, int(T), dtype=np.float64))
        sched.linear_params = (int(T), beta_start, beta_end)
        return sched

    @property
    def T(self) -> int:
        """Number of diffusion timesteps."""
        return int(self.betas.size)

    def _check_t(self, t: TimeArg) -> np.ndarray:
        arr = np.asarray(t)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"timestep must be an integer (or None for ᾱ=1), got {t!r}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.T):
            raise ValueError(f"timestep out of range [0, {self.T - 1}]: {t!r}")
        return arr.astype(np.int64)

    def abar(self, t: TimeArg) -> Union[float, np.ndarray]:
        """ᾱ_t for an integer timestep (float), an integer array (float64 array of
        the same shape), or ``None`` (exactly 1.0: clean data)."""
        if t is None:
            return 1.0
        arr = self._check_t(t)
        out = self.alphas_cumprod[arr]
        return float(out) if out.ndim == 0 else out

    def timesteps(self, steps: int) -> np.ndarray:
        """DDIM timesteps, descending: round(linspace(T-1, 0, steps)), int64 (steps,).

        Distinct for 1 ≤ steps ≤ T; the first is always T-1 and (for steps ≥ 2)
        the last is 0. :func:`ddim_sample` then takes a final step to ᾱ = 1.
        """
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.T:
            raise ValueError(f"steps must be an integer in [1, {self.T}], got {steps!r}")
        return np.round(np.linspace(self.T - 1, 0, int(steps))).astype(np.int64)

    def ddim_step(self, x_t: np.ndarray, eps: np.ndarray, t: int, t_prev: Optional[int]) -> np.ndarray:
        """Deterministic DDIM update (η = 0) from timestep ``t`` to ``t_prev``.

        x̂₀ = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t ;  x_{t_prev} = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂.
        ``t_prev=None`` means ᾱ_prev = 1, which returns x̂₀ itself.

        Args:
            x_t, eps: (B, d) arrays. Returns (B, d) float64.
        """
        a_t = self.abar(t)
        a_prev = self.abar(t_prev)
        x_t = np.asarray(x_t, dtype=np.float64)
        eps = np.asarray(eps, dtype=np.float64)
        x0 = (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
        if t_prev is None:
            return x0
        return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps


# --------------------------------------------------------------------------- #
# Shared isotropic-mixture core
# --------------------------------------------------------------------------- #
def _out_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


class _IsotropicMixture:
    """p_t(x) = Σ_k π_k N(x; √ᾱ μ_k, (ᾱσ_k² + 1 − ᾱ) I): the VP-noised isotropic
    mixture of METHODS §5.1 (the memorizer is the σ_k = 0 case, METHODS §5.2).

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
        c = np.asarray(cond)
        if c.dtype.kind not in "iu":
            raise ValueError(f"cond must be an integer label or an int array, got {cond!r}")
        if c.ndim == 0:
            c = np.full(B, int(c))
        elif c.shape != (B,):
            raise ValueError(f"cond array must have shape ({B},), got {c.shape}")
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
        """log p_t(x) (METHODS §5.1 normaliser included), shape (B,) float64."""
        (out,) = self._map_rows(lambda r, g, s2, lp: lp, x, t, cond)
        return out

    def score(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Score s = ∇log p_t(x) = Σ_k r_k g_k (METHODS §5.1), shape (B, d)."""
        xa = self._prep_x(x)
        (out,) = self._map_rows(lambda r, g, s2, lp: np.einsum("bk,bkd->bd", r, g), xa, t, cond)
        return out.astype(_out_dtype(xa), copy=False)

    def eps(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Predicted noise ε*(x_t) = −√(1−ᾱ_t)·s(x_t) (METHODS notation), shape (B, d).

        Zero for t=None (ᾱ=1).
        """
        xa = self._prep_x(x)
        abar = self._abar_rows(t, xa.shape[0])
        s = self.score(xa.astype(np.float64, copy=False), t, cond)
        return (-np.sqrt(1.0 - abar)[:, None] * s).astype(_out_dtype(xa), copy=False)

    def hessian(self, x: np.ndarray, t: TimeArg = None, cond: CondArg = None) -> np.ndarray:
        """Hessian of log p_t: H = Σ_k r_k(g_k g_kᵀ − I/s_k²) − s sᵀ (METHODS §5.1).

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
        """Δ log p_t = −d Σ_k r_k/s_k² + Σ_k r_k|g_k|² − |s|² (METHODS §5.1), (B,) float64."""

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
        (METHODS §2.2, §5.1), shape (B,) float64.

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
    forward process, in closed form (METHODS §5.1):

        p_t = Σ_k π_k N(m_k, s_k² I), m_k = √ᾱ_t μ_k, s_k² = ᾱ_t σ_k² + 1 − ᾱ_t.

    Args:
        means: (K, d) component means μ_k.
        sigmas: (K,) component **standard deviations** σ_k ≥ 0 (covariance σ_k² I;
            e.g. METHODS' "covariance 0.1 I" is σ = √0.1). σ_k = 0 is allowed
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
    """Exact empirical-score "perfect memorizer" (METHODS §5.2).

    x̂₀(x_t) = Σ_i softmax_i(log w_i − |x_t − √ᾱ x_i|²/(2(1−ᾱ))) x_i,
    ε*(x_t) = (x_t − √ᾱ x̂₀)/√(1−ᾱ).

    It is the minimiser of the DDPM loss on the training set, i.e. the GMM of
    §5.1 with σ_k → 0, so it also has :meth:`score`, :meth:`hessian`, … .

    Args:
        train: (N, d) training points x_i.
        multiplicities: (N,) positive duplicate counts w_i (None = all ones).
        schedule: VP schedule (required: the memorizer needs t integer, ᾱ < 1).
        cond_labels: optional (N,) integer labels. ``cond=c`` restricts the
            softmax to points with label c (the conditional toy of METHODS §5.3);
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
        """Posterior mean x̂₀(x_t) = Σ_i r_i x_i (METHODS §5.2), shape (B, d)."""
        if t is None:
            raise ValueError("MemorizerTarget needs an integer timestep t (ᾱ < 1); got t=None")
        xa = self._prep_x(x)
        (out,) = self._map_rows(lambda r, g, s2, lp: r @ self.train, xa, t, cond)
        return out.astype(_out_dtype(xa), copy=False)

    def eps(self, x: np.ndarray, t: TimeArg, cond: CondArg = None) -> np.ndarray:
        """ε*(x_t) = (x_t − √ᾱ x̂₀)/√(1−ᾱ) (METHODS §5.2), shape (B, d)."""
        if t is None:
            raise ValueError("MemorizerTarget needs an integer timestep t (ᾱ < 1); got t=None")
        xa = self._prep_x(x)
        xf = xa.astype(np.float64, copy=False)
        abar = self._abar_rows(t, xa.shape[0])[:, None]
        x0 = self.x0_hat(xf, t, cond)
        return ((xf - np.sqrt(abar) * x0) / np.sqrt(1.0 - abar)).astype(_out_dtype(xa), copy=False)


def triangle_gmm(side: float = 5.0, variance: float = 0.1, schedule: Optional[VPSchedule] = None) -> GMMTarget:
    """The 3-mode d=2 GMM of METHODS §2.3/§5.1, placed exactly as the reference
    ``script_gmm_score_function.py``: μ = (0,0), (M,0), (M/2, √3 M/2) minus their
    centroid, covariance ``variance``·I, equal weights."""
    M = float(side)
    mu = np.array([[0.0, 0.0], [M, 0.0], [0.5 * M, math.sqrt(3.0) / 2.0 * M]])
    mu -= mu.mean(axis=0)
    return GMMTarget(mu, np.full(3, math.sqrt(variance)), np.ones(3), schedule)


# --------------------------------------------------------------------------- #
# DDIM sampling
# --------------------------------------------------------------------------- #
def ddim_sample(
    target,
    n: int,
    d: int,
    steps: int,
    rng: Optional[np.random.Generator] = None,
    *,
    noise: Optional[np.ndarray] = None,
    cond: CondArg = None,
    guidance: Optional[Callable[[np.ndarray, int], np.ndarray]] = None,
    guidance_scale: float = 1.0,
) -> np.ndarray:
    """Deterministic DDIM (η = 0) from x_T ~ N(0, I) to x₀.

    Timesteps: ``target.schedule.timesteps(steps)`` (T−1 … 0), then one final
    step to ᾱ = 1, so the output is the last x̂₀.

    Args:
        target: anything with ``schedule`` and ``eps(x_t, t, cond)``.
        n, d: number of samples and dimension.
        steps: number of DDIM steps, 1..T.
        rng: numpy Generator for x_T (ignored when ``noise`` is given).
        noise: optional injected x_T, shape (n, d).
        cond: passed to ``target.eps`` (int label, (n,) int array, or None).
        guidance: optional ``guidance(x_t (n,d) float64, t int) -> (n,d)``
            returning ∇_{x_t} log p(c|x_t). It enters as
            ε̂_guided = ε̂ − λ√(1−ᾱ_t)·guidance (METHODS §1.2 [INF]), λ = ``guidance_scale``.

    Returns:
        (n, d) float64 samples.
    """
    sched = getattr(target, "schedule", None)
    if not isinstance(sched, VPSchedule):
        raise ValueError(f"target must have a VPSchedule 'schedule', got {sched!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    tdim = getattr(target, "dim", None)
    if tdim is not None and tdim != d:
        raise ValueError(f"d={d} does not match the target dimension {tdim}")
    if noise is not None:
        x = np.array(noise, dtype=np.float64)
        if x.shape != (n, d):
            raise ValueError(f"noise must have shape ({n}, {d}), got {x.shape}")
    else:
        if not isinstance(rng, np.random.Generator):
            raise ValueError(f"rng must be a numpy Generator when noise is not given, got {rng!r}")
        x = rng.standard_normal((n, d))
    lam = float(guidance_scale)
    ts = sched.timesteps(steps)
    for i, t in enumerate(ts):
        t = int(t)
        eps = np.asarray(target.eps(x, t, cond), dtype=np.float64)
        if guidance is not None and lam != 0.0:
            grad = np.asarray(guidance(x, t), dtype=np.float64)
            if grad.shape != x.shape:
                raise ValueError(f"guidance returned shape {grad.shape}, expected {x.shape}")
            eps = eps - lam * math.sqrt(1.0 - sched.abar(t)) * grad
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else None
        x = sched.ddim_step(x, eps, t, t_prev)
    return x


# --------------------------------------------------------------------------- #
# Files
# --------------------------------------------------------------------------- #
_SCHED_KEYS = ("T", "beta_start", "beta_end")
_GMM_KEYS = ("means", "sigmas", "weights") + _SCHED_KEYS
_MEM_KEYS = ("train", "multiplicities") + _SCHED_KEYS


def _schedule_arrays(schedule: Optional[VPSchedule]) -> dict:
    if schedule is None or schedule.linear_params is None:
        raise ValueError(
            "only targets with a VPSchedule.linear(...) schedule can be saved "
            f"(the file stores T, beta_start, beta_end); got {schedule!r}"
        )
    T, b0, b1 = schedule.linear_params
    return {"T": np.int64(T), "beta_start": np.float64(b0), "beta_end": np.float64(b1)}


def _read_npz(path: str, required: tuple, kind: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"{kind} target file not found: {path!r}")
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{kind} file {path!r} is missing arrays {missing} (has {sorted(data)})")
    return data


def _schedule_from(data: dict) -> VPSchedule:
    return VPSchedule.linear(int(data["T"]), float(data["beta_start"]), float(data["beta_end"]))


def save_gmm(path: str, target: GMMTarget) -> None:
    """Write a GMMTarget as ``.npz`` with arrays:

    ``means`` (K, d) float64, ``sigmas`` (K,) standard deviations, ``weights`` (K,),
    and scalars ``T`` (int), ``beta_start``, ``beta_end`` (linear VP schedule).
    """
    if not isinstance(target, GMMTarget):
        raise ValueError(f"save_gmm needs a GMMTarget, got {type(target).__name__}")
    np.savez(path, means=target.means, sigmas=target.sigmas, weights=target.weights,
             **_schedule_arrays(target.schedule))


def save_memorizer(path: str, target: MemorizerTarget) -> None:
    """Write a MemorizerTarget as ``.npz`` with arrays:

    ``train`` (N, d) float64, ``multiplicities`` (N,), optional ``labels`` (N,) int64,
    and scalars ``T`` (int), ``beta_start``, ``beta_end`` (linear VP schedule).
    """
    if not isinstance(target, MemorizerTarget):
        raise ValueError(f"save_memorizer needs a MemorizerTarget, got {type(target).__name__}")
    extra = {} if target.labels is None else {"labels": target.labels}
    np.savez(path, train=target.train, multiplicities=target.multiplicities,
             **extra, **_schedule_arrays(target.schedule))


def save_target(path: str, target: Union[GMMTarget, MemorizerTarget]) -> str:
    """Save either target type; returns the matching :func:`load_target` spec string."""
    if isinstance(target, GMMTarget):
        save_gmm(path, target)
        return f"gmm:{path}"
    if isinstance(target, MemorizerTarget):
        save_memorizer(path, target)
        return f"memorizer:{path}"
    raise ValueError(f"cannot save target of type {type(target).__name__}")


def load_target(spec: str) -> Union[GMMTarget, MemorizerTarget]:
    """Load ``"gmm:FILE"`` or ``"memorizer:FILE"`` (``.npz`` layouts on
    :func:`save_gmm` / :func:`save_memorizer`). Raises ValueError naming any
    missing arrays, or for an unknown kind."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"target spec must look like 'gmm:FILE' or 'memorizer:FILE', got {spec!r}")
    kind, path = spec.split(":", 1)
    kind = kind.strip().lower()
    if kind == "gmm":
        data = _read_npz(path, _GMM_KEYS, kind)
        return GMMTarget(data["means"], data["sigmas"], data["weights"], _schedule_from(data))
    if kind == "memorizer":
        data = _read_npz(path, _MEM_KEYS, kind)
        return MemorizerTarget(data["train"], data["multiplicities"], _schedule_from(data),
                               cond_labels=data.get("labels"))
    raise ValueError(f"unknown target kind {kind!r} in spec {spec!r}; expected 'gmm' or 'memorizer'")
