"""Text-to-image diffusers targets: Stable Diffusion folders and small pixel-space models.

:class:`DiffusersTextToImageTarget` serves both with one code path:

* latent models (SD 1.x/2.x): ``unet/`` (UNet2DConditionModel), ``vae/``
  (AutoencoderKL), CLIP ``text_encoder/`` and ``tokenizer/``; x0 = VAE latent
  x ``vae.config.scaling_factor`` (0.18215 for SD 1.x), Rombach et al. 2022,
  arXiv:2112.10752 §3;
* pixel-space models (no ``vae/``, a 1- or 3-channel UNet, e.g. those of
  :mod:`models.score.training`): x0 = the image in [-1, 1], grayscale or RGB,
  with any transformers text encoder (e.g. all-MiniLM-L6-v2).

Conditioning: ``cond`` is ``None`` (the null / empty prompt), a prompt ``str``, a
per-row sequence or array of prompts (B,), or a prompt-embedding tensor (L, D),
(1, L, D) or (B, L, D) from :meth:`DiffusersTextToImageTarget.encode_prompts`.
:func:`models.score.plaplace.noise_cosine_statistic` treats any array-like
``cond`` as per-sample conditions, so pass it a prompt string (or a (B,) array
of prompts), not an embedding tensor. Folder loading: :mod:`models.score.targets.text_to_image_folder`.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from models.score.targets.clip_tokenizer import check_clip_vocab
from models.score.targets.diffusers_base import GenerationResult, _DiffusersTarget
from models.score.targets.diffusers_io import GeneratorArg, make_generator
from models.score.targets.pixels import as_rgb, decode_pixels, encode_pixels
from models.score.targets.text_encoders import embed_prompts

_EMBED_CACHE_SIZE = 1024


def is_clip_text_encoder(text_encoder: Any) -> bool:
    """True for CLIP text towers (SD), whose tokenizer must have the 49408-token vocabulary."""
    return str(getattr(text_encoder.config, "model_type", "")).startswith("clip")


class DiffusersTextToImageTarget(_DiffusersTarget):
    """A local text-to-image diffusers folder as a memorization target.

    Build with :meth:`load`. Attributes: ``unet`` (UNet2DConditionModel), ``vae``
    (AutoencoderKL, or None for a pixel-space model), ``text_encoder``,
    ``tokenizer`` (CLIP ones have 49408 tokens), ``tokenizer_source`` ("folder",
    "open_clip_bpe" or "given"), ``scheduler_config`` (dict), ``schedule``
    (VPSchedule from the scheduler's betas), ``prediction_type``, ``device``,
    ``dtype``, ``sample_shape`` (C, h, w) of the latent (pixels when ``vae`` is
    None), ``image_size`` (H, W) in pixels, ``scaling_factor``, ``batch_size``;
    counters ``evals`` (per-sample UNet evaluations), ``unet_calls``,
    ``text_evals``, ``vae_evals``.
    """

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler_config: dict,
        *,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 8,
        resolution: Optional[int] = None,
        tokenizer_source: str = "given",
    ) -> None:
        if is_clip_text_encoder(text_encoder):
            check_clip_vocab(tokenizer, tokenizer_source)
        te_vocab = int(getattr(text_encoder.config, "vocab_size", len(tokenizer)))
        if te_vocab < len(tokenizer):
            raise ValueError(f"text encoder vocab_size {te_vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.tokenizer_source = tokenizer_source
        self._set_scheduler(scheduler_config)
        self.device, self.dtype, self.batch_size = device, dtype, int(batch_size)
        c = int(unet.config.in_channels)
        if vae is None:
            if c not in (1, 3):
                raise ValueError(f"a UNet with {c} input channels works on latents and needs a vae/ folder; "
                                 "pixel-space models have 1 (grayscale) or 3 (RGB) channels")
            self.vae_scale_factor, self.scaling_factor, self.shift_factor = 1, 1.0, 0.0
        else:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.scaling_factor)
            shift = getattr(vae.config, "shift_factor", None)
            self.shift_factor = 0.0 if shift is None else float(shift)
            if c != int(vae.config.latent_channels):
                raise ValueError(f"UNet in_channels {c} != VAE latent_channels {vae.config.latent_channels}")
        if resolution is None:
            ss = unet.config.sample_size
            h, w = (ss, ss) if isinstance(ss, int) else tuple(ss)
        else:
            if int(resolution) % self.vae_scale_factor:
                raise ValueError(f"resolution {resolution} must be divisible by the VAE factor {self.vae_scale_factor}")
            h = w = int(resolution) // self.vae_scale_factor
        self.sample_shape = (c, int(h), int(w))
        self.image_size = (int(h) * self.vae_scale_factor, int(w) * self.vae_scale_factor)
        self.max_length = int(getattr(tokenizer, "model_max_length", 77))
        if self.max_length > 4096:  # "unset" sentinel of transformers
            self.max_length = int(text_encoder.config.max_position_embeddings)
        self._embed_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._init_counters()
        self.text_evals = 0
        self.vae_evals = 0

    @classmethod
    def load(
        cls,
        path: str,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype, None] = None,
        *,
        batch_size: int = 8,
        resolution: Optional[int] = None,
    ) -> "DiffusersTextToImageTarget":
        """Load a local folder; see :func:`models.score.targets.text_to_image_folder.load_text_to_image`."""
        from models.score.targets.text_to_image_folder import load_text_to_image

        return load_text_to_image(cls, path, device, dtype, batch_size=batch_size, resolution=resolution)

    # ----- text ------------------------------------------------------------ #
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder embeddings (P, L, D) in the model dtype on ``self.device``.

        Prompts are padded/truncated to ``max_length`` (77 for SD) like SD pipelines;
        the output is ``last_hidden_state``. The empty prompt "" is the null
        condition ε̂(x_t, ∅) of classifier-free guidance. Batched by
        ``batch_size``; results are cached per prompt string.
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple, np.ndarray)):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        prompts = [p for p in prompts]
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must be strings, got {bad[:3]!r}")
        todo = list(dict.fromkeys(p for p in prompts if p not in self._embed_cache))
        with torch.inference_mode():
            for lo in range(0, len(todo), self.batch_size):
                chunk = todo[lo : lo + self.batch_size]
                emb = embed_prompts(self.tokenizer, self.text_encoder, chunk, self.max_length, self.device).to(self.dtype)
                self.text_evals += len(chunk)
                for p, e in zip(chunk, emb):
                    self._embed_cache[p] = e
                    if len(self._embed_cache) > _EMBED_CACHE_SIZE:
                        self._embed_cache.popitem(last=False)
            if not prompts:
                hidden = int(self.text_encoder.config.hidden_size)
                return torch.zeros((0, self.max_length, hidden), dtype=self.dtype, device=self.device)
            missing = [p for p in prompts if p not in self._embed_cache]
            if missing:  # evicted in this call (more distinct prompts than the cache): recompute directly
                self.text_evals += len(prompts)
                return embed_prompts(self.tokenizer, self.text_encoder, prompts, self.max_length, self.device).to(self.dtype)
            return torch.stack([self._embed_cache[p] for p in prompts], 0)

    @property
    def null_embedding(self) -> torch.Tensor:
        """(L, D) embedding of the empty prompt (the null condition)."""
        return self.encode_prompts([""])[0]

    def _resolve_cond(self, cond: Any, B: int) -> torch.Tensor:
        """(B, L, D) embeddings (possibly an expanded view) for any accepted ``cond``."""
        if cond is None or isinstance(cond, str):
            return self.encode_prompts(["" if cond is None else cond])[0].unsqueeze(0).expand(B, -1, -1)
        if isinstance(cond, torch.Tensor):
            emb = cond.to(device=self.device, dtype=self.dtype)
            if emb.ndim == 2:
                return emb.unsqueeze(0).expand(B, -1, -1)
            if emb.ndim == 3 and emb.shape[0] == 1:
                return emb.expand(B, -1, -1)
            if emb.ndim == 3 and emb.shape[0] == B:
                return emb
            raise ValueError(f"cond embeddings must have shape (L, D), (1, L, D) or ({B}, L, D), got {tuple(emb.shape)}")
        if isinstance(cond, (list, tuple, np.ndarray)):
            rows = list(np.asarray(cond, dtype=object).reshape(-1)) if isinstance(cond, np.ndarray) else list(cond)
            if len(rows) != B or np.ndim(cond) != 1:
                raise ValueError(f"a per-row cond must be a 1-D sequence of {B} prompts, got shape {np.shape(cond)}")
            rows = ["" if r is None else r for r in rows]
            if not all(isinstance(r, str) for r in rows):
                raise ValueError("a per-row cond must hold prompt strings (or None for the null prompt)")
            uniq = {p: i for i, p in enumerate(dict.fromkeys(rows))}
            emb = self.encode_prompts(list(uniq))
            return emb[torch.as_tensor([uniq[r] for r in rows], dtype=torch.long, device=self.device)]
        raise ValueError(
            f"cond must be None, a prompt string, a sequence of {B} prompts or an embedding tensor; "
            f"got {type(cond).__name__}"
        )

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond_rows).sample

    # ----- images ---------------------------------------------------------- #
    def _check_images(self, images: Any) -> np.ndarray:
        arr = np.asarray(images)
        H, W = self.image_size
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (H, W, 3):
            raise ValueError(f"images must be uint8 of shape (B, {H}, {W}, 3), got {arr.dtype} {arr.shape}")
        return arr

    def encode_images(self, images: np.ndarray, *, sample: bool = False, generator: GeneratorArg = None) -> np.ndarray:
        """x0 of uint8 images: VAE latents (z - shift)*scaling_factor (arXiv:2112.10752 §3), or pixels in [-1, 1].

        Args:
            images: (B, H, W, 3) uint8 RGB, H, W = ``image_size`` (pixel-space
                models also take (B, H, W) / (B, H, W, 1) grayscale).
            sample: draw z from the posterior (``latent_dist.sample``) instead
                of its mean (default, deterministic); latent models only.
            generator: torch.Generator / int seed for ``sample=True``.

        Returns:
            (B, d) float32 numpy latents.
        """
        if self.vae is None:
            return encode_pixels(images, self.sample_shape)
        arr = self._check_images(images)
        gen = make_generator(generator)
        vdt = next(self.vae.parameters()).dtype
        out = []
        with torch.inference_mode():
            for lo in range(0, arr.shape[0], self.batch_size):
                x = torch.from_numpy(arr[lo : lo + self.batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                dist = self.vae.encode(x.to(device=self.device, dtype=vdt)).latent_dist
                if sample:
                    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen, dtype=torch.float32).to(
                        device=self.device, dtype=dist.mean.dtype)
                else:
                    z = dist.mean
                z = (z.float() - self.shift_factor) * self.scaling_factor
                self.vae_evals += x.shape[0]
                out.append(z.reshape(z.shape[0], -1).cpu())
        lat = torch.cat(out, 0).numpy() if out else np.zeros((0, self.dim), np.float32)
        if lat.shape[1] != self.dim:
            raise ValueError(f"VAE latents have {lat.shape[1]} values, expected d={self.dim} for {self.sample_shape}")
        return lat

    def decode_latents(self, latents: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """uint8 (B, H, W, C) images from (B, d) latents (inverse of :meth:`encode_images`; C = 3 for
        latent models, the UNet's channels for pixel-space ones)."""
        lat = self._check_x(latents)
        if self.vae is None:
            arr = lat.detach().float().cpu().numpy() if isinstance(lat, torch.Tensor) else lat
            return decode_pixels(arr, self.sample_shape)
        lat = lat if isinstance(lat, torch.Tensor) else torch.from_numpy(np.asarray(lat, dtype=np.float32))
        vdt = next(self.vae.parameters()).dtype
        out = []
        with torch.inference_mode():
            for lo in range(0, lat.shape[0], self.batch_size):
                z = lat[lo : lo + self.batch_size].to(device=self.device, dtype=torch.float32)
                z = z.reshape(z.shape[0], *self.sample_shape) / self.scaling_factor + self.shift_factor
                img = self.vae.decode(z.to(vdt)).sample.float()
                self.vae_evals += z.shape[0]
                img = ((img.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
                out.append(img.permute(0, 2, 3, 1).cpu())
        H, W = self.image_size
        return torch.cat(out, 0).numpy() if out else np.zeros((0, H, W, 3), np.uint8)

    # ----- generation ------------------------------------------------------ #
    def generate(
        self,
        prompts: Sequence[str],
        n_per_prompt: int = 1,
        steps: int = 50,
        guidance_scale: float = 7.5,
        generator: GeneratorArg = None,
        *,
        return_images: bool = True,
    ) -> GenerationResult:
        """DDIM (η = 0) with classifier-free guidance (arXiv:2207.12598 Eq. 6), as SD pipelines do.

        ε̂ = ε̂(x, ∅) + w·(ε̂(x, c) − ε̂(x, ∅)), w = ``guidance_scale`` (w = 1:
        conditional only; w = 0: unconditional only). x_T ~ N(0, I) is drawn on
        the CPU from ``generator`` (torch.Generator or int seed), so results do
        not depend on the device's RNG. Rows are grouped by prompt.

        Returns:
            :class:`GenerationResult` (latents (N, d) float32, images uint8 or None).
        """
        if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, (int, np.integer)) or n_per_prompt < 1:
            raise ValueError(f"n_per_prompt must be a positive integer, got {n_per_prompt!r}")
        w = float(guidance_scale)
        if not math.isfinite(w):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
        cond = self.encode_prompts(prompts)
        P, n = cond.shape[0], int(n_per_prompt)
        prompt_index = np.repeat(np.arange(P, dtype=np.int64), n)
        cond_rows = cond.repeat_interleave(n, dim=0)
        null = self.null_embedding

        def eps_fn(x: torch.Tensor, t: int, lo: int, hi: int) -> torch.Tensor:
            b = hi - lo
            tt = np.full(b, t, dtype=np.int64)
            abar = np.full(b, self.schedule.abar(t))
            if w == 1.0:
                return self._eps_core(x, tt, abar, cond_rows[lo:hi])
            if w == 0.0:
                return self._eps_core(x, tt, abar, null.expand(b, -1, -1))
            both = self._eps_core(torch.cat([x, x]), np.concatenate([tt, tt]), np.concatenate([abar, abar]),
                                  torch.cat([null.expand(b, -1, -1), cond_rows[lo:hi]]))
            e_u, e_c = both[:b], both[b:]
            return e_u + w * (e_c - e_u)

        lat, timesteps, evals = self._ddim_loop(P * n, steps, generator, eps_fn)
        images = as_rgb(self.decode_latents(lat)) if return_images else None
        return GenerationResult(lat.cpu().numpy(), images, prompt_index, timesteps, evals)
