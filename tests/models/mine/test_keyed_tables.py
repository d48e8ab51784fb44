"""Tests for models.mine.keyed_tables: the per-key pieces of the trigger tables."""
import random

import numpy as np
import pytest

from models.mine.keyed_tables import (GroupPair, GroupSizes, TopGroup, keyword_row, keyword_stats, pair_row,
                                      pair_stats, pair_table, top_group)
from models.mine.word_triggers import WordTriggerConfig, word_trigger_table


def _pairs(rng, n=40):
    return [GroupPair(rng.randint(1, 4), rng.choice([2, 3, 5]), f"G{rng.randint(0, 30):02d}", ("k",)) for _ in range(n)]


def test_top_group_fold_is_independent_of_how_the_pairs_are_split_and_merged():
    rng = random.Random(0)
    for _ in range(50):
        pairs = list({p.group_id: p for p in _pairs(rng)}.values())  # one pair per group, as kwg has
        whole = top_group(pairs)
        rng.shuffle(pairs)
        cut = sorted(rng.sample(range(1, len(pairs)), 3))
        parts = [top_group(pairs[a:b]) for a, b in zip([0] + cut, cut + [len(pairs)])]
        assert top_group(parts[::-1]) == whole
        best = min(pairs, key=lambda p: (-p.n, p.size, p.group_id))  # most rows, smaller group, smaller id
        assert whole == TopGroup(len(pairs), sum(p.n for p in pairs), best)
    assert top_group([]) == TopGroup(0, 0, None)


def test_keyword_stats_in_batches_equal_the_array_table():
    """The same p-values, lift and share as word_trigger_table, whatever the batch."""
    rng = np.random.default_rng(1)
    sizes = rng.integers(2, 30, 25)
    N = int(sizes.sum()) + 500
    rows, pk, pg, pc = [], [], [], []
    for k in range(12):
        groups = rng.choice(25, rng.integers(0, 5), replace=False)
        counts = [int(rng.integers(1, sizes[g] + 1)) for g in groups]
        n = sum(counts) + int(rng.integers(0, 20))
        gp = [GroupPair(c, int(sizes[g]), f"G{g:02d}", ()) for g, c in zip(groups, counts)]
        rows.append(keyword_row(f"w{k:02d}", n, sum(counts), top_group(gp)))
        pk += [k] * len(groups)
        pg += list(groups)
        pc += counts
    cfg = WordTriggerConfig(min_support=3)
    hist = GroupSizes.from_counts(list(zip(*np.unique(sizes, return_counts=True))))
    got = keyword_stats(rows[:5], N, hist, cfg) + keyword_stats(rows[5:], N, hist, cfg)
    want = word_trigger_table([r.keyword for r in rows], [r.n for r in rows], pk, pg, pc, np.arange(25), sizes, N,
                              config=cfg).to_pylist()
    want = {r["keyword"]: r for r in want}
    for s in got:
        w = want[s.row.keyword]
        assert (s.share, s.lift, s.p_value) == (w["top_group_share"], w["lift"], w["p_value"])
        assert (s.row.groups.top.n if s.row.groups.top else 0) == w["n_top"]


def test_bad_counts_are_errors_that_name_the_key():
    with pytest.raises(ValueError, match="'w'.*sum to more than its n_w"):
        keyword_row("w", 3, 0, TopGroup(2, 4, GroupPair(4, 5, "G", ())))
    with pytest.raises(ValueError, match="n_in_groups must be <= n_w.*'w'"):
        keyword_row("w", 3, 4, None)
    with pytest.raises(ValueError, match="outside the 2 objects"):
        pair_row("w", 2, 5, 5, 1, 0, 2)
    with pytest.raises(ValueError, match="pair_count must be <= min"):
        pair_row("w", 0, 5, 3, 4, 0, 2)
    with pytest.raises(ValueError, match="exceeds n_total"):
        GroupSizes.from_counts([(3, 4), (2, 1)]).check(13)
    with pytest.raises(ValueError, match="listed once"):
        GroupSizes.from_counts([(3, 4), (3, 1)])
    with pytest.raises(ValueError, match="N - n_w"):
        pair_stats([pair_row("w", 0, 8, 5, 2, 0, 1)], 10)
    assert pair_stats([], 10) == []


class FakeNaming:
    """Says the keyword names the object for the listed pairs (a stand-in for the MiniLM check)."""

    threshold = 0.5

    def __init__(self, named):
        self.named = named

    def __call__(self, keywords, objects):
        return np.asarray([0.9 if (k, o) in self.named else 0.1 for k, o in zip(keywords, objects)])


def test_pair_table_with_naming_and_explain_equals_the_one_writer_table():
    from models.mine.object_triggers import ObjectTriggerConfig
    from models.mine.part_counts import KeywordObject, TagMention
    from models.mine.tables import TableCounts, object_table

    rng = np.random.default_rng(3)
    N, objects = 2000, ["flag", "tree", "dog", "moon"]
    obj = {o: int(rng.integers(60, 300)) for o in range(4)}
    kw = {f"w{k}": int(rng.integers(20, 200)) for k in range(15)}
    kwo = []
    for w, n in kw.items():
        for o in rng.choice(4, 2, replace=False):
            tagged = int(min(n, obj[o]) * rng.uniform(0.2, 1.0))
            kwo.append((KeywordObject(w, int(o)), TagMention(tagged, int(rng.integers(0, max(1, n // 20))))))
    counts = TableCounts(kw=kw, kwin={}, kwg=[], grp={}, obj=obj, kwo=sorted(kwo), captions={}, stats={"rows_analysed": N})
    cfg = ObjectTriggerConfig(min_support=10)
    want0 = object_table(counts, objects, cfg)
    flagged = [(r["keyword"], r["object_index"]) for r in want0.to_pylist() if r["flagged"]]
    assert len(flagged) >= 3
    naming = FakeNaming(set(flagged[:2]))

    def explain(k, o):
        return f"{k} never names {objects[o]}"

    want = object_table(counts, objects, cfg, explain, naming)
    rows = [pair_row(k.keyword, k.object, kw[k.keyword], obj[k.object], v.tagged, v.mentioned, 4) for k, v in kwo]
    n_tests = sum(n >= 10 for n in kw.values()) * sum(n >= 10 for n in obj.values())
    got = pair_table(pair_stats(rows[:7], N) + pair_stats(rows[7:], N), objects, n_tests, cfg, explain, naming)
    assert got.to_pylist() == want.to_pylist() and got.schema == want.schema
    reasons = {(r["keyword"], r["object_index"]): r["unmentioned_reason"] for r in got.to_pylist()}
    assert all(reasons[c].startswith("not flagged: the keyword names the object") for c in flagged[:2])
    assert reasons[flagged[2]] == f"{flagged[2][0]} never names {objects[flagged[2][1]]}"
