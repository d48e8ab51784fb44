"""Re-key partition pieces into bounded search tasks: a hot partition becomes many tasks (:mod:`models.dedup.balance`)."""
from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from models.dedup import balance
from models.dedup.balance import Split, TaskKey
from transforms.dedup.rows import Piece, Role, Spill


def select_rows(piece: Piece, idx: np.ndarray, role: Role, home_partition: int) -> Piece:
    """The rows ``idx`` of ``piece`` as a piece of ``role`` (every per-row array field is sliced).

    Homes presented as visitors get ``homes`` = their home partition, as real
    visitors carry, and no :class:`Spill` (only homes carry one); a home keeps
    the visits of its selected rows.
    """
    n = len(piece.gids)
    fields = {f.name: getattr(piece, f.name) for f in dataclasses.fields(piece)}
    out = {k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v) for k, v in fields.items()}
    out["role"] = role
    if role is Role.VISIT and piece.role is Role.HOME:
        out["homes"] = np.full(len(idx), home_partition, np.int32)
        out["spill"] = None
    elif piece.spill is not None:
        out["spill"] = Spill.of_rows(piece.spill.indptr, piece.spill.parts, idx)
    return type(piece)(**out)


def piece_sizes(element):
    """(partition, Piece) -> (partition, (homes, visitors)) row counts."""
    partition, piece = element
    n = len(piece.gids)
    return partition, (n, 0) if piece.role is Role.HOME else (0, n)


def add_sizes(sizes) -> tuple[int, int]:
    homes = visitors = 0
    for h, v in sizes:
        homes += h
        visitors += v
    return homes, visitors


def split_piece(element, splits: dict):
    """(partition, Piece) -> (TaskKey as a plain tuple, Piece) for every task its rows belong to.

    Plain tuples: a GroupByKey key needs a deterministic coder on every runner.
    """
    partition, piece = element
    split: Split = splits.get(partition, balance.NOT_SPLIT)
    if split == balance.NOT_SPLIT:
        yield tuple(TaskKey(partition)), piece
        return
    if piece.role is Role.HOME:
        chunks = balance.chunk_of(piece.gids, split.home_chunks)
        for a in np.unique(chunks).tolist():
            idx = np.flatnonzero(chunks == a)
            for place in balance.home_placements(partition, a, split):
                yield tuple(place.key), select_rows(piece, idx, Role.HOME if place.as_home else Role.VISIT, partition)
    else:
        chunks = balance.chunk_of(piece.gids, split.visitor_chunks)
        for j in np.unique(chunks).tolist():
            idx = np.flatnonzero(chunks == j)
            for key in balance.visitor_placements(partition, j, split):
                yield tuple(key), select_rows(piece, idx, Role.VISIT, partition)


class BalancePartitions(beam.PTransform):
    """``(partition, Piece)`` -> ``{"tasks": (TaskKey, Piece), "partitions_split": one count}``: partitions above
    ``cap`` homes cut into block-pair tasks (``cap`` 0: none).

    The partition sizes are combined per key; only the oversized partitions'
    :class:`~models.dedup.balance.Split` (a few numbers each) reach the workers
    as a side input, never the sizes of all K partitions.
    """

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def expand(self, pieces):
        cap = self.cap
        if cap <= 0:  # not balanced: one task per partition
            tasks = pieces | "OneTaskPerPartition" >> beam.Map(lambda e: (tuple(TaskKey(e[0])), e[1]))
            return {"tasks": tasks, "partitions_split": pieces.pipeline | "NoSplits" >> beam.Create([0])}
        splits = (pieces
                  | "PieceSizes" >> beam.Map(piece_sizes)
                  | "PartitionSizes" >> beam.CombinePerKey(add_sizes)
                  | "PlanSplits" >> beam.Map(lambda e: (e[0], balance.plan_split(e[1][0], e[1][1], cap)))
                  | "OversizedOnly" >> beam.Filter(lambda e: e[1] != balance.NOT_SPLIT))
        return {"tasks": pieces | "SplitPieces" >> beam.FlatMap(split_piece, pvalue.AsDict(splits)),
                "partitions_split": splits | "CountSplits" >> beam.combiners.Count.Globally()}
