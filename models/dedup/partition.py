"""Partitioning for the exact pair search: spherical k-means centroids and assignment with bounded spill.

1. :func:`train_centroids` -- spherical k-means on a sample gives ``k``
   partition centroids.
2. :func:`assign_with_spill` -- every embedding gets one *home* partition (its
   nearest centroid) and is copied as a *visitor* into the few other partitions
   where a near-duplicate of it could live (bounded spill, below).

Both stay bounded as N grows: the caller caps the training sample
(:data:`DEFAULT_MAX_TRAIN_ROWS`), and above :data:`DEFAULT_MAX_DIRECT_K`
partitions :func:`train_two_level` gives a :class:`TwoLevel` quantizer that
:func:`assign_with_spill` searches in O(sqrt(K)) per row instead of O(K).

The pair search over the partitions is :mod:`models.dedup.search`.

Spill bound (why the partitioned search is exact)
--------------------------------------------------
Let ``t`` be the cosine threshold and ``theta = arccos(t)``. Take a pair x, y
with ``cos(x, y) >= t`` where x is homed in partition h (centroid c_h) and y in
partition j != h. The bisector of unit centroids c_h and c_j is the hyperplane
``(c_h - c_j) . z = 0`` through the origin; x lies on h's side of it, y on j's
side. Write ``m_j(x) = (c_h - c_j) . x / |c_h - c_j|`` for x's normalised
margin to j (>= 0 because x chose c_h) and ``m_h(y)`` likewise (>= 0). Then

    m_j(x) + m_h(y) = (c_h - c_j) . (x - y) / |c_h - c_j| <= |x - y| = 2 sin(theta / 2)

(Cauchy-Schwarz; ``|x - y|^2 = 2 - 2 cos(x, y)``), so *at least one* of the
two margins is at most ``r = sin(theta / 2) = sqrt((1 - t) / 2)``. Spilling
every row as a visitor into every partition j != h with ``m_j <= r`` thus
puts, for every pair homed apart, one of its rows next to the other as a
home, and each partition searches homes x homes and homes x visitors:
recall is exactly 1.0. At t = 0.95, r = 0.158. The one-sided bound (x alone
must reach y's partition: ``m_j(x) <= sin(theta) = 0.312``) is about twice
as wide, and the number of centroids within a margin grows fast with it, so
the two-sided rule spills far fewer rows (measured in the README's dedup
benchmark table). The one-sided bound is still the right one for
:func:`near_boundary` (which homes can meet a visitor from j at all).

:func:`assign_with_spill` caps the spill at the ``max_spill`` partitions with
the smallest margin (bounded spill); with ``max_spill = k - 1`` nothing is
cut and recall stays exact, with a smaller cap recall is measured, not
guaranteed. The implementation subtracts the float32 rounding of the
centroid scores (4 gamma_d, 1.2e-4 at d = 512) from the score gap and widens
the bound for the 1e-4 norm tolerance, so exactness holds for computed, not
just ideal, scores.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import faiss
import numpy as np

from models.dedup.numerics import NORM_TOLERANCE, check_block, check_threshold, gamma, unit_rows

DEFAULT_MAX_SPILL = 8
"""Default spill cap (see :func:`assign_with_spill`). Under the two-sided bound
few rows reach it (topic-clustered 1M x 256: 0.66 visits a row, 5.8 % of rows
capped); measured on 3M x 256, cap 8 against 4: recall 0.99974 against
0.99811 on the planted pairs and 0.99926 against 0.99557 on a sampled exact
search, at the same wall time (189 s against 192 s)."""

DEFAULT_MAX_TRAIN_ROWS = 262144
"""Default cap on the k-means training sample (rows), whatever N: 0.5 GiB of
float16 at D = 1024, gathered for the one training step."""

DEFAULT_MAX_DIRECT_K = 8192
"""Default largest K trained and searched flat; above it :class:`TwoLevel`.
Flat assignment costs K dot products a row; it is exact (every row's home is
its nearest centroid, as the spill bound assumes) and flat k-means places
centroids better than cells trained apart (3M x 256: 0.91 spill visits a row
against 1.7 for the refined two-level quantizer). At 10M x 256 (K = 5,000)
the two-level quantizer lost recall (0.975 on the planted pairs) where the
homes it picks are not the nearest centroids, so it starts above 8,192
partitions (16M rows at the default 2,000 a partition)."""

DEFAULT_NPROBE = 8
"""Default coarse cells probed per row by :class:`TwoLevel` assignment."""

DEFAULT_REFINE = 10
"""Default global Lloyd iterations of the fine centroids after per-cell training (:func:`train_two_level`)."""

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


@dataclass(frozen=True, eq=False)
class TwoLevel:
    """A two-level (coarse then fine) quantizer: partition j is fine centroid ``fine[j]``.

    ``members[offsets[c]:offsets[c + 1]]`` are the fine centroids of coarse cell
    c. A row is scored against the fine centroids of its ``nprobe`` nearest
    coarse cells only: O(K1 + nprobe K / K1) dot products a row instead of
    O(K) (the inverted-file idea of Jegou et al., IVFADC, arXiv:1102.3828 /
    TPAMI 2011 Sec. 3.1). The spill rule of :func:`assign_with_spill` then runs
    on those fine centroids unchanged: a row's home is its nearest fine
    centroid whenever that centroid lies in a probed cell (always with
    ``nprobe >= K1``), and its spill candidates are the nearest probed ones.

    Shapes: ``coarse`` (K1, D) float32 and ``fine`` (K, D) float32 unit rows,
    ``members`` (K,) int64, ``offsets`` (K1 + 1,) int64. Memory 4 (K + K1) D bytes.
    """

    coarse: np.ndarray
    fine: np.ndarray
    members: np.ndarray
    offsets: np.ndarray
    nprobe: int = DEFAULT_NPROBE

    def __post_init__(self):
        k1, k = self.coarse.shape[0], self.fine.shape[0]
        if self.coarse.ndim != 2 or self.fine.ndim != 2 or self.coarse.shape[1] != self.fine.shape[1]:
            raise ValueError(f"coarse {self.coarse.shape} and fine {self.fine.shape} must be (K1, D) and (K, D)")
        if self.offsets.shape != (k1 + 1,) or self.offsets[0] != 0 or self.offsets[-1] != k \
                or np.any(np.diff(self.offsets) < 0):
            raise ValueError(f"offsets must rise from 0 to K = {k} over K1 + 1 = {k1 + 1} entries")
        if not np.array_equal(np.sort(self.members), np.arange(k)):
            raise ValueError("members must list every fine centroid exactly once")
        if int(self.nprobe) < 1:
            raise ValueError(f"nprobe must be >= 1, got {self.nprobe!r}")

    @property
    def k(self) -> int:
        return int(self.fine.shape[0])

    def search(self, x: np.ndarray, n_cand: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n_cand`` best probed fine centroids of each row of ``x`` (m, D) float32.

        Returns (m, n_cand) float32 scores, descending, and (m, n_cand) int64
        fine indices (-1 with score -inf where the probed cells hold fewer).
        One faiss inverted-file search (``IndexIVFFlat``, inner product) whose
        lists are the cells' fine centroids: the probed lists are scanned in
        C++, so no row is copied per probed cell (the per-cell gathers of the
        first version took 45 s at 3M rows, the flat search 19 s, this 12 s).
        """
        scores, labels = self._index().search(np.ascontiguousarray(x, np.float32), int(n_cand))
        scores[labels < 0] = -np.inf
        return scores, labels

    def _index(self):
        cached = _IVF_CACHE.get(self)
        if cached is None:  # built once per process and quantizer; faiss indexes do not pickle, so not a field
            d = self.coarse.shape[1]
            coarse = faiss.IndexFlatIP(d)
            coarse.add(self.coarse)
            index = faiss.IndexIVFFlat(coarse, d, self.coarse.shape[0], faiss.METRIC_INNER_PRODUCT)
            index.is_trained = True
            lists = np.repeat(np.arange(self.coarse.shape[0], dtype=np.int64), np.diff(self.offsets))
            fine = np.ascontiguousarray(self.fine[self.members])
            ids = np.ascontiguousarray(self.members, np.int64)
            index.add_core(len(ids), faiss.swig_ptr(fine), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
            index.nprobe = min(int(self.nprobe), self.coarse.shape[0])
            cached = _IVF_CACHE[self] = (index, coarse)  # the quantizer must live as long as the index
        return cached[0]


_IVF_CACHE: "weakref.WeakKeyDictionary[TwoLevel, object]" = weakref.WeakKeyDictionary()


def train_two_level(sample: np.ndarray, k: int, k1: int, seed: int, niter: int = 20,
                    nprobe: int = DEFAULT_NPROBE, refine: int = DEFAULT_REFINE) -> TwoLevel:
    """Spherical k-means in two levels: ``k1`` coarse centroids, then per coarse cell its share of ``k`` fine ones.

    Each cell's fine centroids are trained (:func:`train_centroids`, seed
    ``seed + 1 + cell``) on the sample rows nearest that coarse centroid; the
    ``min(k, n)`` fine centroids are shared among non-empty cells in
    proportion to their rows (largest remainder, at least one per non-empty
    cell, at most its rows). Cells trained apart crowd fine centroids on both
    sides of a cell boundary, and a row near two close centroids is within
    the spill bound of both, so ``refine`` global Lloyd iterations follow:
    every sample row is assigned as the pipeline will assign it (its
    ``nprobe`` cells, :meth:`TwoLevel.search`) and each fine centroid moves to
    its rows' normalised mean; then each fine centroid is listed in its
    nearest coarse centroid's cell (:func:`_recell`). Each iteration raises
    the sample's summed cosine to its home (never lowers it: the probed set
    of a row depends on the coarse level only). Measured on 3M x 256
    topic-clustered rows, K = 1,500: spill visits a row 3.93 -> 1.72 with 10
    iterations (no change from 10 to 40; flat k-means 0.91). Cost
    O(niter n k1 d + niter n (k / k1) d + refine n (k1 + nprobe k / k1) d)
    flops, memory the float32 sample; ``fine`` is ordered by cell (``members`` = arange).
    """
    x = unit_rows("sample", sample)
    n = x.shape[0]
    if n < 1:
        raise ValueError("sample must contain at least one row")
    if int(k) < 1 or int(k1) < 1:
        raise ValueError(f"k and k1 must be >= 1, got {k!r} and {k1!r}")
    k = min(int(k), n)
    coarse = train_centroids(x, min(int(k1), k), seed=seed, niter=niter)
    cell = _nearest(coarse, x)
    alloc = _allocate(k, np.bincount(cell, minlength=coarse.shape[0]))
    fine = [train_centroids(x[cell == c], int(a), seed=int(seed) + 1 + c, niter=niter)
            for c, a in enumerate(alloc) if a]
    offsets = np.zeros(len(alloc) + 1, np.int64)
    np.cumsum(alloc, out=offsets[1:])
    quantizer = TwoLevel(coarse, np.concatenate(fine), np.arange(k, dtype=np.int64), offsets, int(nprobe))
    for _ in range(int(refine)):
        quantizer = _lloyd_step(quantizer, x)
    return _recell(quantizer) if refine else quantizer


def _recell(q: TwoLevel) -> TwoLevel:
    """The same fine centroids, each listed in the cell of its nearest coarse centroid (refinement moves some
    across a cell boundary; a row that probes the cell it moved to must find it there)."""
    cell = _nearest(q.coarse, q.fine)
    order = np.argsort(cell, kind="stable")
    offsets = np.zeros(q.coarse.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(cell, minlength=q.coarse.shape[0]), out=offsets[1:])
    return TwoLevel(q.coarse, np.ascontiguousarray(q.fine[order]), np.arange(q.k, dtype=np.int64), offsets, q.nprobe)


def _nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n,) int64: the centroid with the largest inner product with each row of ``x`` (one faiss flat search)."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    return index.search(x, 1)[1][:, 0]


def _lloyd_step(q: TwoLevel, x: np.ndarray) -> TwoLevel:
    """One spherical Lloyd iteration of the fine centroids, rows assigned through the quantizer's probing."""
    home = q.search(x, 1)[1][:, 0]
    order = np.argsort(home, kind="stable")
    used, starts = np.unique(home[order], return_index=True)
    sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    fine = q.fine.astype(np.float64)
    fine[used] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-30)
    return TwoLevel(q.coarse, fine.astype(np.float32), q.members, q.offsets, q.nprobe)


def _allocate(k: int, rows: np.ndarray) -> np.ndarray:
    """(k1,) int64 fine centroids per cell: sum k, >= 1 per non-empty cell, <= its rows, else ~ proportional."""
    quota = k * rows / rows.sum()
    alloc = np.minimum(rows, np.maximum(np.floor(quota), rows > 0)).astype(np.int64)
    while alloc.sum() > k:  # the at-least-one rule overshot: take from the most over-served cell
        alloc[np.argmax(np.where(alloc > 1, alloc - quota, -np.inf))] -= 1
    while alloc.sum() < k:
        alloc[np.argmax(np.where(alloc < rows, quota - alloc, -np.inf))] += 1
    return alloc


def assign_with_spill(
    x: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    max_spill: int = DEFAULT_MAX_SPILL,
    block: int = 65536,
    distances: "CentroidDistances | None" = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Home partition plus bounded spill partitions for each row.

    ``home[i]`` is the centroid with the largest inner product with ``x[i]``.
    ``x[i]`` is spilled as a visitor into partition ``j != home[i]`` when its
    normalised margin ``m_j = (c_h - c_j) . x / |c_h - c_j|`` is at most
    ``sin(arccos(threshold) / 2) = sqrt((1 - threshold) / 2)``: of a pair with
    ``cos(x, y) >= threshold`` homed in h and j, at least one row is within
    that margin of the other's partition (proof in the module docstring), so
    spilling into *all* such j gives exact recall when every partition
    searches homes x homes and homes x visitors. Spill is capped at the ``max_spill`` qualifying partitions
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
        centroids: (k, d) float32, L2-normalised rows (e.g. :func:`train_centroids`),
            or a :class:`TwoLevel` quantizer (candidates among the fine centroids of
            the probed cells; the rule above runs on the fine centroids).
        threshold: cosine threshold t in (0, 1].
        max_spill: most visitor partitions per row, 0 <= max_spill (values >= k
            behave as k - 1).
        block: rows per faiss search call.
        distances: the centroids' :class:`CentroidDistances`, to share the computed centroid distances
            between calls (a process assigning many blocks); by default one for this call.

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
    quantizer = centroids if isinstance(centroids, TwoLevel) else None
    c = unit_rows("centroids", quantizer.fine if quantizer else centroids)
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

    home = np.empty(n, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    parts: list[np.ndarray] = []
    if distances is None:
        distances = CentroidDistances(c)
    elif distances.c64.shape != c.shape or not np.array_equal(distances.c64, c):
        raise ValueError("distances were made for other centroids")
    c64 = distances.c64
    diameter = 2.0 * float(np.sqrt(np.einsum("ij,ij->i", c64, c64)).max()) * (1.0 + eta)
    for s, scores, labels in _candidates(x, c, quantizer, n_cand, block):
        m = labels.shape[0]
        home[s : s + m] = labels[:, 0]
        if n_cand == 1:
            continue
        cand = labels[:, 1:]
        gap = np.maximum(scores[:, :1] - scores[:, 1:] - slack, 0.0)
        # |c_h - c_j| <= |c_h| + |c_j|: a gap beyond radius * that can not spill, whatever the distance
        # (most candidates; the distances below are gathered for the rest only)
        maybe = (cand >= 0) & (gap <= radius * diameter)  # cand < 0: two-level, fewer probed centroids
        r, col = np.nonzero(maybe)
        dist = distances(labels[r, 0], cand[r, col]) * (1.0 + eta)
        g = gap[r, col]
        # dist == 0 only for coincident centroids, whose scores tie within slack: margin 0, spill.
        mg = np.divide(g, dist, out=np.zeros_like(g, dtype=np.float64), where=dist > 0)
        mg[(dist == 0) & (g > 0)] = np.inf
        margin = np.full(gap.shape, np.inf)
        margin[r, col] = np.where(mg > radius, np.inf, mg)
        order = np.argsort(margin, axis=1, kind="stable")[:, :max_spill]
        ok = np.isfinite(np.take_along_axis(margin, order, axis=1))
        counts[s : s + m] = ok.sum(axis=1)
        parts.append(np.take_along_axis(cand, order, axis=1)[ok])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    part = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, np.int64)
    return home, (indptr, part)


def _candidates(x: np.ndarray, c: np.ndarray, quantizer: "TwoLevel | None", n_cand: int, block: int):
    """Yields ``(start, scores, labels)`` per block of rows: the ``n_cand`` best centroids by inner product.

    ``scores`` (m, n_cand) float32 descending, ``labels`` (m, n_cand) int64 centroid
    indices. One level: an exact faiss flat search over all k centroids. Two
    levels: the best among the fine centroids of each row's ``nprobe`` nearest
    coarse cells (label -1, score -inf where those hold fewer than ``n_cand``).
    """
    if quantizer is None:
        index = faiss.IndexFlatIP(c.shape[1])
        index.add(c)
        for s in range(0, x.shape[0], block):
            scores, labels = index.search(x[s : s + block], n_cand)
            yield s, scores, labels
        return
    for s in range(0, x.shape[0], block):
        scores, labels = quantizer.search(x[s : s + block], n_cand)
        yield s, scores, labels


def spill_bounds(threshold: float, d: int, one_sided: bool = False) -> tuple[float, float]:
    """``(radius, slack)`` of the spill test for computed float32 scores.

    ``radius`` is the two-sided bound ``sin(theta / 2)`` of the module docstring,
    widened for the :data:`NORM_TOLERANCE` ``eta`` on row norms: with norms up to
    ``1 + eta``, ``|x - y|^2 <= 2 (1 + eta)^2 - 2 t``, so ``radius = sqrt(((1 + eta)^2 - t) / 2)``.
    ``one_sided`` gives the bound on one row alone, ``sin(arccos(t_eff))`` with
    ``t_eff = t / (1 + eta)^2`` (:func:`near_boundary`). ``slack = 4 gamma_d (1 + eta)^3 / (1 - eta)``
    bounds the float32 rounding of a score gap ``x.c_h - x.c_j``. A row x of
    partition h is within the bound of partition j when
    ``max(gap - slack, 0) <= radius * |c_h - c_j| * (1 + eta)``.
    """
    eta = NORM_TOLERANCE
    slack = 4.0 * gamma(int(d)) * (1.0 + eta) ** 3 / (1.0 - eta)
    if one_sided:
        t_eff = min(1.0, float(threshold) / (1.0 + eta) ** 2)
        return math.sqrt(1.0 - t_eff * t_eff), slack
    return math.sqrt(max(0.0, ((1.0 + eta) ** 2 - float(threshold)) / 2.0)), slack


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
    radius, slack = spill_bounds(threshold, c.shape[1], one_sided=True)
    gap = x @ c[home] - x @ c[other]  # float32 scores, as faiss computes them in assign_with_spill
    dist = float(np.linalg.norm(c[home].astype(np.float64) - c[other].astype(np.float64)))
    return np.maximum(gap - slack, 0.0) <= radius * dist * (1.0 + NORM_TOLERANCE)


class CentroidDistances:
    """float64 ``|c_h - c_j|`` of one set of centroids, each distinct pair computed once and kept.

    The spill test needs the distance between a row's home and each candidate centroid; neighbouring rows
    share those pairs, and so do the blocks a process assigns: at 10M x 256 (K = 5,000) computing them per
    block took 27 s of the assignment (profiled), and pairs recur between blocks (400k rows of it meet
    1.8M distinct pairs, 16 a row before the test's filter). Kept: sorted int64
    keys ``h * K + j`` and their distances, at most ``max_pairs`` (16 B each; past it new pairs are
    computed, not kept), so memory is O(min(distinct pairs, max_pairs)), never O(K^2) unless that is smaller.
    Each call computes its distinct new pairs once (neighbouring rows share them); values are exactly
    :func:`_centroid_distances`', cached or not.
    """

    def __init__(self, centroids: np.ndarray, max_pairs: int = 1 << 22):
        self.c64 = np.asarray(centroids, np.float32).astype(np.float64)
        self.k = int(self.c64.shape[0])
        self.max_pairs = int(max_pairs)
        self._keys = np.zeros(0, np.int64)
        self._values = np.zeros(0, np.float64)

    def __call__(self, h: np.ndarray, j: np.ndarray) -> np.ndarray:
        """float64 distances for index arrays ``h``, ``j`` of equal shape."""
        key, inv = np.unique(np.asarray(h, np.int64) * self.k + np.asarray(j, np.int64), return_inverse=True)
        pos = np.minimum(np.searchsorted(self._keys, key), max(len(self._keys) - 1, 0))
        known = (self._keys[pos] == key) if len(self._keys) else np.zeros(len(key), bool)
        out = np.empty(len(key), np.float64)
        out[known] = self._values[pos[known]]
        new = key[~known]
        if len(new):
            uh, uj = np.divmod(new, self.k)
            out[~known] = _centroid_distances(self.c64, uh, uj)
            if len(self._keys) + len(new) <= self.max_pairs:  # new is sorted: inserted in place, no re-sort
                at = np.searchsorted(self._keys, new)
                self._keys, self._values = np.insert(self._keys, at, new), np.insert(self._values, at, out[~known])
        return out[inv.reshape(np.shape(h))]


def _centroid_distances(c64: np.ndarray, h: np.ndarray, j: np.ndarray) -> np.ndarray:
    """float64 ``|c64[h] - c64[j]|`` for 1-D index arrays of equal length (the distinct pairs of
    :class:`CentroidDistances`), in chunks of at most 64 MiB of float64 scratch, so memory is O(h.size) plus
    the scratch, never O(k^2) or O(h.size * d)."""
    d = c64.shape[1]
    out = np.empty(len(h), dtype=np.float64)
    step = max(1, _SCRATCH_BYTES // (2 * 8 * d))  # two gathered (step, d) float64 blocks
    for s in range(0, len(h), step):
        diff = c64[h[s : s + step]]
        diff -= c64[j[s : s + step]]
        out[s : s + step] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out

