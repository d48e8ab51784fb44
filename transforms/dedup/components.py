"""Connect local components (partitions, hash groups, previous groups) into global ones, without a global gather.

Plan (:func:`models.dedup.components.merge_roots` is the one-process
reference, :func:`models.dedup.components.star_components` the same link
resolution with the very per-node functions used here):

1. group every ``(gid, local_root)`` by node; a node keeps its smallest root
   and links it to its other roots (one link per extra root of a spilled or
   shared node, far fewer than nodes); links are made distinct;
2. ``rounds`` large-star / small-star alternations over the keyed links
   (Kiveris et al., SoCC 2014), two GroupByKeys each, unrolled in the graph;
3. settle: every linked root takes the smallest id among itself and its
   neighbours and tells its neighbours; links whose ends still disagree are
   *residual* (none once the rounds have converged);
4. the distinct residual links alone are gathered and resolved by union-find
   on one worker and read back as a side input -- empty in the normal case;
   bounded by the number of distinct links in the worst (never-settling)
   case, e.g. a path of n roots numbered in order leaves about n - 2**rounds;
   counted in the ``component_residual_links`` metric and stats counter, and
   logged as a warning when not zero;
5. every node joins its smallest local root's global root, keyed by root
   (a GroupByKey read in two passes; Beam's CoGroupByKey would list each key's nodes).

Apart from one node's local roots (at most its spill memberships + 2) and
the residual links of step 4, grouped values are iterated (twice at most),
never listed, so per-worker memory does not grow with the number of links or
with a component's size. Cost: ``2 * rounds + 3`` shuffles of the distinct
links (each round keeps their count), one of every (gid, local root) pair and
one of the duplicate nodes; in one process (FnApiRunner, 200k nodes in 8
sources, 30k links) about 3x the former gather-and-broadcast.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.dedup import components

RESIDUAL_STAT = "component_residual_links"
_residual_links = Metrics.counter("dedup", RESIDUAL_STAT)


def old_group_roots(element):
    """(previous group_id, [gids]) -> (gid, smallest gid) per member: a previous group as a local component."""
    _, gids = element
    root = min(gids)
    for gid in gids:
        yield gid, root


def node_roots(element):
    """(gid, [local roots]) -> ``(smallest root, gid)``, and links between the node's roots (tag ``links``).

    A node's roots number at most its partition memberships + hash group +
    previous group, so listing them is O(spill).
    """
    node, roots = element
    roots = np.unique(np.asarray(list(roots), np.int64))
    yield int(roots[0]), node
    for r in roots[1:].tolist():
        yield pvalue.TaggedOutput("links", (int(roots[0]), r))


def route_settled(node, labels):
    """:func:`models.dedup.components.check_settled`, with residual links on the ``residual`` tag."""
    for out in components.check_settled(node, labels):
        if isinstance(out, components.Residual):
            yield pvalue.TaggedOutput("residual", (out.lo, out.hi))
        else:
            yield out.node, out.label


def resolve_residual(links: list) -> dict:
    """The distinct residual links (none when the rounds converged) -> {tentative label: global label}."""
    if not links:
        return {}
    _residual_links.inc(len(links))
    logging.getLogger(__name__).warning(
        "connected components: %d links still unsettled after the star rounds; resolving them on one worker "
        "(raise the rounds if this is large)", len(links))
    a = np.asarray([link[0] for link in links], np.int64)
    b = np.asarray([link[1] for link in links], np.int64)
    roots, global_roots = components.resolve_roots(a, b)
    return dict(zip(roots.tolist(), global_roots.tolist()))


def global_root(root_label, residual_map: dict):
    """(root, tentative label) -> (root, global label) through the residual map."""
    root, label = root_label
    return root, residual_map.get(label, label)


class RootLabel(NamedTuple):
    """A linked root's global label, joined (keyed by root) with the nodes whose smallest root it is."""

    label: int


def as_root_label(root_label):
    """(root, global label) -> (root, RootLabel)."""
    root, label = root_label
    return root, RootLabel(label)


def label_nodes(root, values):
    """(root, re-iterable of gids and at most one RootLabel) -> (gid, label) per gid.

    Two passes (find the label, then emit), so a root with a million nodes
    holds none of them; a root absent from every link is its own label.
    """
    label = next((v.label for v in values if isinstance(v, RootLabel)), root)
    for v in values:
        if not isinstance(v, RootLabel):
            yield v, label


def residual_stats(links: list) -> Counter:
    return Counter({RESIDUAL_STAT: len(links)})


class StarRound(beam.PTransform):
    """One large-star then small-star alternation over ``(a, b)`` links; the link count never grows."""

    def expand(self, links):
        return (
            links
            | "BothDirections" >> beam.FlatMap(components.both_directions)
            | "GroupNeighbours" >> beam.GroupByKey()
            | "LargeStar" >> beam.FlatMapTuple(components.large_star)
            | "OrientDown" >> beam.FlatMap(components.orient_down)
            | "GroupSmallerNeighbours" >> beam.GroupByKey()
            | "SmallStar" >> beam.FlatMapTuple(components.small_star)
        )


class ResolveLinks(beam.PTransform):
    """Distinct ``(a, b)`` root links -> ``{"labels": (root, global root), "stats": Counter}``.

    ``rounds`` star alternations, then the settle check and the exact finish
    on the residual links only (see the module docstring for the bound).
    """

    def __init__(self, rounds: int = components.DEFAULT_STAR_ROUNDS):
        super().__init__()
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {rounds!r}")
        self.rounds = rounds

    def expand(self, links):
        for r in range(self.rounds):
            links = links | f"StarRound{r + 1}" >> StarRound()
        settled = (
            links
            | "SettleDirections" >> beam.FlatMap(components.both_directions)
            | "GroupSettleNeighbours" >> beam.GroupByKey()
            | "Settle" >> beam.FlatMapTuple(components.settle)
            | "GroupHeardLabels" >> beam.GroupByKey()
            | "CheckSettled" >> beam.FlatMapTuple(route_settled).with_outputs("residual", main="labels")
        )
        residual = (settled.residual | "DistinctResidual" >> beam.Distinct()
                    | "GatherResidual" >> beam.combiners.ToList())
        residual_map = residual | "ResolveResidual" >> beam.Map(resolve_residual)
        return {
            "labels": settled.labels | "GlobalRoots" >> beam.Map(global_root, pvalue.AsSingleton(residual_map)),
            "stats": residual | "ResidualStats" >> beam.Map(residual_stats),
        }


class ConnectComponents(beam.PTransform):
    """A tuple of ``(gid, local_root)`` PCollections -> ``(gid, label)``, label = smallest gid of the component.

    Every gid in any input gets exactly one label. With ``with_stats`` the
    result is ``{"labels": ..., "stats": single Counter({component_residual_links: n})}``.
    """

    def __init__(self, rounds: int = components.DEFAULT_STAR_ROUNDS, with_stats: bool = False):
        super().__init__()
        self.resolve_links = ResolveLinks(rounds)
        self.with_stats = with_stats

    def expand(self, local_roots):
        nodes = (
            local_roots
            | "AllLocalRoots" >> beam.Flatten()
            | "GroupByNode" >> beam.GroupByKey()
            | "NodeRoots" >> beam.FlatMap(node_roots).with_outputs("links", main="roots")
        )
        resolved = (nodes.links | "DistinctLinks" >> beam.Distinct()
                    | "ResolveLinks" >> self.resolve_links)
        labels = (
            (nodes.roots, resolved["labels"] | "AsRootLabels" >> beam.Map(as_root_label))
            | "NodesAndRootLabels" >> beam.Flatten().with_output_types(tuple[int, Any])
            | "GroupByRoot" >> beam.GroupByKey()
            | "LabelNodes" >> beam.FlatMapTuple(label_nodes)
        )
        return {"labels": labels, "stats": resolved["stats"]} if self.with_stats else labels
