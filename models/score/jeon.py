"""Jeon et al.'s sharpness memorization metric (ICML 2025, arXiv:2412.04140).

||H^Delta s^Delta||^2 at x_T and the first DDIM timestep, with s = -eps_hat/sqrt(1 - abar_t),
s^Delta = s(x, c) - s(x, null) and H^Delta = grad s(x, c) - grad s(x, null) (arXiv:2412.04140,
Sec. 4, the "step 1" metric of Table 1). H^Delta s^Delta is one forward-mode JVP of
x -> s^Delta(x) along the tangent s^Delta(x) (:func:`torch.func.jvp`). Cost per sample:
2 forward evaluations (to get s^Delta) + 2 JVP'd evaluations (about 2-3 forward costs each).
:func:`sharpness_fd` is the central finite-difference check.

Targets and conditions are those of :mod:`models.score.wen`; the target also needs a
differentiable ``score_torch(x_t, t, cond)``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from models.score.wen import (
    MetricResult,
    RngArg,
    check_int,
    ddim_timesteps,
    initial_noise,
    is_per_row,
    n_conds,
    slice_cond,
    take_cond,
    target_dim,
)

__all__ = ["SharpnessResult", "sharpness_jvp", "sharpness_fd", "jeon_sharpness", "jeon_metric"]


@dataclass
class SharpnessResult:
    """Jeon's sharpness for a batch of samples.

    Attributes:
        values: (B,) float64 ‖H^Δ s^Δ‖².
        s_delta_norm: (B,) float64 ‖s^Δ‖ (Wen's magnitude is √(1−ᾱ_t) times this).
        evals, jvp_evals: per-sample forward / JVP'd evaluations spent.
        seconds: wall-clock time.
    """

    values: np.ndarray
    s_delta_norm: np.ndarray
    evals: int
    jvp_evals: int
    seconds: float



# --------------------------------------------------------------------------- #
# Jeon et al. (Jeon et al., arXiv:2412.04140)
# --------------------------------------------------------------------------- #
def _score_fn(target: Any):
    fn = getattr(target, "score_torch", None)
    if not callable(fn):
        raise ValueError(f"target {type(target).__name__} has no differentiable score_torch(x, t, cond)")
    return fn


def _as_tensor(x: Any, d: int) -> torch.Tensor:
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64)) if not isinstance(x, torch.Tensor) else x.double().cpu()
    if xt.ndim != 2 or xt.shape[1] != d:
        raise ValueError(f"x must have shape (B, {d}), got {tuple(xt.shape)}")
    return xt


def _check_t(target: Any, t: Any) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
        raise ValueError(f"t must be an integer timestep, got {t!r}")
    T = int(target.schedule.T)
    if not 0 <= int(t) < T:
        raise ValueError(f"t must lie in [0, {T - 1}], got {t}")
    return int(t)


def _jvp_context():
    """Math-only SDPA (forward AD has no fused-attention formula); a no-op for closed forms."""
    from models.score.targets.hf_diffusers import forward_ad_attention

    return forward_ad_attention()


def sharpness_jvp(
    target: Any,
    cond: Any,
    null_cond: Any,
    x: Any,
    t: int,
    *,
    chunk_size: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """s^Δ(x) and H^Δ s^Δ by one forward-mode JVP (Jeon et al., arXiv:2412.04140).

    s^Δ(x) = s(x, t, c) − s(x, t, ∅) with s = ``target.score_torch``; the JVP of
    x ↦ s^Δ(x) along the tangent s^Δ(x) gives H^Δ s^Δ (H = ∇s is symmetric for an
    exact score; for a network it is the Jacobian-vector product either way).
    Runs under ``torch.no_grad`` (no autograd graph is kept) and with math-only
    attention (:func:`models.score.targets.hf_diffusers.forward_ad_attention`).

    Memory (diffusers UNets): forward-mode AD carries a tangent next to every
    activation, so a JVP'd UNet call needs roughly twice the activation memory
    of a plain call on the same batch, plus the materialised (heads, N, N)
    attention matrices of the math SDPA backend (N = h·w latent tokens). Keep
    ``chunk_size`` small (a few rows) for SD at 512².

    Args:
        target: with ``score_torch`` and ``schedule``.
        cond: condition for all rows or per-row (B,) conditions.
        null_cond: the null condition.
        x: (B, d) points (numpy or torch), computed in float64 on the CPU side
            (diffusers targets cast to their device/dtype internally).
        t: integer timestep.
        chunk_size: rows per JVP (default: the target's ``batch_size``, else all).

    Returns:
        (s_delta, hv): two (B, d) float64 arrays.
    """
    score = _score_fn(target)
    d = target_dim(target)
    t = _check_t(target, t)
    xt = _as_tensor(x, d)
    B = xt.shape[0]
    chunk = check_int(chunk_size if chunk_size is not None else getattr(target, "batch_size", max(1, B)),
                       "chunk_size", 1)
    per_row = is_per_row(cond, B)
    s_out, hv_out = np.zeros((B, d)), np.zeros((B, d))
    for lo in range(0, B, chunk):
        hi = min(B, lo + chunk)
        c = slice_cond(cond, per_row, lo, hi)

        def s_delta(y: torch.Tensor) -> torch.Tensor:
            return score(y, t, c) - score(y, t, null_cond)

        xc = xt[lo:hi]
        with torch.no_grad():
            v = s_delta(xc).double()
            with _jvp_context():
                _, hv = torch.func.jvp(s_delta, (xc,), (v,))
        s_out[lo:hi] = v.cpu().numpy()
        hv_out[lo:hi] = hv.double().cpu().numpy()
    return s_out, hv_out


def sharpness_fd(
    target: Any,
    cond: Any,
    null_cond: Any,
    x: Any,
    t: int,
    h: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Central finite-difference check of :func:`sharpness_jvp`.

    H^Δ s^Δ ≈ ‖s^Δ‖·[s^Δ(x + h û) − s^Δ(x − h û)]/(2h), û = s^Δ/‖s^Δ‖, so ``h``
    is the step length in x-space (truncation error O(h²), rounding O(ε/h)).
    Costs 6 forward evaluations per row. Returns (s_delta, hv), (B, d) float64.
    """
    score = _score_fn(target)
    d = target_dim(target)
    t = _check_t(target, t)
    hf = float(h)
    if not (math.isfinite(hf) and hf > 0.0):
        raise ValueError(f"h must be a positive finite number, got {h!r}")
    xt = _as_tensor(x, d)

    def s_delta(y: torch.Tensor) -> torch.Tensor:
        return (score(y, t, cond) - score(y, t, null_cond)).double()

    with torch.no_grad():
        v = s_delta(xt)
        nv = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        u = torch.where(nv > 0, v / nv.clamp_min(1e-300), torch.zeros_like(v))
        hv = nv * (s_delta(xt + hf * u) - s_delta(xt - hf * u)) / (2.0 * hf)
    return v.cpu().numpy(), hv.cpu().numpy()


def jeon_sharpness(
    target: Any,
    cond: Any,
    null_cond: Any,
    x_T: Any,
    t: int,
    *,
    chunk_size: Optional[int] = None,
) -> SharpnessResult:
    """Jeon's sharpness ‖H^Δ s^Δ‖² per sample (Jeon et al., arXiv:2412.04140), one JVP each.

    Args: as :func:`sharpness_jvp` (x_T (B, d) are the step-1 latents, t the
    first DDIM timestep for the paper's protocol).

    Returns:
        :class:`SharpnessResult`: values (B,), ‖s^Δ‖ (B,), cost (2B forward
        evaluations + 2B JVP'd evaluations, seconds).
    """
    start = time.perf_counter()
    s, hv = sharpness_jvp(target, cond, null_cond, x_T, t, chunk_size=chunk_size)
    B = s.shape[0]
    return SharpnessResult(np.einsum("bd,bd->b", hv, hv), np.linalg.norm(s, axis=1), 2 * B, 2 * B,
                           time.perf_counter() - start)


def jeon_metric(
    target: Any,
    prompts_cond: Any,
    null_cond: Any = None,
    n: int = 1,
    rng: RngArg = 0,
    *,
    t: Optional[int] = None,
    num_inference_steps: int = 50,
    noise: Optional[np.ndarray] = None,
    prompt_batch: int = 16,
    chunk_size: Optional[int] = None,
) -> MetricResult:
    """Per-prompt Jeon sharpness: mean over n draws x_T ~ N(0, I) of ‖H^Δ s^Δ‖² (Jeon et al., arXiv:2412.04140).

    Args:
        target, prompts_cond, null_cond, n, rng, noise, prompt_batch: as :func:`wen_metric`.
        t: timestep (default: the first DDIM timestep of ``num_inference_steps``,
            i.e. "step 1" of Jeon's Table 1).
        chunk_size: rows per JVP (see :func:`sharpness_jvp` on memory).

    Returns:
        :class:`MetricResult` (per_step None; evals = 2·P·n, jvp_evals = 2·P·n).
    """
    start = time.perf_counter()
    P = n_conds(prompts_cond)
    n = check_int(n, "n", 1)
    prompt_batch = check_int(prompt_batch, "prompt_batch", 1)
    d = target_dim(target)
    tt = int(ddim_timesteps(target, num_inference_steps)[0]) if t is None else _check_t(target, t)
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (P, n, d):
            raise ValueError(f"noise must have shape ({P}, {n}, {d}), got {noise.shape}")
    per_sample = np.zeros((P, n))
    evals = jvp_evals = 0
    for p0 in range(0, P, prompt_batch):
        p1 = min(P, p0 + prompt_batch)
        rows = (p1 - p0) * n
        x = noise[p0:p1].reshape(rows, d) if noise is not None else initial_noise(rows, d, rng)
        res = jeon_sharpness(target, take_cond(prompts_cond, np.repeat(np.arange(p0, p1), n)), null_cond, x, tt,
                             chunk_size=chunk_size)
        per_sample[p0:p1] = res.values.reshape(p1 - p0, n)
        evals += res.evals
        jvp_evals += res.jvp_evals
    return MetricResult(per_sample.mean(axis=1), per_sample, None, np.array([tt], dtype=np.int64), evals, jvp_evals,
                        time.perf_counter() - start)
