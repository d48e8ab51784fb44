"""models.dedup.components: connected components against networkx and scipy; the distributed merge and the
star rounds (Kiveris et al. 2014) equal the global components.

Tolerances are stated at each assertion.
"""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
from hypothesis import given, settings
from hypothesis import strategies as st

from models.dedup import components as comp
from models.dedup import kernels as dedup
from tests.models.dedup.planted import N_BASE, _pipeline_edges


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
    for members in nx.connected_components(g):
        labels[list(members)] = min(members)
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



# --------------------------------------------------------------------------- star rounds (Kiveris et al. 2014)


def _scipy_labels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed form: sorted unique ids in a non-loop link, smallest id of each one's component (scipy)."""
    keep = a != b
    nodes = np.unique(np.concatenate([a[keep], b[keep]])).astype(np.int64)
    n = nodes.size
    graph = scipy.sparse.coo_matrix(
        (np.ones(int(keep.sum())), (np.searchsorted(nodes, a[keep]), np.searchsorted(nodes, b[keep]))), shape=(n, n))
    _, lab = scipy.sparse.csgraph.connected_components(graph, directed=False)
    smallest = np.full(lab.max() + 1 if n else 0, np.iinfo(np.int64).max)
    np.minimum.at(smallest, lab, nodes)
    return nodes, smallest[lab]


def _one_round(links: list) -> list:
    large = [out for u, vs in _grouped(links, comp.both_directions) for out in comp.large_star(u, vs)]
    return [out for u, vs in _grouped(large, comp.orient_down) for out in comp.small_star(u, vs)]


def _grouped(links, key_map):
    groups: dict[int, list] = {}
    for link in links:
        for k, v in key_map(link):
            groups.setdefault(k, []).append(v)
    return sorted(groups.items())


@pytest.mark.parametrize("seed", range(5))
def test_star_components_equal_scipy_and_union_find(seed):
    a, b = _random_graph(seed)
    a, b = a * 7 + 3, b * 7 + 3  # sparse ids
    nodes, labels = _scipy_labels(a, b)
    roots, global_roots = dedup.resolve_roots(a[a != b], b[a != b])
    np.testing.assert_array_equal(roots, nodes)
    np.testing.assert_array_equal(global_roots, labels)
    for rounds in (0, 1, 2, comp.DEFAULT_STAR_ROUNDS):
        got = comp.star_components(a, b, rounds)
        np.testing.assert_array_equal(got.nodes, nodes)
        np.testing.assert_array_equal(got.labels, labels)
    assert comp.star_components(a, b, 0).residual_links > 0  # the finish alone is exact too


@pytest.mark.parametrize("k", range(2, 9))
def test_sorted_path_of_2_to_the_k_settles_after_exactly_k_rounds(k):
    """The figure behind DEFAULT_STAR_ROUNDS: a path numbered in order is the slow case."""
    a = np.arange(2**k - 1)
    assert comp.star_components(a, a + 1, k - 1).residual_links > 0
    settled = comp.star_components(a, a + 1, k)
    assert settled.residual_links == 0
    np.testing.assert_array_equal(settled.labels, np.zeros(2**k, np.int64))


def test_star_rounds_turn_components_into_stars():
    """Converged rounds leave only links (v, smallest id of v's component), none residual."""
    rng = np.random.default_rng(3)
    perm = rng.permutation(200)
    links = sorted(set(zip(perm[:-1].tolist(), perm[1:].tolist())))  # one randomly numbered path
    for _ in range(12):
        links = _one_round(links)
    assert {m for _, m in links} == {0} and {v for v, _ in links} == set(range(1, 200))


def test_star_and_settle_per_node_functions():
    assert list(comp.large_star(5, [9, 2, 7, 9])) == [(9, 2), (7, 2), (9, 2)]
    assert list(comp.large_star(1, [4, 3])) == [(4, 1), (3, 1)]
    assert list(comp.small_star(9, [4, 2, 4])) == [(4, 2), (4, 2), (9, 2)]
    assert list(comp.small_star(3, [])) == []
    assert list(comp.both_directions((2, 2))) == [] and list(comp.orient_down((2, 5))) == [(5, 2)]
    assert list(comp.settle(4, [6, 1])) == [(4, comp.Own(1)), (6, comp.Heard(1)), (1, comp.Heard(1))]
    assert list(comp.check_settled(4, [comp.Heard(2), comp.Own(1), comp.Heard(1)])) == [
        comp.Settled(4, 1), comp.Residual(1, 2)]
    with pytest.raises(ValueError, match="rounds"):
        comp.star_components(np.array([1]), np.array([2]), -1)
    empty = comp.star_components(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert empty.nodes.size == 0 and empty.residual_links == 0


_edges = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=60)


@settings(max_examples=60, deadline=None)
@given(links=_edges, rounds=st.integers(0, 4))
def test_star_rounds_property(links, rounds):
    """Any multigraph, any round count: each round keeps connectivity and never adds links; the finish is exact."""
    a = np.asarray([l[0] for l in links], np.int64)
    b = np.asarray([l[1] for l in links], np.int64)
    nodes, labels = _scipy_labels(a, b)
    current = [l for l in links if l[0] != l[1]]
    for _ in range(rounds):
        after = _one_round(current)
        assert len(after) <= len(current)
        got = _scipy_labels(np.asarray([l[0] for l in after], np.int64), np.asarray([l[1] for l in after], np.int64))
        np.testing.assert_array_equal(got[0], nodes)
        np.testing.assert_array_equal(got[1], labels)
        current = after
    result = comp.star_components(a, b, rounds)
    np.testing.assert_array_equal(result.nodes, nodes)
    np.testing.assert_array_equal(result.labels, labels)
