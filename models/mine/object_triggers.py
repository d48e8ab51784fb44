"""Object-level memory triggers: keywords whose images keep showing an object the captions never name.

(w, o) is an object trigger when images whose caption contains w are tagged
with o far more often than other images (one-sided Fisher exact test on the
2x2 table of rows by "caption has w" x "image tagged o") while the captions
do not mention o ("astronaut" -> US flag): the object-level duplication of
Naseh, Roh & Houmansadr, "Memory Triggers" (arXiv:2312.03692); the
thresholds are this project's operationalisation (the paper publishes none).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from models.mine.statistics import (
    TINY,
    benjamini_hochberg,
    check_fraction,
    fisher_greater,
    int_array,
    rank_rows,
    row_names,
    same_length,
)

__all__ = ["ObjectTriggerConfig", "object_flags", "object_pair_stats", "object_rank", "object_trigger_table"]


@dataclass(frozen=True)
class ObjectTriggerConfig:
    """Thresholds of the object-level trigger flag (object-level duplication, arXiv:2312.03692, as operationalised here).

    (w, o) is flagged when all hold:

    * ``P(o | w) = n_{w,o} / n_w >= min_p_object`` (0.3);
    * ``lift = P(o | w) / P(o) = n_{w,o} N / (n_w n_o) >= min_lift`` (5);
    * ``absent_fraction = 1 - mentioned_{w,o} / n_w >= min_absent`` (0.9):
      o is not named in at least 90 % of w's captions;
    * ``q <= fdr`` (0.05): Benjamini-Hochberg over the family of *every*
      pair tested, i.e. every (w, o) with ``n_w >= min_support`` and
      ``n_o >= min_support`` (K_tested * O_tested pairs; or ``n_tests`` if
      given to the table). The family is chosen on the margins n_w, n_o only,
      never on the tested cell n_{w,o}: the one-sided Fisher test is
      conditional on the margins, so this selection keeps its p-values valid.
      Pairs of the family that are not listed (never co-occurring, or
      dropped before the table as unflaggable) count as tests at p = 1,
      which can only raise the listed pairs' q (conservative);
    * support ``n_{w,o} >= min_support`` (10), applied after testing.
    """

    fdr: float = 0.05
    min_support: int = 10
    min_p_object: float = 0.3
    min_lift: float = 5.0
    min_absent: float = 0.9

    def __post_init__(self) -> None:
        check_fraction(self.fdr, "fdr")
        check_fraction(self.min_p_object, "min_p_object")
        check_fraction(self.min_absent, "min_absent")
        if not isinstance(self.min_support, (int, np.integer)) or self.min_support < 1:
            raise ValueError(f"min_support must be an int >= 1, got {self.min_support!r}")
        if not self.min_lift >= 0:
            raise ValueError(f"min_lift must be >= 0, got {self.min_lift!r}")


def object_pair_stats(nw: np.ndarray, no: np.ndarray, pc: np.ndarray, pm: np.ndarray, n_total: int) -> tuple[np.ndarray, ...]:
    """Per-pair statistics (any subset of the pairs: each reads only its own cells and margins).

    Args:
        nw, no, pc, pm: (P,) int64 n_w, n_o, n_{w,o}, mentioned_{w,o} of each pair.
        n_total: N.

    Returns:
        (p_o_given_w, p_o_given_not_w, lift, absent_fraction, p_value): (P,) float64; p_o_given_not_w is NaN
        where n_w == N; p_value is the one-sided Fisher exact p of the 2x2 table.
    """
    N = int(n_total)
    nw_f = nw.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_o_w = np.where(nw > 0, pc / np.maximum(nw_f, 1), 0.0)
        rest = (N - nw).astype(np.float64)
        p_o_not_w = np.where(rest > 0, (no - pc) / np.where(rest > 0, rest, 1.0), np.nan)
        lift = np.where((nw > 0) & (no > 0), pc * float(N) / (nw_f * np.maximum(no, 1)), 0.0)
        absent = np.where(nw > 0, 1.0 - pm / np.maximum(nw_f, 1), 0.0)
    pval = fisher_greater(pc, nw - pc, no - pc, N - nw - no + pc) if pc.size else np.zeros(0)
    return p_o_w, p_o_not_w, lift, absent, pval


def object_flags(nw: np.ndarray, no: np.ndarray, pc: np.ndarray, p_o_w: np.ndarray, lift: np.ndarray,
                 absent: np.ndarray, pval: np.ndarray, n_tests: int, cfg: ObjectTriggerConfig,
                 named: object | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BH over the family (``n_tests`` pairs; the listed ones with both margins >= ``min_support``) and the flag.

    Needs every listed pair at once: O(P log P) time, O(P) memory. ``named``: (P,) bool, never flagged.

    Returns:
        (q, flagged): (P,) float64 (NaN outside the family) and bool.
    """
    family = (nw >= cfg.min_support) & (no >= cfg.min_support)
    q = np.full(pc.size, np.nan)
    if np.any(family):
        q[family] = benjamini_hochberg(pval[family], n_tests=n_tests)
    flagged = (family & (q <= cfg.fdr) & (pc >= cfg.min_support) & (p_o_w >= cfg.min_p_object)
               & (lift >= cfg.min_lift) & (absent >= cfg.min_absent))
    if named is not None:
        flagged &= ~np.asarray(named, bool)
    return q, flagged


def object_rank(flagged: np.ndarray, q: np.ndarray, lift: np.ndarray, pk: np.ndarray, po: np.ndarray) -> np.ndarray:
    """(P,) int64 1-based rank: flagged first, then -log10 q descending, then lift descending, then (keyword, object)."""
    neglogq = np.where(np.isnan(q), -1.0, -np.log10(np.maximum(q, TINY)))
    return rank_rows(flagged, -neglogq, -lift, pk, po)


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
    named: object | None = None,
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
        n_tests: BH family size; default = K_tested * O_tested (every pair of a keyword with
            ``n_w >= min_support`` and an object with ``n_o >= min_support``). Stored in the table's
            schema metadata as ``bh_family``.
        named: (P,) bool, pairs whose keyword itself names the object (e.g.
            :class:`models.mine.similarity.NamingCheck`): tested, never flagged.

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
    n_w_a = int_array(n_w, "n_w", ndim=1)
    n_o_a = int_array(n_o, "n_o", ndim=1)
    K, O = n_w_a.size, n_o_a.size
    kw_names = row_names(keywords, K, "keywords")
    obj_names = row_names(objects, O, "objects")
    pk = int_array(pair_keyword, "pair_keyword", ndim=1)
    po = int_array(pair_object, "pair_object", ndim=1)
    pc = int_array(pair_count, "pair_count", ndim=1)
    pm = int_array(pair_mentioned, "pair_mentioned", ndim=1)
    P = same_length(pair_keyword=pk, pair_object=po, pair_count=pc, pair_mentioned=pm)
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

    p_o_w, p_o_not_w, lift, absent, pval = object_pair_stats(nw, no, pc, pm, N)
    if n_tests is None:
        n_tests = int((n_w_a >= cfg.min_support).sum()) * int((n_o_a >= cfg.min_support).sum())
    q, flagged = object_flags(nw, no, pc, p_o_w, lift, absent, pval, n_tests, cfg, named)
    rank = object_rank(flagged, q, lift, pk, po)
    order = np.argsort(rank)
    table = pa.table(
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
    return table.replace_schema_metadata({"bh_family": str(n_tests)})
