"""Near-duplicate kernels: partitioning, exact pair search, components, representatives.

Plain numpy / faiss / scipy code working on in-memory blocks; the Beam pipeline
calls these functions per element batch or per partition and owns all I/O.
Embeddings are float32 rows L2-normalised to float32 precision (every row must
satisfy ``| ||x|| - 1 | <= 1e-4``; renormalise in float32 otherwise), so the
cosine of two rows is their inner product.

Work flow
---------
1. :func:`train_centroids` -- spherical k-means on a sample gives ``k``
   partition centroids.
2. :func:`assign_with_spill` -- every embedding gets one *home* partition (its
   nearest centroid) and is copied as a *visitor* into the few other partitions
   where a near-duplicate of it could live (bounded spill, below).
3. :func:`partition_pairs` -- inside each partition, exact all-pairs search
   over homes x homes and homes x visitors (never visitors x visitors).
   :func:`brute_force_pairs` is the same kernel over a whole set (reference).
4. :func:`local_components` per partition, then :func:`root_links`,
   :func:`resolve_roots` and :func:`apply_root_map` (or :func:`merge_roots` in
   one process) -- distributed connected components with canonical labels
   (the smallest id of each component).
5. :func:`choose_representatives` -- one kept image per component.

:func:`search_partitioned` chains steps 2-3 in one process (tests, benchmark,
small local runs).

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

Pair decision
-------------
A pair is an edge iff the inner product of the two given float32 vectors,
evaluated in float64, is ``>= threshold``. The kernels compute float32 tiles
with BLAS, keep everything above ``threshold - band`` where ``band`` bounds the
float32 rounding error of a d-term dot product (``band = 2 * gamma_d + 2^-20``,
``gamma_d = d u / (1 - d u)``, ``u = 2^-24``; 6.2e-5 at d = 512), and re-decide
the few candidates below ``threshold + band`` in float64. Results are thus
independent of block sizes and BLAS kernels, and no returned pair is below the
threshold.

Distributed components
----------------------
Each partition labels its own edges (:func:`local_components`, root = smallest
id) and emits (node, local_root). A node kept in several partitions (a spilled
visitor with edges in more than one) links those local components; grouping
by node and calling :func:`root_links` yields one link per extra distinct
root. Union-find then runs on one worker over the links only
(:func:`resolve_roots`, O(l log l) for l links, which is bounded by the
spilled memberships that carry edges, not by the number of nodes or edges),
and :func:`apply_root_map` relabels every (node, local_root) pair. Labels are
the smallest id in each component, so runs compare directly.
"""
from __future__ import annotations

import math

import faiss
import numpy as np
import scipy.sparse
import scipy.sparse.csgraph

__all__ = [
    "NORM_TOLERANCE",
    "DEFAULT_MAX_SPILL",
    "decision_band",
    "train_centroids",
    "assign_with_spill",
    "partition_pairs",
    "brute_force_pairs",
    "search_partitioned",
    "connected_components",
    "local_components",
    "root_links",
    "resolve_roots",
    "apply_root_map",
    "merge_roots",
    "choose_representatives",
]

NORM_TOLERANCE = 1e-4
"""Accepted ``| ||x|| - 1 |`` for input rows and centroids."""

DEFAULT_MAX_SPILL = 4
"""Default spill cap (see :func:`assign_with_spill`). Bounds the pair work at
(0.5 + 4) / 0.5 = 9x that of no-spill clustering; on the planted test and
benchmark sets recall is >= 0.9999 with it, 1.0 in most runs."""

_U32 = 2.0**-24  # unit roundoff of float32
_SCRATCH_BYTES = 64 << 20  # cap on gathered-centroid scratch in assign_with_spill


def _gamma(d: int) -> float:
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
    return 2.0 * _gamma(int(d)) + 2.0**-20


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    return t


def _check_block(block: int) -> int:
    b = int(block)
    if b < 1:
        raise ValueError(f"block must be >= 1, got {block!r}")
    return b


def _unit_rows(name: str, x: np.ndarray, d: int | None = None) -> np.ndarray:
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


def _int_array(name: str, values: np.ndarray, n: int) -> np.ndarray:
    """Return ``values`` as (n,) int64, checking shape and integer dtype."""
    values = np.asarray(values)
    if values.ndim != 1 or values.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must be integer, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- partitioning


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
    x = _unit_rows("sample", sample)
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
    t = _check_threshold(threshold)
    c = _unit_rows("centroids", centroids)
    k, d = c.shape
    if k < 1:
        raise ValueError("centroids must contain at least one row")
    x = _unit_rows("x", x, d)
    if int(max_spill) < 0:
        raise ValueError(f"max_spill must be >= 0, got {max_spill!r}")
    block = _check_block(block)
    n = x.shape[0]
    max_spill = min(int(max_spill), k - 1)
    n_cand = min(k, 2 * max_spill + 1)

    eta = NORM_TOLERANCE
    t_eff = min(1.0, t / (1.0 + eta) ** 2)
    radius = math.sqrt(1.0 - t_eff * t_eff)  # sin(theta), widened for norm slack
    slack = 4.0 * _gamma(d) * (1.0 + eta) ** 3 / (1.0 - eta)  # float32 score rounding

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


# --------------------------------------------------------------------------- exact pairs


def _tile_edges(
    qa: np.ndarray, qb: np.ndarray, lo: np.float32, diagonal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate (row, col, cos32) of one float32 tile qa @ qb.T with cos32 >= lo."""
    g = qa @ qb.T
    if diagonal:
        np.fill_diagonal(g, -np.inf)  # self pairs; the lower triangle is dropped below
    # Hits are sparse: a row-max pass (one read of the tile) finds the few rows to scan.
    rows = np.flatnonzero(g.max(axis=1) >= lo)
    r, col = np.nonzero(g[rows] >= lo)
    r = rows[r]
    if diagonal:
        keep = col > r
        r, col = r[keep], col[keep]
    return r, col, g[r, col]


def _unique_edges(
    i: np.ndarray, j: np.ndarray, cos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Order ids (min, max), drop self pairs, dedupe keeping the largest cos; sorted by (i, j)."""
    a = np.minimum(i, j)
    b = np.maximum(i, j)
    keep = a != b
    a, b, cos = a[keep], b[keep], cos[keep]
    order = np.lexsort((-cos, b, a))
    a, b, cos = a[order], b[order], cos[order]
    first = np.ones(a.shape[0], dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first], cos[first]


def partition_pairs(
    home_ids: np.ndarray,
    home_vecs: np.ndarray,
    visitor_ids: np.ndarray,
    visitor_vecs: np.ndarray,
    threshold: float,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pairs with cosine >= threshold among homes x homes and homes x visitors.

    Visitors x visitors is not searched: a pair of two visitors is found in the
    home partition of one of them (see the spill bound). Pairs are decided as
    described under "Pair decision" in the module docstring: float32 BLAS
    tiles, float64 re-check within ``band`` of the threshold, so the result
    does not depend on ``block`` and every returned pair has float64 inner
    product >= threshold.

    Kernel choice: blocked ``np.dot`` (BLAS sgemm) on float32 tiles rather
    than ``faiss.IndexFlatIP.range_search``: homes x homes is symmetric, so
    only tiles on or above the diagonal are computed (half the flops of a
    range search, which scores every query against every vector); faiss keeps
    strictly greater-than-radius results for inner product while we need
    ``>=``; and a dense tile plus a row-max prefilter has no per-query
    result-list overhead. Both run sgemm underneath; on the 2-core dev box the
    blocked np.dot brute force was ~2x faster than range_search (20k x 512:
    1.5 s vs 2.1 s; 100k x 512: see benchmarks/bench_dedup_kernels.py).

    Args:
        home_ids: (a,) int64 global ids of the partition's homes.
        home_vecs: (a, d) float32 L2-normalised.
        visitor_ids: (b,) int64 global ids of visitors (homed elsewhere).
        visitor_vecs: (b, d) float32 L2-normalised.
        threshold: cosine threshold in (0, 1].
        block: tile side; scratch memory is the float32 tile (``4 * block**2``
            bytes, 64 MiB at the default 4096) plus a copy and mask of the
            rows that have hits (at most another ``5 * block**2``).

    Returns:
        ``(i, j, cos)``: int64, int64, float32 arrays of equal length, one
        entry per unordered id pair, ``i < j`` (global ids), sorted by
        (i, j); self pairs (equal ids) are dropped and duplicates merged.
        ``cos`` is the float32 tile value, or the float64 value rounded to
        float32 for re-checked pairs, so ``cos >= np.float32(threshold)``.

    Cost: (a^2 / 2 + a b) d multiply-adds; memory O(block^2 + output).
    """
    t = _check_threshold(threshold)
    block = _check_block(block)
    hv = _unit_rows("home_vecs", home_vecs)
    d = hv.shape[1]
    vv = np.asarray(visitor_vecs)
    vv = _unit_rows("visitor_vecs", vv.reshape(0, d) if vv.size == 0 else vv, d)
    hid = _int_array("home_ids", home_ids, hv.shape[0])
    vid = _int_array("visitor_ids", visitor_ids, vv.shape[0])
    a, b = hv.shape[0], vv.shape[0]

    band = decision_band(d)
    lo = np.float32(t - band)
    hi = np.float32(t + band)
    ri: list[np.ndarray] = []
    ci: list[np.ndarray] = []  # column index into [homes, visitors]
    cs: list[np.ndarray] = []
    for s in range(0, a, block):
        q = hv[s : s + block]
        for s2 in range(s, a, block):
            r, c, v = _tile_edges(q, hv[s2 : s2 + block], lo, diagonal=s2 == s)
            ri.append(r + s)
            ci.append(c + s2)
            cs.append(v)
        for s2 in range(0, b, block):
            r, c, v = _tile_edges(q, vv[s2 : s2 + block], lo, diagonal=False)
            ri.append(r + s)
            ci.append(c + s2 + a)
            cs.append(v)
    if not ri:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows = np.concatenate(ri)
    cols = np.concatenate(ci)
    cos = np.concatenate(cs).astype(np.float32, copy=False)

    near = np.flatnonzero(cos < hi)
    if near.size:
        nc = cols[near]
        is_home = nc < a
        other = np.empty((near.size, d), dtype=np.float64)
        other[is_home] = hv[nc[is_home]]
        other[~is_home] = vv[nc[~is_home] - a]
        exact = np.einsum("ij,ij->i", hv[rows[near]].astype(np.float64), other)
        cos[near] = exact.astype(np.float32)
        keep = np.ones(cos.shape[0], dtype=bool)
        keep[near] = exact >= t
        rows, cols, cos = rows[keep], cols[keep], cos[keep]

    all_ids = np.concatenate([hid, vid])
    return _unique_edges(hid[rows], all_ids[cols], cos)


def brute_force_pairs(
    ids: np.ndarray, vecs: np.ndarray, threshold: float, block: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact reference: all pairs of ``vecs`` with cosine >= threshold.

    Same contract, pair decision, output format and memory as
    :func:`partition_pairs` with every row a home and no visitors:
    (n^2 / 2) d multiply-adds, O(block^2 + output) memory.

    Args:
        ids: (n,) int64 global ids.
        vecs: (n, d) float32 L2-normalised.
        threshold: cosine threshold in (0, 1].
        block: tile side.

    Returns:
        ``(i, j, cos)`` int64, int64, float32 with ``i < j``, sorted by (i, j).
    """
    vecs = np.asarray(vecs)
    d = vecs.shape[1] if vecs.ndim == 2 else 0
    return partition_pairs(
        ids, vecs, np.zeros(0, np.int64), np.zeros((0, d), np.float32), threshold, block
    )


def search_partitioned(
    ids: np.ndarray,
    vecs: np.ndarray,
    centroids: np.ndarray,
    threshold: float,
    max_spill: int = DEFAULT_MAX_SPILL,
    block: int = 4096,
    assignment: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """In-process partitioned search: assign + spill, then pairs per partition.

    This is the single-machine version of what the pipeline distributes:
    :func:`assign_with_spill`, group rows by home and by visited partition,
    :func:`partition_pairs` per partition, union of edges. A pair can be found
    in both endpoints' home partitions; duplicates are merged.

    Args:
        ids: (n,) int64 global ids.
        vecs: (n, d) float32 L2-normalised.
        centroids: (k, d) float32 L2-normalised.
        threshold: cosine threshold in (0, 1].
        max_spill: spill cap, see :func:`assign_with_spill`.
        block: tile side for :func:`partition_pairs`.
        assignment: optional precomputed ``assign_with_spill(vecs, centroids,
            threshold, max_spill)`` result (then ``max_spill`` is unused).

    Returns:
        ``(i, j, cos)`` as :func:`partition_pairs`, over the whole set.

    Memory: ``vecs`` plus one gathered partition (homes + visitors) at a time
    plus :func:`assign_with_spill`'s O(n max_spill).
    """
    vecs = _unit_rows("vecs", vecs)
    ids = _int_array("ids", ids, vecs.shape[0])
    if assignment is None:
        assignment = assign_with_spill(vecs, centroids, threshold, max_spill)
    home, (indptr, part) = assignment
    k = np.asarray(centroids).shape[0]
    if home.shape != (vecs.shape[0],) or indptr.shape != (vecs.shape[0] + 1,):
        raise ValueError(
            f"assignment does not match vecs: home {home.shape}, indptr {indptr.shape}, n={vecs.shape[0]}"
        )
    home_order = np.argsort(home, kind="stable")
    home_start = np.searchsorted(home[home_order], np.arange(k + 1))
    vis_rows = np.repeat(np.arange(vecs.shape[0]), np.diff(indptr))
    vis_order = np.argsort(part, kind="stable")
    vis_rows = vis_rows[vis_order]
    vis_start = np.searchsorted(part[vis_order], np.arange(k + 1))
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    for p in range(k):
        h = home_order[home_start[p] : home_start[p + 1]]
        if h.size == 0:
            continue
        v = vis_rows[vis_start[p] : vis_start[p + 1]]
        i, j, c = partition_pairs(ids[h], vecs[h], ids[v], vecs[v], threshold, block)
        out_i.append(i)
        out_j.append(j)
        out_c.append(c)
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return _unique_edges(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_c))


# --------------------------------------------------------------------------- components


def connected_components(n_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Canonical connected-component labels of an undirected graph.

    Args:
        n_nodes: number of nodes, numbered 0 .. n_nodes - 1.
        a, b: (m,) integer edge endpoints in [0, n_nodes); self-loops and
            duplicate edges are allowed.

    Returns:
        (n_nodes,) int64 labels: the smallest node index in each component,
        so labels compare across runs and implementations.

    Cost: scipy.sparse.csgraph (C) over a CSR matrix, O(n_nodes + m) time and
    about 16 (n_nodes + m) bytes.
    """
    n = int(n_nodes)
    if n < 0:
        raise ValueError(f"n_nodes must be >= 0, got {n_nodes!r}")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"edge arrays must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.size:
        if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
            raise ValueError(f"edge arrays must be integer, got {a.dtype} and {b.dtype}")
        lo = min(int(a.min()), int(b.min()))
        hi = max(int(a.max()), int(b.max()))
        if lo < 0 or hi >= n:
            raise ValueError(f"edge endpoints must be in [0, {n}), got range [{lo}, {hi}]")
    if n == 0:
        return np.zeros(0, np.int64)
    graph = scipy.sparse.csr_matrix(
        (np.ones(a.size, dtype=bool), (a.astype(np.int64), b.astype(np.int64))), shape=(n, n)
    )
    _, lab = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # The first index holding each label is the smallest member of that component.
    _, first = np.unique(lab, return_index=True)
    return first.astype(np.int64)[lab]


def local_components(
    ids: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Components of one partition's edge list, keyed by global id.

    Args:
        ids: (p,) int64 global ids of nodes to report even without edges (may
            be empty; duplicates allowed).
        a, b: (m,) int64 global-id edge endpoints (e.g. ``i, j`` from
            :func:`partition_pairs`).

    Returns:
        ``(node_ids, root_ids)``: (u,) int64 each, sorted by node id, covering
        the union of ``ids``, ``a`` and ``b``; ``root_ids`` is the smallest
        global id of the node's local component.

    Cost: O((p + m) log(p + m)) for the id compaction, memory O(p + m).
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"edge arrays must be 1-D of equal length, got {a.shape} and {b.shape}")
    nodes = np.unique(np.concatenate([ids, a, b]))
    lab = connected_components(nodes.size, np.searchsorted(nodes, a), np.searchsorted(nodes, b))
    return nodes, nodes[lab]


def root_links(node_ids: np.ndarray, root_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Links between local roots that share a node.

    Input is any multiset of (node, local_root) pairs -- all partitions'
    :func:`local_components` outputs concatenated, or one node's group after a
    GroupByKey. For each node seen with several distinct roots, every root is
    linked to that node's smallest root.

    Args:
        node_ids: (m,) int64.
        root_ids: (m,) int64.

    Returns:
        ``(root_a, root_b)``: (l,) int64 each, ``root_a < root_b``; l is the
        number of (node, extra distinct root) occurrences, i.e. at most the
        number of spilled memberships, typically far below m.

    Cost: one lexsort, O(m log m).
    """
    node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
    root_ids = np.asarray(root_ids, dtype=np.int64).ravel()
    if node_ids.shape != root_ids.shape:
        raise ValueError(
            f"node_ids and root_ids must have equal length, got {node_ids.shape} and {root_ids.shape}"
        )
    order = np.lexsort((root_ids, node_ids))
    nd, rt = node_ids[order], root_ids[order]
    if nd.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_node = np.ones(nd.size, dtype=bool)
    new_node[1:] = nd[1:] != nd[:-1]
    group_min = rt[np.flatnonzero(new_node)][np.cumsum(new_node) - 1]
    link = rt != group_min
    pa, pb = group_min[link], rt[link]
    if pa.size == 0:
        return pa, pb
    both = np.unique(np.stack([pa, pb], axis=1), axis=0)
    return both[:, 0].copy(), both[:, 1].copy()


def resolve_roots(root_a: np.ndarray, root_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over root links: map every linked root to its global root.

    Args:
        root_a, root_b: (l,) int64 links from :func:`root_links` (any multiset
            of them; order within a link does not matter).

    Returns:
        ``(roots, global_roots)``: (r,) int64 each; ``roots`` sorted unique ids
        appearing in a link, ``global_roots`` the smallest root id of their
        merged component. Roots absent from ``roots`` map to themselves.

    Cost: O(l log l) time, O(l) memory -- runs on one worker because l only
    counts cross-partition links, not nodes or edges.
    """
    root_a = np.asarray(root_a, dtype=np.int64).ravel()
    root_b = np.asarray(root_b, dtype=np.int64).ravel()
    if root_a.shape != root_b.shape:
        raise ValueError(f"link arrays must have equal length, got {root_a.shape} and {root_b.shape}")
    roots = np.unique(np.concatenate([root_a, root_b]))
    lab = connected_components(
        roots.size, np.searchsorted(roots, root_a), np.searchsorted(roots, root_b)
    )
    return roots, roots[lab]


def apply_root_map(
    root_ids: np.ndarray, roots: np.ndarray, global_roots: np.ndarray
) -> np.ndarray:
    """Relabel local roots with the :func:`resolve_roots` mapping.

    Args:
        root_ids: (m,) int64 local roots.
        roots: (r,) int64 sorted, from :func:`resolve_roots`.
        global_roots: (r,) int64, from :func:`resolve_roots`.

    Returns:
        (m,) int64 global roots (``root_ids`` where not in ``roots``).

    Cost: O(m log r) binary search, O(m) memory.
    """
    root_ids = np.asarray(root_ids, dtype=np.int64)
    roots = np.asarray(roots, dtype=np.int64)
    global_roots = np.asarray(global_roots, dtype=np.int64)
    if roots.shape != global_roots.shape:
        raise ValueError(
            f"roots and global_roots must have equal length, got {roots.shape} and {global_roots.shape}"
        )
    out = root_ids.copy()
    if roots.size:
        pos = np.minimum(np.searchsorted(roots, root_ids), roots.size - 1)
        hit = roots[pos] == root_ids
        out[hit] = global_roots[pos[hit]]
    return out


def merge_roots(node_ids: np.ndarray, root_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global components from all partitions' (node, local_root) pairs, in one process.

    Equivalent to the distributed plan, which the pipeline runs as:
    (1) per partition ``local_components`` -> emit (node, local_root);
    (2) group by node -> ``root_links`` on each group (only nodes that sit in
    several partitions with different roots produce links);
    (3) gather all links on one worker -> ``resolve_roots``;
    (4) ``apply_root_map`` on every (node, local_root) with the mapping as a
    side input, then keep one label per node. The global label is the
    smallest node id of the component, because each local root is the
    smallest id of its local component and every node belongs to one.

    Args:
        node_ids: (m,) int64, concatenated over partitions (repeats allowed).
        root_ids: (m,) int64 matching local roots.

    Returns:
        ``(nodes, labels)``: (u,) int64 sorted unique nodes and their global
        component label (smallest member id).

    Cost: O(m log m) time, O(m) memory.
    """
    node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
    root_ids = np.asarray(root_ids, dtype=np.int64).ravel()
    roots, global_roots = resolve_roots(*root_links(node_ids, root_ids))
    labels = apply_root_map(root_ids, roots, global_roots)
    nodes, first = np.unique(node_ids, return_index=True)
    return nodes, labels[first]


# --------------------------------------------------------------------------- representatives


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
    w = _int_array("width", np.asarray(width).ravel(), n)
    h = _int_array("height", np.asarray(height).ravel(), n)
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
