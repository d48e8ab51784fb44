"""models.dedup.spanning: the maximum spanning forest against a plain Kruskal, tile-by-tile reduction against
one shot on the planted set, and a dense partition reduced in O(n + tile) memory."""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from models.dedup import search
from models.dedup.spanning import PairReducer, maximum_spanning_forest
from tests.models.dedup.planted import T, _unit


def _kruskal(n, a, b, cos):
    """Reference: edges by cosine descending, kept when they join two union-find sets."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    kept = set()
    for k in sorted(range(len(a)), key=lambda k: -cos[k]):
        ra, rb = find(int(a[k])), find(int(b[k]))
        if ra != rb:
            parent[ra] = rb
            kept.add((min(int(a[k]), int(b[k])), max(int(a[k]), int(b[k]))))
    return kept


def _labels(n, a, b):
    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


def _same_partition(x, y) -> bool:
    """Two labelings describe the same components."""
    pairs = set(zip(x.tolist(), y.tolist()))
    return len(pairs) == len(set(x.tolist())) == len(set(y.tolist()))


def test_maximum_spanning_forest_is_kruskals():
    rng = np.random.default_rng(0)
    n = 300
    pairs = rng.integers(0, n, (2000, 2))
    keys = np.unique(pairs.min(axis=1) * n + pairs.max(axis=1))  # distinct unordered pairs
    a, b = keys // n, keys % n
    keep = a != b
    a, b = a[keep], b[keep]
    cos = rng.uniform(0.95, 1.0, len(a)).astype(np.float32)  # distinct: the forest is unique
    fa, fb, fc = maximum_spanning_forest(n, a, b, cos)
    assert set(zip(fa.tolist(), fb.tolist())) == _kruskal(n, a, b, cos)
    n_comp = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[0]
    assert len(fa) == n - n_comp and np.all(fa < fb)
    lookup = dict(zip(zip(np.minimum(a, b).tolist(), np.maximum(a, b).tolist()), cos.tolist()))
    assert all(lookup[(x, y)] == c for x, y, c in zip(fa.tolist(), fb.tolist(), fc.tolist()))  # cosines exact


def test_tile_by_tile_reduction_equals_the_forest_of_all_pairs(planted):
    x = planted["x"][:8000]
    n = len(x)
    ref_i, ref_j, ref_c = search.brute_force_pairs(np.arange(n), x, T, block=1024)  # same tiles, same bits
    reducer = PairReducer(n, buffer_pairs=200)  # many reductions of forest + buffered tiles
    for r, c, cos in search.tile_pairs(x, np.zeros((0, x.shape[1]), np.float32), T, block=1024):
        reducer.add(r, c, cos)
    got = reducer.result()
    assert got.n_pairs == len(ref_i) > 1000
    one_shot = maximum_spanning_forest(n, ref_i, ref_j, ref_c)
    assert len(got.a) == len(one_shot[0]) < len(ref_i) / 5
    np.testing.assert_allclose(got.cos.astype(np.float64).sum(), one_shot[2].astype(np.float64).sum(), rtol=1e-7)
    assert _same_partition(_labels(n, got.a, got.b), _labels(n, ref_i, ref_j))
    best = np.full(n, -np.inf, np.float32)
    np.maximum.at(best, ref_i, ref_c)
    np.maximum.at(best, ref_j, ref_c)
    np.testing.assert_array_equal(got.max_cos, best)  # over ALL pairs, not only the forest's


def test_keep_all_keeps_every_pair(planted):
    x = planted["x"][:4000]
    ref_i, ref_j, ref_c = search.brute_force_pairs(np.arange(len(x)), x, T, block=512)  # same tiles, same bits
    reducer = PairReducer(len(x), keep_all=True)
    for r, c, cos in search.tile_pairs(x, np.zeros((0, x.shape[1]), np.float32), T, block=512):
        reducer.add(r, c, cos)
    got = reducer.result()
    np.testing.assert_array_equal(got.a, ref_i)
    np.testing.assert_array_equal(got.b, ref_j)
    np.testing.assert_array_equal(got.cos, ref_c)


def test_dense_partition_is_reduced_per_tile_not_held_as_pairs():
    """2000 copies of one image: 1,999,000 pairs, 1999 edges, and the reducer never holds more than the
    forest, its buffer and one tile."""
    rng = np.random.default_rng(1)
    n, d, block, buffer_pairs = 2000, 32, 256, 20_000
    base = _unit(rng.standard_normal(d))
    x = _unit(base + 0.01 * rng.standard_normal((n, d)))
    reducer = PairReducer(n, buffer_pairs=buffer_pairs)
    held = 0
    for r, c, cos in search.tile_pairs(x, np.zeros((0, d), np.float32), T, block=block):
        reducer.add(r, c, cos)
        held = max(held, sum(len(p[0]) for p in reducer._parts))
    got = reducer.result()
    assert got.n_pairs == n * (n - 1) // 2
    assert len(got.a) == n - 1 and len(np.unique(np.concatenate([got.a, got.b]))) == n
    assert held <= (n - 1) + buffer_pairs + block * block  # O(n + tile), far below the 2e6 pairs


def test_owned_mask_keeps_and_counts_only_owned_pairs():
    reducer = PairReducer(4)
    reducer.add(np.array([0, 1, 2]), np.array([1, 2, 3]), np.array([0.99, 0.97, 0.96], np.float32),
                owned=np.array([True, False, True]))
    got = reducer.result()
    assert got.n_pairs == 2  # the forest holds the owned pairs; max_cos is over every pair
    assert list(zip(got.a.tolist(), got.b.tolist())) == [(0, 1), (2, 3)]
    np.testing.assert_array_equal(got.max_cos, np.float32([0.99, 0.99, 0.97, 0.96]))
