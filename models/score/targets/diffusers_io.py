"""Folder checks, lazy imports, device/dtype resolution and schedules for diffusers targets.

Nothing is downloaded: every ``from_pretrained`` call in the targets is
``local_files_only``. diffusers / transformers are imported lazily
(``pip install 'dupmine[diffusion]'``), after :func:`models.tv_compat.ensure_torchvision`.
"""
from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch

from models.score.targets.schedule import VPSchedule

TimeArg = Union[int, np.integer, np.ndarray]
GeneratorArg = Union[torch.Generator, int, None]

PIP_HINT = "pip install 'dupmine[diffusion]'"
WEIGHT_EXTS = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
UNET_STEM = "diffusion_pytorch_model"
TEXT_STEMS = ("model", "pytorch_model")


def _import_after_shim(name: str, needed_by: str):
    """Import ``name`` after the torchvision CPU shim; the ImportError names the extra."""
    import importlib

    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"{needed_by} need the {name!r} package: {PIP_HINT}") from exc


def import_diffusers():
    """Import diffusers after the torchvision CPU shim; ImportError names the extra."""
    return _import_after_shim("diffusers", "diffusers targets")


def import_transformers():
    """Import transformers after the torchvision CPU shim; ImportError names the extra."""
    return _import_after_shim("transformers", "diffusers text-to-image targets")


def weight_variant(folder: str, stems: Sequence[str]) -> tuple[bool, Optional[str]]:
    """(has_weights, variant): variant is e.g. "fp16" when only ``stem.fp16.ext`` files exist."""
    if not os.path.isdir(folder):
        return False, None
    names = set(os.listdir(folder))
    if any(stem + ext in names for stem in stems for ext in WEIGHT_EXTS):
        return True, None
    for name in sorted(names):
        for stem in stems:
            for ext in WEIGHT_EXTS:
                if name.startswith(stem + ".") and name.endswith(ext):
                    variant = name[len(stem) + 1 : -len(ext)]
                    if variant and "." not in variant and "-of-" not in variant:
                        return True, variant
    return False, None


def require_dir(path: str, kind: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{kind} path must be a non-empty string, got {path!r}")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{kind} folder not found: {path!r}")
    return path


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) and device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device, str) and (device == "cpu" or device.startswith("cuda")):
        dev = torch.device(device)
    else:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return dev


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """None → float16 on CUDA, float32 on CPU."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} (or a torch float dtype), got {dtype!r}")


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read JSON file {path!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"JSON file {path!r} must hold an object, got {type(data).__name__}")
    return data


def make_generator(generator: GeneratorArg) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator("cpu").manual_seed(int(generator))
    raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


@contextlib.contextmanager
def forward_ad_attention() -> Iterator[None]:
    """Restrict ``F.scaled_dot_product_attention`` to its math backend.

    The fused SDPA kernels (flash / memory-efficient, CPU and CUDA) have no
    forward-mode AD formula, so :func:`torch.func.jvp` through a diffusers UNet
    fails without this. The math backend is composite and supports JVPs; it
    materialises the (heads, N, N) attention matrix, which is the main extra
    memory cost of a JVP at SD resolution (see :func:`models.score.wen.jeon_sharpness`).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def schedule_from_scheduler_config(config: dict, source: str) -> VPSchedule:
    """VPSchedule whose ᾱ matches diffusers' DDPM/DDIM ``alphas_cumprod`` for ``config``.

    Betas are taken from ``DDPMScheduler.from_config`` (linear, scaled_linear,
    squaredcos_cap_v2, trained_betas, …). A zero-terminal-SNR schedule has
    β_{T−1} = 1; it is clipped to 1 − 2⁻²⁴ (VPSchedule needs β < 1), as diffusers
    itself replaces ᾱ_{T−1} = 0 by 2⁻²⁴.
    """
    diffusers = import_diffusers()
    try:
        ddpm = diffusers.DDPMScheduler.from_config(config)
    except Exception as exc:
        raise ValueError(f"cannot build a DDPM schedule from scheduler config {source!r}: {exc}") from exc
    betas = ddpm.betas.detach().cpu().double().numpy()
    return VPSchedule(np.clip(betas, 1e-12, 1.0 - 2.0**-24))
