"""Reduce a partition's near pairs as they are found: a maximum spanning forest (or every pair), per-node
maximum cosines and a pair count, in O(n + tile) memory for the forest.

A dense partition (n copies of one placeholder image) has n (n - 1) / 2 near
pairs; writing them is O(n^2) rows and holding them O(n^2) memory. What the
later steps need is only (a) the connected components, which any spanning
forest of the pair graph preserves, (b) each node's largest edge cosine, and
(c) how many pairs there were. :class:`PairReducer` takes the pairs tile by
tile (:func:`models.dedup.search.tile_pairs`) and keeps

* the maximum spanning forest of the pairs seen so far (Kruskal's algorithm,
  cosine descending, run by ``scipy.sparse.csgraph.minimum_spanning_tree`` on
  the weight ``2 - cos``: cosines are >= the threshold > 0, so every weight is
  in [1, 2) and none is mistaken for an absent (zero) entry). Reducing
  ``forest(seen) U tile`` instead of ``seen U tile`` gives a maximum spanning
  forest of all pairs by the cycle property (an edge dropped from a forest is
  the lightest of a cycle, and stays so when edges are added);
* ``max_cos`` per node, the maximum over ALL pairs (updated before reducing);
* the number of pairs this partition owns (a caller-supplied mask decides
  ownership; see :func:`transforms.dedup.search.owned_pairs`).

The forest is built over the owned pairs only, and with ``keep_all`` (``--edges
all``; O(pairs) memory, inherent since they are all written) the owned pairs
are kept instead: every pair is owned by exactly one partition, so the
partitions' edges never repeat one another and are written where they are
found, with no shuffle to make them distinct.

Union over partitions: the components of the union of per-partition forests
equal the components of the union of all owned pair sets, i.e. of all pairs,
because each forest has the components of its partition's owned pairs (tested
in tests/models/dedup/test_spanning.py on a planted set with chains and spilled rows).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import minimum_spanning_tree

DEFAULT_BUFFER_PAIRS = 1 << 22  # pairs buffered before a forest reduction (~64 MiB of arrays)


class Reduced(NamedTuple):
    """A partition's reduced pairs over local node indices ``0 .. n - 1``.

    ``a``, ``b`` (m,) int64 with ``a < b`` and ``cos`` (m,) float32: the
    spanning forest (or every pair), sorted by (a, b); ``max_cos`` (n,) float32,
    each node's largest pair cosine (``-inf`` for a node without a pair);
    ``n_pairs``: the number of owned pairs seen.
    """

    a: np.ndarray
    b: np.ndarray
    cos: np.ndarray
    max_cos: np.ndarray
    n_pairs: int


def maximum_spanning_forest(n: int, a: np.ndarray, b: np.ndarray, cos: np.ndarray):
    """(a, b, cos) of a maximum spanning forest of the graph on ``n`` nodes with edges ``(a, b, cos)``.

    Edges must be distinct unordered pairs with ``cos < 2`` (weight ``2 - cos > 0``: csgraph reads a zero
    weight as no edge). Returns ``a < b``, sorted by (a, b). Cost O(m log m + n).
    """
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    cos = np.asarray(cos, np.float32)
    if not a.size:
        return a, b, cos
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    # 2 - cos is exact in float64 for a float32 cos, so the cosine is recovered exactly below.
    weights = 2.0 - cos.astype(np.float64)
    if np.any(weights <= 0):
        raise ValueError("edge cosines must be below 2 (weight 2 - cos > 0)")
    tree = minimum_spanning_tree(coo_matrix((weights, (lo, hi)), shape=(n, n)).tocsr()).tocoo()
    ta, tb = np.minimum(tree.row, tree.col).astype(np.int64), np.maximum(tree.row, tree.col).astype(np.int64)
    order = np.lexsort((tb, ta))
    return ta[order], tb[order], (2.0 - tree.data[order]).astype(np.float32)


class PairReducer:
    """Accumulate a partition's pairs (local node indices) into a :class:`Reduced`.

    Memory: ``max_cos`` (4 n bytes), the forest (<= n - 1 edges) and a buffer of
    at most ``buffer_pairs`` pairs plus one tile's; with ``keep_all`` every pair.
    """

    def __init__(self, n: int, keep_all: bool = False, buffer_pairs: int = DEFAULT_BUFFER_PAIRS):
        self.n = int(n)
        self.keep_all = keep_all
        self.buffer_pairs = int(buffer_pairs)
        self.max_cos = np.full(self.n, -np.inf, np.float32)
        self.n_pairs = 0
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._buffered = 0

    def add(self, a: np.ndarray, b: np.ndarray, cos: np.ndarray, owned: np.ndarray | None = None) -> None:
        """Pairs ``(a[k], b[k])`` of cosine ``cos[k]``, each unordered pair given once over all calls;
        ``owned`` (bool mask, default all) marks those this partition owns: all count in ``max_cos``, only
        the owned ones in ``n_pairs`` and the forest (or the kept pairs)."""
        a = np.asarray(a, np.int64)
        b = np.asarray(b, np.int64)
        cos = np.asarray(cos, np.float32)
        if not a.size:
            return
        np.maximum.at(self.max_cos, a, cos)
        np.maximum.at(self.max_cos, b, cos)
        if owned is not None:
            a, b, cos = a[owned], b[owned], cos[owned]
        self.n_pairs += int(a.size)
        self._parts.append((np.minimum(a, b), np.maximum(a, b), cos))
        self._buffered += a.size
        if not self.keep_all and self._buffered >= self.buffer_pairs:
            self._reduce()

    def _reduce(self) -> None:
        a, b, cos = (np.concatenate(x) for x in zip(*self._parts))
        forest = maximum_spanning_forest(self.n, a, b, cos)
        self._parts = [forest]
        self._buffered = forest[0].size

    def result(self) -> Reduced:
        if not self._parts:
            empty = np.zeros(0, np.int64)
            return Reduced(empty, empty, np.zeros(0, np.float32), self.max_cos, self.n_pairs)
        if self.keep_all:
            a, b, cos = (np.concatenate(x) for x in zip(*self._parts))
            order = np.lexsort((b, a))
            a, b, cos = a[order], b[order], cos[order]
        else:
            self._reduce()
            a, b, cos = self._parts[0]
        return Reduced(a, b, cos, self.max_cos, self.n_pairs)
