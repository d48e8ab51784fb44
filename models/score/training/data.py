"""Training images for the trainer: img2dataset shards (or arrays) -> uint8 pixel arrays + captions.

Shards are read with :mod:`models.storage.shards` (webdataset, parquet or files
layouts, local or fsspec URLs), decoded with :func:`models.storage.imaging.decode_image`
(EXIF-upright RGB), converted to grayscale when ``channels == 1``, and
resized/center-cropped to ``resolution``. Undecodable samples are kept as
rejects with their reason, never dropped silently.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass
class TrainingImages:
    """images: (N, R, R, C) uint8; captions: N strings ("" = none); keys: N sample keys;
    rejects: (key, reason) of samples that could not be used. Memory: N*R*R*C bytes."""

    images: np.ndarray
    captions: list[str]
    keys: list[str]
    rejects: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        arr = np.asarray(self.images)
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[1] != arr.shape[2]:
            raise ValueError(f"images must be uint8 (N, R, R, 1|3) (or (N, R, R) grayscale), got {arr.dtype} {arr.shape}")
        if arr.shape[0] == 0:
            raise ValueError("no training images")
        if len(self.captions) != arr.shape[0] or len(self.keys) != arr.shape[0]:
            raise ValueError(f"{arr.shape[0]} images but {len(self.captions)} captions and {len(self.keys)} keys")
        self.images = np.ascontiguousarray(arr)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])

    def fingerprint(self) -> str:
        """sha256 over pixels and captions: the training data's part of a cache key."""
        h = hashlib.sha256(self.images.tobytes())
        for c in self.captions:
            h.update(c.encode("utf-8") + b"\0")
        return h.hexdigest()[:16]


def to_training_pixels(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """(R, R, C) uint8 from a PIL image: RGB or L by ``channels``, shorter side resized, center-cropped."""
    from models.storage.imaging import resize_center_crop, to_rgb

    img = to_rgb(img)
    img = img.convert("L") if channels == 1 else img
    arr = np.asarray(resize_center_crop(img, resolution, Image.BILINEAR), dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def images_from_shards(spec: str | list[str], resolution: int, channels: int) -> TrainingImages:
    """All decodable samples of img2dataset shards ``spec`` (paths, globs, braces, folders, URLs).

    Returns:
      :class:`TrainingImages` in shard order; failed downloads and undecodable
      images become ``rejects`` with their reason.

    Raises:
      ValueError: the spec matched no shard, or no sample decoded.
    """
    from models.storage.imaging import ImageRejected, decode_image
    from models.storage.shards import Reject, list_shards, read_shard

    pixels, captions, keys, rejects = [], [], [], []
    for shard in list_shards(spec):
        for item in read_shard(shard):
            if isinstance(item, Reject):
                rejects.append((item.key, item.reason))
                continue
            try:
                img = decode_image(item.image, target_size=resolution).image
            except ImageRejected as exc:
                rejects.append((item.key, exc.reason))
                continue
            pixels.append(to_training_pixels(img, resolution, channels))
            captions.append(item.caption or "")
            keys.append(item.key)
    if not pixels:
        raise ValueError(f"no decodable training image in {spec!r} ({len(rejects)} rejects: {rejects[:3]})")
    return TrainingImages(np.stack(pixels), captions, keys, rejects)
