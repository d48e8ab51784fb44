"""One kept image per duplicate group: the representative rule."""
from __future__ import annotations

import numpy as np

from models.dedup.numerics import int_array


def choose_representatives(
    group_labels: np.ndarray, width: np.ndarray, height: np.ndarray, keys: np.ndarray
) -> np.ndarray:
    """Pick exactly one representative per group.

    Rule: the member with the largest pixel area ``width * height``; ties go
    to the lexicographically smallest key (Unicode code-point order, as
    Python ``str`` comparison); remaining ties (equal keys) to the first row.

    Args:
        group_labels: (n,) int64 component label per row.
        width: (n,) int64 image width in pixels (>= 0).
        height: (n,) int64 image height in pixels (>= 0).
        keys: (n,) array of str (e.g. the LAION ``key`` column).

    Returns:
        (n,) bool, True for the one kept row of each group.

    Cost: one sort of the keys plus one lexsort, O(n log n); memory O(n)
    plus the keys as a fixed-width unicode array.
    """
    g = np.asarray(group_labels, dtype=np.int64).ravel()
    n = g.size
    w = int_array("width", np.asarray(width).ravel(), n)
    h = int_array("height", np.asarray(height).ravel(), n)
    k = np.asarray(keys, dtype=str).ravel()
    if k.size != n:
        raise ValueError(f"keys must have {n} entries, got {k.size}")
    if n and (w.min() < 0 or h.min() < 0):
        raise ValueError(f"width and height must be >= 0, got minima {w.min()} and {h.min()}")
    _, key_rank = np.unique(k, return_inverse=True)
    order = np.lexsort((key_rank.ravel(), -(w * h), g))
    first = np.ones(n, dtype=bool)
    first[1:] = g[order][1:] != g[order][:-1]
    is_rep = np.zeros(n, dtype=bool)
    is_rep[order[first]] = True
    return is_rep
