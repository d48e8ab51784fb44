"""Text-conditional memorization metrics: Wen et al. (METHODS.md §4.3) and Jeon et al. (§4.6).

Both metrics compare the conditional and the null-condition predictions of a
diffusion target early in sampling. They are generic over any target with the
interface of :mod:`models.score.targets.closed_form` / :mod:`models.score.targets.hf_diffusers`:

* ``target.schedule`` (a VPSchedule: ``abar``, ``timesteps``, ``T``), ``target.dim``;
* ``target.eps(x_t (B, d), t, cond) -> (B, d)`` (Wen);
* ``target.score_torch(x_t (B, d) tensor, t, cond) -> (B, d)``, differentiable in
  forward mode (Jeon);
* optionally ``target.ddim_timesteps(steps)`` (diffusers targets: the folder's
  DDIM spacing, e.g. 981, 961, … for SD with 50 steps); otherwise
  ``target.schedule.timesteps(steps)`` (T−1 … 0).

Conditions are whatever the target's ``eps`` accepts:

* :class:`~models.score.targets.closed_form.MemorizerTarget` with ``cond_labels`` (the
  conditional toy of METHODS §5.3): prompts are integer labels, and
  ``null_cond=None`` is the unconditional (union) empirical score;
* :class:`~models.score.targets.hf_diffusers.DiffusersTextToImageTarget`: prompts are
  strings (or an embedding tensor (P, L, D)), and ``null_cond=None`` or ``""``
  is the empty prompt.

Metrics (larger = more likely memorized):

* Wen: d(p) = mean over the first ``steps_used`` DDIM steps and n generations of
  ‖ε̂(x_t, c) − ε̂(x_t, ∅)‖₂ (flattened latent). Sampling follows classifier-free
  guidance ε̂ = ε̂_∅ + w(ε̂_c − ε̂_∅) between measured steps (w = 7.5, 50 steps:
  Wen's SD protocol). Cost per prompt: 2·n·steps_used model evaluations.
* Jeon: ‖H^Δ s^Δ‖² at x_T and the first DDIM timestep, with s = −ε̂/√(1−ᾱ_t),
  s^Δ = s(x, c) − s(x, ∅), H^Δ = ∇s(x, c) − ∇s(x, ∅). H^Δ s^Δ is one forward-mode
  JVP of x ↦ s^Δ(x) along the tangent s^Δ(x) (:func:`torch.func.jvp`). Cost per
  sample: 2 forward evaluations (to get s^Δ) + 2 JVP'd evaluations (≈ 2–3
  forward costs each). :func:`sharpness_fd` gives the central finite-difference
  check.

All results carry their cost (:class:`MetricResult`). Metrics are scored
with :func:`models.score.plaplace.roc_auc` / :func:`models.score.plaplace.tpr_at_fpr`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

__all__ = [
    "MetricResult",
    "SharpnessResult",
    "ddim_timesteps",
    "initial_noise",
    "wen_metric",
    "sharpness_jvp",
    "sharpness_fd",
    "jeon_sharpness",
    "jeon_metric",
]

RngArg = Union[np.random.Generator, torch.Generator, int, None]


@dataclass
class MetricResult:
    """Per-prompt statistic with its cost.

    Attributes:
        values: (P,) float64 per-prompt statistic (mean over generations).
        per_sample: (P, n) float64 statistic per generation (Wen: mean over steps).
        per_step: (P, n, steps_used) float64 Wen norms per step, or None (Jeon).
        timesteps: int64 timesteps at which the metric was measured.
        evals: per-sample forward model evaluations (ε̂ or score rows).
        jvp_evals: per-sample model evaluations run under a JVP (Jeon), else 0.
        seconds: wall-clock time of the call.
    """

    values: np.ndarray
    per_sample: np.ndarray
    per_step: Optional[np.ndarray]
    timesteps: np.ndarray
    evals: int
    jvp_evals: int
    seconds: float

    @property
    def evals_per_prompt(self) -> float:
        """Forward + JVP'd evaluations per prompt."""
        P = max(1, self.values.shape[0])
        return (self.evals + self.jvp_evals) / P


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
# Helpers
# --------------------------------------------------------------------------- #
def _check_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def _target_dim(target: Any) -> int:
    d = getattr(target, "dim", None)
    if d is None:
        raise ValueError(f"target {type(target).__name__} has no 'dim' attribute")
    return int(d)


def ddim_timesteps(target: Any, steps: int) -> np.ndarray:
    """Descending DDIM timesteps (steps,) int64: ``target.ddim_timesteps(steps)`` when the
    target defines it (diffusers folders), else ``target.schedule.timesteps(steps)``."""
    steps = _check_int(steps, "num_inference_steps", 1)
    fn = getattr(target, "ddim_timesteps", None)
    if callable(fn):
        return np.asarray(fn(steps), dtype=np.int64)
    sched = getattr(target, "schedule", None)
    if sched is None or not hasattr(sched, "timesteps"):
        raise ValueError(f"target {type(target).__name__} has no schedule with timesteps()")
    return np.asarray(sched.timesteps(steps), dtype=np.int64)


def initial_noise(rows: int, d: int, rng: RngArg) -> np.ndarray:
    """x_T ~ N(0, I): (rows, d) float64.

    ``rng``: numpy Generator (float64 draws), torch.Generator (float32 CPU draws,
    as diffusers pipelines), or an int seed for ``numpy.random.default_rng``.
    """
    rows, d = _check_int(rows, "rows", 0), _check_int(d, "d", 1)
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal((rows, d))
    if isinstance(rng, torch.Generator):
        return torch.randn((rows, d), generator=rng, dtype=torch.float32).double().numpy()
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng)).standard_normal((rows, d))
    raise ValueError(f"rng must be a numpy Generator, a torch.Generator or an int seed, got {rng!r}")


def _n_conds(prompts_cond: Any) -> int:
    if isinstance(prompts_cond, str) or prompts_cond is None:
        raise ValueError(f"prompts_cond must be a sequence of conditions (one per prompt), got {prompts_cond!r}")
    if isinstance(prompts_cond, torch.Tensor):
        if prompts_cond.ndim < 1:
            raise ValueError("prompts_cond tensor must have a leading prompt axis")
        return int(prompts_cond.shape[0])
    try:
        return len(prompts_cond)
    except TypeError:
        raise ValueError(f"prompts_cond must be a sequence, got {type(prompts_cond).__name__}") from None


def _take_cond(prompts_cond: Any, idx: np.ndarray) -> Any:
    """Per-row conditions for prompt indices ``idx`` (rows,).

    Tensors (P, …) are indexed; int labels give an int64 array, strings a str
    array, tensors in a list are stacked; anything else gives a list.
    """
    if isinstance(prompts_cond, torch.Tensor):
        return prompts_cond[torch.as_tensor(idx, dtype=torch.long, device=prompts_cond.device)]
    items = list(prompts_cond)
    if items and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in items):
        return np.asarray(items, dtype=np.int64)[idx]
    if isinstance(prompts_cond, np.ndarray) and prompts_cond.dtype.kind in "iu":
        return prompts_cond.astype(np.int64)[idx]
    if items and all(isinstance(c, str) for c in items):
        return np.asarray(items, dtype=str)[idx]
    if items and all(isinstance(c, torch.Tensor) for c in items):
        return torch.stack(items, 0)[torch.as_tensor(idx, dtype=torch.long, device=items[0].device)]
    return [items[i] for i in idx]


def _is_per_row(cond: Any, B: int) -> bool:
    if cond is None or isinstance(cond, (str, int, np.integer)):
        return False
    if isinstance(cond, torch.Tensor):
        return cond.ndim == 3 and cond.shape[0] == B
    if isinstance(cond, np.ndarray):
        return cond.ndim >= 1 and cond.shape[0] == B
    if isinstance(cond, (list, tuple)):
        return len(cond) == B
    return False


def _slice_cond(cond: Any, per_row: bool, lo: int, hi: int) -> Any:
    return cond[lo:hi] if per_row else cond


def _ddim_update(sched: Any, x: np.ndarray, eps: np.ndarray, t: int, t_prev: Optional[int]) -> np.ndarray:
    """x̂₀ = (x − √(1−ᾱ_t)ε̂)/√ᾱ_t ; x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂ (η = 0)."""
    a_t = float(sched.abar(int(t)))
    a_p = 1.0 if t_prev is None else float(sched.abar(int(t_prev)))
    x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_p) * x0 + math.sqrt(1.0 - a_p) * eps


# --------------------------------------------------------------------------- #
# Wen et al. (METHODS §4.3)
# --------------------------------------------------------------------------- #
def wen_metric(
    target: Any,
    prompts_cond: Any,
    null_cond: Any = None,
    n: int = 4,
    steps_used: int = 1,
    rng: RngArg = 0,
    *,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    noise: Optional[np.ndarray] = None,
    prompt_batch: int = 16,
) -> MetricResult:
    """Wen's text-conditional noise magnitude d(p) (METHODS §4.3).

    d(p) = mean over the first ``steps_used`` of ``num_inference_steps`` DDIM
    steps and over n generations of ‖ε̂(x_t, t, c_p) − ε̂(x_t, t, ∅)‖₂, the
    norm taken over the flattened latent (d values). Between measured steps
    x_t follows DDIM (η = 0) with classifier-free guidance
    ε̂ = ε̂_∅ + w(ε̂_c − ε̂_∅).

    Args:
        target: see the module docstring (``eps``, ``schedule``, ``dim``).
        prompts_cond: P conditions: int labels (MemorizerTarget), prompt
            strings or an embedding tensor (P, L, D) (diffusers targets).
        null_cond: the null condition (None: union / empty prompt).
        n: generations per prompt (Wen's default 4).
        steps_used: measured steps (1 is enough per Wen / Jeon Table 1).
        rng: x_T source (see :func:`initial_noise`); ignored when ``noise`` is given.
        num_inference_steps: DDIM steps of the full sampler (50).
        guidance_scale: CFG weight w between measured steps (7.5).
        noise: optional x_T of shape (P, n, d).
        prompt_batch: prompts processed together (rows = prompt_batch·n).

    Returns:
        :class:`MetricResult` with values (P,), per_sample (P, n), per_step
        (P, n, steps_used), evals = 2·P·n·steps_used.
    """
    start = time.perf_counter()
    P = _n_conds(prompts_cond)
    n = _check_int(n, "n", 1)
    steps_used = _check_int(steps_used, "steps_used", 1)
    prompt_batch = _check_int(prompt_batch, "prompt_batch", 1)
    w = float(guidance_scale)
    if not math.isfinite(w):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    d = _target_dim(target)
    ts = ddim_timesteps(target, num_inference_steps)
    if steps_used > len(ts):
        raise ValueError(f"steps_used={steps_used} exceeds num_inference_steps={len(ts)}")
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (P, n, d):
            raise ValueError(f"noise must have shape ({P}, {n}, {d}), got {noise.shape}")
    per_step = np.zeros((P, n, steps_used))
    evals = 0
    for p0 in range(0, P, prompt_batch):
        p1 = min(P, p0 + prompt_batch)
        rows = (p1 - p0) * n
        idx = np.repeat(np.arange(p0, p1), n)
        x = noise[p0:p1].reshape(rows, d).copy() if noise is not None else initial_noise(rows, d, rng)
        cond_rows = _take_cond(prompts_cond, idx)
        for k in range(steps_used):
            t = int(ts[k])
            e_c = np.asarray(target.eps(x, t, cond_rows), dtype=np.float64)
            e_u = np.asarray(target.eps(x, t, null_cond), dtype=np.float64)
            evals += 2 * rows
            per_step[p0:p1, :, k] = np.linalg.norm(e_c - e_u, axis=1).reshape(p1 - p0, n)
            if k + 1 < steps_used:
                x = _ddim_update(target.schedule, x, e_u + w * (e_c - e_u), t, int(ts[k + 1]))
    per_sample = per_step.mean(axis=2)
    return MetricResult(per_sample.mean(axis=1), per_sample, per_step, ts[:steps_used].copy(), evals, 0,
                        time.perf_counter() - start)


# --------------------------------------------------------------------------- #
# Jeon et al. (METHODS §4.6)
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
    """s^Δ(x) and H^Δ s^Δ by one forward-mode JVP (METHODS §4.6).

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
    d = _target_dim(target)
    t = _check_t(target, t)
    xt = _as_tensor(x, d)
    B = xt.shape[0]
    chunk = _check_int(chunk_size if chunk_size is not None else getattr(target, "batch_size", max(1, B)),
                       "chunk_size", 1)
    per_row = _is_per_row(cond, B)
    s_out, hv_out = np.zeros((B, d)), np.zeros((B, d))
    for lo in range(0, B, chunk):
        hi = min(B, lo + chunk)
        c = _slice_cond(cond, per_row, lo, hi)

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
    d = _target_dim(target)
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
    """Jeon's sharpness ‖H^Δ s^Δ‖² per sample (METHODS §4.6), one JVP each.

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
    """Per-prompt Jeon sharpness: mean over n draws x_T ~ N(0, I) of ‖H^Δ s^Δ‖² (METHODS §4.6).

    Args:
        target, prompts_cond, null_cond, n, rng, noise, prompt_batch: as :func:`wen_metric`.
        t: timestep (default: the first DDIM timestep of ``num_inference_steps``,
            i.e. "step 1" of Jeon's Table 1).
        chunk_size: rows per JVP (see :func:`sharpness_jvp` on memory).

    Returns:
        :class:`MetricResult` (per_step None; evals = 2·P·n, jvp_evals = 2·P·n).
    """
    start = time.perf_counter()
    P = _n_conds(prompts_cond)
    n = _check_int(n, "n", 1)
    prompt_batch = _check_int(prompt_batch, "prompt_batch", 1)
    d = _target_dim(target)
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
        res = jeon_sharpness(target, _take_cond(prompts_cond, np.repeat(np.arange(p0, p1), n)), null_cond, x, tt,
                             chunk_size=chunk_size)
        per_sample[p0:p1] = res.values.reshape(p1 - p0, n)
        evals += res.evals
        jvp_evals += res.jvp_evals
    return MetricResult(per_sample.mean(axis=1), per_sample, None, np.array([tt], dtype=np.int64), evals, jvp_evals,
                        time.perf_counter() - start)
