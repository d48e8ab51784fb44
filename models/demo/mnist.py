"""Real MNIST digits from the idx files (``t10k-images-idx3-ubyte.gz`` and labels).

The team's shared data folder holds the real MNIST test set (10,000 digits,
28x28 uint8); :func:`load_mnist` reads it with gzip + numpy only. Paths may be
fsspec URLs.
"""
from __future__ import annotations

import gzip
from typing import NamedTuple

import fsspec
import numpy as np

IMAGES_FILE = "t10k-images-idx3-ubyte.gz"
LABELS_FILE = "t10k-labels-idx1-ubyte.gz"
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


class Digits(NamedTuple):
    """images: (N, 28, 28) uint8 (white digit on black); labels: (N,) int64 in 0..9."""

    images: np.ndarray
    labels: np.ndarray


def _read_idx(url: str, magic: int) -> np.ndarray:
    with fsspec.open(url, "rb") as raw, gzip.open(raw, "rb") as fh:
        data = fh.read()
    if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
        raise ValueError(f"{url!r} is not an idx file with magic {magic}")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{url!r} holds {body.size} values, its header says {dims}")
    return body.reshape(dims)


def load_mnist(folder: str, limit: int | None = None) -> Digits:
    """The digits and labels of ``folder`` (first ``limit`` of them when given).

    Raises:
      FileNotFoundError: a file is missing (named); ValueError: not an idx file or counts differ.
    """
    root = folder.rstrip("/")
    images = _read_idx(f"{root}/{IMAGES_FILE}", _IMAGES_MAGIC)
    labels = _read_idx(f"{root}/{LABELS_FILE}", _LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{root!r}: {images.shape[0]} images but {labels.shape[0]} labels")
    n = images.shape[0] if limit is None else min(int(limit), images.shape[0])
    return Digits(np.ascontiguousarray(images[:n]), labels[:n])
