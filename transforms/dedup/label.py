"""Label global components: attach each member's metadata, choose the representative, name the group."""
from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam import pvalue

from models.dedup import representatives
from models.dedup.plan import DedupParams
from models.storage import layout
from transforms.dedup.read import row_areas
from transforms.dedup.rows import GroupRow, Labelled, Member, PartRow, gid_of, is_new_gid, row_id


def join_label(element):
    """CoGroupByKey row (gid, {label, max_cos, previous, meta}) -> (gid, Labelled).

    ``max_cos`` is the largest of the new edges' cosines and the previous
    run's value (an old row keeps its old edges); 1.0 when neither exists.
    ``previous`` is the old row's :class:`PreviousGroup`, or None; ``meta``
    its key, sample id and area from the increment index, or None (then read
    from its part).
    """
    gid, value = element
    cosines = list(value["max_cos"])
    prev = next(iter(value["previous"]), None)
    meta = next(iter(value["meta"]), None)
    if prev is not None and prev.max_cosine is not None:
        cosines.append(float(prev.max_cosine))
    return gid, Labelled(value["label"][0], max(cosines) if cosines else 1.0, prev,
                         None if meta is None else tuple(meta))


def known_member(element):
    """(gid, Labelled with meta) -> (label, Member): an old member whose metadata came from the index."""
    gid, value = element
    key, sample_id, area = value.meta
    return value.label, Member(gid, key, sample_id, int(area), value.max_cos, value.previous)


def keep_touched(element, n_old: int):
    """(label, [(gid, Labelled)]) -> (gid, Labelled) for components with a new row.

    A component without new rows is a previous group no new edge reached: unchanged, not rewritten.
    """
    _, members = element
    members = list(members)
    if any(is_new_gid(gid, n_old) for gid, _ in members):
        yield from members


def by_part(element):
    """(gid, Labelled) -> (part, PartRow)."""
    gid, value = element
    rid = row_id(gid)
    return rid.part, PartRow(rid.row, value.label, value.max_cos, value.previous)


class AttachMetadataFn(beam.DoFn):
    """(part, [PartRow]) -> (label, Member) using the part's metadata (one read per part)."""

    def __init__(self, params: DedupParams):
        self.params = params

    def process(self, element):
        part_index, members = element
        part = self.params.parts[part_index]
        meta = layout.read_parquet(self.params.folder(part_index).metadata(part))
        ids = self.params.folder(part_index).part_ids(part, meta)
        area = row_areas(meta)
        for m in members:
            gid = int(gid_of(part_index, np.asarray([m.row]))[0])
            yield m.label, Member(gid, ids.keys[m.row], ids.sample_ids[m.row], int(area[m.row]), m.max_cos, m.previous)


def label_group(element):
    """(label, [Member]) -> (part, GroupRow) per member; the group's size (tag ``sizes``).

    Incremental runs also emit, per previous duplicate group inside the
    component, its previous size (tag ``retired``: it is replaced by this
    component in the size histogram) and, when its id no longer names the
    group, a :data:`models.storage.run_chain.MERGES` row (tag ``merges``).
    """
    _, members = element
    members = sorted(members)
    keys = np.asarray([m.key for m in members], dtype=object)
    area = np.asarray([m.area for m in members], np.int64)
    is_rep = representatives.choose_representatives(np.zeros(len(members), np.int64), area, np.ones_like(area), keys)
    rep_key = str(keys[is_rep][0])
    group_id = members[0].sample_id  # members sorted by gid: the first member names the group
    size = len(members)
    yield pvalue.TaggedOutput("sizes", size)
    previous: dict = {}
    for m in members:
        if m.previous is not None:
            previous.setdefault(m.previous.group_id, m.previous.group_size)
    for old_id, old_size in sorted(previous.items()):
        yield pvalue.TaggedOutput("retired", old_size)
        if old_id != group_id:
            yield pvalue.TaggedOutput("merges", {"old_group_id": old_id, "new_group_id": group_id,
                                                 "old_group_size": old_size, "new_group_size": size})
    for m, rep in zip(members, is_rep.tolist()):
        rid = row_id(m.gid)
        yield rid.part, GroupRow(rid.row, m.key, m.sample_id, group_id, size, rep, rep_key, m.max_cos, m.previous,
                                 m.area)


class LabelGroups(beam.PTransform):
    """``{"labels", "max_cos", "previous", "meta"}`` -> ``{"rows", "sizes", "retired", "merges"}``.

    ``rows``: (part, GroupRow) for every member of a labelled group; ``sizes``:
    one group size per group; ``retired``: previous group sizes replaced;
    ``merges``: MERGES rows. ``keep`` (from the run strategy) chooses the
    components to label. Members with ``meta`` (old members of previous
    groups, from the increment index) need no part; the others' metadata is
    read from their parts (one read per part).
    """

    def __init__(self, params: DedupParams, keep):
        super().__init__()
        self.params = params
        self.keep = keep

    def expand(self, inputs):
        max_cos = inputs["max_cos"] | "MaxCosine" >> beam.CombinePerKey(max)
        labelled = (
            {"label": inputs["labels"], "max_cos": max_cos, "previous": inputs["previous"], "meta": inputs["meta"]}
            | "JoinLabelCosine" >> beam.CoGroupByKey()
            | "LabelWithCosine" >> beam.Map(join_label)
        )
        kept = self.keep(labelled)
        known = kept | "MetadataKnown" >> beam.Filter(lambda e: e[1].meta is not None) | "KnownMembers" >> beam.Map(
            known_member)
        read = (
            kept
            | "MetadataToRead" >> beam.Filter(lambda e: e[1].meta is None)
            | "KeyByPart" >> beam.Map(by_part)
            | "GroupByPartForMetadata" >> beam.GroupByKey()
            | "AttachMetadata" >> beam.ParDo(AttachMetadataFn(self.params))
        )
        groups = (
            (known, read)
            | "AllMembers" >> beam.Flatten()
            | "GroupByLabel" >> beam.GroupByKey()
            | "NameGroups" >> beam.FlatMap(label_group).with_outputs("sizes", "retired", "merges", main="rows")
        )
        return {"rows": groups.rows, "sizes": groups.sizes, "retired": groups.retired, "merges": groups.merges}
