"""The trigger tables computed per key: what the distributed mine steps do at each key, in plain Python.

The one-writer computation (:func:`models.mine.tables.word_table`,
:func:`models.mine.tables.object_table`) reads every duplicate group and every
(keyword, group) count at once. Here each number is made where its inputs lie
(:mod:`transforms.mine_tables` wires the steps):

1. per (keyword, group): the group's size joined by group id -> :class:`GroupPair`;
2. per keyword: its pairs folded into :class:`TopGroup` (O(1) state: groups touched, rows in them, the top
   pair by most rows, then smaller group, then smaller id: the rule of
   :func:`models.mine.word_triggers.word_trigger_table`), joined with ``n_w`` and ``n_in_groups``
   -> :class:`KeywordRow`;
3. per batch of keywords: lift and the hypergeometric union-bound p (:func:`keyword_stats`; the groups enter only
   as their size histogram, O(distinct sizes) <= sqrt(2 N));
4. once, over one small row per tested keyword: Benjamini-Hochberg, the flags and the rank (:func:`keyword_table`).

Object pairs likewise: (keyword, object) joined with ``n_w`` by keyword -> :class:`PairRow`, the Fisher p per
batch (:func:`pair_stats`), then BH over the family and the rank once (:func:`pair_table`). The results equal the
one-writer tables exactly (the same array functions of :mod:`models.mine.word_triggers` and
:mod:`models.mine.object_triggers` do the arithmetic; ``tests/transforms/test_mine_tables.py`` compares them).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import pyarrow as pa

from models.mine.object_triggers import ObjectTriggerConfig, object_flags, object_pair_stats, object_rank
from models.mine.word_triggers import WordTriggerConfig, word_flags, word_pvalues
from models.storage import schemas

__all__ = ["GroupPair", "GroupSizes", "KeywordRow", "KeywordStat", "PairRow", "PairStat", "TopGroup", "keyword_row",
           "keyword_stats", "keyword_table", "pair_row", "pair_stats", "pair_table", "top_group"]


class GroupPair(NamedTuple):
    """One (keyword, group) count with its group's size (the value of a keyword's pair after the join)."""

    n: int
    size: int
    group_id: str
    examples: tuple[str, ...]

    def order(self) -> tuple:
        """Smaller is a better top group: most rows, then smaller group (higher lift), then smaller id."""
        return -self.n, self.size, self.group_id


class TopGroup(NamedTuple):
    """A keyword's pairs folded: groups touched, rows in them, the top pair (None: no pair)."""

    n_groups: int
    rows: int
    top: GroupPair | None


def top_group(parts) -> TopGroup:
    """Fold :class:`GroupPair` and :class:`TopGroup` values (associative and commutative: a CombineFn's body)."""
    n_groups = rows = 0
    top = None
    for v in parts:
        if isinstance(v, GroupPair):
            v = TopGroup(1, v.n, v)
        n_groups += v.n_groups
        rows += v.rows
        if v.top is not None and (top is None or v.top.order() < top.order()):
            top = v.top
    return TopGroup(n_groups, rows, top)


class KeywordRow(NamedTuple):
    """Everything the word statistics read of one keyword (O(1) per tested keyword)."""

    keyword: str
    n: int
    n_in_groups: int
    groups: TopGroup


class KeywordStat(NamedTuple):
    row: KeywordRow
    share: float
    lift: float
    p_value: float


class GroupSizes(NamedTuple):
    """The duplicate groups as the union bound sees them: (S,) ascending distinct sizes, (S,) groups of each."""

    sizes: np.ndarray
    counts: np.ndarray

    @classmethod
    def from_counts(cls, size_counts: Sequence[tuple[int, int]]) -> "GroupSizes":
        """[(size, groups of that size)] -> histogram (each size once)."""
        ordered = sorted(size_counts)
        sizes = np.asarray([s for s, _ in ordered], np.int64)
        if np.unique(sizes).size != sizes.size:
            raise ValueError("each group size must be listed once")
        return cls(sizes, np.asarray([c for _, c in ordered], np.int64))

    def check(self, n_total: int) -> None:
        rows = int((self.sizes * self.counts).sum())
        if rows > n_total:
            raise ValueError(f"sum of group_sizes ({rows}) exceeds n_total={n_total}")


def keyword_row(keyword: str, n: int, n_in_groups: int, groups: TopGroup | None) -> KeywordRow:
    """Join of one keyword's counts; ValueError for counts that cannot come from one corpus."""
    groups = groups if groups is not None else TopGroup(0, 0, None)
    if groups.rows > n:
        raise ValueError(f"pair counts of keyword {keyword!r} sum to more than its n_w ({groups.rows} > {n})")
    if n_in_groups > n:
        raise ValueError(f"n_in_groups must be <= n_w (keyword {keyword!r}: {n_in_groups} > {n})")
    return KeywordRow(keyword, int(n), int(n_in_groups), groups)


def keyword_stats(rows: Sequence[KeywordRow], n_total: int, groups: GroupSizes, cfg: WordTriggerConfig) -> list[KeywordStat]:
    """Lift, concentration and p of a batch of keywords: O(batch * S) hypergeometric terms, O(batch + S) memory."""
    N = int(n_total)
    n_w = np.asarray([r.n for r in rows], np.int64)
    if n_w.size and (N < 1 or n_w.max() > N):
        raise ValueError(f"n_w must be <= n_total={N} (and n_total >= 1), got max {n_w.max()}")
    tops = [r.groups.top for r in rows]
    n_top = np.asarray([t.n if t else 0 for t in tops], np.int64)
    size = np.asarray([t.size if t else 0 for t in tops], np.int64)
    n_groups = np.asarray([r.groups.n_groups for r in rows], np.int64)
    share, lift, p = word_pvalues(n_top, n_w, size, n_groups, N, groups.sizes, groups.counts, cfg)
    return [KeywordStat(r, float(s), float(lf), float(pv)) for r, s, lf, pv in zip(rows, share, lift, p)]


def keyword_table(stats: Sequence[KeywordStat], cfg: WordTriggerConfig) -> pa.Table:
    """One row per tested keyword -> ``keyword_triggers`` (:data:`schemas.KEYWORD_TRIGGERS`), ranked.

    BH runs over the whole family, so this reads every tested keyword: O(K log K) time, O(K) memory.
    """
    stats = sorted(stats, key=lambda s: s.row.keyword)
    if not stats:
        return schemas.table([], schemas.KEYWORD_TRIGGERS)
    n_w = np.asarray([s.row.n for s in stats], np.int64)
    n_top = np.asarray([s.row.groups.top.n if s.row.groups.top else 0 for s in stats], np.int64)
    share, lift, p = (np.asarray(col, np.float64) for col in zip(*((s.share, s.lift, s.p_value) for s in stats)))
    q, _, flagged, rank = word_flags(n_w, n_top, share, lift, p, cfg)
    rows = []
    for i in np.argsort(rank):
        s, top = stats[i], stats[i].row.groups.top
        rows.append({"keyword": s.row.keyword, "n": s.row.n, "n_in_groups": s.row.n_in_groups,
                     "top_group_id": top.group_id if top else None, "top_group_share": s.share, "lift": s.lift,
                     "p_value": s.p_value, "q_value": float(q[i]), "example_keys": list(top.examples) if top else [],
                     "flagged": bool(flagged[i]), "rank": int(rank[i])})
    return schemas.table(rows, schemas.KEYWORD_TRIGGERS)


class PairRow(NamedTuple):
    """One (keyword, object) pair with its margins (O(1) per listed pair)."""

    keyword: str
    object: int
    n_w: int
    n_o: int
    tagged: int
    mentioned: int


class PairStat(NamedTuple):
    row: PairRow
    p_o_given_w: float
    p_o_given_not_w: float
    lift: float
    absent_fraction: float
    p_value: float


def pair_row(keyword: str, obj: int, n_w: int, n_o: int, tagged: int, mentioned: int, n_objects: int) -> PairRow:
    """Join of one pair's counts; ValueError for counts that cannot come from one corpus."""
    if not 0 <= obj < n_objects:
        raise ValueError(f"object index {obj} of keyword {keyword!r} is outside the {n_objects} objects")
    if tagged > min(n_w, n_o):
        raise ValueError(f"pair_count must be <= min(n_w, n_o): ({keyword!r}, {obj}) has {tagged}")
    if mentioned > n_w:
        raise ValueError(f"pair_mentioned must be <= n_w: ({keyword!r}, {obj}) has {mentioned} > {n_w}")
    return PairRow(keyword, int(obj), int(n_w), int(n_o), int(tagged), int(mentioned))


def pair_stats(rows: Sequence[PairRow], n_total: int) -> list[PairStat]:
    """Fisher p and the ratios of a batch of pairs: O(batch)."""
    N = int(n_total)
    if not rows:
        return []
    nw, no, pc, pm = (np.asarray(c, np.int64) for c in zip(*((r.n_w, r.n_o, r.tagged, r.mentioned) for r in rows)))
    if N < 1 or np.any(nw > N) or np.any(no > N):
        raise ValueError(f"n_w and n_o must be <= n_total={N} (and n_total >= 1)")
    if np.any(no - pc > N - nw):
        raise ValueError("n_o - n_wo exceeds the rows without the keyword (N - n_w)")
    cols = object_pair_stats(nw, no, pc, pm, N)
    return [PairStat(r, *(float(c[i]) for c in cols)) for i, r in enumerate(rows)]


def pair_table(stats: Sequence[PairStat], objects: Sequence[str], n_tests: int, cfg: ObjectTriggerConfig,
               explain=None, naming=None) -> pa.Table:
    """One row per listed pair -> ``object_triggers`` (:data:`schemas.OBJECT_TRIGGERS`), ranked; ``bh_family`` =
    ``n_tests`` in the schema metadata ("0" without pairs). ``explain`` and ``naming``: as in
    :func:`models.mine.tables.object_table`. O(P log P) time, O(P) memory over the P listed pairs.
    """
    if not stats:
        return schemas.table([], schemas.OBJECT_TRIGGERS).replace_schema_metadata({"bh_family": "0"})
    stats = sorted(stats, key=lambda s: (s.row.keyword, s.row.object))
    words = sorted({s.row.keyword for s in stats})
    index = {w: i for i, w in enumerate(words)}
    pk = np.asarray([index[s.row.keyword] for s in stats], np.int64)
    po = np.asarray([s.row.object for s in stats], np.int64)
    nw, no, pc, pm = (np.asarray(c, np.int64) for c in zip(*((s.row.n_w, s.row.n_o, s.row.tagged, s.row.mentioned)
                                                              for s in stats)))
    p_o_w, p_o_not_w, lift, absent, pval = (np.asarray(c, np.float64) for c in zip(*(s[1:] for s in stats)))
    q, flagged = object_flags(nw, no, pc, p_o_w, lift, absent, pval, n_tests, cfg)
    reasons: dict[tuple[str, int], str] = {}
    if naming is not None and flagged.any():
        cand = [(words[pk[i]], int(po[i])) for i in np.argsort(object_rank(flagged, q, lift, pk, po)) if flagged[i]]
        sims = naming([k for k, _ in cand], [o for _, o in cand])
        named = {c: float(s) for c, s in zip(cand, sims) if s >= naming.threshold}
        if named:
            q, flagged = object_flags(nw, no, pc, p_o_w, lift, absent, pval, n_tests, cfg,
                                      np.asarray([(words[k], int(o)) in named for k, o in zip(pk, po)]))
            reasons = {c: f"not flagged: the keyword names the object (all-MiniLM-L6-v2 cosine {s:.3f} >= "
                          f"{naming.threshold})" for c, s in named.items()}
    order = np.argsort(object_rank(flagged, q, lift, pk, po))
    keys = [(words[pk[i]], int(po[i])) for i in order]
    reason = [reasons.get(k) or (explain(*k) if flagged[i] and explain is not None else None) for k, i in zip(keys, order)]
    names = [str(x) for x in objects]
    table = pa.table({
        "keyword": pa.array([k for k, _ in keys], pa.string()), "object": pa.array([names[o] for _, o in keys], pa.string()),
        "object_index": po[order], "n_w": nw[order], "n_o": no[order], "n_wo": pc[order], "p_o_given_w": p_o_w[order],
        "p_o_given_not_w": p_o_not_w[order], "lift": lift[order], "absent_fraction": absent[order],
        "p_value": pval[order], "q_value": q[order], "flagged": flagged[order],
        "rank": object_rank(flagged, q, lift, pk, po)[order], "unmentioned_reason": pa.array(reason, pa.string())})
    return table.select(schemas.OBJECT_TRIGGERS.names).cast(schemas.OBJECT_TRIGGERS).replace_schema_metadata(
        {"bh_family": str(n_tests)})
