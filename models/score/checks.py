"""Per-item memorization checks and their calibrated decisions (plain Python).

An *item* (:class:`ScoreItem`) is a flagged prompt, a reference prompt or, for
targets no prompt conditions, a duplicate group or a reference training image.
Targets and conditions: :mod:`models.score.conditioning`.

Checks (each returns a :class:`CheckResult`):

* ``plaplace``: generate ``n_samples`` with the prompt (seeded DDIM) and
  measure, around each, the p = 1 flux of the learned score at ``t_small`` in its
  noise form E[cos(eps_hat(x_t, t, c), eps)] (Brokman et al., arXiv:2505.08246:
  memorized samples are sharp maxima, the score points inward, the statistic
  -> 1). The item's statistic is the max over samples (``plaplace_aggregate``;
  the sweep behind it is in :class:`ScoreConfig`); ``spread`` their std.
  ``plaplace-train``: the same statistic around given training images
  (:func:`plaplace_at_points`).
* ``wen``: Wen et al.'s text-conditional noise-difference magnitude averaged over
  the early DDIM steps down to timestep ``wen_until`` (arXiv:2407.21720, Sec. 3.1;
  the first step alone is their cheapest form), a cheap first pass.
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

from models.closed_sets import choice


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


class Aggregate(str, enum.Enum):
    """How an item's per-point p-Laplace values (its generations or its training images) become one statistic."""

    MEAN = "mean"
    MAX = "max"

    @classmethod
    def parse(cls, value: "str | Aggregate") -> "Aggregate":
        return choice(cls, value, "plaplace_aggregate")

    def apply(self, values: np.ndarray) -> float:
        return float(np.max(values) if self is Aggregate.MAX else np.mean(values))


HORIZON = 1000  # the training horizon t_small is written on (DDPM, SD and the models of models/score/training)


@dataclass(frozen=True)
class ScoreConfig:
    """Sampling sizes and statistics of the per-item checks (all seeded).

    ``t_small`` and ``plaplace_aggregate`` were chosen from a sweep (benchmarks/bench_memorization.py: 16 px
    text-conditional and unconditional DDPMs on the planted MNIST set, 17 of 108 prompts and 6 of 78 groups
    verifiably memorized by Carlini et al.'s criterion): t in {10, 50, 100, 200, 400} x p in {1, 2} x
    {mean, max} over the item's points, chosen by the mean AUC over the three places the statistic runs
    (generated samples, a prompt's training images, an unconditional group's images) on one seeded half of
    the items and reported on the other half. Chosen: p = 1 (the cosine form), t = 200, the max. Report-half
    AUC 0.983 / 1.0 / 0.991 against 0.48 / 0.80 / 0.79 (whole set) for the former t = 10 with the mean. Why:
    at t = 10 the noise (sqrt(1 - abar) = 0.045 per pixel) is denoised almost perfectly near any digit, so
    the statistic is ~1 everywhere it is on the data manifold; at t = 200 (0.44 per pixel) only an isolated
    training image (a memorized copy) still has its whole noise predicted. Only some of a memorized
    prompt's CFG generations are copies (median 10 of 16), so the mean over generations dilutes the copies
    with the rest (AUC 0.48 at t = 200) while the max keeps them (0.985).

    ``t_small`` is a timestep of a :data:`HORIZON`-step schedule; a target trained with T steps is
    evaluated at the same fraction of its horizon (:func:`statistic_timestep`).

    ``wen_until``: Wen's magnitude is averaged over the DDIM steps at timesteps >= 600 (20 of the default 50
    steps; :func:`wen_steps_used`), chosen from the sweep k in {1, 3, 5, 10} of 25 steps on the select half
    (k = 10, t 960 -> 600) of both caption designs. The first step alone: AUC 0.59 (labelled ordinary
    captions) / 0.94 (unlabelled); down to t = 600: 0.85 / 0.99 (at 50 steps, k = 20: 0.84 / 0.99). Early
    in sampling the text-conditional noise is sqrt(abar_t / (1 - abar_t)) * |x0_hat(c) - x0_hat(null)|,
    ~0.01 x the distance between the prompt's and the null mean image at t = 980: a caption naming the
    digit moves that mean as far as a memorized prompt does; only later, when the trajectory has committed,
    does a memorized prompt keep its larger difference. Later windows alone do not separate better (labelled:
    steps 6-15 of 25 AUC 0.88, 21-25 0.86, all 25 0.82; ``benchmarks/bench_memorization.py`` ``WEN_WINDOWS``).
    """

    n_samples: int = 8
    steps: int = 50
    t_small: int = 200
    plaplace_aggregate: str = Aggregate.MAX.value
    n_dirs: int = 64
    wen_n: int = 4
    wen_until: int = 600
    jeon_n: int = 4
    guidance_scale: float = 7.5
    fpr: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if not np.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be finite and >= 0, got {self.guidance_scale}")
        if isinstance(self.t_small, bool) or not isinstance(self.t_small, (int, np.integer)) \
                or not 1 <= self.t_small < HORIZON:
            raise ValueError(f"t_small must be an integer in [1, {HORIZON - 1}] (a timestep of a {HORIZON}-step "
                             f"schedule), got {self.t_small!r}")
        object.__setattr__(self, "plaplace_aggregate", Aggregate.parse(self.plaplace_aggregate).value)
        if isinstance(self.wen_until, bool) or not isinstance(self.wen_until, (int, np.integer)) \
                or not 0 <= self.wen_until < HORIZON:
            raise ValueError(f"wen_until must be an integer timestep in [0, {HORIZON - 1}], got {self.wen_until!r}")
        for name in ("n_samples", "steps", "n_dirs", "wen_n", "jeon_n"):
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


def statistic_timestep(cfg: ScoreConfig, target) -> int:
    """The timestep of the p-Laplace statistic on ``target``'s schedule: ``t_small`` for a :data:`HORIZON`-step
    target, else the same fraction of its T steps, round(t_small * T / HORIZON), kept in [1, T - 1]."""
    T = int(target.schedule.T)
    return int(min(T - 1, max(1, round(cfg.t_small * T / HORIZON))))


def wen_steps_used(cfg: ScoreConfig, target) -> int:
    """How many of the ``cfg.steps`` DDIM steps Wen's metric averages: those at timesteps >= ``wen_until`` (on
    :data:`HORIZON`, scaled to the target's T), at least 1 (Wen's first-step detector)."""
    from models.score.wen import ddim_timesteps

    T = int(target.schedule.T)
    until = cfg.wen_until * T / HORIZON
    return max(1, int(np.sum(ddim_timesteps(target, cfg.steps) >= until)))


def plaplace_at_points(target, cond, prompt: str | None, x0: np.ndarray, cfg: ScoreConfig,
                       check: str = "plaplace-train") -> CheckResult:
    """E[cos(eps_hat(x_t, t, c), eps)] around given points x0 (B, d) (by default the training images of the
    item's duplicate groups; t = :func:`statistic_timestep`), aggregated over points by
    ``cfg.plaplace_aggregate`` (see :class:`ScoreConfig` for why the max); ``spread`` their std.
    Cost: B * n_dirs evaluations."""
    from models.score.plaplace import noise_cosine_statistic

    started = time.monotonic()
    rng = item_rng(cfg, prompt, check + ":directions")  # never the sampler's stream (same seed, same check)
    mean, _ = noise_cosine_statistic(target, x0, statistic_timestep(cfg, target), cfg.n_dirs, rng, cond=cond)
    return CheckResult(prompt, check, Aggregate.parse(cfg.plaplace_aggregate).apply(mean), float(np.std(mean)),
                       len(x0), len(x0) * cfg.n_dirs, time.monotonic() - started)


def wen_check(target, cond, null, prompt: str | None, cfg: ScoreConfig) -> CheckResult:
    """Wen et al. noise-difference magnitude (arXiv:2407.21720, Sec. 3.1) averaged over the DDIM steps at
    timesteps >= ``wen_until`` (scaled to the target's horizon as :func:`statistic_timestep`), at least the first."""
    from models.score.wen import wen_metric

    started = time.monotonic()
    if cond is None:  # the prompt's condition is the null condition itself: eps_c - eps_null = 0 exactly
        return CheckResult(prompt, "wen", 0.0, 0.0, cfg.wen_n, 0, time.monotonic() - started)
    result = wen_metric(target, [cond], null, n=cfg.wen_n, steps_used=wen_steps_used(cfg, target),
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
