"""Per-prompt memorization checks and their calibrated decisions (plain Python).

A *target* has ``schedule``, ``dim`` and ``eps(x_t (B,d), t, cond)``. Prompts
become conditions through :class:`PromptConditioner`: text-to-image targets
encode them (``encode_prompts``); closed-form targets (``gmm:``,
``memorizer:``) read a ``FILE.prompts.json`` mapping prompt -> class label
beside the target file (unknown prompts are unconditional).

Checks (each returns a :class:`CheckResult`):

* ``plaplace``: generate ``n_samples`` with the prompt (seeded DDIM) and
  measure, around each, the p = 1 flux of the learned score at small t in its
  noise form E[cos(eps_hat(x_t, t, c), eps)] (METHODS 2.2-2.3: memorized
  samples are sharp maxima, the score points inward, the statistic -> 1).
  The per-prompt statistic is the mean over samples; ``spread`` their std.
* ``wen``: Wen et al.'s text-conditional noise-difference magnitude at the
  first DDIM step (METHODS 4.3), a cheap first pass.

Decisions are calibrated, not magic constants: :func:`calibrate` sets each
check's threshold at the ``1 - fpr`` quantile of the same statistic on
reference prompts (ordinary captions), so "memorized" means "more extreme than
all but ``fpr`` of ordinary prompts".
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np

CHECKS = ("plaplace", "side", "wen")


@dataclass(frozen=True)
class ScoreConfig:
    """Sampling sizes of the per-prompt checks (all seeded)."""

    n_samples: int = 8
    steps: int = 50
    t_small: int = 10
    n_dirs: int = 64
    wen_n: int = 4
    wen_steps: int = 1
    fpr: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for name in ("n_samples", "steps", "n_dirs", "wen_n", "wen_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_dirs < 2:
            raise ValueError(f"n_dirs must be >= 2, got {self.n_dirs}")
        if not 0 < self.fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr}")


@dataclass
class CheckResult:
    """One check of one prompt."""

    prompt: str
    check: str
    statistic: float
    spread: float
    n_samples: int
    cost_evals: int
    seconds: float


def load_target(spec: str, device: str = "auto"):
    """Any target spec: ``diffusers:``, ``diffusers-uncond:``, ``gmm:``, ``memorizer:``."""
    if spec.startswith(("diffusers:", "diffusers-uncond:")):
        from models.score.targets.hf_diffusers import load_any_target

        return load_any_target(spec, device=device)
    from models.score.targets.closed_form import load_target as load_closed_form

    return load_closed_form(spec)


class PromptConditioner:
    """Prompt text -> the target's condition; ``null`` is the unconditional one."""

    def __init__(self, target, spec: str):
        self.target = target
        self.mapping: dict[str, int] = {}
        if not hasattr(target, "encode_prompts"):
            path = spec.split(":", 1)[1] + ".prompts.json"
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    self.mapping = {str(k): int(v) for k, v in json.load(f).items()}

    null = None  # the empty prompt (diffusers) / the unconditional union (closed-form)

    def __call__(self, prompt: str):
        """A prompt string for text-to-image targets (they encode and cache it), a label or None otherwise."""
        if hasattr(self.target, "encode_prompts"):
            return prompt
        return self.mapping.get(prompt)


def _rng(cfg: ScoreConfig, prompt: str, check: str) -> np.random.Generator:
    """A generator seeded by (seed, prompt, check): results do not depend on batching or order."""
    import zlib

    return np.random.default_rng([cfg.seed, zlib.crc32(prompt.encode("utf-8")), zlib.crc32(check.encode())])


def plaplace_check(target, cond, prompt: str, cfg: ScoreConfig) -> CheckResult:
    """p-Laplace (p = 1 flux, noise form) around ``n_samples`` generations of the prompt."""
    from models.score.targets.closed_form import ddim_sample
    from models.score.plaplace import noise_cosine_statistic

    started = time.monotonic()
    rng = _rng(cfg, prompt, "plaplace")
    x0 = ddim_sample(target, cfg.n_samples, target.dim, cfg.steps, rng, cond=cond)
    mean, _ = noise_cosine_statistic(target, x0, cfg.t_small, cfg.n_dirs, rng, cond=cond)
    evals = cfg.n_samples * (cfg.steps + 1) + cfg.n_samples * cfg.n_dirs
    return CheckResult(prompt, "plaplace", float(np.mean(mean)), float(np.std(mean)), cfg.n_samples, evals,
                       time.monotonic() - started)


def plaplace_at_points(target, cond, prompt: str, x0: np.ndarray, cfg: ScoreConfig) -> CheckResult:
    """The same statistic around given points (the training images of the prompt's duplicate group)."""
    from models.score.plaplace import noise_cosine_statistic

    started = time.monotonic()
    mean, _ = noise_cosine_statistic(target, x0, cfg.t_small, cfg.n_dirs, _rng(cfg, prompt, "plaplace-train"), cond=cond)
    return CheckResult(prompt, "plaplace-train", float(np.mean(mean)), float(np.std(mean)), len(x0),
                       len(x0) * cfg.n_dirs, time.monotonic() - started)


def wen_check(target, cond, null, prompt: str, cfg: ScoreConfig) -> CheckResult:
    """Wen et al. noise-difference magnitude over the first ``wen_steps`` steps."""
    from models.score.wen import wen_metric

    started = time.monotonic()
    if cond is None:  # the prompt's condition is the null condition itself: eps_c - eps_null = 0 exactly
        return CheckResult(prompt, "wen", 0.0, 0.0, cfg.wen_n, 0, time.monotonic() - started)
    result = wen_metric(target, [cond], null, n=cfg.wen_n, steps_used=cfg.wen_steps, rng=_rng(cfg, prompt, "wen"),
                        num_inference_steps=cfg.steps)
    return CheckResult(prompt, "wen", float(result.values[0]), float(np.std(result.per_sample[0])), cfg.wen_n,
                       int(result.evals), time.monotonic() - started)


def calibrate(reference: dict[str, list[float]], fpr: float) -> dict[str, float]:
    """Per check: the ``1 - fpr`` quantile of the reference prompts' statistics (NaN without references).

    Uses the "higher" quantile method, so at most ``fpr`` of the references
    exceed the threshold.
    """
    return {check: float(np.quantile(np.asarray(v, float), 1 - fpr, method="higher")) if len(v) else float("nan")
            for check, v in reference.items()}
