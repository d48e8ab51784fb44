"""The elements of the dedup stage: global row ids, blocks, pieces and the named rows between steps.

Global row ids: ``gid = part_index << 32 | row``, so a gid names a row of an
embedding part without carrying its key around, and the smallest gid of a
component (its canonical label) is its first member in part/row order.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

ROW_BITS = 32
NAMESPACE = "dupmine.dedup"


def gid_of(part_index: int, rows: np.ndarray) -> np.ndarray:
    """(n,) row numbers of part ``part_index`` -> (n,) int64 global ids."""
    return (np.int64(part_index) << ROW_BITS) | np.asarray(rows).astype(np.int64)


def split_gid(gids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) int64 global ids -> ((n,) part indices, (n,) rows)."""
    gids = np.asarray(gids, np.int64)
    return gids >> ROW_BITS, gids & ((1 << ROW_BITS) - 1)


class RowId(NamedTuple):
    """One global id split into its part index and row."""

    part: int
    row: int


def row_id(gid: int) -> RowId:
    return RowId(int(gid) >> ROW_BITS, int(gid) & ((1 << ROW_BITS) - 1))


def is_new_gid(gid: int, n_old: int) -> bool:
    """Incremental runs: parts ``[0, n_old)`` are the previous chain's, the rest are new."""
    return (int(gid) >> ROW_BITS) >= n_old


@dataclass
class Block:
    """Up to ``block_rows`` valid rows of one embedding part: ``gids`` (n,) int64, nothing else.

    Blocks have several consumers (the k-means sample, the assignment), and
    Beam's in-process runner holds every consumer's copy, so they carry ids
    only: float16 vectors in blocks and pieces held 11.8 GB at 1M x 256; keys,
    sample ids and hashes as strings held 12.7 GB at 10M x 256, about 310 B a
    row per consumer. The sample and assign steps read the block's rows from
    its own part (:func:`transforms.dedup.read.block_rows`); with ``--vectors
    shuffle`` the pieces then carry them to the search. The rows' exact hashes
    leave the read as their own collection (:class:`transforms.dedup.store.HashRows`);
    keys, sample ids and areas are read back from the part metadata for the
    few rows that end in a group.
    """

    part: int
    gids: np.ndarray


class Role(str, enum.Enum):
    """How a row sits in a partition: its nearest centroid's (HOME) or a spilled copy (VISIT)."""

    HOME = "home"
    VISIT = "visit"


class Spill(NamedTuple):
    """The partitions a piece's home rows also visit, CSR style: row r visits ``parts[indptr[r]:indptr[r + 1]]``.

    indptr (n + 1,) int32, parts (m,) int32. The search uses it to count a pair found from both of its
    endpoints' partitions once (:func:`transforms.dedup.search.owned_pairs`).
    """

    indptr: np.ndarray
    parts: np.ndarray

    @classmethod
    def of_rows(cls, indptr: np.ndarray, parts: np.ndarray, rows: np.ndarray) -> "Spill":
        """The CSR rows ``rows`` of (``indptr``, ``parts``), e.g. a block's assignment or another Spill."""
        counts = np.diff(indptr)[rows]
        out_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        at = np.repeat(indptr[rows] - out_ptr[:-1], counts) + np.arange(out_ptr[-1])
        return cls(out_ptr, np.asarray(parts[at], np.int32))

    @classmethod
    def concat(cls, spills: "list[Spill]") -> "Spill":
        """The rows of ``spills`` one after another."""
        ends = np.cumsum([0] + [int(s.indptr[-1]) for s in spills[:-1]])
        indptr = np.concatenate([[0]] + [s.indptr[1:] + e for s, e in zip(spills, ends)]).astype(np.int32)
        return cls(indptr, np.concatenate([s.parts for s in spills]).astype(np.int32, copy=False))


@dataclass
class Piece:
    """Rows that go to one partition in one role: of one block (:func:`transforms.dedup.search.assign`), or
    of the blocks of equally new parts an assign bundle held (:class:`transforms.dedup.search.AssignPiecesFn`).

    gids (n,) int64; for visitors homes (n,) int32, each row's home partition
    (None for homes); for homes spill, the partitions each also visits
    (:class:`Spill`, None for visitors); vecs (n, D) the rows as stored
    (float16 for LAION / dupmine parts) with ``--vectors shuffle``, None with
    ``reread``. In the shuffle: 8 bytes a row (+ 4 per visit) plus 2 D with vectors.
    """

    role: Role
    part: int
    gids: np.ndarray
    homes: np.ndarray | None = None
    spill: Spill | None = None
    vecs: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.gids, self.homes, self.vecs, *(self.spill or ()))
        return sum(a.nbytes for a in arrays if a is not None)


class Reject(NamedTuple):
    """A row of a part without a usable embedding, and why."""

    row: int
    key: str
    reason: str


class PreviousGroup(NamedTuple):
    """An old row's group fields as the previous run chain left them (group ids are sample ids)."""

    group_id: str
    group_size: int
    is_representative: bool
    representative_key: str
    max_cosine: float | None

    @classmethod
    def singleton(cls, sample_id: str, key: str) -> "PreviousGroup":
        return cls(sample_id, 1, True, key, None)


class Labelled(NamedTuple):
    """A node's global component label, largest edge cosine, (old rows) previous group and (old members of
    previous groups) the metadata the increment index holds for it (``(key, sample_id, area)``)."""

    label: int
    max_cos: float
    previous: PreviousGroup | None
    meta: tuple | None = None


class PartRow(NamedTuple):
    """A labelled node keyed by its part: its row in the part, then :class:`Labelled`'s fields."""

    row: int
    label: int
    max_cos: float
    previous: PreviousGroup | None


class Member(NamedTuple):
    """A component member with the metadata the representative rule needs."""

    gid: int
    key: str
    sample_id: str
    area: int
    max_cos: float
    previous: PreviousGroup | None


class GroupRow(NamedTuple):
    """The group fields of one row of a duplicate group, as written to ``groups/`` or ``changed/``."""

    row: int
    key: str
    sample_id: str
    group_id: str
    group_size: int
    is_representative: bool
    representative_key: str
    max_cos: float
    previous: PreviousGroup | None
    area: int = 0  # pixel area (the representative rule's), kept in the increment index

    def fields(self) -> tuple:
        """(group_id, group_size, is_representative, representative_key, max_cosine as float32)."""
        return (self.group_id, self.group_size, self.is_representative, self.representative_key, f32(self.max_cos))


def unit_float32(x: np.ndarray) -> np.ndarray:
    """(n, D) stored rows -> float32 rows divided by their float32 norm (zero rows unchanged)."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def f32(x):
    """``x`` rounded to float32 (as stored), None kept."""
    return None if x is None else float(np.float32(x))
