"""Partitioning for the exact pair search: spherical k-means centroids and assignment with bounded spill.

1. :func:`train_centroids` -- spherical k-means on a sample gives ``k``
   partition centroids.
2. :func:`assign_with_spill` -- every embedding gets one *home* partition (its
   nearest centroid) and is copied as a *visitor* into the few other partitions
   where a near-duplicate of it could live (bounded spill, below).

The pair search over the partitions is :mod:`models.dedup.search`.

Spill bound (why the partitioned search is exact)
--------------------------------------------------
Let ``t`` be the cosine threshold and ``theta = arccos(t)``. Take a pair x, y
with ``cos(x, y) >= t`` where x is homed in partition h (centroid c_h) and y in
partition j != h. Because y chose c_j, ``(c_j - c_h) . y >= 0``: y lies in the
half-space of points at least as close to c_j as to c_h. x is within angle
theta of y, so x is within angle theta of that half-space, which means its
normalised margin ``m_j(x) = (c_h - c_j) . x / |c_h - c_j|`` is at most
``sin(theta) = sqrt(1 - t^2)``. Spilling x as a visitor into every partition
j != h with ``m_j(x) <= sqrt(1 - t^2)`` therefore puts x next to every
partner y homed elsewhere, and homes x homes covers partners homed with x:
recall is exactly 1.0. :func:`assign_with_spill` caps the spill at the
``max_spill`` partitions with the smallest margin (bounded spill); with
``max_spill = k - 1`` nothing is cut and recall stays exact, with a smaller cap
recall is measured, not guaranteed (a pair across a cut boundary is lost only
if *both* endpoints drop the other's partition). At t = 0.95 the bound is
sin(theta) = 0.312. The implementation subtracts the float32 rounding of the
centroid scores (4 gamma_d, 1.2e-4 at d = 512) from the score gap and widens
the bound for the 1e-4 norm tolerance, so exactness holds for computed, not
just ideal, scores.
"""
from __future__ import annotations

import math

import faiss
import numpy as np

from models.dedup.numerics import NORM_TOLERANCE, check_block, check_threshold, gamma, unit_rows

DEFAULT_MAX_SPILL = 4
"""Default spill cap (see :func:`assign_with_spill`). Bounds the pair work at
(0.5 + 4) / 0.5 = 9x that of no-spill clustering; on the planted test and
benchmark sets recall is >= 0.9999 with it, 1.0 in most runs."""

_SCRATCH_BYTES = 64 << 20  # cap on gathered-centroid scratch in assign_with_spill


def train_centroids(sample: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """Spherical k-means partition centroids.

    Args:
        sample: (n, d) float32, L2-normalised rows (other float dtypes are cast).
        k: requested number of centroids; clamped to ``n``.
        seed: faiss k-means seed (initial centroids and subsampling).
        niter: Lloyd iterations.

    Returns:
        (min(k, n), d) float32 centroids, L2-normalised. Identical for identical
        (sample, k, seed, niter) on the same hardware and thread count.

    faiss subsamples to 256 points per centroid: cost
    O(niter * min(n, 256 k) * k * d) flops, memory the float32 sample plus
    faiss' blocked assignment buffers. Runs on GPU only when
    ``faiss.get_num_gpus() > 0`` (GPU results are deterministic per device,
    not bit-identical to CPU ones).
    """
    x = unit_rows("sample", sample)
    n, d = x.shape
    if n < 1:
        raise ValueError("sample must contain at least one row")
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k!r}")
    if int(niter) < 1:
        raise ValueError(f"niter must be >= 1, got {niter!r}")
    k_eff = min(int(k), n)
    km = faiss.Kmeans(
        d,
        k_eff,
        niter=int(niter),
        seed=int(seed),
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small samples are fine; silences faiss' stderr warning
        gpu=faiss.get_num_gpus() > 0,
    )
    km.train(x)
    c = np.ascontiguousarray(km.centroids, dtype=np.float32).reshape(k_eff, d)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    return (c / np.maximum(norms, np.float32(1e-30))).astype(np.float32, copy=False)


def assign_with_spill(
    x: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    max_spill: int = DEFAULT_MAX_SPILL,
    block: int = 65536,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Home partition plus bounded spill partitions for each row.

    ``home[i]`` is the centroid with the largest inner product with ``x[i]``.
    ``x[i]`` is spilled as a visitor into partition ``j != home[i]`` when its
    normalised margin ``m_j = (c_h - c_j) . x / |c_h - c_j|`` is at most
    ``sin(arccos(threshold)) = sqrt(1 - threshold^2)``: any partner y with
    ``cos(x, y) >= threshold`` homed in j forces ``m_j <= sqrt(1 - t^2)``
    (proof in the module docstring), so spilling into *all* such j gives
    exact recall. Spill is capped at the ``max_spill`` qualifying partitions
    with the smallest margins, chosen among the ``min(k, 2 * max_spill + 1)``
    centroids with the largest inner product (faiss search). With
    ``max_spill = k - 1`` every centroid is a candidate, nothing is capped and
    recall is exactly 1.0; smaller caps trade recall (measured, not
    guaranteed) for less work. To stay exact for computed (not ideal)
    scores, the score gap is reduced by ``4 gamma_d`` (float32 rounding of
    faiss' scores, 1.2e-4 at d = 512) and the bound is widened for the
    :data:`NORM_TOLERANCE` on row norms.

    Args:
        x: (n, d) float32, L2-normalised rows.
        centroids: (k, d) float32, L2-normalised rows (e.g. :func:`train_centroids`).
        threshold: cosine threshold t in (0, 1].
        max_spill: most visitor partitions per row, 0 <= max_spill (values >= k
            behave as k - 1).
        block: rows per faiss search call.

    Returns:
        ``home``: (n,) int64 partition index in [0, k).
        ``(indptr, part)``: CSR spill lists; ``part[indptr[i]:indptr[i+1]]``
        (int64, never containing ``home[i]``) are the visitor partitions of row
        i in increasing margin order; ``indptr`` is (n + 1,) int64.

    Cost: O(n k d) flops for the faiss search plus O(u d) for centroid
    distances, u = distinct (home, candidate) pairs per block (<= block L,
    L = min(k, 2 max_spill + 1)); memory: the (n,) home and CSR outputs
    (O(n max_spill)), O(block L) search/margin scratch (~40 B per entry), and
    at most 64 MiB for gathered centroids. Never O(n k) memory.
    """
    t = check_threshold(threshold)
    c = unit_rows("centroids", centroids)
    k, d = c.shape
    if k < 1:
        raise ValueError("centroids must contain at least one row")
    x = unit_rows("x", x, d)
    if int(max_spill) < 0:
        raise ValueError(f"max_spill must be >= 0, got {max_spill!r}")
    block = check_block(block)
    n = x.shape[0]
    max_spill = min(int(max_spill), k - 1)
    n_cand = min(k, 2 * max_spill + 1)

    eta = NORM_TOLERANCE
    radius, slack = spill_bounds(t, d)

    index = faiss.IndexFlatIP(d)
    index.add(c)
    home = np.empty(n, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    c64 = c.astype(np.float64)
    for s in range(0, n, block):
        scores, labels = index.search(x[s : s + block], n_cand)
        m = labels.shape[0]
        home[s : s + m] = labels[:, 0]
        if n_cand == 1:
            continue
        cand = labels[:, 1:]
        dist = _centroid_distances(c64, np.broadcast_to(labels[:, :1], cand.shape), cand) * (1.0 + eta)
        gap = np.maximum(scores[:, :1] - scores[:, 1:] - slack, 0.0)
        # dist == 0 only for coincident centroids, whose scores tie within slack: margin 0, spill.
        margin = np.divide(gap, dist, out=np.zeros_like(gap, dtype=np.float64), where=dist > 0)
        margin[(dist == 0) & (gap > 0)] = np.inf
        margin[margin > radius] = np.inf
        order = np.argsort(margin, axis=1, kind="stable")[:, :max_spill]
        ok = np.isfinite(np.take_along_axis(margin, order, axis=1))
        counts[s : s + m] = ok.sum(axis=1)
        parts.append(np.take_along_axis(cand, order, axis=1)[ok])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    part = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
    return home, (indptr, part)


def spill_bounds(threshold: float, d: int) -> tuple[float, float]:
    """``(radius, slack)`` of the spill test for computed float32 scores.

    ``radius = sin(arccos(t_eff))`` with ``t_eff = t / (1 + eta)^2`` widened for the
    :data:`NORM_TOLERANCE` ``eta`` on row norms; ``slack = 4 gamma_d (1 + eta)^3 / (1 - eta)``
    bounds the float32 rounding of a score gap ``x.c_h - x.c_j``. A row x of
    partition h is within the spill bound of partition j when
    ``max(gap - slack, 0) <= radius * |c_h - c_j| * (1 + eta)``.
    """
    eta = NORM_TOLERANCE
    t_eff = min(1.0, float(threshold) / (1.0 + eta) ** 2)
    return math.sqrt(1.0 - t_eff * t_eff), 4.0 * gamma(int(d)) * (1.0 + eta) ** 3 / (1.0 - eta)


def near_boundary(x: np.ndarray, centroids: np.ndarray, home: int, other: int, threshold: float) -> np.ndarray:
    """(n,) bool: rows ``x`` (n, d) homed in ``home`` that lie within the spill bound of partition ``other``.

    Only these rows can have a partner with cosine >= ``threshold`` homed in
    ``other`` (the spill bound with the roles of the pair swapped: the partner
    chose ``other``, so the row is within angle theta of ``other``'s half-space),
    so a partition searches its visitors from ``other`` against these homes
    only. Same computed-score slack as :func:`assign_with_spill`, so no pair
    that the full homes x visitors search finds is lost. Cost: 2 n d flops.
    """
    c = np.asarray(centroids, np.float32)
    radius, slack = spill_bounds(threshold, c.shape[1])
    gap = x @ c[home] - x @ c[other]  # float32 scores, as faiss computes them in assign_with_spill
    dist = float(np.linalg.norm(c[home].astype(np.float64) - c[other].astype(np.float64)))
    return np.maximum(gap - slack, 0.0) <= radius * dist * (1.0 + NORM_TOLERANCE)


def _centroid_distances(c64: np.ndarray, h: np.ndarray, j: np.ndarray) -> np.ndarray:
    """float64 ``|c64[h] - c64[j]|`` for index arrays of equal shape.

    Distances are computed once per distinct (h, j) pair (neighbouring rows
    share them), in chunks of at most 64 MiB of float64 scratch, so memory is
    O(h.size) plus the scratch, never O(k^2) or O(h.size * d).
    """
    k, d = c64.shape
    key, inv = np.unique(h.astype(np.int64) * k + j, return_inverse=True)
    uh, uj = np.divmod(key, k)
    out = np.empty(key.size, dtype=np.float64)
    step = max(1, _SCRATCH_BYTES // (2 * 8 * d))  # two gathered (step, d) float64 blocks
    for s in range(0, key.size, step):
        diff = c64[uh[s : s + step]]
        diff -= c64[uj[s : s + step]]
        out[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out[inv.reshape(h.shape)]

