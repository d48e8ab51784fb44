"""Make ``import torchvision`` work with a CPU-only torch.

PyPI's ``torchvision==0.28.0`` wheel is a CUDA build. Paired with the CPU
``torch==2.13.0`` wheel, its compiled extension fails to load, so the custom
operators ``torchvision::nms`` and ``torchvision::qnms`` are never registered,
and ``torchvision/_meta_registrations.py`` then dies at import time with
``RuntimeError: operator torchvision::nms does not exist``. Everything that
imports torchvision (open_clip, timm, transformers' vision models, diffusers)
inherits the failure.

:func:`ensure_torchvision` defines just the two operator *schemas* (no
kernels) before torchvision is imported, so the import succeeds. Calling NMS
itself would still fail with "no kernel", which is correct: dupmine never uses
detection ops. Where torchvision's extension loads (a matching CPU or CUDA
build, e.g. on GPU workers) the operators already exist and this does nothing.

Call it in every process that imports torchvision, Beam workers included
(:mod:`models.embed.embedders` calls it before importing open_clip).
"""
from __future__ import annotations

import importlib.util
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY = None  # keeps the schema registrations alive for the process lifetime


def _has_op(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def ensure_torchvision() -> bool:
    """Register missing torchvision op schemas; return True if it had to.

    Idempotent and cheap. Does nothing when torchvision is absent, already
    imported, or its compiled extension provides the operators.
    """
    global _LIBRARY
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing:
        return False
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "DEF")  # noqa: TOR901
    for name in missing:
        _LIBRARY.define(_SCHEMAS[name])
    return True
