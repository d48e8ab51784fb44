"""Connected components of near-duplicate edges: in one process and as a distributed plan.

Distributed components
----------------------
Each partition labels its own edges (:func:`local_components`, root = smallest
id) and emits (node, local_root). A node kept in several partitions (a spilled
visitor with edges in more than one) links those local components; grouping
by node and calling :func:`root_links` yields one link per extra distinct
root. Union-find then runs on one worker over the links only
(:func:`resolve_roots`, O(l log l) for l links, which is bounded by the
spilled memberships that carry edges, not by the number of nodes or edges),
and :func:`apply_root_map` relabels every (node, local_root) pair. Labels are
the smallest id in each component, so runs compare directly.
"""
from __future__ import annotations

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

    Cost: O(l log l) time, O(l) memory -- runs on one worker because l only
    counts cross-partition links, not nodes or edges.
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
    several partitions with different roots produce links);
    (3) gather all links on one worker -> ``resolve_roots``;
    (4) ``apply_root_map`` on every (node, local_root) with the mapping as a
    side input, then keep one label per node. The global label is the
    smallest node id of the component, because each local root is the
    smallest id of its local component and every node belongs to one.

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
