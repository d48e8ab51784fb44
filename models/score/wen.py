"""Wen et al.'s text-conditional memorization metric (arXiv:2407.21720) and the helpers Jeon's shares.

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
  conditional toy of tests/models/score/test_wen.py): prompts are integer labels, and
  ``null_cond=None`` is the unconditional (union) empirical score;
* :class:`~models.score.targets.hf_diffusers.DiffusersTextToImageTarget`: prompts are
  strings (or an embedding tensor (P, L, D)), and ``null_cond=None`` or ``""``
  is the empty prompt.

Metrics (larger = more likely memorized):

* Wen: d(p) = mean over the first ``steps_used`` DDIM steps and n generations of
  ‖ε̂(x_t, c) − ε̂(x_t, ∅)‖₂ (flattened latent). Sampling follows classifier-free
  guidance ε̂ = ε̂_∅ + w(ε̂_c − ε̂_∅) between measured steps (w = 7.5, 50 steps:
  Wen's SD protocol). Cost per prompt: 2·n·steps_used model evaluations.
* Jeon (:mod:`models.score.jeon`): the sharpness ||H^Delta s^Delta||^2 at x_T, built on the
  helpers here (initial noise, DDIM timesteps, per-row conditions).

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
    "ddim_timesteps",
    "initial_noise",
    "wen_metric",
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


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #
def check_int(v: Any, name: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def target_dim(target: Any) -> int:
    d = getattr(target, "dim", None)
    if d is None:
        raise ValueError(f"target {type(target).__name__} has no 'dim' attribute")
    return int(d)


def ddim_timesteps(target: Any, steps: int) -> np.ndarray:
    """Descending DDIM timesteps (steps,) int64: ``target.ddim_timesteps(steps)`` when the
    target defines it (diffusers folders), else ``target.schedule.timesteps(steps)``."""
    steps = check_int(steps, "num_inference_steps", 1)
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
    rows, d = check_int(rows, "rows", 0), check_int(d, "d", 1)
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal((rows, d))
    if isinstance(rng, torch.Generator):
        return torch.randn((rows, d), generator=rng, dtype=torch.float32).double().numpy()
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng)).standard_normal((rows, d))
    raise ValueError(f"rng must be a numpy Generator, a torch.Generator or an int seed, got {rng!r}")


def n_conds(prompts_cond: Any) -> int:
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


def take_cond(prompts_cond: Any, idx: np.ndarray) -> Any:
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


def is_per_row(cond: Any, B: int) -> bool:
    if cond is None or isinstance(cond, (str, int, np.integer)):
        return False
    if isinstance(cond, torch.Tensor):
        return cond.ndim == 3 and cond.shape[0] == B
    if isinstance(cond, np.ndarray):
        return cond.ndim >= 1 and cond.shape[0] == B
    if isinstance(cond, (list, tuple)):
        return len(cond) == B
    return False


def slice_cond(cond: Any, per_row: bool, lo: int, hi: int) -> Any:
    return cond[lo:hi] if per_row else cond


def _ddim_update(sched: Any, x: np.ndarray, eps: np.ndarray, t: int, t_prev: Optional[int]) -> np.ndarray:
    """x̂₀ = (x − √(1−ᾱ_t)ε̂)/√ᾱ_t ; x_prev = √ᾱ_prev x̂₀ + √(1−ᾱ_prev) ε̂ (η = 0)."""
    a_t = float(sched.abar(int(t)))
    a_p = 1.0 if t_prev is None else float(sched.abar(int(t_prev)))
    x0 = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_p) * x0 + math.sqrt(1.0 - a_p) * eps


# --------------------------------------------------------------------------- #
# Wen et al. (Wen et al., arXiv:2407.21720)
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
    """Wen's text-conditional noise magnitude d(p) (Wen et al., arXiv:2407.21720).

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
    P = n_conds(prompts_cond)
    n = check_int(n, "n", 1)
    steps_used = check_int(steps_used, "steps_used", 1)
    prompt_batch = check_int(prompt_batch, "prompt_batch", 1)
    w = float(guidance_scale)
    if not math.isfinite(w):
        raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
    d = target_dim(target)
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
        cond_rows = take_cond(prompts_cond, idx)
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
