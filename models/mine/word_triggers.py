"""Word-level memory triggers: keywords concentrated in one near-duplicate group.

A keyword w whose rows sit mostly in one duplicate group G* is a caption
trigger for that group's image: the word-level duplication of Naseh, Roh &
Houmansadr, "Memory Triggers" (arXiv:2312.03692); duplicated training images
are the extractable ones (Carlini et al., arXiv:2301.13188, Sec. 4). The
paper publishes no thresholds or code, so the rule here is this project's
operationalisation. The test is hypergeometric: under random placement of
w's rows, how likely is it that some group holds >= n_{w,G*} of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
from scipy import stats

from models.mine.statistics import (
    benjamini_hochberg,
    check_fraction,
    hypergeom_sf_pvalue,
    int_array,
    rank_rows,
    row_names,
    same_length,
)

__all__ = ["MULTIPLICITY", "WordTriggerConfig", "group_size_histogram", "word_flags", "word_pvalues", "word_trigger_table"]

MULTIPLICITY = ("union", "touched", "none")


@dataclass(frozen=True)
class WordTriggerConfig:
    """Thresholds of the word-level trigger flag (word-level duplication, arXiv:2312.03692, as operationalised here).

    A keyword w with top group G* (the group holding most of w's rows) is
    flagged when all hold:

    * ``q <= fdr`` (BH over keywords with ``n_w >= min_support``), default 0.05;
    * support ``n_{w,G*} >= min_support``, default 10 (Carlini's clique size);
    * concentration ``n_{w,G*} / n_w >= min_concentration``, default 0.5;
    * ``lift = n_{w,G*} N / (n_w n_G*) >= min_lift``, default **10**, not the
      lift >= 100 first proposed for this rule: lift = conc * N / n_G*, so lift >= 100 with conc = 1
      needs a group smaller than 1 % of the corpus. On LAION-2B that is
      trivially met (and 100 is a fine extra guard), but on the 10^3-10^5-row
      samples we run on, it would reject exactly the large duplicate groups
      that matter most. Statistical evidence comes from q; lift only guards
      against keywords concentrated in a group that is itself a large share
      of the corpus (placeholder/dead-link images). Pass ``min_lift=100`` to
      apply that stricter rule on LAION-scale data.

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
        check_fraction(self.fdr, "fdr")
        check_fraction(self.min_concentration, "min_concentration")
        if not isinstance(self.min_support, (int, np.integer)) or self.min_support < 1:
            raise ValueError(f"min_support must be an int >= 1, got {self.min_support!r}")
        if not self.min_lift >= 0:
            raise ValueError(f"min_lift must be >= 0, got {self.min_lift!r}")
        if self.multiplicity not in MULTIPLICITY:
            raise ValueError(f"multiplicity must be one of {MULTIPLICITY}, got {self.multiplicity!r}")
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


def group_size_histogram(group_sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(G,) int group sizes -> (S,) ascending distinct sizes and (S,) int64 groups of each size.

    All the union bound needs of the groups (S <= sqrt(2 * rows in groups), since sizes sum to at most N).
    """
    sizes, counts = np.unique(np.asarray(group_sizes, np.int64), return_counts=True)
    return sizes, counts.astype(np.int64)


def word_pvalues(n_top: np.ndarray, n_w: np.ndarray, top_size: np.ndarray, n_groups: np.ndarray, n_total: int,
                 sizes: np.ndarray, size_counts: np.ndarray, cfg: WordTriggerConfig) -> tuple[np.ndarray, ...]:
    """Per-keyword statistics of the top group (any subset of the keywords: each row only reads its own numbers).

    Args:
        n_top, n_w, top_size, n_groups: (K,) int64 n_{w,G*} (0: no group), n_w, n_{G*}, groups w touches.
        n_total: N.
        sizes, size_counts: (S,) the groups' size histogram (:func:`group_size_histogram`).

    Returns:
        (share, lift, p): (K,) float64 concentration n_{w,G*}/n_w, lift n_{w,G*} N / (n_w n_{G*}), and the
        p-value of ``cfg.multiplicity`` (1 where there is no group). O(K * S) hypergeometric terms at most.
    """
    N = int(n_total)
    has = n_top > 0
    share = np.zeros(n_top.size)
    lift = np.zeros(n_top.size)
    share[has] = n_top[has] / n_w[has]
    lift[has] = n_top[has] * float(N) / (n_w[has].astype(np.float64) * top_size[has])
    p_raw = np.ones(n_top.size)
    if np.any(has):
        p_raw[has] = hypergeom_sf_pvalue(n_top[has], N, top_size[has], n_w[has])
    if cfg.multiplicity == "none":
        return share, lift, p_raw
    if cfg.multiplicity == "touched":
        return share, lift, np.minimum(1.0, p_raw * np.maximum(n_groups, 1))
    p = np.ones(n_top.size)
    exact = has & (n_top >= cfg.min_support)
    if np.any(exact):
        p[exact] = _union_pvalues(n_top[exact], n_w[exact], N, sizes, size_counts.astype(np.float64), cfg.chunk_pairs)
    rough = has & ~exact
    if np.any(rough):
        # groups_at_least[i] = number of groups with size >= sizes[i]
        groups_at_least = np.append(np.cumsum(size_counts[::-1])[::-1], 0)
        n_big = groups_at_least[np.searchsorted(sizes, n_top[rough], side="left")]
        bound = hypergeom_sf_pvalue(n_top[rough], N, sizes[-1], n_w[rough])
        p[rough] = np.minimum(1.0, n_big * bound)
    return share, lift, np.maximum(p, p_raw)  # numerical guard: the union bound is >= its own term


def word_flags(n_w: np.ndarray, n_top: np.ndarray, share: np.ndarray, lift: np.ndarray, p: np.ndarray,
               cfg: WordTriggerConfig) -> tuple[np.ndarray, ...]:
    """BH over the family (keywords with ``n_w >= min_support``), the flag and the rank: needs every keyword at once.

    Args: (K,) arrays, keywords in their index order (the last rank tie-break).

    Returns:
        (q, score, flagged, rank): (K,) float64 q (NaN outside the family), float64 n_top * ln lift,
        bool, int64 1-based rank (flagged first, then score descending, then q ascending, then index).
        O(K log K) time, O(K) memory.
    """
    family = n_w >= cfg.min_support
    q = np.full(n_w.size, np.nan)
    if np.any(family):
        q[family] = benjamini_hochberg(p[family])
    has = n_top > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(has, n_top * np.log(np.where(has, lift, 1.0)), 0.0)
    flagged = (family & (q <= cfg.fdr) & (n_top >= cfg.min_support) & (share >= cfg.min_concentration)
               & (lift >= cfg.min_lift))
    q_key = np.where(np.isnan(q), 2.0, q)
    return q, score, flagged, rank_rows(flagged, -score, q_key, np.arange(n_w.size))


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
    n_w_a = int_array(n_w, "n_w", ndim=1)
    K = n_w_a.size
    names = row_names(keywords, K, "keywords")
    pk = int_array(pair_keyword, "pair_keyword", ndim=1)
    pg = np.asarray(pair_group).astype(np.int64)
    pc = int_array(pair_count, "pair_count", ndim=1)
    same_length(pair_keyword=pk, pair_group=pg, pair_count=pc)
    gid = np.asarray(group_ids).astype(np.int64)
    gsz = int_array(group_sizes, "group_sizes", ndim=1)
    same_length(group_ids=gid, group_sizes=gsz)
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
        nig = int_array(n_in_groups, "n_in_groups", ndim=1)
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

    share, lift, p = word_pvalues(n_top, n_w_a, top_size, n_groups, N, *group_size_histogram(gsz), cfg)
    q, score, flagged, rank = word_flags(n_w_a, n_top, share, lift, p, cfg)
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

