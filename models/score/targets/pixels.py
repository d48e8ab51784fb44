"""Pixel-space images <-> flattened diffusion samples, grayscale or RGB.

A pixel-space model's sample is the (C, H, W) image in [-1, 1] (x = u8/127.5 - 1),
flattened to d = C*H*W. Grayscale (C = 1) and RGB (C = 3) are both first-class:
images come in as (B, H, W), (B, H, W, 1) or (B, H, W, 3) uint8 and are converted
to the model's channels (RGB -> gray with PIL's "L" weights, ITU-R 601-2 luma:
L = (299 R + 587 G + 114 B) / 1000; gray -> RGB by repeating the channel).
:func:`as_rgb` is what every display / PNG / image-embedder path uses, so a
1-channel image never reaches ``Image.fromarray`` as (H, W, 1).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def as_rgb(images: Any) -> np.ndarray:
    """(B, H, W, 3) uint8 from (B, H, W), (B, H, W, 1) or (B, H, W, 3) uint8 (gray repeated)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 (B, H, W), (B, H, W, 1) or (B, H, W, 3), got {arr.dtype} {arr.shape}")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def to_channels(images: Any, channels: int, height: int, width: int) -> np.ndarray:
    """(B, H, W, channels) uint8 from uint8 (B, H, W[, 1|3]) images of size (height, width)."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:3] != (height, width) or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 of shape (B, {height}, {width}, {channels}) (1 or 3 channels "
                         f"accepted), got {arr.dtype} {arr.shape}")
    if arr.shape[-1] == channels:
        return arr
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    wide = arr.astype(np.uint32)
    luma = (wide[..., 0] * 299 + wide[..., 1] * 587 + wide[..., 2] * 114 + 500) // 1000
    return luma.astype(np.uint8)[..., None]


def encode_pixels(images: Any, sample_shape: tuple[int, int, int]) -> np.ndarray:
    """(B, d) float32 x0 in [-1, 1] from uint8 images (converted to the model's channels)."""
    c, h, w = sample_shape
    arr = to_channels(images, c, h, w)
    return (arr.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0).reshape(arr.shape[0], -1)


def decode_pixels(x0: np.ndarray, sample_shape: tuple[int, int, int]) -> np.ndarray:
    """(B, H, W, C) uint8 images from (B, d) samples in [-1, 1] (clipped, rounded)."""
    arr = np.asarray(x0, dtype=np.float32)
    img = np.round((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return img.reshape(arr.shape[0], *sample_shape).transpose(0, 2, 3, 1)
