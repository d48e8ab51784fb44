"""Numerical contract shared by the dedup kernels: unit rows, float32 error bounds, argument checks.

Embeddings are float32 rows L2-normalised to float32 precision (every row must
satisfy ``| ||x|| - 1 | <= 1e-4``; renormalise in float32 otherwise), so the
cosine of two rows is their inner product. Error bounds follow Higham,
"Accuracy and Stability of Numerical Algorithms", 2nd ed., Thm. 3.1
(gamma_d for a d-term dot product).
"""
from __future__ import annotations

import numpy as np

NORM_TOLERANCE = 1e-4
"""Accepted ``| ||x|| - 1 |`` for input rows and centroids."""


_U32 = 2.0**-24  # unit roundoff of float32


def gamma(d: int) -> float:
    """Worst-case relative rounding error of a d-term float32 dot product (Higham's gamma_d)."""
    du = d * _U32
    if du >= 0.5:
        raise ValueError(f"dimension d={d} too large for float32 error bounds")
    return du / (1.0 - du)


def decision_band(d: int) -> float:
    """Half-width of the float64 re-check band of the pair decision, for dimension ``d``.

    ``2 * gamma_d + 2^-20``: bounds the float32 rounding error of a d-term dot
    product of unit vectors (6.2e-5 at d = 512). A float32 tile value outside
    ``[t - band, t + band)`` decides ``>= t`` exactly as float64 would.
    """
    return 2.0 * gamma(int(d)) + 2.0**-20


def check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    return t


def check_block(block: int) -> int:
    b = int(block)
    if b < 1:
        raise ValueError(f"block must be >= 1, got {block!r}")
    return b


def unit_rows(name: str, x: np.ndarray, d: int | None = None) -> np.ndarray:
    """Return ``x`` as C-contiguous float32 (n, d) after checking unit row norms (O(n d))."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, d), got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise ValueError(f"{name} has dimension {x.shape[1]}, expected {d}")
    if x.shape[0]:
        dev = np.abs(np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)) - 1.0)
        bad = int(np.argmax(dev))
        if not dev[bad] <= NORM_TOLERANCE:  # also catches NaN
            raise ValueError(
                f"{name} rows must be L2-normalised (|norm - 1| <= {NORM_TOLERANCE}); "
                f"row {bad} has norm {1.0 + dev[bad]:.6g} (renormalise in float32)"
            )
    return x


def int_array(name: str, values: np.ndarray, n: int) -> np.ndarray:
    """Return ``values`` as (n,) int64, checking shape and integer dtype."""
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)

