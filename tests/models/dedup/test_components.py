"""models.dedup.components: connected components against networkx; the distributed merge equals the global one.

Tolerances are stated at each assertion.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from models.dedup import kernels as dedup
from tests.models.dedup.planted import N_BASE, T, _pipeline_edges


def test_components_on_planted_edges(planted):
    x, ids, c = planted["x"], planted["ids"], planted["centroids"]
    i, j, _, _ = _pipeline_edges(ids, x, c, dedup.DEFAULT_MAX_SPILL)
    labels = dedup.connected_components(len(x), i, j)
    for g in planted["groups"] + planted["chains"]:
        assert np.unique(labels[g]).size == 1  # chains: ends below T still share a component
    for p in range(N_BASE, len(x), 2):
        assert labels[p] == labels[p + 1] == min(labels[p], p)



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


