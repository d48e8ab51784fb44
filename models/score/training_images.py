"""Training images re-read from the shards the embed stage listed, in a target's pixel format (plain Python).

The score stage needs the training images themselves where a target does not
live in the embedding space: p-Laplace at a group's own images (encoded with
``target.encode_images``) and pixel-space SIDE matching for small images.
Images come from the shards named in ``EMB/config.json`` (``shards``: path,
format, shard_id) and each metadata row's ``shard`` column; they are decoded
safely (:func:`models.storage.imaging.decode_image`), resized and center-cropped
to the target's (H, W) and converted to its channel count (1: grayscale, 3: RGB).

Memory: one (H, W, C) uint8 array per cached key.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np


class TrainingImages:
    """Key -> (H, W, C) uint8 image, read on demand (one pass per shard per request) and cached.

    Args:
        train: the embedding folder (``--train``).
        shard_of: {key: shard_id} from the folder's metadata.
        size: (H, W) of the target's images; channels: 1 or 3.
    """

    def __init__(self, train: str, shard_of: dict, size: tuple, channels: int):
        from models.storage import layout
        from models.storage.shards import ShardRef

        if channels not in (1, 3):
            raise ValueError(f"training images can be read as 1 or 3 channels, not {channels}")
        config = layout.read_json(layout.EmbeddingFolder(train).config) if layout.exists(
            layout.EmbeddingFolder(train).config) else {}
        self.refs = {str(s["shard_id"]): ShardRef(s["path"], s["format"], str(s["shard_id"]))
                     for s in config.get("shards", []) if isinstance(s, dict) and {"path", "format", "shard_id"} <= set(s)}
        self.shard_of, self.size, self.channels = shard_of, (int(size[0]), int(size[1])), channels
        self.cache: dict = {}

    def _convert(self, data: bytes) -> np.ndarray:
        from PIL import Image

        from models.storage.imaging import decode_image, resize_center_crop

        h, w = self.size
        img = decode_image(data, target_size=max(h, w)).image
        img = resize_center_crop(img, h) if h == w else img.resize((w, h), Image.BICUBIC)
        arr = np.asarray(img.convert("L" if self.channels == 1 else "RGB"), np.uint8)
        return arr[:, :, None] if self.channels == 1 else arr

    def get(self, keys) -> np.ndarray:
        """(len(keys), H, W, C) uint8 in the order of ``keys``.

        Raises:
            KeyError: a key whose shard the folder's config does not list, or that its shard does not hold.
        """
        from models.storage.shards import Sample, read_shard

        todo = defaultdict(set)
        for k in keys:
            if k not in self.cache:
                shard = self.shard_of.get(k)
                if shard not in self.refs:
                    raise KeyError(f"training image {k!r}: its shard {shard!r} is not listed in the embedding "
                                   f"folder's config.json (needed to re-read the image)")
                todo[shard].add(k)
        for shard, wanted in todo.items():
            for item in read_shard(self.refs[shard]):
                if isinstance(item, Sample) and item.key in wanted and item.key not in self.cache:
                    self.cache[item.key] = self._convert(item.image)
            missing = wanted - set(self.cache)
            if missing:
                raise KeyError(f"shard {shard}: training images {sorted(missing)[:5]} not found")
        return np.stack([self.cache[k] for k in keys])
