"""How a run treats previous results: from scratch (:class:`FreshRun`) or as an increment (:class:`IncrementalRun`).

Incremental runs: part indices ``[0, n_old)`` are the previous chain's parts
(in chain order), the rest are new, so gid order is the order a one-shot run
over all parts would use. An increment reads and assigns only its new parts
(with the frozen centroids); the old rows it needs come from the chain's
increment index (:mod:`transforms.dedup.store`): the stored rows of the
partitions its new rows reach, the old rows with a new row's exact hash, and
the previous groups its new edges reach, each with all its members (root =
smallest gid of the group), so the usual node-roots / links / resolve
machinery labels old and new rows together. Only pairs with a new row are
searched, only components with a new row are relabelled, and of those only
new rows (``groups/``) and old rows whose fields changed (``changed/``) are
written. Cost: O(new rows + rows of the partitions they reach + members of
the groups they touch), never a pass over the old parts.
"""
from __future__ import annotations

from typing import Any

import apache_beam as beam

from models.dedup.plan import DedupParams
from transforms.dedup.centroids import FrozenCentroids, TrainCentroids
from transforms.dedup.components import old_group_roots
from transforms.dedup.label import keep_touched
from transforms.dedup.rows import is_new_gid
from transforms.dedup.store import LookupOldHashes, LookupPreviousGroups
from transforms.dedup.write import WriteChangedFn


class FreshRun:
    """Every part is new: train centroids, search every piece, label every component, no old rows."""

    def __init__(self, params: DedupParams):
        self.params = params

    def centroids(self, blocks):
        return blocks | "TrainCentroids" >> TrainCentroids(self.params)

    def old_hashes(self, new_hashes):
        """No old rows: an empty collection."""
        return new_hashes.pipeline | "NoOldHashes" >> beam.Create([])

    def previous_groups(self, roots) -> dict:
        """No previous groups: no roots, empty state and metadata collections."""
        empty = roots.pipeline | "NoPreviousState" >> beam.Create([])
        return {"roots": [], "state": empty, "meta": roots.pipeline | "NoPreviousMeta" >> beam.Create([])}

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

    def old_hashes(self, new_hashes):
        return new_hashes | "OldRowsWithNewHashes" >> LookupOldHashes(self.params)

    def previous_groups(self, roots) -> dict:
        """The previous groups of the old rows with a new edge: members' state, metadata, and their roots."""
        n_old = self.params.n_old
        found = (roots | "OldEndpoints" >> beam.FlatMap(lambda e: [e[0]] if not is_new_gid(e[0], n_old) else [])
                 | "LookupPreviousGroups" >> LookupPreviousGroups(self.params))
        group_roots = (found["state"]
                       | "ByPreviousGroup" >> beam.Map(lambda e: (e[1].group_id, e[0]))
                       | "GroupByPreviousGroup" >> beam.GroupByKey()
                       | "PreviousGroupRoots" >> beam.FlatMap(old_group_roots))
        return {"roots": [group_roots], "state": found["state"], "meta": found["meta"]}

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


def strategy_for(params: DedupParams) -> FreshRun:
    """The run strategy of ``params``: :class:`IncrementalRun` when it names frozen centroids."""
    return IncrementalRun(params) if params.incremental else FreshRun(params)
