"""Re-key partition pieces into bounded search tasks: a hot partition becomes many tasks (:mod:`models.dedup.balance`)."""
from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.dedup import balance
from models.dedup.balance import Split, TaskKey
from transforms.dedup.rows import NAMESPACE, Piece, Role


def select_rows(piece: Piece, idx: np.ndarray, role: Role, home_partition: int) -> Piece:
    """The rows ``idx`` of ``piece`` as a piece of ``role`` (every per-row array field is sliced).

    Homes presented as visitors get ``homes`` = their home partition, as real visitors carry.
    """
    n = len(piece.gids)
    fields = {f.name: getattr(piece, f.name) for f in dataclasses.fields(piece)}
    out = {k: (v[idx] if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n else v) for k, v in fields.items()}
    out["role"] = role
    if role is Role.VISIT and piece.role is Role.HOME:
        out["homes"] = np.full(len(idx), home_partition, np.int32)
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
    """(partition, Piece) -> (TaskKey, Piece) for every task its rows belong to."""
    partition, piece = element
    split: Split = splits.get(partition, balance.NOT_SPLIT)
    if split == balance.NOT_SPLIT:
        yield TaskKey(partition, 0, 0), piece
        return
    if piece.role is Role.HOME:
        chunks = balance.chunk_of(piece.gids, split.home_chunks)
        for a in np.unique(chunks).tolist():
            idx = np.flatnonzero(chunks == a)
            for place in balance.home_placements(partition, a, split):
                yield place.key, select_rows(piece, idx, Role.HOME if place.as_home else Role.VISIT, partition)
    else:
        chunks = balance.chunk_of(piece.gids, split.visitor_chunks)
        for j in np.unique(chunks).tolist():
            idx = np.flatnonzero(chunks == j)
            for key in balance.visitor_placements(partition, j, split):
                yield key, select_rows(piece, idx, Role.VISIT, partition)


class BalancePartitions(beam.PTransform):
    """``(partition, Piece)`` -> ``(TaskKey, Piece)``: partitions above ``cap`` homes cut into block-pair tasks.

    The partition sizes are combined per key; only the oversized partitions'
    :class:`~models.dedup.balance.Split` (a few numbers each) reach the workers
    as a side input, never the sizes of all K partitions.
    """

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def expand(self, pieces):
        cap = self.cap
        splits = (pieces
                  | "PieceSizes" >> beam.Map(piece_sizes)
                  | "PartitionSizes" >> beam.CombinePerKey(add_sizes)
                  | "PlanSplits" >> beam.Map(lambda e: (e[0], balance.plan_split(e[1][0], e[1][1], cap)))
                  | "OversizedOnly" >> beam.Filter(lambda e: e[1] != balance.NOT_SPLIT)
                  | "CountSplit" >> beam.Map(_count_split))
        return pieces | "SplitPieces" >> beam.FlatMap(split_piece, pvalue.AsDict(splits))


_SPLIT = Metrics.counter(NAMESPACE, "partitions_split")


def _count_split(element):
    _SPLIT.inc()
    return element
