"""Assign rows to partitions, search each partition exactly, and join rows with equal image hashes.

Outputs per node with an edge: ``(gid, local_root)`` (the smallest gid of its
component inside one partition or hash group) and ``(gid, max_cos)``; near
edges are written to ``edges/edges_{part}.parquet`` after being made distinct.
"""
from __future__ import annotations

import zlib
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.dedup import components, nn_similarity, partition, search
from models.dedup.plan import DedupParams
from models.storage import layout, schemas
from transforms.dedup.read import part_ids, row_vectors
from transforms.dedup.rows import NAMESPACE, Block, Edge, Piece, Role, is_new_gid, row_id


def assign(block: Block, centroids: np.ndarray, params: DedupParams):
    """Block -> (partition, Piece) per touched partition and role (row ids, and visitors' home partitions)."""
    home, (indptr, spill) = partition.assign_with_spill(row_vectors(params, block.gids), centroids, params.threshold,
                                                        params.max_spill)
    for role, parts, rows in ((Role.HOME, home, np.arange(len(home))),
                              (Role.VISIT, spill, np.repeat(np.arange(len(home)), np.diff(indptr)))):
        if not len(parts):
            continue
        order = np.argsort(parts, kind="stable")
        parts, rows = parts[order], rows[order]
        bounds = np.flatnonzero(np.diff(parts)) + 1
        for seg in np.split(np.arange(len(parts)), bounds):
            r = rows[seg]
            homes = home[r].astype(np.int32) if role is Role.VISIT else None
            yield int(parts[seg[0]]), Piece(role, block.part, block.gids[r], homes)


class _Rows(NamedTuple):
    """Pieces of one partition concatenated: gids (n,) int64, vecs (n, D) float32 unit rows, homes (n,) int64."""

    gids: np.ndarray
    vecs: np.ndarray
    homes: np.ndarray

    @classmethod
    def of(cls, pieces: list[Piece], params: DedupParams, partition: int) -> "_Rows":
        if not pieces:
            return cls(np.zeros(0, np.int64), np.zeros((0, params.dim), np.float32), np.zeros(0, np.int64))
        gids = np.concatenate([b.gids for b in pieces])
        homes = [b.homes if b.homes is not None else np.full(len(b.gids), partition) for b in pieces]
        return cls(gids, row_vectors(params, gids), np.concatenate(homes).astype(np.int64))

    def __add__(self, other: "_Rows") -> "_Rows":
        return _Rows(*(np.concatenate([x, y]) for x, y in zip(self, other)))


class SearchPartitionFn(beam.DoFn):
    """(partition, pieces) -> ``((gid_a, gid_b), cos)`` (tag ``edges``), ``(gid, local_root)`` (tag ``roots``)
    and ``(gid, max_cos)`` (tag ``max_cos``) per node with an edge; a nearest-neighbour histogram (tag ``nn``).

    Searched: new homes x (new homes, old homes, all visitors), and old homes x
    new visitors -- every pair the one-shot search would find that has at
    least one new row, never old x old (in a from-scratch run every row is
    new: homes x homes and homes x visitors). The boundary pruning of
    :func:`models.dedup.search.partition_pairs` is not used: it cut the pair
    work 2.7x on the 64-d planted test set, but on 1M x 256 topic-clustered
    rows its per-source small GEMMs made the search slower (measured).
    Memory: the partition's homes and visitors, O((a + b) D) float32 read
    from their parts, plus an O(block^2) tile inside :func:`models.dedup.search.partition_pairs`.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.edges = Metrics.counter(NAMESPACE, "near_edges")
        self.sizes = Metrics.distribution(NAMESPACE, "partition_rows")

    def process(self, element, centroids):
        part, pieces = element
        p = self.params
        pieces = list(pieces)
        rows = {(role, new): _Rows.of([b for b in pieces if b.role == role and p.is_new(b.part) == new], p, part)
                for role in Role for new in (True, False)}
        homes_new, homes_old = rows[(Role.HOME, True)], rows[(Role.HOME, False)]
        visits = rows[(Role.VISIT, True)] + rows[(Role.VISIT, False)]
        visits_new = rows[(Role.VISIT, True)]
        if not len(homes_new.gids) and not (len(homes_old.gids) and len(visits_new.gids)):
            return
        self.sizes.update(len(homes_new.gids) + len(homes_old.gids))
        found = []
        if len(homes_new.gids):
            others = homes_old + visits  # old homes are homed here: never pruned
            found.append(search.partition_pairs(homes_new.gids, homes_new.vecs, others.gids, others.vecs, p.threshold))
            yield from self._nn_histogram(homes_new, homes_new + others)
        if len(homes_old.gids) and len(visits_new.gids):
            found.append(search.cross_pairs(homes_old.gids, homes_old.vecs, visits_new.gids, visits_new.vecs,
                                            p.threshold))
        i, j, cos = (np.concatenate(x) for x in zip(*found))
        if len(found) > 1 and len(i):
            _, first = np.unique(np.stack([i, j], axis=1), axis=0, return_index=True)
            i, j, cos = i[first], j[first], cos[first]
        self.edges.inc(len(i))
        if not len(i):
            return
        # A pair of rows homed in different partitions can be found in both (each visits the other's home):
        # edges leave as elements and are made distinct by a CombinePerKey before they are written.
        for a, b, c in zip(i.tolist(), j.tolist(), cos.tolist()):
            yield pvalue.TaggedOutput("edges", ((a, b), c))
        nodes, roots = components.local_components(np.zeros(0, np.int64), i, j)
        for node, root in zip(nodes.tolist(), roots.tolist()):
            yield pvalue.TaggedOutput("roots", (node, root))
        both = np.concatenate([i, j])
        best = np.concatenate([cos, cos])
        order = np.lexsort((-best, both))
        first = np.ones(len(order), bool)
        first[1:] = both[order][1:] != both[order][:-1]
        for node, c in zip(both[order][first].tolist(), best[order][first].tolist()):
            yield pvalue.TaggedOutput("max_cos", (node, c))

    def _nn_histogram(self, queries: "_Rows", candidates: "_Rows"):
        """Nearest-neighbour cosines of the sampled new homes among ``candidates``, as one histogram (tag ``nn``)."""
        pick = nn_similarity.sampled(queries.gids, self.params.nn_rate, self.params.seed)
        if not pick.any():
            return
        best = nn_similarity.nearest_similarities(queries.gids[pick], queries.vecs[pick], candidates.gids,
                                                  candidates.vecs)
        yield pvalue.TaggedOutput("nn", nn_similarity.histogram(best))


class SumHistograms(beam.CombineFn):
    """Sum fixed-bin histograms: the accumulator is one (BINS,) int64 array, whatever the number of inputs."""

    def create_accumulator(self):
        return np.zeros(nn_similarity.BINS, np.int64)

    def add_input(self, acc, counts):
        acc += counts
        return acc

    def merge_accumulators(self, accs):
        return np.sum(list(accs), axis=0, dtype=np.int64)

    def extract_output(self, acc):
        return acc


def write_nn_histogram(counts: np.ndarray, params: DedupParams) -> int:
    """``nn_similarity.json`` from the summed histogram; returns the number of sampled rows."""
    record = nn_similarity.record(counts, params.threshold)
    layout.write_json(params.out.nn_similarity, record)
    return record["n_sampled"]


def edge_of(element) -> Edge:
    """``((gid_a, gid_b), cos)`` (a distinct-edge KV) -> :class:`Edge`."""
    pair, cos = element
    return Edge(int(pair[0]), int(pair[1]), float(cos))


def write_edges(element, params: DedupParams) -> int:
    """(part of gid_a, [Edge]) -> ``edges/edges_{part}.parquet`` (near edges, each pair once); returns the count."""
    part_index, edges = element
    rows = []
    for e in sorted(edges):
        ra, rb = row_id(e.a), row_id(e.b)
        rows.append({"key_a": part_ids(params, ra.part).keys[ra.row], "key_b": part_ids(params, rb.part).keys[rb.row],
                     "cosine": e.cosine, "kind": "near"})
    layout.write_parquet(params.out.edges(params.parts[part_index]), schemas.table(rows, schemas.DEDUP_EDGES))
    return len(rows)


def exact_groups(element, params: DedupParams):
    """(``ALGO:HEX`` hash, [(gid, key)]) -> (gid, root) for hash groups of 2+, plus their edges file.

    The edges of a hash group are a star from its first member (cosine 1.0 by
    definition: identical bytes give identical embeddings), so every member
    also gets ``(gid, 1.0)`` (tag ``max_cos``). Incremental runs: only hash
    groups with a new row count, and only the edges to new rows are written
    (the old ones are in a previous run's files).
    """
    digest, members = element
    members = sorted(members)
    if len(members) < 2 or not is_new_gid(members[-1][0], params.n_old):
        return
    root, root_key = members[0]
    rows = [{"key_a": root_key, "key_b": key, "cosine": 1.0, "kind": "exact"}
            for gid, key in members[1:] if is_new_gid(gid, params.n_old)]
    algorithm, _, hexdigest = digest.partition(":")
    layout.write_parquet(params.out.exact_edges(f"{algorithm}_{hexdigest[:16]}_{zlib.crc32(digest.encode()):08x}"),
                         schemas.table(rows, schemas.DEDUP_EDGES))
    for gid, _ in members:
        yield gid, root
        yield pvalue.TaggedOutput("max_cos", (gid, 1.0))


class AssignAndSearch(beam.PTransform):
    """``{"blocks", "centroids"}`` -> ``{"roots", "max_cos", "edges_written", "nn_sampled"}``.

    ``roots``: (gid, local root) from partitions and hash groups; ``max_cos``:
    (gid, cosine) per edge endpoint (not yet maximised over partitions);
    ``edges_written``: one count per written near-edges file; ``nn_sampled``:
    the number of rows in ``nn_similarity.json`` (:mod:`models.dedup.nn_similarity`). ``select``
    (from the run strategy) chooses the pieces worth searching.
    """

    def __init__(self, params: DedupParams, select):
        super().__init__()
        self.params = params
        self.select = select

    def expand(self, inputs):
        p = self.params
        blocks = inputs["blocks"]
        pieces = blocks | "AssignPartitions" >> beam.FlatMap(assign, pvalue.AsSingleton(inputs["centroids"]), p)
        searched = (
            self.select(pieces)
            | "GroupByPartition" >> beam.GroupByKey()
            | "SearchPartitions" >> beam.ParDo(SearchPartitionFn(p), pvalue.AsSingleton(inputs["centroids"])).with_outputs(
                "roots", "max_cos", "edges", "nn")
        )
        nn_sampled = (searched.nn | "SumNNHistograms" >> beam.CombineGlobally(SumHistograms())
                      | "WriteNNHistogram" >> beam.Map(write_nn_histogram, p))
        edges_written = (
            searched.edges
            | "DistinctEdges" >> beam.CombinePerKey(max)
            | "ToEdges" >> beam.Map(edge_of)
            | "EdgesByPart" >> beam.Map(lambda e: (row_id(e.a).part, e))
            | "GroupEdgesByPart" >> beam.GroupByKey()
            | "WriteEdges" >> beam.Map(write_edges, p)
        )
        exact = (
            blocks
            | "HashKeys" >> beam.FlatMap(lambda b: [(s, (g, k)) for s, g, k in
                                                    zip(b.hashes.tolist(), b.gids.tolist(), b.keys.tolist()) if s])
            | "GroupByHash" >> beam.GroupByKey()
            | "ExactGroups" >> beam.FlatMap(exact_groups, p).with_outputs("max_cos", main="roots")
        )
        roots = (searched.roots, exact.roots) | "SearchAndHashRoots" >> beam.Flatten()
        max_cos = (searched.max_cos, exact.max_cos) | "SearchAndHashCosines" >> beam.Flatten()
        return {"roots": roots, "max_cos": max_cos, "edges_written": edges_written, "nn_sampled": nn_sampled}
