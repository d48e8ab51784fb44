"""Measured memorization: which generations are copies of a training image (the ground truth of every AUC).

Criterion (Carlini et al. 2023, "Extracting Training Data from Diffusion
Models", arXiv:2301.13188): a generation x_hat is *(l2, delta)-extracted* when
it lies within normalised-L2 distance delta of a training image (§4.1; 0.05 to
0.15 is "near pixel-perfect" there, 0.15 the SD threshold). For small images
they also require the match to be much nearer than the generation's other
neighbours (§5, the CIFAR-10 distance relative to the nearest neighbours), so
a blurry average of many digits, close-ish to all of them, does not count.

Here, with pixels in [0, 1] and d values per image:

* ``distance(a, b) = ||a - b||_2 / sqrt(d)`` (the RMS pixel difference);
* ``nearest``: the training image nearest to the generation, in group g;
* ``runner_up``: the nearest training image of any *other* group (copies and
  near copies of one source share a group, so they are not each other's
  runner-up);
* memorized iff ``nearest <= delta`` and ``nearest <= ratio * runner_up``.

Constants: ``delta = 0.1`` (inside Carlini's near-pixel-perfect band; two
different 16x16 MNIST digits are typically 0.25-0.45 apart), ``ratio = 0.5``
(the match is at least twice as near as any other training image).

Memory: distances are computed in blocks of generations so one (block, N)
float32 matrix stays near 32 MiB; cost O(G * N * d).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

_BLOCK_ELEMS = 1 << 23


@dataclass(frozen=True)
class Criterion:
    """The (l2, delta) extraction test with its runner-up margin (module docstring)."""

    delta: float = 0.1
    ratio: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.delta <= 1.0:
            raise ValueError(f"delta must be in (0, 1] (RMS pixel distance in [0, 1] units), got {self.delta}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")


class Matches(NamedTuple):
    """Per generation (G,): nearest training row, its group, the two distances, the verdict."""

    nearest: np.ndarray  # (G,) int64 training row
    group: np.ndarray  # (G,) int64 group of that row
    distance: np.ndarray  # (G,) float32 RMS distance to it, [0, 1]
    runner_up: np.ndarray  # (G,) float32 RMS distance to the nearest row of another group (inf if none)
    memorized: np.ndarray  # (G,) bool


def _unit_pixels(images: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be (N, ...) images, got shape {arr.shape}")
    flat = arr.reshape(arr.shape[0], -1)
    if arr.dtype == np.uint8:
        return flat.astype(np.float32) / 255.0
    if arr.dtype.kind != "f" or (flat.size and (flat.min() < 0.0 or flat.max() > 1.0)):
        raise ValueError(f"{name} must be uint8 or floats in [0, 1], got {arr.dtype}")
    return flat.astype(np.float32)


def exact_groups(train: np.ndarray) -> np.ndarray:
    """(N,) int64 group ids where byte-identical training images share a group."""
    flat = np.ascontiguousarray(np.asarray(train).reshape(len(train), -1))
    _, inverse = np.unique(flat, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def match_generations(generated: np.ndarray, train: np.ndarray, train_group: np.ndarray | None = None,
                      criterion: Criterion = Criterion()) -> Matches:
    """Nearest training image of every generation and the memorization verdict.

    Args:
      generated: (G, H, W[, C]) uint8 (or floats in [0, 1]) generations.
      train: (N, H, W[, C]) training images, same layout and size; grayscale vs RGB must match.
      train_group: (N,) ints; copies and near copies of one source share a group
        (None: byte-identical images share one, :func:`exact_groups`).
      criterion: :class:`Criterion`.

    Returns:
      :class:`Matches`.
    """
    g = _unit_pixels(generated, "generated")
    x = _unit_pixels(train, "train")
    if g.shape[1] != x.shape[1]:
        raise ValueError(f"generated images have {g.shape[1]} values each, training images {x.shape[1]} "
                         "(same size and channels needed)")
    groups = exact_groups(train) if train_group is None else np.asarray(train_group, np.int64)
    if groups.shape != (x.shape[0],):
        raise ValueError(f"train_group must have shape ({x.shape[0]},), got {groups.shape}")
    d = g.shape[1]
    xx = (x * x).sum(1)
    nearest = np.zeros(len(g), np.int64)
    dist = np.zeros(len(g), np.float32)
    runner = np.full(len(g), np.inf, np.float32)
    step = max(1, _BLOCK_ELEMS // max(1, x.shape[0]))
    for lo in range(0, len(g), step):
        blk = g[lo:lo + step]
        sq = np.maximum((blk * blk).sum(1)[:, None] + xx[None, :] - 2.0 * blk @ x.T, 0.0)
        j = sq.argmin(1)
        nearest[lo:lo + step] = j
        dist[lo:lo + step] = np.sqrt(sq[np.arange(len(j)), j] / d)
        other = np.where(groups[None, :] == groups[j][:, None], np.inf, sq)
        runner[lo:lo + step] = np.sqrt(other.min(1) / d) if other.shape[1] else np.inf
    memorized = (dist <= criterion.delta) & (dist <= criterion.ratio * runner)
    return Matches(nearest, groups[nearest], dist, runner, memorized)


def memorized_per_group(matches: Matches) -> dict[int, int]:
    """{training group: number of memorized generations matched to it} (groups with none are absent)."""
    ids, counts = np.unique(matches.group[matches.memorized], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}
