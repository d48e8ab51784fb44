"""Connected components of near-duplicate edges: in one process and as a distributed plan.

Distributed components
----------------------
Each partition labels its own edges (:func:`local_components`, root = smallest
id) and emits (node, local_root). A node kept in several partitions (a spilled
visitor with edges in more than one) links those local components; grouping
by node and calling :func:`root_links` yields one link per extra distinct
root. The link graph (over roots, far smaller than the node set) is then
resolved without gathering it: alternating large-star / small-star rounds
(Kiveris, Lattanzi, Mirrokni, Rastogi, Vassilvitskii, "Connected Components
in MapReduce and Beyond", SoCC 2014: Large-Star and Small-Star, alternated;
O(log^2 n) rounds), each a keyed reduce at one node (:func:`large_star`,
:func:`small_star`), unrolled :data:`DEFAULT_STAR_ROUNDS` times; then
:func:`settle` / :func:`check_settled` give every root the smallest id of its
star and list the *residual* links (whose endpoints still disagree: none once
the rounds have converged), which alone go through union-find on one worker
(:func:`resolve_roots`). :func:`star_components` runs the same per-node
functions in one process. Labels are the smallest id in each component, so
runs compare directly; :func:`merge_roots` is the one-process reference.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


def connected_components(n_nodes: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Canonical connected-component labels of an undirected graph.

    Args:
        n_nodes: number of nodes, numbered 0 .. n_nodes - 1.
        a, b: (m,) integer edge endpoints in [0, n_nodes); self-loops and
            duplicate edges are allowed.

    Returns:
        (n_nodes,) int64 labels: the smallest node index in each component,
        so labels compare across runs and implementations.

    Cost: scipy.sparse.csgraph (C) over a CSR matrix, O(n_nodes + m) time and
    about 16 (n_nodes + m) bytes.
    """
    n = int(n_nodes)
    if n < 0:
        raise ValueError(f"n_nodes must be >= 0, got {n_nodes!r}")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"edge arrays must be 1-D of equal length, got {a.shape} and {b.shape}")
    if a.size:
        if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)):
            raise ValueError(f"edge arrays must be integer, got {a.dtype} and {b.dtype}")
        lo = min(int(a.min()), int(b.min()))
        hi = max(int(a.max()), int(b.max()))
        if lo < 0 or hi >= n:
            raise ValueError(f"edge endpoints must be in [0, {n}), got range [{lo}, {hi}]")
    if n == 0:
        return np.zeros(0, np.int64)
    graph = scipy.sparse.csr_matrix(
        (np.ones(a.size, dtype=bool), (a.astype(np.int64), b.astype(np.int64))), shape=(n, n)
    )
    _, lab = scipy.sparse.csgraph.connected_components(graph, directed=False)
    # The first index holding each label is the smallest member of that component.
    _, first = np.unique(lab, return_index=True)
    return first.astype(np.int64)[lab]


def local_components(
    ids: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Components of one partition's edge list, keyed by global id.

    Args:
        ids: (p,) int64 global ids of nodes to report even without edges (may
            be empty; duplicates allowed).
        a, b: (m,) int64 global-id edge endpoints (e.g. ``i, j`` from
            :func:`partition_pairs`).

    Returns:
        ``(node_ids, root_ids)``: (u,) int64 each, sorted by node id, covering
        the union of ``ids``, ``a`` and ``b``; ``root_ids`` is the smallest
        global id of the node's local component.

    Cost: O((p + m) log(p + m)) for the id compaction, memory O(p + m).
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"edge arrays must be 1-D of equal length, got {a.shape} and {b.shape}")
    nodes = np.unique(np.concatenate([ids, a, b]))
    lab = connected_components(nodes.size, np.searchsorted(nodes, a), np.searchsorted(nodes, b))
    return nodes, nodes[lab]


def root_links(node_ids: np.ndarray, root_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Links between local roots that share a node.

    Input is any multiset of (node, local_root) pairs -- all partitions'
    :func:`local_components` outputs concatenated, or one node's group after a
    GroupByKey. For each node seen with several distinct roots, every root is
    linked to that node's smallest root.

    Args:
        node_ids: (m,) int64.
        root_ids: (m,) int64.

    Returns:
        ``(root_a, root_b)``: (l,) int64 each, ``root_a < root_b``; l is the
        number of (node, extra distinct root) occurrences, i.e. at most the
        number of spilled memberships, typically far below m.

    Cost: one lexsort, O(m log m).
    """
    node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
    root_ids = np.asarray(root_ids, dtype=np.int64).ravel()
    if node_ids.shape != root_ids.shape:
        raise ValueError(
            f"node_ids and root_ids must have equal length, got {node_ids.shape} and {root_ids.shape}"
        )
    order = np.lexsort((root_ids, node_ids))
    nd, rt = node_ids[order], root_ids[order]
    if nd.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    new_node = np.ones(nd.size, dtype=bool)
    new_node[1:] = nd[1:] != nd[:-1]
    group_min = rt[np.flatnonzero(new_node)][np.cumsum(new_node) - 1]
    link = rt != group_min
    pa, pb = group_min[link], rt[link]
    if pa.size == 0:
        return pa, pb
    both = np.unique(np.stack([pa, pb], axis=1), axis=0)
    return both[:, 0].copy(), both[:, 1].copy()


def resolve_roots(root_a: np.ndarray, root_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over root links: map every linked root to its global root.

    Args:
        root_a, root_b: (l,) int64 links from :func:`root_links` (any multiset
            of them; order within a link does not matter).

    Returns:
        ``(roots, global_roots)``: (r,) int64 each; ``roots`` sorted unique ids
        appearing in a link, ``global_roots`` the smallest root id of their
        merged component. Roots absent from ``roots`` map to themselves.

    Cost: O(l log l) time, O(l) memory, on one worker: the distributed plan
    calls it only on the residual links left after the star rounds.
    """
    root_a = np.asarray(root_a, dtype=np.int64).ravel()
    root_b = np.asarray(root_b, dtype=np.int64).ravel()
    if root_a.shape != root_b.shape:
        raise ValueError(f"link arrays must have equal length, got {root_a.shape} and {root_b.shape}")
    roots = np.unique(np.concatenate([root_a, root_b]))
    lab = connected_components(
        roots.size, np.searchsorted(roots, root_a), np.searchsorted(roots, root_b)
    )
    return roots, roots[lab]


def apply_root_map(
    root_ids: np.ndarray, roots: np.ndarray, global_roots: np.ndarray
) -> np.ndarray:
    """Relabel local roots with the :func:`resolve_roots` mapping.

    Args:
        root_ids: (m,) int64 local roots.
        roots: (r,) int64 sorted, from :func:`resolve_roots`.
        global_roots: (r,) int64, from :func:`resolve_roots`.

    Returns:
        (m,) int64 global roots (``root_ids`` where not in ``roots``).

    Cost: O(m log r) binary search, O(m) memory.
    """
    root_ids = np.asarray(root_ids, dtype=np.int64)
    roots = np.asarray(roots, dtype=np.int64)
    global_roots = np.asarray(global_roots, dtype=np.int64)
    if roots.shape != global_roots.shape:
        raise ValueError(
            f"roots and global_roots must have equal length, got {roots.shape} and {global_roots.shape}"
        )
    out = root_ids.copy()
    if roots.size:
        pos = np.minimum(np.searchsorted(roots, root_ids), roots.size - 1)
        hit = roots[pos] == root_ids
        out[hit] = global_roots[pos[hit]]
    return out


def merge_roots(node_ids: np.ndarray, root_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Global components from all partitions' (node, local_root) pairs, in one process.

    Equivalent to the distributed plan, which the pipeline runs as:
    (1) per partition ``local_components`` -> emit (node, local_root);
    (2) group by node -> ``root_links`` on each group (only nodes that sit in
    several partitions with different roots produce links), links made
    distinct;
    (3) star rounds over the links, then ``settle`` / ``check_settled``
    (:func:`star_components` in one process) -> (root, global root), with
    ``resolve_roots`` on the residual links only;
    (4) join every node's smallest local root with its global root (keyed by
    root, no side input). The global label is the smallest node id of the
    component, because each local root is the smallest id of its local
    component and every node belongs to one.

    Args:
        node_ids: (m,) int64, concatenated over partitions (repeats allowed).
        root_ids: (m,) int64 matching local roots.

    Returns:
        ``(nodes, labels)``: (u,) int64 sorted unique nodes and their global
        component label (smallest member id).

    Cost: O(m log m) time, O(m) memory.
    """
    node_ids = np.asarray(node_ids, dtype=np.int64).ravel()
    root_ids = np.asarray(root_ids, dtype=np.int64).ravel()
    roots, global_roots = resolve_roots(*root_links(node_ids, root_ids))
    labels = apply_root_map(root_ids, roots, global_roots)
    nodes, first = np.unique(node_ids, return_index=True)
    return nodes, labels[first]


# --------------------------------------------------------------------------- star rounds

DEFAULT_STAR_ROUNDS = 6
"""Large-star / small-star alternations unrolled in the Beam graph.

Measured with :func:`star_components`: a path of 2**k nodes numbered in order
settles after k alternations (k >= 2); a randomly numbered path of 10,000
nodes after at most 11 (20 seeds), its residual links roughly halving each
alternation (4,998 before any, 66 after 6); a random graph of 15,000 links on
20,000 ids after 6. Link graphs of real runs are mostly pairs and small stars
(settled after one). Whatever has not settled goes to the exact finish
(:func:`check_settled`), which gathers only its residual links."""


def both_directions(link: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """Large-star map: an undirected link ``(a, b)`` -> ``(a, b)`` and ``(b, a)``; self-loops dropped."""
    a, b = int(link[0]), int(link[1])
    if a != b:
        yield a, b
        yield b, a


def orient_down(link: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """Small-star map: an undirected link -> ``(larger, smaller)``; self-loops dropped."""
    a, b = int(link[0]), int(link[1])
    if a != b:
        yield max(a, b), min(a, b)


def large_star(node: int, neighbours: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Large-Star reduce at one node (Kiveris et al. 2014): link every larger neighbour to min(neighbourhood + node).

    Args:
        node: the key, an int64 id.
        neighbours: a re-iterable (Beam's grouped values) of neighbour ids,
            duplicates allowed; read twice (min, then emit), never held.

    Yields:
        ``(v, m)`` for each neighbour occurrence ``v > node``, ``m`` the
        smallest of ``node`` and its neighbours. Over all nodes every input
        link is emitted exactly once (at its smaller end), so the link count
        never grows. O(degree) time, O(1) memory.
    """
    m = min(node, min(neighbours, default=node))
    for v in neighbours:
        if v > node:
            yield v, m


def small_star(node: int, smaller: Iterable[int]) -> Iterator[tuple[int, int]]:
    """Small-Star reduce at one node (Kiveris et al. 2014): link the node and its smaller neighbours to their min.

    Args:
        node: the key, an int64 id.
        smaller: a re-iterable of the neighbours below ``node`` (from
            :func:`orient_down`), duplicates allowed; read twice, never held.

    Yields:
        ``(v, m)`` for each ``v`` in ``smaller`` other than ``m``, and
        ``(node, m)``: at most as many links as came in. O(degree) time,
        O(1) memory.
    """
    m = min(node, min(smaller, default=node))
    for v in smaller:
        if v != m:
            yield v, m
    if node != m:
        yield node, m


class Heard(NamedTuple):
    """A neighbour's tentative label, sent to a node by :func:`settle`."""

    label: int


class Own(NamedTuple):
    """A node's own tentative label (the smallest of itself and its neighbours), from :func:`settle`."""

    label: int


def settle(node: int, neighbours: Iterable[int]) -> Iterator[tuple[int, Own | Heard]]:
    """After the rounds: a node's tentative label ``p = min(node, neighbours)``, kept and sent to every neighbour.

    Args:
        node: the key; neighbours: re-iterable neighbour ids (both directions
            of every link), read twice, never held.

    Yields:
        ``(node, Own(p))`` once and ``(v, Heard(p))`` per neighbour
        occurrence. O(degree) time, O(1) memory.
    """
    p = min(node, min(neighbours, default=node))
    yield node, Own(p)
    for v in neighbours:
        yield v, Heard(p)


class Settled(NamedTuple):
    """A node and its tentative label, from :func:`check_settled`."""

    node: int
    label: int


class Residual(NamedTuple):
    """A link whose endpoints' tentative labels differ (``lo < hi``), from :func:`check_settled`."""

    lo: int
    hi: int


def check_settled(node: int, labels: Iterable[Own | Heard]) -> Iterator[Settled | Residual]:
    """A node's tentative label, and a residual link per neighbour whose label differs.

    Once the rounds have turned every component into a star around its
    smallest id, every node and neighbour agree and nothing is residual.
    Either way the tentative labels plus the residual links give the exact
    components: adjacent nodes either agree or are joined by a residual link,
    and each label is a member of the node's component, the smallest one
    ``m`` labelling itself.

    Args:
        node: the key; labels: re-iterable of one :class:`Own` and the
            :class:`Heard` labels of its neighbours, never held.

    Yields:
        :class:`Settled` once, and a :class:`Residual` per disagreeing
        neighbour (duplicates possible). O(degree) time, O(1) memory.
    """
    p = next(v.label for v in labels if isinstance(v, Own))
    yield Settled(node, p)
    for v in labels:
        if isinstance(v, Heard) and v.label != p:
            yield Residual(min(p, v.label), max(p, v.label))


class StarResult(NamedTuple):
    """:func:`star_components`' output: ``nodes``/``labels`` (r,) int64, the residual link count."""

    nodes: np.ndarray
    labels: np.ndarray
    residual_links: int


def _reduce(links: Iterable[tuple[int, int]], key_map, reduce_fn) -> list:
    groups: dict[int, list] = defaultdict(list)
    for link in links:
        for key, value in key_map(link):
            groups[key].append(value)
    return [out for key in sorted(groups) for out in reduce_fn(key, groups[key])]


def star_components(a: np.ndarray, b: np.ndarray, rounds: int = DEFAULT_STAR_ROUNDS) -> StarResult:
    """The distributed link resolution, in one process, with the very per-node functions Beam runs.

    Args:
        a, b: (l,) integer link endpoints (any ids; duplicates, either order
            and self-loops allowed).
        rounds: large-star / small-star alternations before the exact finish.

    Returns:
        :class:`StarResult`: the sorted unique ids in any non-loop link, the
        smallest id of each one's component (equal to
        :func:`resolve_roots`), and how many distinct residual links the
        finish had to resolve with union-find (0 when the rounds converged).

    Cost: O(rounds * l) time and O(l) memory here; in Beam, 2 GroupByKeys per
    round plus 2 for the finish, no key listing its values.
    """
    a = np.asarray(a, dtype=np.int64).ravel()
    b = np.asarray(b, dtype=np.int64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"link arrays must have equal length, got {a.shape} and {b.shape}")
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds!r}")
    links = sorted(set(zip(a.tolist(), b.tolist())))
    for _ in range(rounds):
        links = _reduce(_reduce(links, both_directions, large_star), orient_down, small_star)
    checked = _reduce(_reduce(links, both_directions, settle), lambda e: [e], check_settled)
    tentative = {v.node: v.label for v in checked if isinstance(v, Settled)}
    residual = sorted({v for v in checked if isinstance(v, Residual)})
    roots, global_roots = resolve_roots(np.asarray([r.lo for r in residual], np.int64),
                                        np.asarray([r.hi for r in residual], np.int64))
    nodes = np.asarray(sorted(tentative), np.int64)
    labels = apply_root_map(np.asarray([tentative[n] for n in nodes.tolist()], np.int64), roots, global_roots)
    return StarResult(nodes, labels, len(residual))
