"""Deterministic DDIM sampling (Song et al. 2021, arXiv:2010.02502, Eq. 12, eta = 0) for any target
with ``schedule`` and ``eps(x_t, t, cond)``, with optional classifier guidance
(Dhariwal & Nichol 2021, arXiv:2105.05233, Algorithm 2 in its eps form)."""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from models.score.targets.schedule import CondArg, VPSchedule


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
            ε̂_guided = ε̂ − λ√(1−ᾱ_t)·guidance (arXiv:2105.05233, Algorithm 2; SIDE arXiv:2410.02467 Algorithm 1), λ = ``guidance_scale``.

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
