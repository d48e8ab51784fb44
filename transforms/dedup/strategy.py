"""How a run treats previous results: from scratch (:class:`FreshRun`) or as an increment (:class:`IncrementalRun`).

Incremental runs: part indices ``[0, n_old)`` are the previous chain's parts
(in chain order), the rest are new, so gid order is the order a one-shot run
over all parts would use. Centroids are frozen (read, not trained); old rows
are assigned with them but shipped only to partitions that hold new rows,
and only pairs with at least one new row are searched. Previous duplicate
groups enter as local components (root = smallest gid of the group), so the
usual node-roots / links / resolve machinery labels old and new rows
together; only components that contain a new row are relabelled, and of
those only new rows (``groups/``) and old rows whose fields changed
(``changed/``) are written.
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam import pvalue

from models.dedup.plan import DedupParams
from transforms.dedup.centroids import FrozenCentroids, TrainCentroids
from transforms.dedup.components import old_group_roots
from transforms.dedup.label import keep_touched
from transforms.dedup.rows import Role
from transforms.dedup.write import WriteChangedFn


class FreshRun:
    """Every part is new: train centroids, search every piece, label every component, no old rows."""

    def __init__(self, params: DedupParams):
        self.params = params

    def centroids(self, blocks):
        return blocks | "TrainCentroids" >> TrainCentroids(self.params)

    def select_pieces(self, pieces):
        return pieces

    def previous_roots(self, old_state) -> list:
        return []

    def previous_state(self, old_state):
        """No previous groups: an empty collection (not the read step's empty tag, which DaskRunner mis-routes)."""
        return old_state.pipeline | "NoPreviousState" >> beam.Create([])

    def keep_components(self, labelled):
        return labelled

    def write_changed(self, rows) -> dict:
        """No old rows: an empty stats and changed-parts collection."""
        empty = rows.pipeline | "NoChangedRows" >> beam.Create([])
        return {"stats": empty, "parts": empty}


class IncrementalRun(FreshRun):
    """Parts ``[0, n_old)`` are old: frozen centroids, only pieces and components that touch a new row."""

    def centroids(self, blocks):
        return blocks.pipeline | "FrozenCentroids" >> FrozenCentroids(self.params.centroids_path)

    def select_pieces(self, pieces):
        """Ship an old row's piece only where it can meet a new row.

        Old homes go to every partition with new homes or visitors (new homes x
        old homes, new visitors x old homes); old visitors only where new rows
        are homed (new homes x old visitors).
        """
        p = self.params
        new_pieces = pieces | "NewPieces" >> beam.Filter(lambda e: p.is_new(e[1].part))
        touched = (new_pieces | "NewRoles" >> beam.Map(lambda e: (e[0], e[1].role == Role.HOME))
                   | "TouchedPartitions" >> beam.CombinePerKey(any))
        old_pieces = (pieces | "OldPieces" >> beam.Filter(lambda e: not p.is_new(e[1].part))
                      | "OldPiecesWhereNeeded" >> beam.Filter(old_piece_needed, pvalue.AsDict(touched)))
        return (new_pieces, old_pieces) | "PiecesToSearch" >> beam.Flatten()

    def previous_roots(self, old_state) -> list:
        return [old_state
                | "ByPreviousGroup" >> beam.Map(lambda e: (e[1].group_id, e[0]))
                | "GroupByPreviousGroup" >> beam.GroupByKey()
                | "PreviousGroupRoots" >> beam.FlatMap(old_group_roots)]

    def previous_state(self, old_state):
        return old_state

    def keep_components(self, labelled):
        return (labelled
                | "ByLabel" >> beam.Map(lambda e: (e[1].label, e))
                | "GroupComponents" >> beam.GroupByKey()
                | "KeepTouchedComponents" >> beam.FlatMap(keep_touched, self.params.n_old))

    def write_changed(self, rows) -> dict:
        p = self.params
        out = (rows
               | "OldRows" >> beam.Filter(lambda e: not p.is_new(e[0])).with_output_types(tuple[int, Any])
               | "GroupChangedByPart" >> beam.GroupByKey()
               | "WriteChanged" >> beam.ParDo(WriteChangedFn(p)).with_outputs("parts", main="stats"))
        return {"stats": out.stats, "parts": out.parts}


def old_piece_needed(element, touched: dict) -> bool:
    """``touched``: {partition: whether a new row is homed there} for partitions with new homes or visitors."""
    partition, piece = element
    return partition in touched and (piece.role == Role.HOME or touched[partition])


def strategy_for(params: DedupParams) -> FreshRun:
    """The run strategy of ``params``: :class:`IncrementalRun` when it names frozen centroids."""
    return IncrementalRun(params) if params.incremental else FreshRun(params)
