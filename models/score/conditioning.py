"""Target specs, prompt conditions and target wrappers of the score stage (plain Python).

A *target* has ``schedule`` (a VPSchedule), ``dim`` and ``eps(x_t (B, d), t, cond)``
(:mod:`models.score.targets.closed_form`, :mod:`models.score.targets.hf_diffusers`).

* :class:`TargetKind` and :func:`parse_target_spec`: the accepted ``--target``
  forms; every error lists all of them.
* :class:`PromptConditioner`: prompt text -> the target's condition.
  Text-to-image targets take the prompt itself (they encode and cache it);
  closed-form targets read ``FILE.prompts.json`` (prompt -> class label) beside
  the target file (unknown prompts are unconditional). ``conditional`` is
  False for a target no prompt can condition (``diffusers-uncond:``, a
  closed-form target without a prompt map): the stage then scores duplicate
  groups, not prompts.
* :class:`FixedCondition`: a target whose every ``eps`` uses one condition
  (SIDE conditioned on a flagged prompt).
* :class:`GuidedTarget`: classifier-free guidance
  eps = eps(x, null) + w (eps(x, c) - eps(x, null)) (Ho & Salimans, arXiv:2207.12598, Eq. 6),
  the sampler of text-to-image models; w = 1 is plain conditional sampling.
"""
from __future__ import annotations

import enum
from typing import NamedTuple

import numpy as np

from models.storage import layout


class TargetKind(enum.Enum):
    """The ``--target`` prefixes; the value is the prefix, the description names what follows it."""

    DIFFUSERS = "diffusers"
    DIFFUSERS_UNCOND = "diffusers-uncond"
    GMM = "gmm"
    MEMORIZER = "memorizer"

    @property
    def form(self) -> str:
        return {
            TargetKind.DIFFUSERS: "diffusers:PATH (a text-to-image diffusers folder: Stable Diffusion style with a VAE, "
                                  "or pixel space without one)",
            TargetKind.DIFFUSERS_UNCOND: "diffusers-uncond:PATH (an unconditional UNet2DModel + scheduler folder)",
            TargetKind.GMM: "gmm:FILE.npz (a closed-form Gaussian mixture)",
            TargetKind.MEMORIZER: "memorizer:FILE.npz (the exact empirical score of a training set)",
        }[self]


ACCEPTED_TARGETS = "; ".join(k.form for k in TargetKind)


class TargetSpec(NamedTuple):
    kind: TargetKind
    path: str


def parse_target_spec(spec: str) -> TargetSpec:
    """``"KIND:PATH"`` -> :class:`TargetSpec`.

    Raises:
        ValueError: no ``:``, an unknown kind or an empty path; the message lists every accepted form.
    """
    kind, sep, path = str(spec).partition(":")
    kinds = {k.value: k for k in TargetKind}
    if not sep or kind.strip().lower() not in kinds or not path.strip():
        raise ValueError(f"--target {spec!r} is not a target; accepted forms: {ACCEPTED_TARGETS}")
    return TargetSpec(kinds[kind.strip().lower()], path)


def load_target(spec: str, device: str = "auto"):
    """Load any accepted target spec (see :func:`parse_target_spec`); nothing is downloaded.

    Raises:
        ValueError: a spec that is not one of the accepted forms (all listed).
        FileNotFoundError: a missing or incomplete model folder or file (the loader names what is missing).
    """
    from models.score.targets.loading import load_target as load_any_target

    parsed = parse_target_spec(spec)
    if parsed.kind in (TargetKind.DIFFUSERS, TargetKind.DIFFUSERS_UNCOND):
        return load_any_target(f"{parsed.kind.value}:{parsed.path}", device=device)
    return load_any_target(f"{parsed.kind.value}:{parsed.path}")


class PromptConditioner:
    """Prompt text -> the target's condition; ``null`` (None) is the unconditional one."""

    null = None  # the empty prompt (diffusers) / the unconditional union (closed-form)

    def __init__(self, target, spec: str):
        self.target = target
        self.mapping: dict[str, int] = {}
        if not hasattr(target, "encode_prompts"):
            path = parse_target_spec(spec).path + ".prompts.json"
            if layout.exists(path):
                self.mapping = {str(k): int(v) for k, v in layout.read_json(path).items()}

    @property
    def conditional(self) -> bool:
        """True when prompts condition the target (text-to-image, or a closed form with a prompt map)."""
        return hasattr(self.target, "encode_prompts") or bool(self.mapping)

    def __call__(self, prompt: str | None):
        """A prompt string for text-to-image targets, a label or None otherwise (None: unconditional)."""
        if prompt is None:
            return None
        if hasattr(self.target, "encode_prompts"):
            return prompt
        return self.mapping.get(prompt)


class FixedCondition:
    """A target whose every ``eps`` call uses one condition (SIDE conditioned on a flagged prompt)."""

    def __init__(self, target, cond):
        self.target, self.cond = target, cond
        self.schedule, self.dim = target.schedule, target.dim

    def eps(self, x, t, cond=None):
        return self.target.eps(x, t, self.cond)


class GuidedTarget:
    """Classifier-free guidance as a target: ``eps(x, t, c) = e_null + w (e_c - e_null)``.

    Two model evaluations per row (one for c = null: one); ``evals`` counts rows
    of the wrapped target's ``eps``. ``w`` = ``guidance_scale``.
    """

    def __init__(self, target, guidance_scale: float, null=None):
        self.target, self.w, self.null = target, float(guidance_scale), null
        self.schedule, self.dim = target.schedule, target.dim
        self.evals = 0

    def eps(self, x, t, cond=None):
        e_c = np.asarray(self.target.eps(x, t, cond), dtype=np.float64)
        self.evals += int(np.shape(x)[0])
        if cond is None or self.w == 1.0:
            return e_c
        e_u = np.asarray(self.target.eps(x, t, self.null), dtype=np.float64)
        self.evals += int(np.shape(x)[0])
        return e_u + self.w * (e_c - e_u)
