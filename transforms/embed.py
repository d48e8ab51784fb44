"""Beam transforms of the embed stage.

``EmbedShards`` takes a PCollection of :class:`models.storage.shards.ShardRef` (small
records, never image payloads) and, per shard, reads, decodes, embeds and
writes that shard's output files, emitting one stats dict per shard. The
embedder is loaded once per worker process in ``setup()`` and shared across
threads with :class:`apache_beam.utils.shared.Shared`.
"""
from __future__ import annotations

import logging
from collections import Counter

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from models.storage import layout
from models.storage.folders.embed import EmbeddingFolder
from models.embed.shard_job import ShardJob, embed_shard, shard_is_done, write_shard
from models.embed.embedders import EmbedderConfig, load_embedder
from models.storage.shards import ShardRef
from transforms.common import Held, sum_counters

NAMESPACE = "dupmine.embed"
log = logging.getLogger("dupmine.embed")


class EmbedShardFn(beam.DoFn):
    """Embed one shard end to end; skip it when its marker matches the fingerprint.

    Yields a stats dict: ``{"shards": 1, "skipped": 0|1, "rows": n, "rejects": m, counters...}``.
    """

    def __init__(self, embedder_cfg: EmbedderConfig, job: ShardJob, output: str, fingerprint: str, overwrite: bool):
        self.embedder_cfg, self.job, self.output = embedder_cfg, job, output
        self.fingerprint, self.overwrite = fingerprint, overwrite
        self._shared = shared.Shared()
        self._counters: dict = {}

    def load(self) -> Held:
        """The worker's shared embedder (loaded on first use in this process)."""
        cfg = self.embedder_cfg
        return self._shared.acquire(lambda: Held(load_embedder(cfg)), tag=layout.fingerprint(cfg.to_dict()))

    def setup(self):
        self._loaded = self.load()

    def _count(self, name: str, n: int) -> None:
        if name not in self._counters:
            self._counters[name] = Metrics.counter(NAMESPACE, name)
        self._counters[name].inc(n)

    def process(self, shard: ShardRef):
        folder = EmbeddingFolder(self.output)
        if not self.overwrite and shard_is_done(folder, shard, self.fingerprint):
            self._count("shards_skipped", 1)
            marker = layout.read_json(folder.marker(shard.shard_id))
            yield Counter({"shards": 1, "skipped": 1, "rows": marker["rows"], "rejects": marker["rejects"]})
            return
        result = embed_shard(shard, self._loaded.value, self.job, self._count)
        marker = write_shard(folder, result, self.fingerprint)
        self._count("shards_done", 1)
        stats = Counter({f"count.{k}": v for k, v in result.counts.items()})
        stats.update({"shards": 1, "rows": marker["rows"], "rejects": marker["rejects"]})
        yield stats


class EmbedShards(beam.PTransform):
    """ShardRefs -> per-shard outputs on disk -> one merged stats dict."""

    def __init__(self, embedder_cfg: EmbedderConfig, job: ShardJob, output: str, fingerprint: str, overwrite: bool = False):
        super().__init__()
        self.fn = EmbedShardFn(embedder_cfg, job, output, fingerprint, overwrite)

    def expand(self, shards):
        return (
            shards
            | "SpreadShards" >> beam.Reshuffle()
            | "EmbedEachShard" >> beam.ParDo(self.fn)
            | "SumStats" >> beam.CombineGlobally(sum_counters)
        )
