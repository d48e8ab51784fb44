"""Diffusers-backed diffusion targets (the public names in one place).

* :mod:`models.score.targets.text_to_image`: :class:`DiffusersTextToImageTarget`
  (Stable Diffusion latent folders and pixel-space text-conditional folders);
* :mod:`models.score.targets.unconditional`: :class:`DiffusersUnconditionalTarget`
  (UNet2DModel, unconditional or class-conditional, grayscale or RGB);
* :mod:`models.score.targets.diffusers_base`: the shared eps / score / DDIM machinery
  and :class:`GenerationResult`;
* :mod:`models.score.targets.clip_tokenizer`: SD's CLIP tokenizer rebuilt offline;
* :mod:`models.score.targets.diffusers_io`: folder checks, device/dtype, :func:`forward_ad_attention`;
* :mod:`models.score.targets.loading`: :func:`load_target`, the one loader of every spec
  (``load_any_target`` is the same function).
"""
from __future__ import annotations

from models.score.targets.clip_tokenizer import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
from models.score.targets.diffusers_base import GenerationResult
from models.score.targets.diffusers_io import forward_ad_attention
from models.score.targets.diffusers_io import weight_variant as _weight_variant
from models.score.targets.loading import TARGET_PREFIXES, load_target
from models.score.targets.text_to_image import DiffusersTextToImageTarget
from models.score.targets.unconditional import DiffusersUnconditionalTarget

load_any_target = load_target

__all__ = [
    "CLIP_VOCAB_SIZE",
    "TARGET_PREFIXES",
    "GenerationResult",
    "DiffusersTextToImageTarget",
    "DiffusersUnconditionalTarget",
    "clip_bpe_tokenizer",
    "forward_ad_attention",
    "load_any_target",
    "load_target",
    "_weight_variant",
]
