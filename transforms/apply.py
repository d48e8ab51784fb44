"""Beam transforms of the apply stage: drop lists joined to shards by shard URL, then filtered copies.

Drop rows are sample ids (``SHARD_URL::KEY``), split into ``(SHARD_URL, KEY)``
and joined to the input shards by URL with a ``CoGroupByKey``, so each
worker receives only its shard's drop keys: never the whole drop set
(O(drops in the shard) memory per shard). Drop rows naming no input shard are
counted in the manifest (``unmatched_drop_rows``), with a few example URLs.

Legacy drop lists of bare keys (written before sample ids existed) cannot be
joined by shard: they reach every shard as a side input, as before (O(bare
keys) memory per worker). A bare key drops that key in every shard.
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.metrics import Metrics

from models.storage import layout
from models.storage.shard_filter import DropList, DropRow, filter_shard, read_drop_rows
from models.storage.shards import ShardRef

NAMESPACE = "dupmine.apply"
UNMATCHED = "unmatched"
N_EXAMPLES = 5
log = logging.getLogger("dupmine.apply")


class FilterShardFn(beam.DoFn):
    """``(shard URL, {"shard": [ShardRef], "drop": [key, ...]})`` -> the shard's counts dict.

    A URL with drop rows but no input shard goes to the ``unmatched`` output as ``(url, n_rows)``.
    """

    def __init__(self, output: str):
        self.output = output
        self._bare_source, self._bare = None, frozenset()

    def setup(self):
        self._kept = Metrics.counter(NAMESPACE, "kept")
        self._dropped = Metrics.counter(NAMESPACE, "dropped")

    def _bare_keys(self, bare: list[str]) -> frozenset:
        if bare is not self._bare_source:  # the side input is the same object for every element of a bundle
            self._bare_source, self._bare = bare, frozenset(bare)
        return self._bare

    def process(self, joined, bare: list[str]):
        url, grouped = joined
        shards: list[ShardRef] = list(grouped["shard"])
        keys = list(grouped["drop"])
        if not shards:
            yield beam.pvalue.TaggedOutput(UNMATCHED, (url, len(keys)))
            return
        drop = frozenset(keys) | self._bare_keys(bare)
        for shard in shards:
            counts = filter_shard(shard, self.output, drop)
            self._kept.inc(counts.kept)
            self._dropped.inc(counts.dropped)
            yield counts.as_dict()


def manifest(rows: list[dict], unmatched: int, examples: list[str], config: dict) -> dict:
    """The apply manifest: per-shard counts, totals, and the drop rows that named no input shard."""
    return {"config": config, "shards": sorted(rows, key=lambda r: r["shard"]),
            "kept": sum(r["kept"] for r in rows), "dropped": sum(r["dropped"] for r in rows),
            "unmatched_drop_rows": unmatched, "unmatched_examples": sorted(examples)}


def _write_manifest(rows, unmatched, examples, path: str, config: dict) -> None:
    out = manifest(rows, unmatched, examples, config)
    if unmatched:
        log.warning("%d drop row(s) name no input shard (e.g. %s): wrong --input, or a drop list of other data",
                    unmatched, out["unmatched_examples"][:2])
    layout.write_json(path, out)


def _is_qualified(row: DropRow) -> bool:
    return bool(row.source_url)


class ApplyDropList(beam.PTransform):
    """PBegin -> filtered shards under ``output`` and ``manifest_path`` (written last); returns the manifest write."""

    def __init__(self, shards: list[ShardRef], drops: DropList, output: str, manifest_path: str, config: dict):
        super().__init__()
        self.shards, self.drops, self.output = shards, drops, output
        self.manifest_path, self.config = manifest_path, config

    def expand(self, pbegin):
        kind = self.drops.kind
        shards = (pbegin | "ListShards" >> beam.Create(self.shards)
                  | "KeyShardsByUrl" >> beam.Map(lambda s: (s.url, s)))
        rows = (pbegin | "ListDropFiles" >> beam.Create(list(self.drops.files))
                | "SpreadDropFiles" >> beam.Reshuffle()
                | "ReadDropRows" >> beam.FlatMap(read_drop_rows, kind))
        by_url = (rows | "QualifiedRows" >> beam.Filter(_is_qualified)
                  | "KeyDropsByUrl" >> beam.Map(lambda r: (r.source_url, r.key)))
        bare = (rows | "BareKeyRows" >> beam.Filter(lambda r: not _is_qualified(r))
                | "BareKeys" >> beam.Map(lambda r: r.key))
        results = ({"shard": shards, "drop": by_url}
                   | "JoinDropsToShards" >> beam.CoGroupByKey()
                   | "FilterShards" >> beam.ParDo(FilterShardFn(self.output), beam.pvalue.AsList(bare))
                   .with_outputs(UNMATCHED, main="counts"))
        unmatched = results[UNMATCHED] | "CountUnmatched" >> beam.Map(lambda kv: kv[1]) | "SumUnmatched" >> beam.CombineGlobally(sum)
        examples = (results[UNMATCHED] | "UnmatchedUrls" >> beam.Map(lambda kv: kv[0])
                    | "SampleUnmatched" >> beam.combiners.Sample.FixedSizeGlobally(N_EXAMPLES))
        return (results.counts
                | "CollectCounts" >> beam.combiners.ToList()
                | "WriteManifest" >> beam.Map(_write_manifest, beam.pvalue.AsSingleton(unmatched),
                                              beam.pvalue.AsSingleton(examples), self.manifest_path, self.config))
