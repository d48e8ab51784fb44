"""Connect local components (partitions, hash groups, previous groups) into global ones.

Plan (:func:`models.dedup.components.merge_roots` is the one-process
equivalent): group every ``(gid, local_root)`` by node; a node with several
roots links them; the links (one per extra root of a spilled or shared node,
far fewer than nodes) are resolved by union-find; every node takes the
global root of its smallest local root, which is the smallest gid of its
component.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from models.dedup import components


def old_group_roots(element):
    """(previous group_id, [gids]) -> (gid, smallest gid) per member: a previous group as a local component."""
    _, gids = element
    gids = list(gids)
    root = min(gids)
    for gid in gids:
        yield gid, root


def node_roots(element):
    """(gid, [local roots]) -> the node's smallest root, and links between its roots (tag ``links``)."""
    node, roots = element
    roots = np.unique(np.asarray(list(roots), np.int64))
    yield node, int(roots[0])
    for r in roots[1:].tolist():
        yield pvalue.TaggedOutput("links", (int(roots[0]), r))


def resolve(links: list) -> dict:
    """All cross-partition root links (small) -> {root: global root}."""
    if not links:
        return {}
    a = np.asarray([link[0] for link in links], np.int64)
    b = np.asarray([link[1] for link in links], np.int64)
    roots, global_roots = components.resolve_roots(a, b)
    return dict(zip(roots.tolist(), global_roots.tolist()))


def global_label(node_root, root_map: dict):
    """(gid, smallest local root) -> (gid, global label)."""
    node, root = node_root
    return node, root_map.get(root, root)


class ConnectComponents(beam.PTransform):
    """A tuple of ``(gid, local_root)`` PCollections -> ``(gid, label)``, label = smallest gid of the component."""

    def expand(self, local_roots):
        nodes = (
            local_roots
            | "AllLocalRoots" >> beam.Flatten()
            | "GroupByNode" >> beam.GroupByKey()
            | "NodeRoots" >> beam.FlatMap(node_roots).with_outputs("links", main="roots")
        )
        root_map = nodes.links | "GatherLinks" >> beam.combiners.ToList() | "ResolveRoots" >> beam.Map(resolve)
        return nodes.roots | "GlobalLabels" >> beam.Map(global_label, pvalue.AsSingleton(root_map))
