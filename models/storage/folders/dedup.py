"""The dedup output folder: every file ``dupmine dedup`` writes, by name.

Layout (``{part}`` is the embedding part suffix)::

    groups/groups_{part}.parquet         DEDUP_GROUPS, one row per grouped row of a new part
    edges/edges_{part}.parquet           DEDUP_EDGES, near edges whose second endpoint is in {part}, each
                                         pair once: with --edges spanning a maximum spanning forest of
                                         each partition's owned near pairs (n - 1 edges for n rows
                                         connected there; same components as all pairs), with --edges all
                                         every pair
    edges/exact_{hash}.parquet           DEDUP_EDGES, one star per exact-hash group
    drop_keys.parquet/part-{part}.parquet      DROP_KEYS, rows an upstream filter removes
    drop_keys.parquet/demoted-{part}.parquet   increments: old representatives that lost their place
    rejects/rejects_{part}.parquet       REJECTS, rows without a usable embedding
    changed/changed_{part}.parquet       increments: old rows whose group fields changed
    merges.parquet                       increments: previous groups merged into others
    centroids.npy                        (K, D) float32 partition centroids (frozen by increments)
    nn_similarity.json                   histogram of sampled nearest-neighbour cosines
    partitions/{q}/{a}-{b}.parquet       PARTITION_ROWS: the rows this run added to partition q (search
                                         task (a, b)), vectors as stored; the next increment reads only
                                         the partitions its new rows reach
    index/{kind}/bucket-{b}.parquet      hash buckets an increment looks rows up in: "hashes" (exact
                                         hashes of this run's new rows), "rows" (row -> group, for the
                                         rows this run labelled) and "groups" (group -> members)
    config.json, summary.json            resolved config; counts and timings
    manifest.json                        the run chain; written last (the commit point)

Other stages read these names from here, never as string literals.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.storage.folders import StageFolder


@dataclass(frozen=True)
class DedupFolder(StageFolder):
    """Paths inside one dedup output folder (local path or object-store URL)."""

    GROUPS = "groups"
    EDGES = "edges"
    DROP_KEYS = "drop_keys.parquet"
    REJECTS = "rejects"
    CHANGED = "changed"
    STAGE = "_stage"
    MANIFEST = "manifest.json"
    CENTROIDS = "centroids.npy"
    MERGES = "merges.parquet"
    SUMMARY = "summary.json"
    CONFIG = "config.json"
    NN_SIMILARITY = "nn_similarity.json"
    PARTITIONS = "partitions"
    INDEX = "index"
    INDEX_KINDS = ("hashes", "rows", "groups")

    # Cleared before a run; manifest.json first: it is the commit point an increment builds on.
    OUTPUTS = (MANIFEST, GROUPS, CHANGED, EDGES, DROP_KEYS, REJECTS, STAGE, MERGES, CENTROIDS, NN_SIMILARITY, SUMMARY,
               PARTITIONS, INDEX)

    # per-part files
    def groups(self, part: str) -> str:
        return self._at(self.GROUPS, f"groups_{part}.parquet")

    def edges(self, part: str) -> str:
        return self._at(self.EDGES, f"edges_{part}.parquet")

    def exact_edges(self, name: str) -> str:
        return self._at(self.EDGES, f"exact_{name}.parquet")

    def drop_keys_part(self, part: str) -> str:
        return self._at(self.DROP_KEYS, f"part-{part}.parquet")

    def demoted(self, part: str) -> str:
        return self._at(self.DROP_KEYS, f"demoted-{part}.parquet")

    def rejects(self, part: str) -> str:
        return self._at(self.REJECTS, f"rejects_{part}.parquet")

    def changed(self, part: str) -> str:
        return self._at(self.CHANGED, f"changed_{part}.parquet")

    def partition_dir(self, partition: int) -> str:
        return self._at(self.PARTITIONS, f"{partition:07d}")

    def partition_task(self, partition: int, a: int, b: int) -> str:
        return self._at(self.PARTITIONS, f"{partition:07d}", f"{a}-{b}.parquet")

    def index_bucket(self, kind: str, bucket: int) -> str:
        if kind not in self.INDEX_KINDS:
            raise ValueError(f"index kind {kind!r} is not one of {self.INDEX_KINDS}")
        return self._at(self.INDEX, kind, f"bucket-{bucket:05d}.parquet")

    # folders and single files
    @property
    def groups_dir(self) -> str:
        return self._at(self.GROUPS)

    @property
    def edges_dir(self) -> str:
        return self._at(self.EDGES)

    @property
    def drop_keys(self) -> str:
        return self._at(self.DROP_KEYS)

    @property
    def manifest(self) -> str:
        return self._at(self.MANIFEST)

    @property
    def centroids(self) -> str:
        return self._at(self.CENTROIDS)

    @property
    def merges(self) -> str:
        return self._at(self.MERGES)

    @property
    def summary(self) -> str:
        return self._at(self.SUMMARY)

    @property
    def config(self) -> str:
        return self._at(self.CONFIG)

    @property
    def nn_similarity(self) -> str:
        return self._at(self.NN_SIMILARITY)
