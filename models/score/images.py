"""Images of the score stage: uint8 arrays from targets -> PIL images and PNG grids."""
from __future__ import annotations

import io

import numpy as np


def to_pil(img: np.ndarray):
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> an RGB PIL image.

    Pixel-space targets trained on grayscale data decode to (H, W, 1), which
    ``PIL.Image.fromarray`` rejects; the channel is dropped and the image
    converted to RGB.

    Raises:
        ValueError: any other shape or dtype.
    """
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"an image must be uint8 (H, W) or (H, W, 1|3|4), got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr).convert("RGB")


def grid_png(images: np.ndarray, columns: int = 4, limit: int = 16) -> bytes:
    """(N, H, W[, C]) uint8 -> PNG bytes of a grid of the first ``limit`` images."""
    from PIL import Image

    images = np.asarray(images)[:limit]
    if len(images) == 0:
        raise ValueError("no images to put in a grid")
    rows = -(-len(images) // columns)
    h, w = images.shape[1:3]
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(to_pil(img), ((i % columns) * w, (i // columns) * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
