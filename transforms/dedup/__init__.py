"""Beam transforms of the dedup stage: read parts, centroids, assign and search, connect, label, write, commit.

Elements on the hot path are :class:`~transforms.dedup.rows.Block` s (numpy
arrays of up to ``block_rows`` rows), never per-row dicts; per-row elements
appear only for the rows that have a duplicate (component merging,
exact-hash join). Each step is a composite transform in its own module:

* :mod:`.read` -- :class:`ReadParts`: parts -> blocks, rejects, old rows' previous groups;
* :mod:`.centroids` -- :class:`TrainCentroids` (fresh) or :class:`FrozenCentroids` (increments);
* :mod:`.search` -- :class:`AssignAndSearch`: partition with spill, exact search, hash groups, edges files;
* :mod:`.components` -- :class:`ConnectComponents`: local roots -> global labels;
* :mod:`.label` -- :class:`LabelGroups`: representative, group id, merges;
* :mod:`.write` -- :class:`WriteParts` and the changed / merges files;
* :mod:`.store` -- the increment index every run writes and increments read instead of the old parts;
* :mod:`.strategy` -- :class:`FreshRun` / :class:`IncrementalRun`, what differs between the two.
"""
from __future__ import annotations

from collections import Counter

import apache_beam as beam
from apache_beam import pvalue

from models.dedup.plan import DedupParams, RunPlan
from models.dedup.summary import RunResults, commit_run
from transforms.common import sum_counters
from transforms.dedup.centroids import write_centroids
from transforms.dedup.components import ConnectComponents
from transforms.dedup.label import LabelGroups
from transforms.dedup.read import ReadParts
from transforms.dedup.search import AssignAndSearch
from transforms.dedup.store import WriteIndex
from transforms.dedup.strategy import strategy_for
from transforms.dedup.write import WriteParts, write_merges

__all__ = ["Deduplicate", "WriteOutputs", "CommitRun", "DedupParams"]


def _counts(name: str):
    return lambda n: Counter({name: n})


class WriteOutputs(beam.PTransform):
    """Labelled groups, rejects and part indices -> the files of new parts, changed rows and merges.

    Input: ``{"rows", "sizes", "retired", "merges", "rejects", "parts", "edges_written", "near_pairs", "nn_sampled",
    "search_stats", "k"}`` (``search_stats``: Counters of the search and component steps).
    Returns :class:`models.dedup.summary.RunResults`' fields as single-element
    PCollections; ``stats`` waits on every write (parts, changed, merges, edges, nn histogram).
    """

    def __init__(self, params: DedupParams, run):
        super().__init__()
        self.params = params
        self.run = run

    def expand(self, inputs):
        p = self.params
        part_stats = (
            {"rows": inputs["rows"] | "NewRows" >> beam.Filter(lambda e: p.is_new(e[0])),
             "rejects": inputs["rejects"] | "NewPartRejects" >> beam.Filter(lambda e: p.is_new(e[0])),
             "parts": inputs["parts"] | "NewParts" >> beam.Filter(p.is_new)}
            | "WriteParts" >> WriteParts(p)
        )
        changed = self.run.write_changed(inputs["rows"])
        merged = (inputs["merges"] | "GatherMerges" >> beam.combiners.ToList()
                  | "WriteMerges" >> beam.Map(write_merges, p))
        stats = (
            (part_stats, changed["stats"], merged | "MergeStats" >> beam.Map(_counts("merged_groups")),
             inputs["edges_written"] | "EdgeStats" >> beam.Map(_counts("near_edges_written")),
             inputs["near_pairs"] | "PairStats" >> beam.Map(_counts("near_pairs")),
             inputs["nn_sampled"] | "NNStats" >> beam.Map(_counts("nn_sampled")), inputs["search_stats"])
            | "AllStats" >> beam.Flatten()
            | "SumStats" >> beam.CombineGlobally(sum_counters)
        )
        return {
            "stats": stats,
            "sizes": inputs["sizes"] | "CountGroupSizes" >> beam.combiners.Count.PerElement()
            | "SizesToList" >> beam.combiners.ToList(),
            "retired": inputs["retired"] | "CountRetiredSizes" >> beam.combiners.Count.PerElement()
            | "RetiredToList" >> beam.combiners.ToList(),
            "changed_parts": changed["parts"] | "ChangedPartsToList" >> beam.combiners.ToList(),
            "k": inputs["k"],
        }


class Deduplicate(beam.PTransform):
    """Part indices -> groups, edges, drop keys, rejects and centroids on disk (plus changed rows and merges).

    Returns a dict of single-element PCollections with the fields of
    :class:`models.dedup.summary.RunResults`: ``stats`` (summed stats dict);
    ``sizes``, ``(group_size, count)`` pairs of the groups of 2 or more it
    labelled (all of them in a from-scratch run, those that gained a new row
    in an incremental one); ``retired``, ``(previous group_size, count)``
    pairs of the previous groups those replace; ``changed_parts``, the old
    parts given a ``changed/`` file; ``k``, the number of centroids.
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, part_indices):
        p = self.params
        run = strategy_for(p)
        read = part_indices | "ReadParts" >> ReadParts(p)
        centroids = run.centroids(read["blocks"])
        found = ({"blocks": read["blocks"], "hashes": read["hashes"], "centroids": centroids}
                 | "AssignAndSearch" >> AssignAndSearch(p, run.old_hashes))
        previous = run.previous_groups(found["roots"])
        connected = (tuple([found["roots"]] + previous["roots"])
                     | "ConnectComponents" >> ConnectComponents(with_stats=True))
        groups = ({"labels": connected["labels"], "max_cos": found["max_cos"], "previous": previous["state"],
                   "meta": previous["meta"]}
                  | "LabelGroups" >> LabelGroups(p, run.keep_components))
        index = {"hash_rows": found["hash_index_rows"], "rows": groups["rows"]} | "WriteIndex" >> WriteIndex(p)
        k = centroids | "WriteCentroids" >> beam.Map(write_centroids, p)
        outputs = {**groups, "rejects": read["rejects"], "parts": part_indices,
                   "edges_written": found["edges_written"], "nn_sampled": found["nn_sampled"],
                   "near_pairs": found["near_pairs"], "k": k,
                   "search_stats": (connected["stats"], index, found["partitions_split"] | "SplitStats" >> beam.Map(
                       _counts("partitions_split"))) | "SearchStats" >> beam.Flatten()}
        return outputs | "WriteOutputs" >> WriteOutputs(p, run)


def _commit(_, plan: RunPlan, cfg, **results) -> dict:
    return commit_run(RunResults(**results), plan.params, cfg, plan.previous_summary, plan.chain)


class CommitRun(beam.PTransform):
    """:class:`Deduplicate`'s results -> ``summary.json`` then ``manifest.json``, after every write they depend on."""

    def __init__(self, plan: RunPlan, cfg):
        super().__init__()
        self.plan = plan
        self.cfg = cfg

    def expand(self, results):
        side = {name: pvalue.AsSingleton(results[name]) for name in RunResults._fields}
        return (results["stats"].pipeline | "One" >> beam.Create([None])
                | "WriteSummaryAndManifest" >> beam.Map(_commit, self.plan, self.cfg, **side))
