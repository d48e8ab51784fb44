"""Closed-form diffusion "targets": noise predictors with an exact score (the public names in one place).

Every target implements the small interface the memorization scorers need
(an injected score function, as the p-Laplace paper's estimators take,
arXiv:2505.08246):

* ``target.schedule``: a :class:`VPSchedule` (``alphas_cumprod``, ``T``);
* ``target.eps(x_t, t, cond=None) -> (B, d)``: the predicted noise ε̂(x_t, t, c);
* ``target.score(x_t, t, cond=None) -> (B, d)``: ∇ log p_t(x_t) = −ε̂/√(1−ᾱ_t);
* ``target.score_torch(x_t, t, cond=None)``: the same score on torch tensors,
  differentiable (reverse and forward mode, e.g. :func:`torch.func.jvp`).

Where things live:

* :mod:`models.score.targets.schedule`: :class:`VPSchedule` (integer timesteps
  0..T-1 as in DDPM/diffusers; ``t=None`` means ᾱ = 1, the clean density);
* :mod:`models.score.targets.mixtures`: :class:`GMMTarget`, :class:`MemorizerTarget`,
  :func:`triangle_gmm`;
* :mod:`models.score.targets.sampling`: :func:`ddim_sample` (η = 0, optional
  classifier guidance);
* :mod:`models.score.targets.npz_files`: ``gmm:FILE`` / ``memorizer:FILE`` files.

Every target kind (closed-form and diffusers folders) loads through
:func:`models.score.targets.loading.load_target`.
"""
from __future__ import annotations

from models.score.targets.mixtures import GMMTarget, MemorizerTarget, triangle_gmm
from models.score.targets.npz_files import load_closed_form, save_gmm, save_memorizer, save_target
from models.score.targets.sampling import ddim_sample
from models.score.targets.schedule import VPSchedule

load_target = load_closed_form

__all__ = [
    "VPSchedule",
    "GMMTarget",
    "MemorizerTarget",
    "triangle_gmm",
    "ddim_sample",
    "load_closed_form",
    "load_target",
    "save_gmm",
    "save_memorizer",
    "save_target",
]
