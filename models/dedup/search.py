"""Exact near-duplicate pair search inside partitions (and over a whole set, the reference).

* :func:`partition_pairs` -- inside one partition, exact all-pairs search over
  homes x homes and homes x visitors (never visitors x visitors).
* :func:`cross_pairs` -- pairs between two sets only (increments: old homes x new visitors).
* :func:`tile_pairs` -- the same pairs yielded tile by tile, for callers that reduce them as they come
  (:mod:`models.dedup.spanning`: a spanning forest in O(n + tile) memory).
* :func:`brute_force_pairs` -- the same kernel over a whole set (reference).
* :func:`search_partitioned` -- assign + spill (:mod:`models.dedup.partition`)
  then pairs per partition, in one process (tests, benchmark, small local runs).

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
"""
from __future__ import annotations

import numpy as np

from models.dedup.numerics import check_block, check_threshold, decision_band, int_array, unit_rows
from models.dedup.partition import DEFAULT_MAX_SPILL, assign_with_spill, near_boundary


def _tile_edges(
    qa: np.ndarray, qb: np.ndarray, lo: np.float32, diagonal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate (row, col, cos32) of one float32 tile qa @ qb.T with cos32 >= lo.

    One numpy sgemm also on the diagonal. BLAS ``ssyrk`` (scipy) computes only the upper triangle, but measured
    in a search task's mix of calls it costs more: 47 ms against 30 ms a partition (2,000 homes, 1,300 visitors,
    256-d, 2 cores), as scipy's OpenBLAS thread pool and numpy's contend (alone it is 7.3 ms against 9.0 ms).
    """
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
    visitor_homes: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    partition: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pairs with cosine >= threshold among homes x homes and homes x visitors.

    With ``visitor_homes`` (each visitor's home partition), ``centroids`` and
    ``partition`` (this partition's index), visitors from partition j are
    searched only against the homes near the boundary with j
    (:func:`models.dedup.partition.near_boundary`): a pair of a home and a
    visitor from j has cosine >= t only if the home is within the spill bound
    of j, so the result is the same pair set for much less work (the homes
    deep inside the partition meet no visitor). Measured: 2.7x less pair work
    on the 64-d planted test set, but slower wall time on 1M x 256
    topic-clustered rows (one small GEMM per source partition), so the
    pipeline does not use it yet.

    Visitors x visitors is not searched: a pair of two visitors is found in the
    home partition of one of them (see the spill bound in :mod:`models.dedup.partition`). Pairs are decided as
    described under "Pair decision" in the module docstring: float32 BLAS
    tiles, float64 re-check within ``band`` of the threshold, so the result
    does not depend on ``block`` and every returned pair has float64 inner
    product >= threshold.

    Kernel choice: blocked ``np.dot`` (BLAS sgemm) on float32 tiles rather
    than ``faiss.IndexFlatIP.range_search``: homes x homes is symmetric, so
    only tiles on or above the diagonal are computed (about half the flops of
    a range search, which scores every query against every vector); faiss keeps
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

    Cost: (a^2 / 2 + a b) d multiply-adds (with ``visitor_homes``: a^2 / 2 +
    sum_j a_j b_j, a_j the homes near j's boundary, plus 2 a d per source j);
    memory O(block^2 + output).
    """
    return _pairs(home_ids, home_vecs, visitor_ids, visitor_vecs, threshold, block, visitor_homes, centroids,
                  partition, self_pairs=True)


def cross_pairs(
    a_ids: np.ndarray,
    a_vecs: np.ndarray,
    b_ids: np.ndarray,
    b_vecs: np.ndarray,
    threshold: float,
    block: int = 4096,
    b_homes: np.ndarray | None = None,
    centroids: np.ndarray | None = None,
    partition: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pairs with cosine >= threshold between ``a`` and ``b`` only (never a x a nor b x b).

    Same pair decision, output and optional boundary pruning as
    :func:`partition_pairs` (``a`` the partition's homes, ``b`` visitors homed
    in ``b_homes``). Cost: |a| |b| d multiply-adds at most.
    """
    return _pairs(a_ids, a_vecs, b_ids, b_vecs, threshold, block, b_homes, centroids, partition, self_pairs=False)


def _pairs(home_ids, home_vecs, visitor_ids, visitor_vecs, threshold, block, visitor_homes, centroids, partition,
           self_pairs: bool):
    hv, vv = checked_vectors(home_vecs, visitor_vecs)
    hid = int_array("home_ids", home_ids, hv.shape[0])
    vid = int_array("visitor_ids", visitor_ids, vv.shape[0])
    found = list(tile_pairs(hv, vv, threshold, block, self_pairs, visitor_homes, centroids, partition))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    rows, cols, cos = (np.concatenate(x) for x in zip(*found))
    all_ids = np.concatenate([hid, vid])
    return _unique_edges(hid[rows], all_ids[cols], cos)


def checked_vectors(home_vecs: np.ndarray, visitor_vecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((a, d), (b, d)) unit-row checked float32 homes and visitors (an empty visitor array of any shape is (0, d))."""
    hv = unit_rows("home_vecs", home_vecs)
    d = hv.shape[1]
    vv = np.asarray(visitor_vecs)
    return hv, unit_rows("visitor_vecs", vv.reshape(0, d) if vv.size == 0 else vv, d)


def tile_pairs(hv: np.ndarray, vv: np.ndarray, threshold: float, block: int = 4096, self_pairs: bool = True,
               visitor_homes=None, centroids=None, partition=None):
    """Yield the exact pairs tile by tile: ``(rows, cols, cos)`` per tile that has any.

    ``rows`` (m,) int64 index ``hv``; ``cols`` (m,) int64 index the
    concatenation ``[hv, vv]`` (so visitors are ``cols >= len(hv)``); ``cos``
    (m,) float32. Each unordered pair appears in exactly one tile (homes x
    homes: ``cols > rows``), decided as under "Pair decision" (candidates
    within the band re-decided in float64 per tile). Arguments as
    :func:`partition_pairs` (``hv``, ``vv`` already unit float32 rows,
    :func:`checked_vectors`); ``self_pairs=False`` skips homes x homes.

    Memory: one tile (``4 block^2`` bytes) plus its hits; nothing is kept
    between tiles, so a caller that reduces each tile (e.g.
    :class:`models.dedup.spanning.PairReducer`) holds O(n + tile), not O(pairs).
    """
    t = check_threshold(threshold)
    block = check_block(block)
    a, d = hv.shape
    band = decision_band(d)
    lo = np.float32(t - band)
    hi = np.float32(t + band)

    def decided(r, c, v):
        near = np.flatnonzero(v < hi)
        if near.size:
            nc = c[near]
            is_home = nc < a
            other = np.empty((near.size, d), dtype=np.float64)
            other[is_home] = hv[nc[is_home]]
            other[~is_home] = vv[nc[~is_home] - a]
            exact = np.einsum("ij,ij->i", hv[r[near]].astype(np.float64), other)
            v = v.copy()
            v[near] = exact.astype(np.float32)
            keep = np.ones(v.shape[0], dtype=bool)
            keep[near] = exact >= t
            r, c, v = r[keep], c[keep], v[keep]
        return r.astype(np.int64), c.astype(np.int64), v.astype(np.float32, copy=False)

    for s in range(0, a if self_pairs else 0, block):
        q = hv[s : s + block]
        for s2 in range(s, a, block):
            r, c, v = _tile_edges(q, hv[s2 : s2 + block], lo, diagonal=s2 == s)
            if r.size:
                yield decided(r + s, c + s2, v)
    for rows_a, cols_b in _visitor_tasks(hv, vv.shape[0], visitor_homes, centroids, partition, t):
        vj = vv[cols_b]
        for s in range(0, rows_a.size, block):
            q = hv[rows_a[s : s + block]]
            for s2 in range(0, cols_b.size, block):
                r, c, v = _tile_edges(q, vj[s2 : s2 + block], lo, diagonal=False)
                if r.size:
                    yield decided(rows_a[r + s], cols_b[c + s2] + a, v)


def _visitor_tasks(hv: np.ndarray, b: int, visitor_homes, centroids, partition, t: float):
    """(home rows, visitor rows) index pairs to search: all x all, or per visitor home partition j the homes
    near the boundary with j (:func:`models.dedup.partition.near_boundary`) x the visitors from j."""
    if b == 0:
        return []
    if visitor_homes is None:
        return [(np.arange(hv.shape[0]), np.arange(b))]
    visitor_homes = np.asarray(visitor_homes, np.int64)
    if visitor_homes.shape != (b,) or centroids is None or partition is None:
        raise ValueError(f"visitor_homes needs shape ({b},) and centroids and partition; got {visitor_homes.shape}")
    order = np.argsort(visitor_homes, kind="stable")
    sources, starts = np.unique(visitor_homes[order], return_index=True)
    tasks = []
    for j, lo, hi in zip(sources.tolist(), starts.tolist(), list(starts[1:]) + [b]):
        rows = np.flatnonzero(near_boundary(hv, centroids, int(partition), j, t))
        if rows.size:
            tasks.append((rows, order[lo:hi]))
    return tasks


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
    vecs = unit_rows("vecs", vecs)
    ids = int_array("ids", ids, vecs.shape[0])
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
