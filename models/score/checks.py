"""Per-item memorization checks and their calibrated decisions (plain Python).

An *item* (:class:`ScoreItem`) is a flagged prompt, a reference prompt or, for
targets no prompt conditions, a duplicate group or a reference training image.
Targets and conditions: :mod:`models.score.conditioning`.

Checks (each returns a :class:`CheckResult`):

* ``plaplace``: generate ``n_samples`` with the prompt (seeded DDIM) and
  measure, around each, the p = 1 flux of the learned score at small t in its
  noise form E[cos(eps_hat(x_t, t, c), eps)] (Brokman et al., arXiv:2505.08246:
  memorized samples are sharp maxima, the score points inward, the statistic
  -> 1). The item's statistic is the mean over samples; ``spread`` their std.
  ``plaplace-train``: the same statistic around given training images
  (:func:`plaplace_at_points`).
* ``wen``: Wen et al.'s text-conditional noise-difference magnitude at the
  first DDIM step (arXiv:2407.21720, Sec. 3.1), a cheap first pass.
* ``jeon``: Jeon et al.'s sharpness ||H^Delta s^Delta||^2 at x_T (arXiv:2412.04140,
  Sec. 4), one forward-mode JVP per generation.

Generations of a conditional target are sampled with classifier-free
guidance at ``guidance_scale`` (:class:`~models.score.conditioning.GuidedTarget`),
as text-to-image models are sampled; the p-Laplace statistic then uses the
plain conditional prediction at small t, as the paper's hippo experiment does.
Wen, Jeon and the generated-sample p-Laplace compare or need a condition, so
they apply only to prompts a target can be conditioned on; for
unconditional targets the stage scores groups at their training images
(``plaplace-train``) and by SIDE extractions.

Decisions are calibrated, not magic constants: :func:`calibrate` sets each
check's threshold at the ``1 - fpr`` quantile of the same statistic on
reference items (ordinary captions or training images), so "memorized" means
"more extreme than all but ``fpr`` of ordinary items".
"""
from __future__ import annotations

import enum
import time
import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np


class Check(str, enum.Enum):
    """The ``--checks`` names."""

    PLAPLACE = "plaplace"
    SIDE = "side"
    WEN = "wen"
    JEON = "jeon"

    @classmethod
    def parse(cls, text: str | tuple | list) -> tuple["Check", ...]:
        """``"plaplace,wen"`` (or a sequence of names) -> checks; an unknown name lists the allowed ones."""
        names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if str(n).strip()]
        allowed = [c.value for c in cls]
        bad = [n for n in names if n not in allowed]
        if bad:
            raise ValueError(f"--checks {bad} unknown; allowed {allowed}")
        return tuple(cls(n) for n in names)


CHECKS = tuple(c.value for c in Check)


class Role(str, enum.Enum):
    """Whether an item is scored (flagged) or calibrates the thresholds (reference)."""

    FLAGGED = "flagged"
    REFERENCE = "reference"


@dataclass(frozen=True)
class ScoreConfig:
    """Sampling sizes of the per-item checks (all seeded)."""

    n_samples: int = 8
    steps: int = 50
    t_small: int = 10
    n_dirs: int = 64
    wen_n: int = 4
    wen_steps: int = 1
    jeon_n: int = 4
    guidance_scale: float = 7.5
    fpr: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if not np.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        for name in ("n_samples", "steps", "n_dirs", "wen_n", "wen_steps", "jeon_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_dirs < 2:
            raise ValueError(f"n_dirs must be >= 2, got {self.n_dirs}")
        if not 0 < self.fpr < 1:
            raise ValueError(f"fpr must be in (0, 1), got {self.fpr}")


class ScoreItem(NamedTuple):
    """One thing to score: a prompt (with the duplicate groups it names), a group or a training image.

    ``keys`` are the training images the item is checked at (its groups' members, or one ordinary
    image for a reference item); ``image_only`` items get only the checks at those images.
    """

    role: str                       # Role value
    prompt: str | None              # the condition's text (None: unconditional)
    group_ids: tuple = ()           # duplicate groups the item stands for
    keys: tuple = ()                # training keys to check the item at
    image_only: bool = False


@dataclass
class CheckResult:
    """One check of one item."""

    prompt: str | None
    check: str
    statistic: float
    spread: float
    n_samples: int
    cost_evals: int
    seconds: float


class ScoreRow(NamedTuple):
    """A check's result for an item, before calibration (the columns of ``schemas.PROMPT_SCORES`` less the decision)."""

    role: str
    prompt: str | None
    check: str
    statistic: float
    spread: float
    n_samples: int
    seed: int
    cost_evals: int
    seconds: float
    group_ids: tuple = ()

    @classmethod
    def of(cls, item: ScoreItem, result: CheckResult, seed: int) -> "ScoreRow":
        return cls(item.role, item.prompt, result.check, result.statistic, result.spread, result.n_samples, seed,
                   result.cost_evals, result.seconds, tuple(item.group_ids))


def item_rng(cfg: ScoreConfig, prompt: str | None, check: str) -> np.random.Generator:
    """A generator seeded by (seed, prompt, check): results do not depend on batching or order."""
    text = "" if prompt is None else prompt
    return np.random.default_rng([cfg.seed, zlib.crc32(text.encode("utf-8")), zlib.crc32(check.encode())])


def plaplace_samples(target, cond, prompt: str | None, cfg: ScoreConfig, null=None) -> tuple[np.ndarray, int]:
    """``n_samples`` seeded DDIM generations of the prompt with classifier-free guidance.

    Returns:
        (x0 (n_samples, d) float64, model evaluations: 2 per row and step, 1 without a condition).
    """
    from models.score.conditioning import GuidedTarget
    from models.score.targets.closed_form import ddim_sample

    guided = GuidedTarget(target, cfg.guidance_scale, null)
    x0 = ddim_sample(guided, cfg.n_samples, target.dim, cfg.steps, item_rng(cfg, prompt, "plaplace"), cond=cond)
    return x0, guided.evals


def plaplace_check(target, cond, prompt: str | None, cfg: ScoreConfig, null=None) -> CheckResult:
    """p-Laplace (p = 1 flux, noise form) around ``n_samples`` CFG generations of the prompt.

    Cost: the guided sampler's evaluations (:func:`plaplace_samples`) + n_samples * n_dirs for the statistic.
    """
    started = time.monotonic()
    x0, evals = plaplace_samples(target, cond, prompt, cfg, null)
    at = plaplace_at_points(target, cond, prompt, x0, cfg, check="plaplace")
    return CheckResult(prompt, "plaplace", at.statistic, at.spread, cfg.n_samples, evals + at.cost_evals,
                       time.monotonic() - started)


def plaplace_at_points(target, cond, prompt: str | None, x0: np.ndarray, cfg: ScoreConfig,
                       check: str = "plaplace-train") -> CheckResult:
    """E[cos(eps_hat(x_t, t_small, c), eps)] around given points x0 (B, d) (by default the training images of
    the item's duplicate groups), the mean over points; ``spread`` their std. Cost: B * n_dirs evaluations."""
    from models.score.plaplace import noise_cosine_statistic

    started = time.monotonic()
    rng = item_rng(cfg, prompt, check + ":directions")  # never the sampler's stream (same seed, same check)
    mean, _ = noise_cosine_statistic(target, x0, cfg.t_small, cfg.n_dirs, rng, cond=cond)
    return CheckResult(prompt, check, float(np.mean(mean)), float(np.std(mean)), len(x0),
                       len(x0) * cfg.n_dirs, time.monotonic() - started)


def wen_check(target, cond, null, prompt: str | None, cfg: ScoreConfig) -> CheckResult:
    """Wen et al. noise-difference magnitude over the first ``wen_steps`` steps (arXiv:2407.21720)."""
    from models.score.wen import wen_metric

    started = time.monotonic()
    if cond is None:  # the prompt's condition is the null condition itself: eps_c - eps_null = 0 exactly
        return CheckResult(prompt, "wen", 0.0, 0.0, cfg.wen_n, 0, time.monotonic() - started)
    result = wen_metric(target, [cond], null, n=cfg.wen_n, steps_used=cfg.wen_steps,
                        rng=item_rng(cfg, prompt, "wen"), num_inference_steps=cfg.steps,
                        guidance_scale=cfg.guidance_scale)  # between measured steps x_t follows the CFG sampler
    return CheckResult(prompt, "wen", float(result.values[0]), float(np.std(result.per_sample[0])), cfg.wen_n,
                       int(result.evals), time.monotonic() - started)


def jeon_check(target, cond, null, prompt: str | None, cfg: ScoreConfig) -> CheckResult:
    """Jeon et al.'s sharpness at the first DDIM timestep over ``jeon_n`` draws of x_T (arXiv:2412.04140)."""
    from models.score.jeon import jeon_metric

    started = time.monotonic()
    if cond is None:  # s(x, c) - s(x, null) = 0 exactly
        return CheckResult(prompt, "jeon", 0.0, 0.0, cfg.jeon_n, 0, time.monotonic() - started)
    result = jeon_metric(target, [cond], null, n=cfg.jeon_n, rng=item_rng(cfg, prompt, "jeon"),
                         num_inference_steps=cfg.steps)
    return CheckResult(prompt, "jeon", float(result.values[0]), float(np.std(result.per_sample[0])), cfg.jeon_n,
                       int(result.evals + result.jvp_evals), time.monotonic() - started)


def calibrate(reference: dict[str, list[float]], fpr: float) -> dict[str, float]:
    """Per check: the ``1 - fpr`` quantile of the reference items' statistics (NaN without references).

    Uses the "higher" quantile method, so at most ``fpr`` of the references
    exceed the threshold.
    """
    return {check: float(np.quantile(np.asarray(v, float), 1 - fpr, method="higher")) if len(v) else float("nan")
            for check, v in reference.items()}


def decide(rows: list[ScoreRow], fpr: float) -> list[dict]:
    """Thresholds from the reference rows, a decision for every row (``statistic > threshold``).

    Returns the rows as dicts with ``threshold`` and ``decision`` added, flagged
    first, then by check and decreasing statistic.
    """
    reference: dict[str, list[float]] = {}
    for r in rows:
        reference.setdefault(r.check, [])
        if r.role == Role.REFERENCE.value:
            reference[r.check].append(r.statistic)
    thresholds = calibrate(reference, fpr)
    out = []
    for r in sorted(rows, key=lambda r: (r.role != Role.FLAGGED.value, r.check, -r.statistic, r.prompt or "")):
        t = thresholds[r.check]
        out.append(r._asdict() | {"group_ids": list(r.group_ids), "threshold": t,
                                  "decision": bool(np.isfinite(t) and r.statistic > t)})
    return out
