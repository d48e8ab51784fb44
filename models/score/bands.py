"""Similarity bands for SIDE's AMS / UMS, in the space they are calibrated in (plain numpy).

SIDE's published bands (low < 0.5, mid 0.5-0.6, high > 0.6; arXiv:2410.02467 v7,
Fig. 4) are SSCD cosines. They mean nothing on CLIP, pixel-DCT or raw-vector
cosines, so the stage never applies them there:

* :func:`calibrated_cosine_bands`: bands on an embedding's cosine set from the
  training set itself. "Copies" are the planted / found duplicates (each
  member of a dedup group against its group's first member); "ordinary" is
  the nearest-neighbour cosine of rows in no group. high = (max(q05 copies,
  q99 ordinary), 1], mid = (q95 ordinary, high's lower end], low =
  [q50 ordinary, q95 ordinary]: high is as close as a copy and closer than
  99 % of ordinary nearest neighbours. Without groups only the ordinary
  quantiles are used (high = above q99).
* :func:`pixel_l2_bands`: normalised (RMS) L2 on pixels in [-1, 1] (the units of
  pixel-space targets) for small images, from Carlini et al.'s (l2, delta)
  extraction (arXiv:2301.13188, Sec. 4.2): high = [0, delta] with delta the
  ground-truth criterion's (:class:`models.score.memorized.Criterion`, 0.1 on
  [0, 1] pixels), mid (delta, 1.5 delta], low (1.5 delta, 2 delta]; doubled for [-1, 1].
"""
from __future__ import annotations

import numpy as np

from models.score.extraction_metrics import Band, SimilarityBands

def pixel_l2_bands(scale: float = 2.0) -> SimilarityBands:
    """Normalised-L2 bands for pixels spanning ``scale`` units (2 for [-1, 1])."""
    from models.score.memorized import Criterion

    delta = Criterion().delta
    hi, mid, low = (scale * e * delta for e in (1.0, 1.5, 2.0))
    return SimilarityBands(bands=(Band("low", mid, low, lo_closed=False, hi_closed=True),
                                  Band("mid", hi, mid, lo_closed=False, hi_closed=True),
                                  Band("high", 0.0, hi, lo_closed=True, hi_closed=True)), measure="normalized_l2")


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_other_cosine(z: np.ndarray, rows: np.ndarray, block: int = 512) -> np.ndarray:
    """(len(rows),) max cosine of each row ``rows[i]`` of unit ``z`` (N, D) to any other row. O(len(rows) * N * D)."""
    out = np.empty(len(rows))
    for lo in range(0, len(rows), block):
        r = rows[lo:lo + block]
        s = z[r] @ z.T
        s[np.arange(len(r)), r] = -np.inf
        out[lo:lo + block] = s.max(axis=1)
    return out


def band_edges(low: float, mid: float, high: float) -> list[Band]:
    """Disjoint low / mid / high bands from three nondecreasing cosine edges (empty bands left out).

    high = (high, 1] (or [1, 1] when high >= 1), mid = (mid, high], low = [low, mid]; a band whose
    interval would be empty or overlap the next one is dropped or shortened to end where that one starts.
    """
    high = min(high, 1.0)
    mid, low = min(mid, high), min(low, mid, high)
    open_high = high < 1.0
    out = [Band("high", high, 1.0, lo_closed=False, hi_closed=True) if open_high else Band("high", 1.0, 1.0)]
    upper, closed = high, open_high
    if mid < high:
        out.insert(0, Band("mid", mid, high, lo_closed=False, hi_closed=closed))
        upper, closed = mid, True
    if low < upper or (low == upper and closed):
        out.insert(0, Band("low", low, upper, lo_closed=True, hi_closed=closed))
    return out


def calibrated_cosine_bands(x: np.ndarray, by_group: dict, singletons: list, seed: int = 0,
                            max_rows: int = 1000) -> tuple[SimilarityBands, dict]:
    """Bands on the cosine of the embedding ``x`` (N, D), calibrated on its copies and ordinary neighbours.

    Args:
        x: (N, D) training embeddings (any norm; normalised here).
        by_group: {group id: [row indices]} of duplicate groups (size > 1).
        singletons: rows in no group (the ordinary rows).
        seed: sampling seed; max_rows: at most this many ordinary rows and copy pairs are used.

    Returns:
        (bands, calibration): calibration holds the quantiles and counts used (for ``side_summary.json``).

    Raises:
        ValueError: fewer than 2 training rows, or no ordinary row to calibrate on.
    """
    z = _unit(x)
    if z.shape[0] < 2:
        raise ValueError("calibrating similarity bands needs at least 2 training rows")
    rng = np.random.default_rng(seed)
    ordinary = np.asarray(singletons, np.int64)
    if ordinary.size == 0:
        raise ValueError("calibrating similarity bands needs rows in no duplicate group (every row is in a group)")
    ordinary = rng.permutation(ordinary)[:max_rows]
    nn = nearest_other_cosine(z, ordinary)
    pairs = [(rows[0], j) for rows in by_group.values() if len(rows) > 1 for j in rows[1:]]
    copies = np.array([float(z[a] @ z[b]) for a, b in (pairs if len(pairs) <= max_rows else
                       [pairs[i] for i in rng.permutation(len(pairs))[:max_rows]])])
    q50, q95, q99 = (float(np.quantile(nn, q)) for q in (0.5, 0.95, 0.99))
    high_lo = max(float(np.quantile(copies, 0.05)), q99) if copies.size else q99
    high_lo = min(high_lo, 1.0)
    bands = band_edges(q50, q95, high_lo)
    calibration = {"ordinary_rows": int(nn.size), "copy_pairs": int(copies.size),
                   "ordinary_nn_cosine_q50_q95_q99": [q50, q95, q99],
                   "copy_cosine_q05": float(np.quantile(copies, 0.05)) if copies.size else None,
                   "copies_separable": bool(copies.size and np.quantile(copies, 0.05) > q99)}
    return SimilarityBands(bands=tuple(bands), measure="cosine"), calibration
