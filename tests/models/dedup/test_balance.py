"""Oversized partitions cut into block-pair tasks cover every pair of the unsplit search exactly once."""
from collections import Counter

import numpy as np
import pytest

from models.dedup import balance


def _searched_pairs(homes: np.ndarray, visitors: np.ndarray, cap: int) -> tuple[Counter, dict]:
    """The multiset of pairs the tasks search, and the rows per task, simulating the search rule:
    diagonal tasks search homes x homes and homes x visitors, off-diagonal ones homes x visitors only."""
    split = balance.plan_split(len(homes), len(visitors), cap)
    tasks: dict = {}
    hc = balance.chunk_of(homes, split.home_chunks)
    for a in range(split.home_chunks):
        for place in balance.home_placements(7, a, split):
            role = "h" if place.as_home else "v"
            tasks.setdefault(place.key, {"h": [], "v": []})[role] += homes[hc == a].tolist()
    vc = balance.chunk_of(visitors, split.visitor_chunks)
    for j in range(split.visitor_chunks):
        for key in balance.visitor_placements(7, j, split):
            tasks.setdefault(key, {"h": [], "v": []})["v"] += visitors[vc == j].tolist()
    pairs: Counter = Counter()
    for key, t in tasks.items():
        h, v = t["h"], t["v"]
        if key.a == key.b:
            pairs.update((min(x, y), max(x, y)) for i, x in enumerate(h) for y in h[i + 1:])
        pairs.update((min(x, y), max(x, y)) for x in h for y in v)
    return pairs, {k: len(t["h"]) + len(t["v"]) for k, t in tasks.items()}


@pytest.mark.parametrize("n_homes,n_visitors,cap", [(40, 5, 100), (120, 7, 25), (90, 80, 20), (61, 0, 10)])
def test_every_pair_searched_exactly_once(n_homes, n_visitors, cap):
    rng = np.random.default_rng(n_homes)
    gids = rng.choice(10**9, n_homes + n_visitors, replace=False).astype(np.int64)
    homes, visitors = gids[:n_homes], gids[n_homes:]
    pairs, sizes = _searched_pairs(homes, visitors, cap)
    expected = {(min(x, y), max(x, y)) for i, x in enumerate(homes.tolist()) for y in homes[i + 1:].tolist()}
    expected |= {(min(x, y), max(x, y)) for x in homes.tolist() for y in visitors.tolist()}
    assert set(pairs) == expected
    assert max(pairs.values()) == 1  # nothing searched twice
    split = balance.plan_split(n_homes, n_visitors, cap)
    assert len(sizes) <= balance.task_pairs(split)
    if split != balance.NOT_SPLIT:
        # a task holds two chunks; hashing leaves chunks within a few sqrt(cap) of cap
        assert max(sizes.values()) <= 2 * cap + 6 * np.sqrt(cap)


def test_small_partition_is_one_task_with_all_rows():
    assert balance.plan_split(2000, 10_000, 2000) == balance.NOT_SPLIT
    assert balance.home_placements(3, 0, balance.NOT_SPLIT) == [balance.Placement(balance.TaskKey(3, 0, 0), True)]
    assert balance.visitor_placements(3, 0, balance.NOT_SPLIT) == [balance.TaskKey(3, 0, 0)]


def test_split_sizes_and_task_count():
    s = balance.plan_split(100_000, 30_000, 10_000)
    assert s == balance.Split(10, 3)
    assert balance.task_pairs(s) == 10 * 11 // 2 + 30
    assert balance.plan_split(100_000, 500, 10_000) == balance.Split(10, 1)
    with pytest.raises(ValueError, match="cap"):
        balance.plan_split(10, 0, 0)


def test_chunks_are_deterministic_and_spread_consecutive_ids():
    gids = (np.int64(5) << 32) | np.arange(100_000, dtype=np.int64)  # one part's consecutive rows
    c = balance.chunk_of(gids, 10)
    assert np.array_equal(c, balance.chunk_of(gids.copy(), 10))
    counts = np.bincount(c, minlength=10)
    assert counts.min() > 9_500 and counts.max() < 10_500
