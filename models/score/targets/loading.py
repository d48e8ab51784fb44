"""The one target loader: every spec the score stage accepts, in one place.

=============================  ==========================================================
spec                           target
=============================  ==========================================================
``diffusers:PATH``             :class:`~models.score.targets.text_to_image.DiffusersTextToImageTarget`
                               (SD latent folders and pixel-space folders without ``vae/``;
                               a folder whose ``unet/`` is a UNet2DModel loads as unconditional)
``diffusers-uncond:PATH``      :class:`~models.score.targets.unconditional.DiffusersUnconditionalTarget`
``gmm:FILE``                   :class:`~models.score.targets.mixtures.GMMTarget`
``memorizer:FILE``             :class:`~models.score.targets.mixtures.MemorizerTarget`
=============================  ==========================================================

Diffusers folders are local (``from_pretrained`` with ``local_files_only``);
models trained by :mod:`models.score.training` load with either diffusers prefix.
"""
from __future__ import annotations

import os
from typing import Any

TARGET_PREFIXES = ("diffusers:", "diffusers-uncond:", "gmm:", "memorizer:")
"""Spec prefixes accepted by :func:`load_target`."""


def _is_unet2d_folder(path: str) -> bool:
    cfg = os.path.join(os.path.expanduser(path), "unet", "config.json")
    if not os.path.isfile(cfg):
        return False
    from models.score.targets.diffusers_io import read_json

    return read_json(cfg).get("_class_name") == "UNet2DModel"


def load_target(spec: str, device: str = "auto", **kwargs: Any):
    """Load any target from its spec string.

    Args:
        spec: one of the prefixes of :data:`TARGET_PREFIXES` followed by a path.
        device: "auto", "cpu", "cuda" or "cuda:N" for diffusers targets (closed-form
            targets are numpy and ignore it).
        kwargs: diffusers loader options (dtype, batch_size, resolution for text-to-image).

    Raises:
        ValueError: unknown prefix (the allowed prefixes are listed), or loader
            options given to a closed-form target.
        FileNotFoundError: a missing or incomplete folder / file (named).
    """
    if isinstance(spec, str):
        kind, sep, path = spec.partition(":")
        kind = kind.strip().lower()
        if sep and kind in ("diffusers", "diffusers-uncond"):
            from models.score.targets.text_to_image import DiffusersTextToImageTarget
            from models.score.targets.unconditional import DiffusersUnconditionalTarget

            if kind == "diffusers-uncond" or _is_unet2d_folder(path):
                return DiffusersUnconditionalTarget.load(path, device=device, **kwargs)
            return DiffusersTextToImageTarget.load(path, device=device, **kwargs)
        if sep and kind in ("gmm", "memorizer"):
            if kwargs:
                raise ValueError(f"{kind}: targets take no loader options, got {sorted(kwargs)}")
            from models.score.targets.npz_files import load_closed_form

            return load_closed_form(f"{kind}:{path}")
    raise ValueError(f"unknown target spec {spec!r}; expected one of the prefixes {list(TARGET_PREFIXES)} followed by a path")
