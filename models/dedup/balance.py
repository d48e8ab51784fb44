"""Split oversized partitions into bounded search tasks, so one hot partition is not one hot key.

k-means puts every copy of a popular image (100k copies of a dead-link
placeholder, a stock photo) into one partition, and the exact search of a
partition costs O(h (h + v) D) for h homes and v visitors in one task. A
partition with more than ``cap`` homes is cut into ``m = ceil(h / cap)`` home
chunks (a hash of the row id picks the chunk) and, when it also has more than
``cap`` visitors, ``m_v = ceil(v / cap)`` visitor chunks. Its search becomes
the block pairs of a blocked matrix, each a task:

* ``(a, a)``: home chunk a against itself (homes x homes inside the chunk);
* ``(a, b)``, ``a < b < m``: home chunk a (as homes) against home chunk b
  (presented as visitors: homes x visitors is exactly the cross block);
* ``(a, m + j)``: home chunk a against visitor chunk j.

Every home pair and every home-visitor pair of the partition lies in exactly
one task, the same pair set as the unsplit search (rows that meet in several
tasks link their local components through the usual component merge). A home
is shipped to ``m + m_v`` tasks, a visitor to ``m``; a task holds at most
``2 cap`` rows, so its memory is O(cap D) and its work O(cap^2 D) however hot
the partition. A partition with at most ``cap`` homes is one task ``(0, 0)``
holding its homes and visitors, exactly the unsplit search.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing (Knuth, TAOCP 6.4): spreads consecutive ids


class TaskKey(NamedTuple):
    """One search task of a partition: home chunk ``a`` against chunk ``b`` of a partition cut into
    ``home_chunks`` (1: not split; see the module docstring)."""

    partition: int
    a: int = 0
    b: int = 0
    home_chunks: int = 1

    @property
    def diagonal(self) -> bool:
        """Homes x homes (and x visitors when not split) are searched here; elsewhere homes x visitors only."""
        return self.a == self.b

    @property
    def home_block(self) -> bool:
        """Off the diagonal, the "visitors" are another home chunk (``b < home_chunks``), not real visitors."""
        return not self.diagonal and self.b < self.home_chunks


class Split(NamedTuple):
    """How a partition is cut: ``home_chunks`` (m) and ``visitor_chunks`` (m_v); (1, 1) is not split."""

    home_chunks: int
    visitor_chunks: int


NOT_SPLIT = Split(1, 1)


def plan_split(homes: int, visitors: int, cap: int) -> Split:
    """The chunks of a partition with ``homes`` home rows and ``visitors`` visiting rows (cap >= 1)."""
    if cap < 1:
        raise ValueError(f"the partition cap must be >= 1, got {cap}")
    if homes <= cap:
        return NOT_SPLIT
    return Split(math.ceil(homes / cap), math.ceil(visitors / cap) if visitors > cap else 1)


def chunk_of(gids: np.ndarray, chunks: int) -> np.ndarray:
    """(n,) int64 row ids -> (n,) int64 chunk in [0, chunks), a deterministic hash (the same on every worker)."""
    g = np.asarray(gids, np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (g * _GOLDEN) >> np.uint64(32)
    return (h % np.uint64(chunks)).astype(np.int64)


class Placement(NamedTuple):
    """A task a chunk's rows go to, and whether they are its homes (else they are presented as visitors)."""

    key: TaskKey
    as_home: bool


def home_placements(partition: int, a: int, split: Split) -> list[Placement]:
    """Where the homes of chunk ``a`` go: (a, a), (a, b > a) and (a, m + j) as homes; (c < a, a) as visitors."""
    m, mv = split
    if m == 1:
        return [Placement(TaskKey(partition, 0, 0), True)]
    out = [Placement(TaskKey(partition, a, b, m), True) for b in range(a, m)]
    out += [Placement(TaskKey(partition, c, a, m), False) for c in range(a)]
    out += [Placement(TaskKey(partition, a, m + j, m), True) for j in range(mv)]
    return out


def visitor_placements(partition: int, j: int, split: Split) -> list[TaskKey]:
    """Where the visitors of visitor chunk ``j`` go: every home chunk's (a, m + j) task (or (0, 0) unsplit)."""
    m, _ = split
    if m == 1:
        return [TaskKey(partition, 0, 0)]
    return [TaskKey(partition, a, m + j, m) for a in range(m)]


def task_pairs(split: Split) -> int:
    """The number of tasks of a partition cut by ``split``: m (m + 1) / 2 + m m_v (1 unsplit)."""
    m, mv = split
    return 1 if m == 1 else m * (m + 1) // 2 + m * mv
