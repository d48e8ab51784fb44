"""Significance tests shared by the trigger tables: hypergeometric / Fisher tails, Benjamini-Hochberg.

Plain numpy/scipy, vectorised over broadcast count arrays. The trigger
tables test the word- and object-level duplication of Naseh, Roh &
Houmansadr, "Memory Triggers" (arXiv:2312.03692); FDR control is
Benjamini & Hochberg (1995, JRSS-B 57(1), step-up procedure), computed by
``scipy.stats.false_discovery_control``.

Notation: N rows in total; n_w rows whose caption contains keyword w; G a
near-duplicate group with n_G rows; n_{w,G} rows of G containing w; n_o rows
whose image is tagged with object o; n_{w,o} rows containing w whose image is
tagged with o.

The tables built on these: :mod:`models.mine.word_triggers` (keyword <->
duplicate group) and :mod:`models.mine.object_triggers` (keyword <->
unmentioned object); count arrays from per-row lists: :mod:`models.mine.counting`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "benjamini_hochberg",
    "check_fraction",
    "fisher_greater",
    "hypergeom_sf_pvalue",
    "int_array",
    "rank_rows",
    "row_names",
    "same_length",
]

# Floor for -log10 q in rankings (q can underflow to exactly 0).
TINY = 1e-300


def int_array(x: object, name: str, *, ndim: int | None = None) -> np.ndarray:
    """Return ``x`` as an int64 array; ValueError for non-integer or negative values."""
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be numeric, got dtype object")
    if arr.size and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold finite integer values")
    elif arr.size and arr.dtype.kind not in "iub":
        raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got min {arr.min()}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr


def same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have equal length, got {lengths}")
    return next(iter(lengths.values())) if lengths else 0


def check_fraction(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


# ---------------------------------------------------------------------------
# Tests and FDR
# ---------------------------------------------------------------------------


def hypergeom_sf_pvalue(k: object, M: object, n: object, N: object) -> np.ndarray:
    """One-sided upper-tail p-value P(X >= k), X ~ Hypergeom(M, n, N).

    Population ``M``, ``n`` successes in it, ``N`` draws (scipy's
    parametrisation), i.e. ``scipy.stats.hypergeom.sf(k - 1, M, n, N)``.
    Arguments broadcast; all must be non-negative integers with ``n <= M`` and
    ``N <= M``. ``k <= 0`` gives 1.0; ``k > min(n, N)`` gives 0.0.

    Returns:
        float64 array of the broadcast shape (0-d for scalar inputs), in [0, 1].

    Raises:
        ValueError: negative/non-integer inputs or ``n > M`` / ``N > M``.
    """
    k_arr = np.asarray(k)
    if k_arr.dtype.kind == "f" and k_arr.size and np.any(k_arr != np.round(k_arr)):
        raise ValueError("k must hold integer values")
    k_arr = k_arr.astype(np.int64)
    M_a, n_a, N_a = (int_array(v, nm) for v, nm in ((M, "M"), (n, "n"), (N, "N")))
    k_arr, M_a, n_a, N_a = np.broadcast_arrays(k_arr, M_a, n_a, N_a)
    if np.any(n_a > M_a):
        raise ValueError("n (successes) must be <= M (population)")
    if np.any(N_a > M_a):
        raise ValueError("N (draws) must be <= M (population)")
    p = np.ones(k_arr.shape, dtype=np.float64)
    need = k_arr > 0
    if np.any(need):
        p[need] = stats.hypergeom.sf(k_arr[need] - 1, M_a[need], n_a[need], N_a[need])
    return np.clip(p, 0.0, 1.0)


def fisher_greater(a: object, b: object, c: object, d: object) -> np.ndarray:
    """One-sided (``alternative='greater'``) Fisher exact p for 2x2 tables [[a, b], [c, d]].

    Equal to P(X >= a) for X ~ Hypergeom(M=a+b+c+d, n=a+b, N=a+c), exactly what
    ``scipy.stats.fisher_exact(table, alternative='greater')`` returns, but
    vectorised over broadcast arrays of non-negative integer cells.

    Returns:
        float64 array of the broadcast shape (0-d for scalars).
    """
    a_, b_, c_, d_ = (int_array(v, nm) for v, nm in ((a, "a"), (b, "b"), (c, "c"), (d, "d")))
    a_, b_, c_, d_ = np.broadcast_arrays(a_, b_, c_, d_)
    return hypergeom_sf_pvalue(a_, a_ + b_ + c_ + d_, a_ + b_, a_ + c_)


def benjamini_hochberg(p: object, n_tests: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values).

    ``q_(i) = min_{j >= i} min(1, m * p_(j) / j)`` over the ascending order,
    returned in the input order; ties get equal q (Benjamini & Hochberg 1995,
    step-up; ``scipy.stats.false_discovery_control``). NaN entries are not tests:
    they are excluded from ``m`` and get NaN q.

    Args:
        p: 1-D array of p-values in [0, 1] (NaN allowed), shape (K,).
        n_tests: family size m; default = number of non-NaN p. A larger m
            accounts for tests not passed in (all treated as p = 1, which
            leaves the formula unchanged except for m).

    Returns:
        float64 array of shape (K,).

    Raises:
        ValueError: ``p`` not 1-D, values outside [0, 1], or ``n_tests`` smaller
            than the number of non-NaN p-values.
    """
    p_arr = np.asarray(p, dtype=np.float64)
    if p_arr.ndim != 1:
        raise ValueError(f"p must be 1-D, got shape {p_arr.shape}")
    valid = ~np.isnan(p_arr)
    pv = p_arr[valid]
    if pv.size and (pv.min() < 0.0 or pv.max() > 1.0):
        raise ValueError(f"p-values must lie in [0, 1], got range [{pv.min()}, {pv.max()}]")
    m = pv.size if n_tests is None else int(n_tests)
    if m < pv.size:
        raise ValueError(f"n_tests must be >= the number of non-NaN p-values ({pv.size}), got {n_tests!r}")
    q = np.full(p_arr.shape, np.nan)
    if pv.size == 0:
        return q
    # scipy's step-up q over the n passed p-values; a family of m > n (tests at p = 1 not passed in) scales
    # every unclipped q by m / n (those tests rank last and never lower a running minimum): q_m = min(1, q_n m / n).
    qv = stats.false_discovery_control(pv, method="bh")
    if m > pv.size:
        qv = np.minimum(1.0, qv * (m / pv.size))
    q[valid] = qv
    return q


def rank_rows(flagged: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """1-based rank: flagged first, then ``keys`` ascending (np.lexsort, first key most significant)."""
    order = np.lexsort(tuple(reversed((~flagged, *keys))))
    rank = np.empty(flagged.size, dtype=np.int64)
    rank[order] = np.arange(1, flagged.size + 1)
    return rank


def row_names(names: Sequence[str] | np.ndarray | None, size: int, what: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(size)]
    names = list(names)
    if len(names) != size:
        raise ValueError(f"{what} has {len(names)} names but the count arrays describe {size}")
    return [str(x) for x in names]

