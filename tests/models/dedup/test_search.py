"""models.dedup.search: partitioned search against brute force on planted data; the pair decision; boundary pruning.

Tolerances are stated at each assertion.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.dedup import kernels as dedup
from tests.models.dedup.planted import K, N_BASE, T, _pair_keys, _pipeline_edges, _unit


# --------------------------------------------------------------------------- planted data end to end


def test_planted_structure_is_as_designed(planted):
    ref = planted["ref"]
    for g in planted["groups"]:  # every group is a clique at T
        a, b = np.triu_indices(len(g), 1)
        assert np.isin(_pair_keys(g[a], g[b]), ref).all()
    for g in planted["chains"]:  # consecutive links present, two-step links absent
        assert np.isin(_pair_keys(g[:-1], g[1:]), ref).all()
        assert not np.isin(_pair_keys(g[:-2], g[2:]), ref).any()
    assert np.isin(planted["straddle_keys"], ref).all()


def test_partitioned_search_recall_and_precision(planted):
    x, ids, c, ref = planted["x"], planted["ids"], planted["centroids"], planted["ref"]
    straddle = planted["straddle_keys"]
    home = dedup.assign_with_spill(x, c, T, 0)[0]
    crossing = home[N_BASE::2] != home[N_BASE + 1 :: 2]
    assert crossing.mean() >= 0.9, "straddle construction should cross partition boundaries"

    recalls = {}
    for max_spill in (0, dedup.DEFAULT_MAX_SPILL, K - 1):
        i, j, cos, _ = _pipeline_edges(ids, x, c, max_spill)
        got = np.unique(_pair_keys(i, j))
        recalls[max_spill] = np.isin(ref, got).mean()
        # precision 1.0: nothing outside the exact set, nothing below T
        assert np.isin(got, ref).all()
        assert np.all(cos >= np.float32(T))
        dots = np.einsum("ij,ij->i", x[i].astype(np.float64), x[j].astype(np.float64))
        assert np.all(dots >= T)  # the documented decision: float64 inner product >= T
        x64 = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
        cos64 = np.einsum("ij,ij->i", x64[i], x64[j])
        np.testing.assert_allclose(cos, cos64, atol=1e-5, rtol=0)
        if max_spill == dedup.DEFAULT_MAX_SPILL:
            assert np.isin(straddle, got).mean() >= 0.99
    assert recalls[K - 1] == 1.0  # uncapped spill is exact
    assert recalls[dedup.DEFAULT_MAX_SPILL] >= 0.99
    assert recalls[0] < 1.0  # without spill, crossing straddle pairs are lost



def test_search_partitioned_matches_explicit_pipeline(planted):
    x, ids, c = planted["x"], planted["ids"], planted["centroids"]
    i, j, cos, _ = _pipeline_edges(ids, x, c, 2)
    a, b, cc = dedup.search_partitioned(ids, x, c, T, max_spill=2)
    exp, first = np.unique(_pair_keys(i, j), return_index=True)
    np.testing.assert_array_equal(_pair_keys(a, b), exp)  # sorted by (i, j), deduplicated
    np.testing.assert_allclose(cc, cos[first], atol=1e-6, rtol=0)
    assert np.all(a < b)


# --------------------------------------------------------------------------- exact pairs


@pytest.fixture(scope="module")
def small_set():
    """1500 x 32-d: groups, plus pairs within 1e-7..1e-5 of the threshold on either side."""
    rng = np.random.default_rng(11)
    d = 32
    x = _unit(rng.standard_normal((1500, d)))
    for s in range(0, 600, 20):  # groups of 20 with pairwise cos ~ 0.95..0.99
        x[s : s + 20] = _unit(x[s] + rng.standard_normal((20, d)) * math.sqrt(rng.uniform(0.01, 0.06) / d))
    p = 600
    for delta in (-1e-5, -1e-6, -1e-7, 0.0, 1e-7, 1e-6, 1e-5):
        for _ in range(5):
            b, w = rng.standard_normal(d), rng.standard_normal(d)
            b /= np.linalg.norm(b)
            w -= (w @ b) * b
            w /= np.linalg.norm(w)
            a = math.acos(T + delta) / 2
            x[p] = math.cos(a) * b + math.sin(a) * w
            x[p + 1] = math.cos(a) * b - math.sin(a) * w
            p += 2
    x = _unit(x)
    ids = rng.choice(10**9, size=len(x), replace=False).astype(np.int64)  # sparse global ids
    return ids, x


def _naive_pairs(ids: np.ndarray, x: np.ndarray, t: float) -> set[tuple[int, int]]:
    g = x.astype(np.float64) @ x.astype(np.float64).T
    a, b = np.nonzero(np.triu(g >= t, 1))
    return {(min(p, q), max(p, q)) for p, q in zip(ids[a].tolist(), ids[b].tolist())}


def test_brute_force_matches_naive_float64(small_set):
    ids, x = small_set
    i, j, cos = dedup.brute_force_pairs(ids, x, T)
    assert i.dtype == np.int64 and j.dtype == np.int64 and cos.dtype == np.float32
    assert np.all(i < j)
    assert set(zip(i.tolist(), j.tolist())) == _naive_pairs(ids, x, T)  # exact, borderline pairs included
    order = np.lexsort((j, i))
    np.testing.assert_array_equal(order, np.arange(i.size))  # sorted by (i, j)


def test_blocked_results_independent_of_block(small_set):
    ids, x = small_set
    i0, j0, c0 = dedup.brute_force_pairs(ids, x, T, block=4096)
    for block in (17, 256, 1000):
        i, j, c = dedup.brute_force_pairs(ids, x, T, block=block)
        np.testing.assert_array_equal(i, i0)
        np.testing.assert_array_equal(j, j0)
        np.testing.assert_allclose(c, c0, atol=1e-6, rtol=0)


def test_partition_pairs_equals_brute_force_minus_visitor_pairs(small_set):
    ids, x = small_set
    rng = np.random.default_rng(5)
    is_home = rng.random(len(x)) < 0.6
    h, v = np.flatnonzero(is_home), np.flatnonzero(~is_home)
    for block in (64, 4096):
        i, j, cos = dedup.partition_pairs(ids[h], x[h], ids[v], x[v], T, block=block)
        bi, bj, bc = dedup.brute_force_pairs(ids, x, T)
        visitor_ids = set(ids[v].tolist())
        keep = np.array([not (p in visitor_ids and q in visitor_ids) for p, q in zip(bi.tolist(), bj.tolist())])
        np.testing.assert_array_equal(i, bi[keep])
        np.testing.assert_array_equal(j, bj[keep])
        np.testing.assert_allclose(cos, bc[keep], atol=1e-6, rtol=0)


def test_partition_pairs_dedup_and_edge_cases(small_set):
    ids, x = small_set
    # the same vector under the same id twice: no self pair, each pair once
    i, j, _ = dedup.partition_pairs(
        np.concatenate([ids[:40], ids[:40]]), np.concatenate([x[:40], x[:40]]), ids[40:60], x[40:60], T
    )
    keys = _pair_keys(i, j)
    assert np.all(i < j) and np.unique(keys).size == keys.size
    empty = dedup.partition_pairs(ids[:0], x[:0], ids[:0], x[:0], T)
    assert all(a.size == 0 for a in empty)
    assert dedup.partition_pairs(ids[:1], x[:1], ids[1:3], x[1:3], T)[0].dtype == np.int64
    with pytest.raises(ValueError, match="home_ids"):
        dedup.partition_pairs(ids[:3], x[:4], ids[:0], x[:0], T)
    with pytest.raises(ValueError, match="block"):
        dedup.brute_force_pairs(ids, x, T, block=0)
    with pytest.raises(ValueError, match="visitor_vecs rows must be L2-normalised"):
        dedup.partition_pairs(ids[:3], x[:3], ids[3:4], 3 * x[3:4], T)


@pytest.mark.parametrize("max_spill", [1, 3, K - 1])
def test_boundary_pruned_search_finds_the_same_pairs(planted, max_spill):
    """Visitors from j searched only against the homes near j's boundary: the same pair set as all homes x visitors."""
    ids, x, c = planted["ids"], planted["x"], planted["centroids"]
    home, (indptr, part) = dedup.assign_with_spill(x, c, T, max_spill)
    vis_rows = np.repeat(np.arange(len(x)), np.diff(indptr))
    for p in range(0, K, 7):
        h = np.flatnonzero(home == p)
        v = vis_rows[part == p]
        full = dedup.partition_pairs(ids[h], x[h], ids[v], x[v], T)
        pruned = dedup.partition_pairs(ids[h], x[h], ids[v], x[v], T, visitor_homes=home[v], centroids=c, partition=p)
        np.testing.assert_array_equal(full[0], pruned[0])
        np.testing.assert_array_equal(full[1], pruned[1])
        np.testing.assert_allclose(full[2], pruned[2], atol=1e-6)  # other BLAS tile shapes: last-bit differences
        assert (pruned[2] >= np.float32(T)).all()

