"""Variance-preserving (DDPM) noise schedule shared by every target.

VP diffusion x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with ``alphas_cumprod[t]``
= abar_t for the integer timestep ``t`` in ``[0, T-1]`` (the DDPM / diffusers
indexing of Ho et al. 2020, arXiv:2006.11239, so abar_0 = 1 - beta_0 < 1);
``t=None`` means abar = 1 exactly (clean data). DDIM steps follow Song et al.
2021, arXiv:2010.02502, Eq. 12 with eta = 0.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

TimeArg = Union[int, np.integer, np.ndarray, None]
CondArg = Union[int, np.integer, np.ndarray, None]


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
        """DDPM linear schedule: β = linspace(beta_start, beta_end, T) (Ho et al. 2020, arXiv:2006.11239 §4)."""
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


def label_rows(cond, B: int) -> np.ndarray:
    """(B,) int64 class labels from an int label (broadcast) or an int array (B,).

    Raises:
      ValueError: not integers, or an array of another shape.
    """
    c = np.asarray(cond)
    if c.dtype.kind not in "iu":
        raise ValueError(f"cond must be an integer label or an int array, got {cond!r}")
    if c.ndim == 0:
        return np.full(B, int(c), dtype=np.int64)
    if c.shape != (B,):
        raise ValueError(f"cond array must have shape ({B},), got {c.shape}")
    return c.astype(np.int64)
