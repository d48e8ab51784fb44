"""Memory-trigger statistics on count arrays (METHODS.md section 3.1).

Plain numpy/scipy, vectorised over keywords / (keyword, object) pairs; no
per-row Python dicts. The Beam pipeline aggregates counts per shard and sums
them; these functions turn the summed counts into ranked, flagged tables.

Notation: N rows in total; n_w rows whose caption contains keyword w; G a
near-duplicate group with n_G rows; n_{w,G} rows of G containing w; n_o rows
whose image is tagged with object o; n_{w,o} rows containing w whose image is
tagged with o.

Contents:

* :func:`hypergeom_sf_pvalue`, :func:`fisher_greater`, :func:`benjamini_hochberg`
  -- the tests and FDR control.
* :func:`keyword_group_counts`, :func:`keyword_object_counts` -- count arrays
  from per-row CSR keyword/tag/mention lists (in-memory or per-shard helper).
* :func:`word_trigger_table` -- keyword <-> duplicate group (word-level triggers).
* :func:`object_trigger_table` -- keyword <-> unmentioned object (object-level triggers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
from scipy import stats

__all__ = [
    "KeywordGroupCounts",
    "KeywordObjectCounts",
    "ObjectTriggerConfig",
    "WordTriggerConfig",
    "benjamini_hochberg",
    "fisher_greater",
    "hypergeom_sf_pvalue",
    "keyword_group_counts",
    "keyword_object_counts",
    "object_trigger_table",
    "word_trigger_table",
]

_MULTIPLICITY = ("union", "touched", "none")
# Floor for -log10 q in rankings (q can underflow to exactly 0).
_TINY = 1e-300


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _int_array(x: object, name: str, *, ndim: int | None = None) -> np.ndarray:
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


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays must have equal length, got {lengths}")
    return next(iter(lengths.values())) if lengths else 0


def _check_fraction(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> None:
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
    M_a, n_a, N_a = (_int_array(v, nm) for v, nm in ((M, "M"), (n, "n"), (N, "N")))
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
    a_, b_, c_, d_ = (_int_array(v, nm) for v, nm in ((a, "a"), (b, "b"), (c, "c"), (d, "d")))
    a_, b_, c_, d_ = np.broadcast_arrays(a_, b_, c_, d_)
    return hypergeom_sf_pvalue(a_, a_ + b_ + c_ + d_, a_ + b_, a_ + c_)


def benjamini_hochberg(p: object, n_tests: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg step-up adjusted p-values (q-values).

    ``q_(i) = min_{j >= i} min(1, m * p_(j) / j)`` over the ascending order,
    returned in the input order; ties get equal q. NaN entries are not tests:
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
    order = np.argsort(pv, kind="stable")
    ranked = pv[order] * m / np.arange(1, pv.size + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    qv = np.empty_like(pv)
    qv[order] = np.minimum(ranked, 1.0)
    q[valid] = qv
    return q


# ---------------------------------------------------------------------------
# Counting helpers (CSR per-row lists -> count arrays)
# ---------------------------------------------------------------------------


def _check_csr(indptr: object, indices: object, n_rows: int | None, n_cols: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    ip = _int_array(indptr, f"{name}_indptr", ndim=1)
    ix = _int_array(indices, f"{name}_indices", ndim=1)
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
    :meth:`models.mine.keywords.VocabMatcher.mentioned_batch`). Duplicates within a
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


# ---------------------------------------------------------------------------
# Word-level triggers: keyword <-> duplicate group
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WordTriggerConfig:
    """Thresholds of the word-level trigger flag (METHODS.md 3.1, step 2).

    A keyword w with top group G* (the group holding most of w's rows) is
    flagged when all hold:

    * ``q <= fdr`` (BH over keywords with ``n_w >= min_support``), default 0.05;
    * support ``n_{w,G*} >= min_support``, default 10 (Carlini's clique size);
    * concentration ``n_{w,G*} / n_w >= min_concentration``, default 0.5;
    * ``lift = n_{w,G*} N / (n_w n_G*) >= min_lift``, default **10**, not the
      100 of METHODS: lift = conc * N / n_G*, so lift >= 100 with conc = 1
      needs a group smaller than 1 % of the corpus. On LAION-2B that is
      trivially met (and 100 is a fine extra guard), but on the 10^3-10^5-row
      samples we run on, it would reject exactly the large duplicate groups
      that matter most. Statistical evidence comes from q; lift only guards
      against keywords concentrated in a group that is itself a large share
      of the corpus (placeholder/dead-link images). Pass ``min_lift=100`` to
      reproduce METHODS on LAION-scale data.

    ``multiplicity`` handles the post-hoc choice of G* among all groups:

    * ``"union"`` (default): p = min(1, sum over groups G with n_G >= k of
      P(X_G >= k)), k = n_{w,G*}, X_G ~ Hypergeom(N, n_G, n_w). This is the
      Bonferroni/union bound for "some group holds >= k of w's rows" under
      random placement; groups smaller than k cannot contribute, so the sum
      runs over distinct group sizes only. It is a valid p-value for the max
      statistic, unlike a factor of "groups w touches", which is data
      dependent (a keyword sitting in a single group would get no correction
      although it could have landed in any group).
    * ``"touched"``: p = min(1, m_w * P(X_G* >= k)), m_w = number of groups
      w touches (cheaper, anti-conservative; for comparison).
    * ``"none"``: the raw single-group p.

    For speed, ``"union"`` is evaluated exactly only for keywords with
    ``n_{w,G*} >= min_support`` (the only ones that can be flagged); the others
    get the cheap upper bound min(1, #{G: n_G >= k} * P(X_{G_max} >= k)).
    Using an upper bound for unflaggable keywords can only raise other
    keywords' q (conservative).
    """

    fdr: float = 0.05
    min_support: int = 10
    min_concentration: float = 0.5
    min_lift: float = 10.0
    multiplicity: str = "union"
    chunk_pairs: int = 4_000_000

    def __post_init__(self) -> None:
        _check_fraction(self.fdr, "fdr")
        _check_fraction(self.min_concentration, "min_concentration")
        if not isinstance(self.min_support, (int, np.integer)) or self.min_support < 1:
            raise ValueError(f"min_support must be an int >= 1, got {self.min_support!r}")
        if not self.min_lift >= 0:
            raise ValueError(f"min_lift must be >= 0, got {self.min_lift!r}")
        if self.multiplicity not in _MULTIPLICITY:
            raise ValueError(f"multiplicity must be one of {_MULTIPLICITY}, got {self.multiplicity!r}")
        if self.chunk_pairs < 1:
            raise ValueError(f"chunk_pairs must be >= 1, got {self.chunk_pairs!r}")


def _union_pvalues(
    k: np.ndarray, n_w: np.ndarray, n_total: int, sizes: np.ndarray, size_counts: np.ndarray, chunk: int
) -> np.ndarray:
    """sum_{s >= k_i} c_s * P(X >= k_i), X ~ Hypergeom(N, s, n_w_i), per keyword i (k_i >= 1).

    ``sizes`` ascending distinct group sizes, ``size_counts`` their multiplicity.
    """
    out = np.zeros(k.size, dtype=np.float64)
    start = np.searchsorted(sizes, k, side="left")
    n_terms = sizes.size - start
    cum = np.cumsum(n_terms)
    lo = 0
    while lo < k.size:
        base = cum[lo - 1] if lo else 0
        hi = int(np.searchsorted(cum, base + chunk, side="right"))
        hi = max(hi, lo + 1)
        t = n_terms[lo:hi]
        total = int(t.sum())
        if total:
            which = np.repeat(np.arange(lo, hi), t)
            offs = np.arange(total) - np.repeat(np.cumsum(t) - t, t)
            s_idx = start[which] + offs
            s = sizes[s_idx]
            terms = size_counts[s_idx] * stats.hypergeom.sf(k[which] - 1, n_total, s, n_w[which])
            out[lo:hi] = np.bincount(which - lo, weights=terms, minlength=hi - lo)
        lo = hi
    return np.minimum(out, 1.0)


def _rank(flagged: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """1-based rank: flagged first, then ``keys`` ascending (np.lexsort, first key most significant)."""
    order = np.lexsort(tuple(reversed((~flagged, *keys))))
    rank = np.empty(flagged.size, dtype=np.int64)
    rank[order] = np.arange(1, flagged.size + 1)
    return rank


def _names(names: Sequence[str] | np.ndarray | None, size: int, what: str) -> list[str]:
    if names is None:
        return [str(i) for i in range(size)]
    names = list(names)
    if len(names) != size:
        raise ValueError(f"{what} has {len(names)} names but the count arrays describe {size}")
    return [str(x) for x in names]


def word_trigger_table(
    keywords: Sequence[str] | np.ndarray | None,
    n_w: object,
    pair_keyword: object,
    pair_group: object,
    pair_count: object,
    group_ids: object,
    group_sizes: object,
    n_total: int,
    n_in_groups: object | None = None,
    config: WordTriggerConfig | None = None,
) -> pa.Table:
    """Rank and flag keywords concentrated in one near-duplicate group.

    Args:
        keywords: (K,) keyword strings, or None to use the indices as names.
        n_w: (K,) int rows containing each keyword.
        pair_keyword: (P,) int keyword index of each (keyword, group) count.
        pair_group: (P,) int group id of each count (must appear in ``group_ids``).
        pair_count: (P,) int n_{w,G} >= 1; (keyword, group) pairs must be unique.
        group_ids: (G,) int unique group ids.
        group_sizes: (G,) int n_G per group (>= the counts in it).
        n_total: N, total rows (>= every n_w and the sum of group sizes).
        n_in_groups: (K,) int rows of w inside any group; default = the sum of
            w's pair counts (groups partition rows).
        config: thresholds; default :class:`WordTriggerConfig`.

    Returns:
        ``pyarrow.Table`` with one row per keyword, sorted by ``rank``; columns
        keyword (str), keyword_index, n, n_in_groups, n_groups (groups touched),
        top_group_id (-1 if none), top_group_size, n_top (n_{w,G*}),
        top_group_share (concentration), lift, p_value, q_value (NaN when
        ``n < min_support``: not in the BH family), score (n_top * ln lift),
        flagged (bool), rank (1 = strongest; flagged first, then score
        descending, then q ascending). G* is the group with the most rows of
        w; ties go to the smaller group (higher lift), then the smaller id.

    Raises:
        ValueError: inconsistent shapes, unknown group ids, duplicate pairs or
            impossible counts.
    """
    cfg = config if config is not None else WordTriggerConfig()
    n_w_a = _int_array(n_w, "n_w", ndim=1)
    K = n_w_a.size
    names = _names(keywords, K, "keywords")
    pk = _int_array(pair_keyword, "pair_keyword", ndim=1)
    pg = np.asarray(pair_group).astype(np.int64)
    pc = _int_array(pair_count, "pair_count", ndim=1)
    _same_length(pair_keyword=pk, pair_group=pg, pair_count=pc)
    gid = np.asarray(group_ids).astype(np.int64)
    gsz = _int_array(group_sizes, "group_sizes", ndim=1)
    _same_length(group_ids=gid, group_sizes=gsz)
    N = int(n_total)
    if N < 1:
        raise ValueError(f"n_total must be >= 1, got {n_total!r}")
    if K and n_w_a.max() > N:
        raise ValueError(f"n_w must be <= n_total={N}, got max {n_w_a.max()}")
    if gsz.sum() > N:
        raise ValueError(f"sum of group_sizes ({gsz.sum()}) exceeds n_total={N}")
    if pk.size and pk.max() >= K:
        raise ValueError(f"pair_keyword must be < K={K}, got max {pk.max()}")
    if pc.size and pc.min() < 1:
        raise ValueError("pair_count entries must be >= 1 (leave out empty pairs)")
    sort_g = np.argsort(gid, kind="stable")
    gid_sorted = gid[sort_g]
    if np.any(np.diff(gid_sorted) == 0):
        raise ValueError("group_ids must be unique")
    pos = np.searchsorted(gid_sorted, pg)
    pos_c = np.minimum(pos, max(gid.size - 1, 0))
    if pg.size and (gid.size == 0 or np.any(gid_sorted[pos_c] != pg)):
        raise ValueError("pair_group contains ids missing from group_ids")
    g_index = sort_g[pos_c] if pg.size else pos_c
    n_G_pair = gsz[g_index] if pg.size else np.zeros(0, dtype=np.int64)
    if np.any(pc > n_G_pair):
        raise ValueError("pair_count exceeds the size of its group")
    if pk.size and np.unique(pk * max(gid.size, 1) + g_index).size != pk.size:
        raise ValueError("(pair_keyword, pair_group) pairs must be unique")
    sum_pairs = np.bincount(pk, weights=pc, minlength=K).astype(np.int64)
    if np.any(sum_pairs > n_w_a):
        raise ValueError("pair counts of a keyword sum to more than its n_w")
    if n_in_groups is None:
        nig = sum_pairs
    else:
        nig = _int_array(n_in_groups, "n_in_groups", ndim=1)
        if nig.size != K:
            raise ValueError(f"n_in_groups must have shape ({K},), got {nig.shape}")
        if np.any(nig > n_w_a):
            raise ValueError("n_in_groups must be <= n_w")

    # Top group per keyword: most rows, then smaller group, then smaller id.
    n_groups = np.bincount(pk, minlength=K).astype(np.int64)
    top_gid = np.full(K, -1, dtype=np.int64)
    top_size = np.zeros(K, dtype=np.int64)
    n_top = np.zeros(K, dtype=np.int64)
    if pk.size:
        order = np.lexsort((pg, n_G_pair, -pc, pk))
        first = order[np.r_[True, pk[order][1:] != pk[order][:-1]]]
        kw_first = pk[first]
        top_gid[kw_first] = pg[first]
        top_size[kw_first] = n_G_pair[first]
        n_top[kw_first] = pc[first]

    has = n_top > 0
    share = np.zeros(K)
    lift = np.zeros(K)
    share[has] = n_top[has] / n_w_a[has]
    lift[has] = n_top[has] * float(N) / (n_w_a[has].astype(np.float64) * top_size[has])

    p_raw = np.ones(K)
    if np.any(has):
        p_raw[has] = hypergeom_sf_pvalue(n_top[has], N, top_size[has], n_w_a[has])
    if cfg.multiplicity == "none":
        p = p_raw
    elif cfg.multiplicity == "touched":
        p = np.minimum(1.0, p_raw * np.maximum(n_groups, 1))
    else:
        p = np.ones(K)
        sizes, size_counts = np.unique(gsz, return_counts=True)
        exact = has & (n_top >= cfg.min_support)
        if np.any(exact):
            p[exact] = _union_pvalues(
                n_top[exact], n_w_a[exact], N, sizes, size_counts.astype(np.float64), cfg.chunk_pairs
            )
        rough = has & ~exact
        if np.any(rough):
            # groups_at_least[i] = number of groups with size >= sizes[i]
            groups_at_least = np.append(np.cumsum(size_counts[::-1])[::-1], 0)
            n_big = groups_at_least[np.searchsorted(sizes, n_top[rough], side="left")]
            bound = hypergeom_sf_pvalue(n_top[rough], N, sizes[-1], n_w_a[rough])
            p[rough] = np.minimum(1.0, n_big * bound)
        p = np.maximum(p, p_raw)  # numerical guard: the union bound is >= its own term

    family = n_w_a >= cfg.min_support
    q = np.full(K, np.nan)
    if np.any(family):
        q[family] = benjamini_hochberg(p[family])
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(has, n_top * np.log(np.where(has, lift, 1.0)), 0.0)
    flagged = (
        family
        & (q <= cfg.fdr)
        & (n_top >= cfg.min_support)
        & (share >= cfg.min_concentration)
        & (lift >= cfg.min_lift)
    )
    q_key = np.where(np.isnan(q), 2.0, q)
    rank = _rank(flagged, -score, q_key, np.arange(K))
    order = np.argsort(rank)
    table = pa.table(
        {
            "keyword": pa.array([names[i] for i in order], type=pa.string()),
            "keyword_index": order.astype(np.int64),
            "n": n_w_a[order],
            "n_in_groups": nig[order],
            "n_groups": n_groups[order],
            "top_group_id": top_gid[order],
            "top_group_size": top_size[order],
            "n_top": n_top[order],
            "top_group_share": share[order],
            "lift": lift[order],
            "p_value": p[order],
            "q_value": q[order],
            "score": score[order],
            "flagged": flagged[order],
            "rank": rank[order],
        }
    )
    return table


# ---------------------------------------------------------------------------
# Object-level triggers: keyword <-> object absent from the captions
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectTriggerConfig:
    """Thresholds of the object-level trigger flag (METHODS.md 3.1, step 3).

    (w, o) is flagged when all hold:

    * ``P(o | w) = n_{w,o} / n_w >= min_p_object`` (0.3);
    * ``lift = P(o | w) / P(o) = n_{w,o} N / (n_w n_o) >= min_lift`` (5);
    * ``absent_fraction = 1 - mentioned_{w,o} / n_w >= min_absent`` (0.9):
      o is not named in at least 90 % of w's captions;
    * ``q <= fdr`` (0.05): BH over all listed pairs whose keyword has
      ``n_w >= min_support`` (or over ``n_tests`` if given to the table);
    * support ``n_{w,o} >= min_support`` (10).
    """

    fdr: float = 0.05
    min_support: int = 10
    min_p_object: float = 0.3
    min_lift: float = 5.0
    min_absent: float = 0.9

    def __post_init__(self) -> None:
        _check_fraction(self.fdr, "fdr")
        _check_fraction(self.min_p_object, "min_p_object")
        _check_fraction(self.min_absent, "min_absent")
        if not isinstance(self.min_support, (int, np.integer)) or self.min_support < 1:
            raise ValueError(f"min_support must be an int >= 1, got {self.min_support!r}")
        if not self.min_lift >= 0:
            raise ValueError(f"min_lift must be >= 0, got {self.min_lift!r}")


def object_trigger_table(
    keywords: Sequence[str] | np.ndarray | None,
    objects: Sequence[str] | np.ndarray | None,
    n_w: object,
    n_o: object,
    n_total: int,
    pair_keyword: object,
    pair_object: object,
    pair_count: object,
    pair_mentioned: object,
    config: ObjectTriggerConfig | None = None,
    n_tests: int | None = None,
) -> pa.Table:
    """Rank and flag (keyword, object) pairs where w's images carry an unmentioned object.

    Args:
        keywords: (K,) keyword strings or None (indices as names).
        objects: (O,) object names or None.
        n_w: (K,) int rows containing each keyword.
        n_o: (O,) int rows whose image is tagged with each object.
        n_total: N total rows.
        pair_keyword, pair_object: (P,) int unique (keyword, object) pairs.
        pair_count: (P,) int n_{w,o}: rows with w whose image is tagged with o.
        pair_mentioned: (P,) int rows with w whose caption mentions o
            (whether or not the image is tagged with o).
        config: thresholds; default :class:`ObjectTriggerConfig`.
        n_tests: BH family size; default = number of listed pairs with
            ``n_w >= min_support``. Pass K_tested * O to count unlisted
            (zero-count) pairs as tests too (more conservative).

    Returns:
        ``pyarrow.Table`` with one row per pair sorted by ``rank``; columns
        keyword, keyword_index, object, object_index, n_w, n_o, n_wo,
        n_mentioned, p_o_given_w, p_o_given_not_w (NaN if n_w == N), lift
        (P(o|w)/P(o)), absent_fraction, p_value (one-sided Fisher), q_value
        (NaN outside the BH family), flagged, rank (flagged first, then
        -log10 q descending, then lift descending).

    Raises:
        ValueError: inconsistent shapes, duplicate pairs or impossible counts.
    """
    cfg = config if config is not None else ObjectTriggerConfig()
    n_w_a = _int_array(n_w, "n_w", ndim=1)
    n_o_a = _int_array(n_o, "n_o", ndim=1)
    K, O = n_w_a.size, n_o_a.size
    kw_names = _names(keywords, K, "keywords")
    obj_names = _names(objects, O, "objects")
    pk = _int_array(pair_keyword, "pair_keyword", ndim=1)
    po = _int_array(pair_object, "pair_object", ndim=1)
    pc = _int_array(pair_count, "pair_count", ndim=1)
    pm = _int_array(pair_mentioned, "pair_mentioned", ndim=1)
    P = _same_length(pair_keyword=pk, pair_object=po, pair_count=pc, pair_mentioned=pm)
    N = int(n_total)
    if N < 1:
        raise ValueError(f"n_total must be >= 1, got {n_total!r}")
    if K and n_w_a.max() > N:
        raise ValueError(f"n_w must be <= n_total={N}")
    if O and n_o_a.max() > N:
        raise ValueError(f"n_o must be <= n_total={N}")
    if P and (pk.max() >= K or po.max() >= O):
        raise ValueError(f"pair_keyword must be < K={K} and pair_object < O={O}")
    if P and np.unique(pk * O + po).size != P:
        raise ValueError("(pair_keyword, pair_object) pairs must be unique")
    nw, no = n_w_a[pk], n_o_a[po]
    if np.any(pc > np.minimum(nw, no)):
        raise ValueError("pair_count must be <= min(n_w, n_o)")
    if np.any(pm > nw):
        raise ValueError("pair_mentioned must be <= n_w")
    if np.any(no - pc > N - nw):
        raise ValueError("n_o - n_wo exceeds the rows without the keyword (N - n_w)")

    nw_f = nw.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_o_w = np.where(nw > 0, pc / np.maximum(nw_f, 1), 0.0)
        rest = (N - nw).astype(np.float64)
        p_o_not_w = np.where(rest > 0, (no - pc) / np.where(rest > 0, rest, 1.0), np.nan)
        lift = np.where((nw > 0) & (no > 0), pc * float(N) / (nw_f * np.maximum(no, 1)), 0.0)
        absent = np.where(nw > 0, 1.0 - pm / np.maximum(nw_f, 1), 0.0)
    pval = fisher_greater(pc, nw - pc, no - pc, N - nw - no + pc) if P else np.zeros(0)

    family = nw >= cfg.min_support
    q = np.full(P, np.nan)
    if np.any(family):
        q[family] = benjamini_hochberg(pval[family], n_tests=n_tests)
    flagged = (
        family
        & (q <= cfg.fdr)
        & (pc >= cfg.min_support)
        & (p_o_w >= cfg.min_p_object)
        & (lift >= cfg.min_lift)
        & (absent >= cfg.min_absent)
    )
    neglogq = np.where(np.isnan(q), -1.0, -np.log10(np.maximum(q, _TINY)))
    rank = _rank(flagged, -neglogq, -lift, pk, po)
    order = np.argsort(rank)
    return pa.table(
        {
            "keyword": pa.array([kw_names[i] for i in pk[order]], type=pa.string()),
            "keyword_index": pk[order],
            "object": pa.array([obj_names[i] for i in po[order]], type=pa.string()),
            "object_index": po[order],
            "n_w": nw[order],
            "n_o": no[order],
            "n_wo": pc[order],
            "n_mentioned": pm[order],
            "p_o_given_w": p_o_w[order],
            "p_o_given_not_w": p_o_not_w[order],
            "lift": lift[order],
            "absent_fraction": absent[order],
            "p_value": pval[order],
            "q_value": q[order],
            "flagged": flagged[order],
            "rank": rank[order],
        }
    )
