"""Unconditional / class-conditional pixel-space ``UNet2DModel`` targets (``diffusers-uncond:PATH``).

The sample is the (C, H, W) image in [-1, 1] flattened to d = C*H*W, grayscale
(C = 1) or RGB (C = 3). Folders: ``unet/`` + ``scheduler/`` (diffusers layout, as
:mod:`models.score.training` writes) or the flat google/ddpm-* layout
(``config.json`` + weights + ``scheduler_config.json``).

The null condition of a class-conditional UNet: ``cond=None`` (or label -1)
gives the class embedding 0, i.e. the network evaluated with no class
information added to its time embedding (diffusers adds ``class_emb`` to
``emb``), so wen/SIDE code passing the null condition never reaches diffusers'
"class_labels should be provided" error.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import numpy as np
import torch

from models.score.targets.diffusers_base import GenerationResult, _DiffusersTarget
from models.score.targets.diffusers_io import (UNET_STEM, GeneratorArg, import_diffusers, read_json, require_dir,
                                               resolve_device, resolve_dtype, weight_variant)
from models.score.targets.pixels import as_rgb, decode_pixels, encode_pixels
from models.score.targets.schedule import label_rows

NULL_CLASS = -1
"""Class label of the null condition (zero class embedding)."""


class NullableClassEmbedding(torch.nn.Module):
    """Wraps a UNet's ``nn.Embedding`` class table: label ``NULL_CLASS`` maps to the zero vector.

    The wrapped table's weights are unchanged (``.inner``); labels >= 0 give exactly its rows.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        null = labels == NULL_CLASS
        emb = self.inner(labels.clamp(min=0))
        return emb.masked_fill(null[:, None], 0.0) if bool(null.any()) else emb


class DiffusersUnconditionalTarget(_DiffusersTarget):
    """A local ``UNet2DModel`` + scheduler folder (e.g. google/ddpm-cifar10-32 layout) in pixel space.

    ``eps(x_t (B, d), t, cond=None)`` with x_t the flattened (C, H, W) image
    in [-1, 1] units; ``cond`` must be None unless the UNet is class-conditional
    (``num_class_embeds``), where it is an int label or an int array (B,).
    """

    def __init__(
        self,
        unet: Any,
        scheduler_config: dict,
        *,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 64,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.unet = unet
        self._set_scheduler(scheduler_config)
        self.device, self.dtype, self.batch_size = device, dtype, int(batch_size)
        ss = unet.config.sample_size
        h, w = (ss, ss) if isinstance(ss, int) else tuple(ss)
        self.sample_shape = (int(unet.config.in_channels), int(h), int(w))
        self.image_size = (int(h), int(w))
        self.num_classes = getattr(unet.config, "num_class_embeds", None)
        if self.num_classes:
            unet.class_embedding = NullableClassEmbedding(unet.class_embedding)
        self._init_counters()

    @classmethod
    def load(
        cls,
        path: str,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype, None] = None,
        *,
        batch_size: int = 64,
    ) -> "DiffusersUnconditionalTarget":
        """Load ``unet/`` (or a flat ``config.json`` + weights) and ``scheduler/scheduler_config.json``
        (or a flat ``scheduler_config.json``) from a local folder.

        Raises:
            FileNotFoundError: folder or required files missing (named).
        """
        root = require_dir(path, "diffusers unconditional")
        sub = os.path.join(root, "unet")
        unet_dir, subfolder = (sub, "unet") if os.path.isdir(sub) else (root, None)
        missing = []
        if not os.path.isfile(os.path.join(unet_dir, "config.json")):
            missing.append("unet/config.json")
        ok, variant = weight_variant(unet_dir, (UNET_STEM,))
        if not ok:
            missing.append(f"unet/{UNET_STEM}.safetensors (or .bin)")
        sched_file = os.path.join(root, "scheduler", "scheduler_config.json")
        if not os.path.isfile(sched_file):
            flat = os.path.join(root, "scheduler_config.json")
            sched_file = flat if os.path.isfile(flat) else sched_file
        if not os.path.isfile(sched_file):
            missing.append("scheduler/scheduler_config.json")
        if missing:
            raise FileNotFoundError(
                f"diffusers unconditional folder {root!r} is incomplete: missing {missing}. Expected "
                "unet/{config.json, diffusion_pytorch_model.safetensors} and scheduler/scheduler_config.json "
                "(or the same files flat in the folder)"
            )
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
        diffusers = import_diffusers()
        unet = diffusers.UNet2DModel.from_pretrained(
            root, subfolder=subfolder, torch_dtype=dt, local_files_only=True, variant=variant
        )
        unet.to(dev).eval().requires_grad_(False)
        return cls(unet, read_json(sched_file), device=dev, dtype=dt, batch_size=batch_size)

    def _resolve_cond(self, cond: Any, B: int) -> Optional[torch.Tensor]:
        """None for an unconditional UNet; else (B,) long labels, ``NULL_CLASS`` (-1) for the null condition."""
        if not self.num_classes:
            if cond is None:
                return None
            raise ValueError(f"this UNet2DModel is unconditional; cond must be None, got {cond!r}")
        if cond is None:
            return torch.full((B,), NULL_CLASS, dtype=torch.long, device=self.device)
        c = label_rows(cond, B)
        if c.size and (c.min() < NULL_CLASS or c.max() >= int(self.num_classes)):
            raise ValueError(f"class labels must lie in [0, {int(self.num_classes) - 1}] (or {NULL_CLASS} for the null "
                             f"condition), got {np.unique(c)[:10].tolist()}")
        return torch.as_tensor(c, dtype=torch.long, device=self.device)

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, cond_rows: Optional[torch.Tensor]) -> torch.Tensor:
        return self.unet(x, t, class_labels=cond_rows).sample

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(B, d) float32 x0 in [-1, 1] from uint8 (B, H, W[, 1|3]) images (converted to the UNet's channels)."""
        return encode_pixels(images, self.sample_shape)

    def decode_latents(self, x0: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """uint8 (B, H, W, C) images from (B, d) pixel-space samples in [-1, 1] (C = UNet channels)."""
        x = self._check_x(x0)
        arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        return decode_pixels(arr, self.sample_shape)

    def generate(
        self,
        n: int,
        steps: int = 50,
        generator: GeneratorArg = None,
        *,
        cond: Any = None,
        return_images: bool = True,
    ) -> GenerationResult:
        """DDIM (η = 0) samples; ``cond`` = class label(s) for class-conditional UNets (None: the null condition).

        ``images`` are RGB (N, H, W, 3) uint8 (grayscale repeated); ``latents`` keep the UNet's channels.
        """
        cond_rows = self._resolve_cond(cond, int(n))

        def eps_fn(x: torch.Tensor, t: int, lo: int, hi: int) -> torch.Tensor:
            b = hi - lo
            return self._eps_core(x, np.full(b, t, dtype=np.int64), np.full(b, self.schedule.abar(t)),
                                  None if cond_rows is None else cond_rows[lo:hi])

        lat, timesteps, evals = self._ddim_loop(n, steps, generator, eps_fn)
        lat_np = lat.cpu().numpy()
        images = as_rgb(self.decode_latents(lat_np)) if return_images else None
        return GenerationResult(lat_np, images, np.zeros(lat_np.shape[0], dtype=np.int64), timesteps, evals)
