"""Shared machinery of the diffusers targets: schedule, DDIM loop, eps/score in the closed-form interface.

The targets expose the same small interface as the closed-form targets of
:mod:`models.score.targets.closed_form`, so every scorer written against it
(:func:`models.score.plaplace.noise_cosine_statistic`,
:func:`models.score.targets.sampling.ddim_sample`, :mod:`models.score.wen`) runs
unchanged on a real model:

* ``target.schedule``: a :class:`~models.score.targets.schedule.VPSchedule` built
  from the folder's scheduler betas;
* ``target.dim``: d = C*h*w of the flattened sample (latent or pixels);
* ``target.eps(x_t (B, d), t, cond) -> (B, d)``: eps_hat(x_t, t, c), batched;
  numpy in -> numpy out (float32 stays float32, anything else float64), torch
  in -> torch out (input dtype/device), no autograd;
* ``target.eps_torch`` / ``target.score_torch``: differentiable versions
  (reverse and forward mode; s = -eps_hat/sqrt(1 - abar_t)), e.g. for the
  Jeon JVP in :mod:`models.score.wen`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
import torch

from models.score.targets.diffusers_io import (GeneratorArg, TimeArg, import_diffusers, make_generator,
                                               schedule_from_scheduler_config)
from models.score.targets.schedule import VPSchedule

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass
class GenerationResult:
    """Output of ``generate``.

    Attributes:
        latents: (N, d) float32 final DDIM latents (SD: scaled VAE latents;
            unconditional: pixels in [-1, 1]), N = n_prompts · n_per_prompt.
        images: (N, H, W, 3) uint8 RGB decoded images (a grayscale model's channel repeated, so
            every PNG / embedder path gets RGB), or None when not requested.
        prompt_index: (N,) int64 index of each row's prompt (rows are grouped
            by prompt: prompt 0's samples first).
        timesteps: (steps,) int64 DDIM timesteps used.
        evals: per-sample UNet evaluations spent (2 per step under CFG).
    """

    latents: np.ndarray
    images: Optional[np.ndarray]
    prompt_index: np.ndarray
    timesteps: np.ndarray
    evals: int


class _DiffusersTarget:
    """Common code: schedule, timesteps, prediction-type conversion, batching, counters.

    Subclasses set ``unet``, ``schedule``, ``scheduler_config``, ``device``,
    ``dtype``, ``sample_shape`` (C, h, w), ``batch_size`` and implement
    ``_model_output(x (b,C,h,w), t (b,) long, cond_rows)``.
    """

    unet: Any
    schedule: VPSchedule
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    sample_shape: tuple[int, int, int]
    batch_size: int
    prediction_type: str

    def _set_scheduler(self, scheduler_config: dict) -> None:
        """``scheduler_config``, ``schedule`` (its betas) and a checked ``prediction_type``."""
        self.scheduler_config = dict(scheduler_config)
        self.schedule = schedule_from_scheduler_config(self.scheduler_config, "scheduler_config")
        self.prediction_type = str(self.scheduler_config.get("prediction_type", "epsilon"))
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config; "
                             f"expected one of {list(PREDICTION_TYPES)}")

    def _init_counters(self) -> None:
        self.evals = 0  # per-sample UNet evaluations (rows), forward or JVP
        self.unet_calls = 0  # batched UNet forward calls

    # ----- shapes and time ------------------------------------------------- #
    @property
    def dim(self) -> int:
        """d = C·h·w of a flattened sample."""
        c, h, w = self.sample_shape
        return int(c * h * w)

    def _check_x(self, x: Any) -> Union[np.ndarray, torch.Tensor]:
        if isinstance(x, torch.Tensor):
            if x.ndim != 2 or x.shape[1] != self.dim or not x.is_floating_point():
                raise ValueError(f"x must be a float tensor of shape (B, {self.dim}), got {x.dtype} {tuple(x.shape)}")
            return x
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}) (flattened {self.sample_shape}), got {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"x must be a real array, got dtype {arr.dtype}")
        return arr

    def _t_rows(self, t: TimeArg, B: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps (B,) int64, ᾱ (B,) float64) for an int or (B,) int array t."""
        if t is None:
            raise ValueError(f"{type(self).__name__} needs an integer timestep t in [0, {self.schedule.T - 1}], got None")
        tt = np.asarray(t)
        if tt.ndim == 0:
            tt = np.full(B, tt)
        elif tt.shape != (B,):
            raise ValueError(f"t must be an int or an int array of shape ({B},), got shape {tt.shape}")
        abar = np.asarray(self.schedule.abar(tt), dtype=np.float64).reshape(B)
        return tt.astype(np.int64), abar

    def ddim_timesteps(self, steps: int) -> np.ndarray:
        """Descending DDIM timesteps of diffusers' ``DDIMScheduler`` for this folder's
        scheduler config (``timestep_spacing``, ``steps_offset``; SD 1.x with 50
        steps: 981, 961, …, 1), int64 (steps,)."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.schedule.T:
            raise ValueError(f"steps must be an integer in [1, {self.schedule.T}], got {steps!r}")
        sched = self._ddim_scheduler()
        sched.set_timesteps(int(steps))
        return sched.timesteps.detach().cpu().numpy().astype(np.int64)

    def _ddim_scheduler(self):
        diffusers = import_diffusers()
        # ε̂ is passed to step(), so the scheduler must treat model outputs as ε.
        return diffusers.DDIMScheduler.from_config(self.scheduler_config, prediction_type="epsilon")

    # ----- core evaluation ------------------------------------------------- #
    def _model_output(self, x: torch.Tensor, t: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        """Raw UNet output (b, C, h, w) for model-dtype input x and long timesteps t (b,)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _model_output")

    def _resolve_cond(self, cond: Any, B: int) -> Any:
        """Per-row condition object accepted by :meth:`_slice_cond` / :meth:`_model_output`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _resolve_cond")

    def _slice_cond(self, cond_rows: Any, lo: int, hi: int) -> Any:
        return None if cond_rows is None else cond_rows[lo:hi]

    def _eps_core(self, x: torch.Tensor, tt: np.ndarray, abar: np.ndarray, cond_rows: Any) -> torch.Tensor:
        """ε̂ for x (b, d) (any float dtype/device, differentiable); returns (b, d) float32 on self.device."""
        b = x.shape[0]
        xs = x.to(device=self.device, dtype=torch.float32)
        t_dev = torch.as_tensor(tt, dtype=torch.long, device=self.device)
        out = self._model_output(xs.reshape(b, *self.sample_shape).to(self.dtype), t_dev, cond_rows)
        out = out.reshape(b, self.dim).float()
        self.evals += b
        self.unet_calls += 1
        if self.prediction_type == "epsilon":
            return out
        a = torch.as_tensor(abar, dtype=torch.float32, device=self.device)[:, None]
        if self.prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x₀  ⇒  ε = √ᾱ v + √(1−ᾱ) x_t
            return torch.sqrt(a) * out + torch.sqrt(1.0 - a) * xs
        # "sample": the model predicts x₀  ⇒  ε = (x_t − √ᾱ x̂₀)/√(1−ᾱ)
        return (xs - torch.sqrt(a) * out) / torch.sqrt(1.0 - a)

    def _eps_batched(self, x: torch.Tensor, t: TimeArg, cond: Any) -> torch.Tensor:
        B = x.shape[0]
        tt, abar = self._t_rows(t, B)
        cond_rows = self._resolve_cond(cond, B)
        outs = []
        for lo in range(0, B, self.batch_size):
            hi = min(B, lo + self.batch_size)
            outs.append(self._eps_core(x[lo:hi], tt[lo:hi], abar[lo:hi], self._slice_cond(cond_rows, lo, hi)))
        if not outs:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        return torch.cat(outs, dim=0)

    def eps(self, x_t: Any, t: TimeArg, cond: Any = None) -> Union[np.ndarray, torch.Tensor]:
        """Predicted noise ε̂(x_t, t, c), batched in chunks of ``batch_size`` rows.

        Args:
            x_t: (B, d) flattened noisy samples, numpy or torch.
            t: integer timestep in [0, T−1] or an int array (B,).
            cond: see the module docstring (text-to-image) or
                :class:`DiffusersUnconditionalTarget`.

        Returns:
            (B, d): numpy (float32 for float32 input, else float64) for numpy
            input; a torch tensor in the input's dtype/device for torch input.
            No autograd (see :meth:`eps_torch`). Seeding is the caller's job:
            this call is deterministic given its inputs.
        """
        x = self._check_x(x_t)
        with torch.inference_mode():
            if isinstance(x, torch.Tensor):
                return self._eps_batched(x, t, cond).to(dtype=x.dtype, device=x.device)
            out = self._eps_batched(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), t, cond)
            res = out.cpu().numpy()
        return res if x.dtype == np.float32 else res.astype(np.float64)

    def eps_torch(self, x: torch.Tensor, t: TimeArg, cond: Any = None) -> torch.Tensor:
        """Differentiable ε̂(x_t, t, c) for a torch (B, d) tensor; same dtype/device as ``x``.

        Works under :func:`torch.func.jvp` inside :func:`forward_ad_attention`.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"eps_torch needs a torch tensor, got {type(x).__name__}")
        x = self._check_x(x)
        return self._eps_batched(x, t, cond).to(dtype=x.dtype, device=x.device)

    def score_torch(self, x: torch.Tensor, t: TimeArg, cond: Any = None) -> torch.Tensor:
        """Score s(x_t, c) = −ε̂/√(1−ᾱ_t) (Song et al. 2021, arXiv:2011.13456, Eq. 7 with the eps parametrisation), differentiable; (B, d) like ``x``."""
        e = self.eps_torch(x, t, cond)
        _, abar = self._t_rows(t, e.shape[0])
        scale = torch.as_tensor(1.0 / np.sqrt(1.0 - abar), dtype=e.dtype, device=e.device)[:, None]
        return -scale * e

    def score(self, x: np.ndarray, t: TimeArg, cond: Any = None) -> np.ndarray:
        """Numpy score −ε̂/√(1−ᾱ_t), shape (B, d) (for :func:`models.score.plaplace.flux_estimator`)."""
        x = self._check_x(x)
        e = self.eps(x, t, cond)
        _, abar = self._t_rows(t, e.shape[0])
        return (-e / np.sqrt(1.0 - abar)[:, None]).astype(e.dtype, copy=False)

    # ----- DDIM ------------------------------------------------------------ #
    def _ddim_loop(
        self,
        n_rows: int,
        steps: int,
        generator: GeneratorArg,
        eps_fn,
    ) -> tuple[torch.Tensor, np.ndarray, int]:
        """Run deterministic DDIM (η = 0) with diffusers' DDIMScheduler.

        ``eps_fn(x (b,d) float32, t int, lo, hi) -> (b,d) float32`` gives the
        (possibly guided) ε̂ for rows lo:hi. Initial noise is drawn on the CPU
        from ``generator`` (device-independent), then moved to ``self.device``.
        """
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n_rows!r}")
        timesteps = self.ddim_timesteps(steps)
        gen = make_generator(generator)
        sched = self._ddim_scheduler()
        sched.set_timesteps(int(steps))
        noise = torch.randn((n_rows, self.dim), generator=gen, dtype=torch.float32) * float(sched.init_noise_sigma)
        start = self.evals
        out = []
        with torch.inference_mode():
            for lo in range(0, n_rows, self.batch_size):
                hi = min(n_rows, lo + self.batch_size)
                x = noise[lo:hi].to(self.device)
                for t in timesteps:
                    e = eps_fn(x, int(t), lo, hi)
                    x4 = sched.step(e.reshape(hi - lo, *self.sample_shape), int(t),
                                    x.reshape(hi - lo, *self.sample_shape), eta=0.0).prev_sample
                    x = x4.reshape(hi - lo, self.dim).float()
                out.append(x)
        lat = torch.cat(out, 0) if out else torch.zeros((0, self.dim), device=self.device)
        return lat, timesteps, self.evals - start
