"""Loading a local text-to-image diffusers folder (SD latent models and pixel-space models alike).

Layout (``diffusers:PATH``)::

    unet/{config.json, diffusion_pytorch_model.safetensors}      UNet2DConditionModel
    scheduler/scheduler_config.json                              DDPM/DDIM/... betas
    text_encoder/{config.json, model.safetensors}                CLIPTextModel (SD) or any transformers model
    tokenizer/                                                   optional for CLIP (rebuilt from open_clip's BPE)
    vae/{config.json, diffusion_pytorch_model.safetensors}       required for latent (4-channel) UNets;
                                                                 absent for pixel-space (1/3-channel) UNets

fp16 weight variants (``*.fp16.safetensors``) are detected. Nothing is downloaded.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch

from models.score.targets.clip_tokenizer import check_clip_vocab, clip_bpe_tokenizer
from models.score.targets.diffusers_io import (TEXT_STEMS, UNET_STEM, import_diffusers, import_transformers,
                                               read_json, require_dir, resolve_device, resolve_dtype, weight_variant)

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
PIXEL_CHANNELS = (1, 3)


def _needs_vae(root: str) -> bool:
    """A UNet whose input is not a 1/3-channel image works on latents, so the folder needs vae/."""
    cfg = os.path.join(root, "unet", "config.json")
    if not os.path.isfile(cfg):
        return True
    return int(read_json(cfg).get("in_channels", 4)) not in PIXEL_CHANNELS


def _missing_parts(root: str) -> tuple[list[str], dict[str, Optional[str]], bool]:
    """(missing files, weight variant per part, has_vae)."""
    has_vae = os.path.isdir(os.path.join(root, "vae")) or _needs_vae(root)
    parts = {"unet": ("config.json", (UNET_STEM,)), "text_encoder": ("config.json", TEXT_STEMS)}
    if has_vae:
        parts["vae"] = ("config.json", (UNET_STEM,))
    missing: list[str] = []
    variants: dict[str, Optional[str]] = {}
    for sub, (cfg, stems) in parts.items():
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            missing.append(f"{sub}/")
            continue
        if not os.path.isfile(os.path.join(folder, cfg)):
            missing.append(f"{sub}/{cfg}")
        ok, variants[sub] = weight_variant(folder, stems)
        if not ok:
            missing.append(f"{sub}/{stems[0]}.safetensors (or .bin)")
    if not os.path.isfile(os.path.join(root, "scheduler", "scheduler_config.json")):
        missing.append("scheduler/scheduler_config.json")
    return missing, variants, has_vae


def load_text_to_image(
    cls: Any,
    path: str,
    device: Union[str, torch.device] = "auto",
    dtype: Union[str, torch.dtype, None] = None,
    *,
    batch_size: int = 8,
    resolution: Optional[int] = None,
):
    """Load ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and (latent models) ``vae/``.

    Args:
        cls: the target class (:class:`~models.score.targets.text_to_image.DiffusersTextToImageTarget`).
        path: local diffusers folder (layout in the module docstring).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        dtype: None -> float16 on CUDA, float32 on CPU. A VAE whose config
            has ``force_upcast`` stays float32.
        batch_size: rows per UNet / VAE / text-encoder call.
        resolution: image side in pixels (default: UNet sample_size x VAE factor).

    Raises:
        FileNotFoundError: folder or required parts missing (all named at once).
        ValueError: bad device/dtype, or a CLIP tokenizer without 49408 tokens.
    """
    root = require_dir(path, "diffusers text-to-image")
    missing, variants, has_vae = _missing_parts(root)
    if missing:
        raise FileNotFoundError(
            f"diffusers folder {root!r} is incomplete: missing {missing}. Expected layout: model_index.json, "
            "unet/{config.json, diffusion_pytorch_model.safetensors}, vae/{config.json, "
            "diffusion_pytorch_model.safetensors} (latent models only), text_encoder/{config.json, "
            "model.safetensors}, scheduler/scheduler_config.json, tokenizer/ (CLIP: optional, rebuilt from "
            "open_clip's BPE when absent)"
        )
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    diffusers = import_diffusers()
    transformers = import_transformers()
    unet = diffusers.UNet2DConditionModel.from_pretrained(
        root, subfolder="unet", torch_dtype=dt, local_files_only=True, variant=variants["unet"]
    )
    vae = None
    if has_vae:
        # diffusers' AutoencoderKL defaults force_upcast to True: such VAEs stay float32 under fp16.
        force_upcast = bool(read_json(os.path.join(root, "vae", "config.json")).get("force_upcast", True))
        vae_dt = torch.float32 if (dt == torch.float16 and force_upcast) else dt
        vae = diffusers.AutoencoderKL.from_pretrained(
            root, subfolder="vae", torch_dtype=vae_dt, local_files_only=True, variant=variants["vae"]
        )
        vae.to(dev).eval().requires_grad_(False)
    te_dir = os.path.join(root, "text_encoder")
    is_clip = str(read_json(os.path.join(te_dir, "config.json")).get("model_type", "")).startswith("clip")
    te_cls = transformers.CLIPTextModel if is_clip else transformers.AutoModel
    text_encoder = te_cls.from_pretrained(te_dir, local_files_only=True, variant=variants["text_encoder"])
    if is_clip:
        tokenizer, source = _clip_tokenizer(root, int(text_encoder.config.max_position_embeddings))
    else:
        tdir = os.path.join(root, "tokenizer")
        if not os.path.isdir(tdir):
            raise FileNotFoundError(f"diffusers folder {root!r}: a non-CLIP text encoder needs its tokenizer/ folder")
        tokenizer, source = transformers.AutoTokenizer.from_pretrained(tdir, local_files_only=True), "folder"
    # Inference only: frozen parameters keep autograd/JVP from tracking weights
    # (gradients w.r.t. inputs, e.g. latents or prompt embeddings, still work).
    unet.to(dev).eval().requires_grad_(False)
    text_encoder.to(device=dev, dtype=dt).eval().requires_grad_(False)
    return cls(
        unet, vae, text_encoder, tokenizer, read_json(os.path.join(root, "scheduler", "scheduler_config.json")),
        device=dev, dtype=dt, batch_size=batch_size, resolution=resolution, tokenizer_source=source,
    )


def _clip_tokenizer(root: str, max_length: int) -> tuple[Any, str]:
    """The folder's CLIP tokenizer when it loads with 49408 tokens, else the open_clip BPE rebuild."""
    transformers = import_transformers()
    tdir = os.path.join(root, "tokenizer")
    pad_token = "<|endoftext|>"
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = os.path.join(tdir, name)
        if os.path.isfile(f):
            try:
                pad = read_json(f).get("pad_token")
            except ValueError:
                continue
            pad = pad.get("content") if isinstance(pad, dict) else pad
            if isinstance(pad, str) and pad:
                pad_token = pad
                break
    has_files = os.path.isdir(tdir) and (
        any(os.path.isfile(os.path.join(tdir, f)) for f in _TOKENIZER_FILES)
        and (os.path.isfile(os.path.join(tdir, "tokenizer.json")) or os.path.isfile(os.path.join(tdir, "merges.txt")))
    )
    if has_files:
        try:
            tok = transformers.CLIPTokenizer.from_pretrained(tdir, local_files_only=True)
            check_clip_vocab(tok, f"folder {tdir!r}")
            return tok, "folder"
        except (OSError, ValueError, TypeError, KeyError):
            pass  # unloadable or wrong size: rebuild below (checked again there)
    return clip_bpe_tokenizer(max_length=max_length, pad_token=pad_token), "open_clip_bpe"
