"""Count arrays from per-row CSR keyword / group / tag / mention lists (in memory or per shard).

Plain numpy. The Beam pipeline counts per part and sums with combiners; these
helpers are the in-memory reference the tests and benchmarks use, and the
shapes the trigger tables take (:mod:`models.mine.word_triggers`,
:mod:`models.mine.object_triggers`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.mine.statistics import int_array

__all__ = ["KeywordGroupCounts", "KeywordObjectCounts", "keyword_group_counts", "keyword_object_counts"]


def _check_csr(indptr: object, indices: object, n_rows: int | None, n_cols: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    ip = int_array(indptr, f"{name}_indptr", ndim=1)
    ix = int_array(indices, f"{name}_indices", ndim=1)
    if ip.size == 0 or ip[0] != 0 or ip[-1] != ix.size or np.any(np.diff(ip) < 0):
        raise ValueError(f"{name}_indptr must start at 0, be non-decreasing and end at len({name}_indices)={ix.size}")
    if n_rows is not None and ip.size - 1 != n_rows:
        raise ValueError(f"{name}_indptr describes {ip.size - 1} rows, expected {n_rows}")
    if ix.size and ix.max() >= n_cols:
        raise ValueError(f"{name}_indices must be < {n_cols}, got max {ix.max()}")
    return ip, ix


def _csr_pairs(indptr: np.ndarray, indices: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) pairs of a CSR structure with duplicate entries per row removed."""
    rows = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
    key = np.unique(rows * n_cols + indices)
    return key // n_cols, key % n_cols


def _rows_to_csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols


def _cross_pairs(
    a_ptr: np.ndarray, a_idx: np.ndarray, b_ptr: np.ndarray, b_idx: np.ndarray, n_b: int
) -> np.ndarray:
    """Keys ``a * n_b + b`` for every (a, b) in the same row (per-row cross product)."""
    a_rows = np.repeat(np.arange(a_ptr.size - 1, dtype=np.int64), np.diff(a_ptr))
    b_count = np.diff(b_ptr)
    rep = b_count[a_rows]
    total = int(rep.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    a_rep = np.repeat(a_idx, rep)
    start = np.repeat(b_ptr[a_rows], rep)
    offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(rep) - rep, rep)
    return a_rep * n_b + b_idx[start + offs]


@dataclass(frozen=True)
class KeywordGroupCounts:
    """Count arrays for :func:`word_trigger_table`.

    Attributes:
        n_w: (K,) int64 rows containing each keyword.
        n_in_groups: (K,) int64 of those rows that lie in some duplicate group.
        pair_keyword, pair_group, pair_count: (P,) int64 sparse n_{w,G} > 0.
        group_ids, group_sizes: (G,) int64 duplicate group ids (sorted) and sizes n_G.
        n_total: N, number of rows.
    """

    n_w: np.ndarray
    n_in_groups: np.ndarray
    pair_keyword: np.ndarray
    pair_group: np.ndarray
    pair_count: np.ndarray
    group_ids: np.ndarray
    group_sizes: np.ndarray
    n_total: int


def keyword_group_counts(
    kw_indptr: object, kw_indices: object, row_group: object, n_keywords: int
) -> KeywordGroupCounts:
    """Count keyword totals and keyword x duplicate-group co-occurrences.

    Args:
        kw_indptr: (R+1,) int CSR row pointer of the per-row keyword lists.
        kw_indices: (nnz,) int keyword index (0..K-1) per entry; a keyword
            repeated in a row counts once.
        row_group: (R,) int duplicate-group id per row, ``-1`` = in no group.
            Group ids are arbitrary non-negative ints.
        n_keywords: K.

    Returns:
        :class:`KeywordGroupCounts`. For a sharded pipeline, sum ``n_w`` and the
        (keyword, group) counts across shards instead.
    """
    rg = np.asarray(row_group).astype(np.int64)
    if rg.ndim != 1:
        raise ValueError(f"row_group must be 1-D, got shape {rg.shape}")
    if rg.size and rg.min() < -1:
        raise ValueError("row_group ids must be >= 0, or -1 for rows in no group")
    ip, ix = _check_csr(kw_indptr, kw_indices, rg.size, n_keywords, "kw")
    rows, kws = _csr_pairs(ip, ix, n_keywords)
    n_w = np.bincount(kws, minlength=n_keywords).astype(np.int64)
    grouped = rg >= 0
    group_ids, group_sizes = np.unique(rg[grouped], return_counts=True)
    g_of = rg[rows]
    in_g = g_of >= 0
    n_in_groups = np.bincount(kws[in_g], minlength=n_keywords).astype(np.int64)
    g_pos = np.searchsorted(group_ids, g_of[in_g])
    key, counts = np.unique(kws[in_g] * max(group_ids.size, 1) + g_pos, return_counts=True)
    n_g = max(group_ids.size, 1)
    return KeywordGroupCounts(
        n_w=n_w,
        n_in_groups=n_in_groups,
        pair_keyword=key // n_g,
        pair_group=group_ids[key % n_g] if group_ids.size else np.zeros(0, dtype=np.int64),
        pair_count=counts.astype(np.int64),
        group_ids=group_ids.astype(np.int64),
        group_sizes=group_sizes.astype(np.int64),
        n_total=int(rg.size),
    )


@dataclass(frozen=True)
class KeywordObjectCounts:
    """Count arrays for :func:`object_trigger_table`.

    Attributes:
        n_w: (K,) int64 rows containing each keyword.
        n_o: (O,) int64 rows whose image is tagged with each object.
        pair_keyword, pair_object: (P,) int64 pairs with n_{w,o} > 0.
        pair_count: (P,) int64 n_{w,o}.
        pair_mentioned: (P,) int64 rows containing w whose caption mentions o.
        n_total: N.
    """

    n_w: np.ndarray
    n_o: np.ndarray
    pair_keyword: np.ndarray
    pair_object: np.ndarray
    pair_count: np.ndarray
    pair_mentioned: np.ndarray
    n_total: int


def keyword_object_counts(
    kw_indptr: object,
    kw_indices: object,
    obj_indptr: object,
    obj_indices: object,
    mention_indptr: object,
    mention_indices: object,
    n_keywords: int,
    n_objects: int,
) -> KeywordObjectCounts:
    """Count keyword x image-object co-occurrences and keyword x caption-mention counts.

    All three inputs are per-row CSR lists over the same R rows: the caption's
    keywords (0..K-1), the objects its image is tagged with (0..O-1) and the
    objects its caption mentions (0..O-1, e.g. from
    :meth:`models.mine.mentions.VocabMatcher.mentioned_batch`). Duplicates within a
    row count once. Memory is O(sum over rows of |keywords| * |objects|).

    Returns:
        :class:`KeywordObjectCounts` with only pairs that co-occur at least once.
    """
    kp, ki = _check_csr(kw_indptr, kw_indices, None, n_keywords, "kw")
    n_rows = kp.size - 1
    op, oi = _check_csr(obj_indptr, obj_indices, n_rows, n_objects, "obj")
    mp, mi = _check_csr(mention_indptr, mention_indices, n_rows, n_objects, "mention")
    kr, kc = _csr_pairs(kp, ki, n_keywords)
    orr, oc = _csr_pairs(op, oi, n_objects)
    mr, mc = _csr_pairs(mp, mi, n_objects)
    kp, ki = _rows_to_csr(kr, kc, n_rows)
    op, oi = _rows_to_csr(orr, oc, n_rows)
    mp, mi = _rows_to_csr(mr, mc, n_rows)
    n_w = np.bincount(kc, minlength=n_keywords).astype(np.int64)
    n_o = np.bincount(oc, minlength=n_objects).astype(np.int64)
    co_key, co_count = np.unique(_cross_pairs(kp, ki, op, oi, n_objects), return_counts=True)
    me_key, me_count = np.unique(_cross_pairs(kp, ki, mp, mi, n_objects), return_counts=True)
    mentioned = np.zeros(co_key.size, dtype=np.int64)
    if me_key.size and co_key.size:
        pos = np.searchsorted(me_key, co_key)
        pos_c = np.minimum(pos, me_key.size - 1)
        hit = me_key[pos_c] == co_key
        mentioned[hit] = me_count[pos_c[hit]]
    return KeywordObjectCounts(
        n_w=n_w,
        n_o=n_o,
        pair_keyword=co_key // n_objects,
        pair_object=co_key % n_objects,
        pair_count=co_count.astype(np.int64),
        pair_mentioned=mentioned,
        n_total=n_rows,
    )

