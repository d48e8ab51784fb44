"""Tests for models.dedup.kernels: spill-bounded partitioned pair search, components, representatives.

Planted data (20k x 64-d, seeded): clustered background with no near-duplicates,
near-duplicate groups of 2..50 (cliques at t = 0.95), chains whose ends are below
the threshold, and pairs built to straddle the bisector of two neighbouring
centroids. Tolerances are stated at each assertion.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest

from models.dedup import kernels as dedup

T = 0.95
DIM = 64
N_BASE = 20_000
K = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pair_keys(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Unordered pairs of ids < 2^31 as one int64 key each."""
    return np.minimum(i, j).astype(np.int64) << 32 | np.maximum(i, j).astype(np.int64)


def _planted_base(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Background + groups + chains; returns (x, groups, chains) with row-index lists."""
    n_topics = N_BASE // 500
    centres = _unit(rng.standard_normal((n_topics, DIM)))
    x = _unit(centres[rng.integers(0, n_topics, N_BASE)] + rng.standard_normal((N_BASE, DIM)) * math.sqrt(1.04 / DIM))
    rows = rng.permutation(N_BASE)
    groups, chains, pos = [], [], 0
    while pos < N_BASE // 10:
        g = rows[pos : pos + int(rng.integers(2, 51))]
        pos += len(g)
        # |noise|^2 = 0.02: pairwise cosine ~0.98, far above T for every member pair.
        x[g] = _unit(x[g[0]] + rng.standard_normal((len(g), DIM)) * math.sqrt(0.02 / DIM))
        groups.append(g)
    phi = math.acos(0.96)  # consecutive links at cos 0.96, two steps apart at cos 0.843 < T
    for _ in range(40):
        g = rows[pos : pos + 5]
        pos += 5
        a = x[g[0]].astype(np.float64)
        u = rng.standard_normal(DIM)
        u -= (u @ a) * a
        u /= np.linalg.norm(u)
        steps = np.arange(5)[:, None] * phi
        x[g] = _unit(np.cos(steps) * a + np.sin(steps) * u)
        chains.append(g)
    return x, groups, chains


def _straddle_pairs(centroids: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(2 n_pairs, d) rows: x_p, y_p on opposite sides of the bisector of neighbouring centroids.

    x = cos(a) b + sin(a) w, y = cos(a) b - sin(a) w with w = (c1 - c2)/|c1 - c2| and b a
    unit vector orthogonal to w near (c1 + c2)/|c1 + c2|, so cos(x, y) = cos(2a) in [T + 0.002, 0.99].
    """
    c = centroids.astype(np.float64)
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)
    out = np.empty((2 * n_pairs, c.shape[1]))
    for p in range(n_pairs):
        i = int(rng.integers(len(c)))
        j = int(np.argsort(-sims[i])[rng.integers(0, 2)])  # nearest or second-nearest centroid
        w = c[i] - c[j]
        w /= np.linalg.norm(w)
        m = c[i] + c[j]
        m /= np.linalg.norm(m)
        z = rng.standard_normal(c.shape[1])
        z -= (z @ w) * w + (z @ m) * m
        b = m + 0.15 * z / np.linalg.norm(z)
        b -= (b @ w) * w
        b /= np.linalg.norm(b)
        a = math.acos(rng.uniform(T + 0.002, 0.99)) / 2
        out[2 * p] = math.cos(a) * b + math.sin(a) * w
        out[2 * p + 1] = math.cos(a) * b - math.sin(a) * w
    return _unit(out)


def _pipeline_edges(ids: np.ndarray, x: np.ndarray, centroids: np.ndarray, max_spill: int) -> tuple:
    """The pipeline, spelled out: assign + spill, partition_pairs per partition, union of edges."""
    home, (indptr, part) = dedup.assign_with_spill(x, centroids, T, max_spill)
    vis_row = np.repeat(np.arange(len(x)), np.diff(indptr))
    out = []
    for p in range(len(centroids)):
        h = np.flatnonzero(home == p)
        v = vis_row[part == p]
        out.append(dedup.partition_pairs(ids[h], x[h], ids[v], x[v], T))
    i, j, c = (np.concatenate(parts) for parts in zip(*out))
    return i, j, c, home


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(20240601)
    base, groups, chains = _planted_base(rng)
    sample = base[rng.choice(N_BASE, size=5000, replace=False)]
    centroids = dedup.train_centroids(sample, K, seed=7)
    straddle = _straddle_pairs(centroids, 300, rng)
    x = np.concatenate([base, straddle])
    ids = np.arange(len(x), dtype=np.int64)
    ref_i, ref_j, _ = dedup.brute_force_pairs(ids, x, T)  # itself checked against float64 below
    straddle_keys = _pair_keys(np.arange(N_BASE, len(x), 2), np.arange(N_BASE + 1, len(x), 2))
    return {
        "x": x, "ids": ids, "centroids": centroids, "groups": groups, "chains": chains,
        "ref": np.unique(_pair_keys(ref_i, ref_j)), "straddle_keys": straddle_keys,
    }


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


def test_components_on_planted_edges(planted):
    x, ids, c = planted["x"], planted["ids"], planted["centroids"]
    i, j, _, _ = _pipeline_edges(ids, x, c, dedup.DEFAULT_MAX_SPILL)
    labels = dedup.connected_components(len(x), i, j)
    for g in planted["groups"] + planted["chains"]:
        assert np.unique(labels[g]).size == 1  # chains: ends below T still share a component
    for p in range(N_BASE, len(x), 2):
        assert labels[p] == labels[p + 1] == min(labels[p], p)


def test_search_partitioned_matches_explicit_pipeline(planted):
    x, ids, c = planted["x"], planted["ids"], planted["centroids"]
    i, j, cos, _ = _pipeline_edges(ids, x, c, 2)
    a, b, cc = dedup.search_partitioned(ids, x, c, T, max_spill=2)
    exp, first = np.unique(_pair_keys(i, j), return_index=True)
    np.testing.assert_array_equal(_pair_keys(a, b), exp)  # sorted by (i, j), deduplicated
    np.testing.assert_allclose(cc, cos[first], atol=1e-6, rtol=0)
    assert np.all(a < b)


# --------------------------------------------------------------------------- assign_with_spill


def test_assign_with_spill_matches_margin_rule(planted):
    rng = np.random.default_rng(3)
    x = planted["x"][rng.choice(len(planted["x"]), 3000, replace=False)]
    c = planted["centroids"]
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    scores = x64 @ c64.T
    radius = math.sqrt(1 - T * T)

    home, (indptr, part) = dedup.assign_with_spill(x, c, T, K - 1, block=1000)
    assert home.dtype == np.int64 and indptr.dtype == np.int64 and part.dtype == np.int64
    assert indptr.shape == (len(x) + 1,) and indptr[-1] == part.size
    # home is the max inner product (float32 ties within 1e-5 allowed)
    assert np.all(scores[np.arange(len(x)), home] >= scores.max(axis=1) - 1e-5)
    for r in range(len(x)):
        h = home[r]
        dist = np.linalg.norm(c64[h] - c64, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = (scores[r, h] - scores[r]) / dist
        margin[h] = np.inf
        spilled = part[indptr[r] : indptr[r + 1]]
        assert h not in spilled
        must = np.flatnonzero(margin <= radius - 1e-6)
        assert set(must) <= set(spilled)  # uncapped: every partition within the bound
        assert np.all(margin[spilled] <= radius + 1e-3)  # and only those (float slack 1e-3)
        assert np.all(np.diff(margin[spilled]) >= -1e-6)  # increasing margin order

    capped_home, (cip, cpart) = dedup.assign_with_spill(x, c, T, 3)
    np.testing.assert_array_equal(capped_home, home)
    assert np.diff(cip).max() <= 3
    for r in range(0, len(x), 50):  # the capped list is the head of the uncapped list
        full = part[indptr[r] : indptr[r + 1]]
        np.testing.assert_array_equal(cpart[cip[r] : cip[r + 1]], full[: cip[r + 1] - cip[r]])


@pytest.mark.parametrize("norm", [1.0, 1.0 + 9e-5])
def test_spill_bound_is_tight_and_exact_at_the_boundary(norm):
    """Pairs placed exactly at the bound: y barely on c2's side, x at angle ~theta towards c1.

    x's margin is then sin(theta) up to ~3e-4, the largest any partner allows; with
    max_spill = k - 1 every such pair must be found, and its margin must sit at the bound.
    ``norm`` scales all rows to the edge of the accepted norm tolerance, where the angle
    of a pair with inner product T is larger than arccos(T).
    """
    rng = np.random.default_rng(8)
    d, n_pairs = 64, 400
    c = _unit(rng.standard_normal((2, d))).astype(np.float64)
    w = (c[0] - c[1]) / np.linalg.norm(c[0] - c[1])
    rows = []
    for _ in range(n_pairs):
        y = rng.standard_normal(d)
        y -= (y @ w) * w
        y = y / np.linalg.norm(y) - 1e-6 * w  # just on c2's side of the bisector
        y /= np.linalg.norm(y)
        v = w - (w @ y) * y
        v /= np.linalg.norm(v)
        ang = math.acos(T / norm**2 + rng.uniform(1e-6, 1e-4))
        rows += [math.cos(ang) * y + math.sin(ang) * v, y]
    x = (_unit(np.array(rows)) * np.float32(norm)).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    centroids = _unit(c)
    ref = np.unique(_pair_keys(*dedup.brute_force_pairs(ids, x, T)[:2]))
    pairs = _pair_keys(ids[0::2], ids[1::2])
    assert np.isin(pairs, ref).mean() >= 0.95  # construction: pairs at cos just above T
    home, (indptr, part) = dedup.assign_with_spill(x, centroids, T, 1)
    crossing = np.flatnonzero(home[0::2] != home[1::2])
    assert crossing.size >= 0.95 * n_pairs  # ... and straddling the bisector
    for p in crossing:  # one-sided guarantee: x alone reaches y's home (y sits on the boundary)
        assert home[2 * p + 1] in part[indptr[2 * p] : indptr[2 * p + 1]]
    i, j, _ = dedup.search_partitioned(ids, x, centroids, T, max_spill=1)
    np.testing.assert_array_equal(np.unique(_pair_keys(i, j)), ref)
    x64 = x.astype(np.float64)
    margins = (x64[0::2] @ w) * np.linalg.norm(c[0] - c[1]) / np.linalg.norm(centroids[0] - centroids[1])
    assert margins.max() > math.sqrt(1 - T * T) - 1e-4  # the test reaches the bound
    if norm > 1:
        assert margins.max() > math.sqrt(1 - T * T) + 1e-4  # and passes the ideal bound


def test_assign_with_spill_coincident_centroids():
    rng = np.random.default_rng(9)
    c = _unit(rng.standard_normal((6, 16)))
    c = np.concatenate([c, c[:1]])  # centroid 6 duplicates centroid 0
    x = _unit(c[0] + 0.05 * rng.standard_normal((200, 16)))
    home, (indptr, part) = dedup.assign_with_spill(x, c, T, 2)
    for r in range(len(x)):
        twin = {0: 6, 6: 0}.get(int(home[r]))
        if twin is not None:
            assert twin in part[indptr[r] : indptr[r + 1]]  # margin 0 to the twin: always spilled


def test_assign_with_spill_errors():
    c = _unit(np.eye(4, dtype=np.float32))
    x = c[:2]
    with pytest.raises(ValueError, match="threshold"):
        dedup.assign_with_spill(x, c, 0.0, 2)
    with pytest.raises(ValueError, match="threshold"):
        dedup.assign_with_spill(x, c, 1.5, 2)
    with pytest.raises(ValueError, match="max_spill"):
        dedup.assign_with_spill(x, c, T, -1)
    with pytest.raises(ValueError, match="row 1 has norm 2"):
        dedup.assign_with_spill(np.stack([x[0], 2 * x[1]]), c, T, 2)
    with pytest.raises(ValueError, match="dimension 3"):
        dedup.assign_with_spill(x[:, :3], c, T, 2)


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


# --------------------------------------------------------------------------- k-means


def test_train_centroids_deterministic_and_clamped(planted):
    sample = planted["x"][:4000]
    a = dedup.train_centroids(sample, 16, seed=3, niter=5)
    b = dedup.train_centroids(sample, 16, seed=3, niter=5)
    c = dedup.train_centroids(sample, 16, seed=4, niter=5)
    assert a.shape == (16, DIM) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert dedup.train_centroids(sample[:10], 100, seed=0).shape == (10, DIM)
    with pytest.raises(ValueError, match="k must be"):
        dedup.train_centroids(sample, 0, seed=0)


# --------------------------------------------------------------------------- components


def _random_graph(seed: int, n: int = 300, m: int = 250) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, m)
    b = rng.integers(0, n, m)
    b[:10] = a[:10]  # self-loops
    return np.concatenate([a, a[:20]]), np.concatenate([b, b[:20]])  # duplicate edges


def _nx_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(a.tolist(), b.tolist()))
    labels = np.empty(n, dtype=np.int64)
    for comp in nx.connected_components(g):
        labels[list(comp)] = min(comp)
    return labels


@pytest.mark.parametrize("seed", range(5))
def test_connected_components_matches_networkx(seed):
    n = 300
    a, b = _random_graph(seed, n)
    labels = dedup.connected_components(n, a, b)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, _nx_labels(n, a, b))


def test_connected_components_edge_cases():
    assert dedup.connected_components(0, np.zeros(0, np.int64), np.zeros(0, np.int64)).size == 0
    np.testing.assert_array_equal(dedup.connected_components(4, np.zeros(0, np.int64), np.zeros(0, np.int64)), np.arange(4))
    np.testing.assert_array_equal(dedup.connected_components(3, np.array([2]), np.array([1])), [0, 1, 1])
    many = np.full(300, 1)  # 300 copies of one edge (no int8-style overflow of summed weights)
    np.testing.assert_array_equal(dedup.connected_components(3, many, many + 1), [0, 1, 1])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        dedup.connected_components(3, np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="n_nodes"):
        dedup.connected_components(-1, np.zeros(0, np.int64), np.zeros(0, np.int64))


@pytest.mark.parametrize("seed", range(5))
def test_distributed_merge_equals_global(seed):
    n, n_parts = 300, 6
    a, b = _random_graph(seed, n)
    rng = np.random.default_rng(100 + seed)
    gid = np.sort(rng.choice(10**12, size=n, replace=False)).astype(np.int64) + 5  # sparse, order-preserving
    global_labels = gid[_nx_labels(n, a, b)]

    part_of_edge = rng.integers(0, n_parts, a.size)
    node_ids, root_ids = [], []
    for p in range(n_parts):
        e = part_of_edge == p
        extra = gid[rng.choice(n, 15, replace=False)]  # nodes listed without edges here
        nodes, roots = dedup.local_components(extra, gid[a[e]], gid[b[e]])
        assert np.all(np.diff(nodes) > 0) and np.all(roots <= nodes)
        node_ids.append(nodes)
        root_ids.append(roots)
    node_ids, root_ids = np.concatenate(node_ids), np.concatenate(root_ids)

    nodes, labels = dedup.merge_roots(node_ids, root_ids)
    np.testing.assert_array_equal(labels, global_labels[np.searchsorted(gid, nodes)])

    # Beam shape: group (node, root) by node, links per group, one union-find, relabel.
    by_node: dict[int, list[int]] = {}
    for nd, rt in zip(node_ids.tolist(), root_ids.tolist()):
        by_node.setdefault(nd, []).append(rt)
    links = [dedup.root_links(np.full(len(r), nd), np.array(r)) for nd, r in by_node.items()]
    la, lb = np.concatenate([l[0] for l in links]), np.concatenate([l[1] for l in links])
    assert np.all(la < lb)
    roots, global_roots = dedup.resolve_roots(la, lb)
    relabelled = dedup.apply_root_map(root_ids, roots, global_roots)
    np.testing.assert_array_equal(relabelled, global_labels[np.searchsorted(gid, node_ids)])


def test_merge_helpers_edge_cases():
    empty = np.zeros(0, np.int64)
    assert all(v.size == 0 for v in dedup.root_links(empty, empty))
    assert all(v.size == 0 for v in dedup.resolve_roots(empty, empty))
    np.testing.assert_array_equal(dedup.apply_root_map(np.array([4, 9]), empty, empty), [4, 9])
    nodes, labels = dedup.merge_roots(np.array([7, 7, 3]), np.array([7, 7, 3]))
    np.testing.assert_array_equal(nodes, [3, 7])
    np.testing.assert_array_equal(labels, [3, 7])
    with pytest.raises(ValueError, match="equal length"):
        dedup.root_links(np.array([1, 2]), np.array([1]))


# --------------------------------------------------------------------------- representatives


def test_choose_representatives_rule():
    # group, width, height, key, expected
    table = [
        (0, 100, 100, "b", False),
        (0, 100, 100, "a", True),  # area tie with "b": smallest key wins
        (0, 50, 50, "0", False),  # smaller key but smaller area
        (5, 10, 20, "z", False),
        (5, 20, 10, "y", True),  # equal area 200: "y" < "z"
        (5, 5, 5, "a", False),
        (9, 1, 1, "only", True),  # singleton
        (3, 30, 10, "c", True),  # area 300 beats area 200 despite key
        (3, 20, 10, "a", False),
        (4, 8, 8, "k", True),  # identical rows: first wins
        (4, 8, 8, "k", False),
        (2, 10, 10, "B", True),  # code-point order: "B" < "a"
        (2, 10, 10, "a", False),
    ]
    g, w, h, k, expected = (np.array(col) for col in zip(*table))
    is_rep = dedup.choose_representatives(g, w, h, k)
    np.testing.assert_array_equal(is_rep, expected)
    assert is_rep.dtype == bool
    assert np.bincount(g[is_rep]).max() == 1  # exactly one per group
    with pytest.raises(ValueError, match="width and height"):
        dedup.choose_representatives(g, -w, h, k)
    with pytest.raises(ValueError, match="keys"):
        dedup.choose_representatives(g, w, h, k[:-1])


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
