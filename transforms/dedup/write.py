"""Write the per-part outputs (groups, drop keys, rejects), changed old rows and merges."""
from __future__ import annotations

from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.dedup.plan import DedupParams
from models.storage import layout, run_chain, schemas
from transforms.dedup.read import part_ids
from transforms.dedup.rows import NAMESPACE, GroupRow, PreviousGroup


def drop_row(row: GroupRow) -> dict:
    """The DROP_KEYS row of a non-representative."""
    kind = "duplicate" if row.max_cos >= 1.0 - 1e-6 else "near-duplicate"
    return {"key": row.key, "sample_id": row.sample_id, "group_id": row.group_id,
            "representative_key": row.representative_key,
            "reason": f"{kind} of {row.representative_key} (cosine {row.max_cos:.4f})"}


def group_record(row: GroupRow, part: str) -> dict:
    """The DEDUP_GROUPS row of a member of a duplicate group."""
    return {"key": row.key, "sample_id": row.sample_id, "group_id": row.group_id, "group_size": row.group_size,
            "is_representative": row.is_representative, "representative_key": row.representative_key,
            "max_cosine": row.max_cos, "part": part}


class WritePartFn(beam.DoFn):
    """(part, {"rows": [GroupRow], "rejects": [Reject], "parts": [None]}) -> groups, drop_keys and rejects files.

    Every input row of the part ends in exactly one of groups (a singleton
    row unless it has a GroupRow) or rejects. Yields a stats Counter.
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.dropped = Metrics.counter(NAMESPACE, "rows_dropped")

    def process(self, element):
        part_index, inputs = element
        p = self.params
        part = p.parts[part_index]
        ids = part_ids(p, part_index)
        n = len(ids.keys)
        rejected = {r.row: r for r in inputs["rejects"]}
        dups = sorted((r for r in inputs["rows"] if r.row not in rejected), key=lambda r: r.row)
        layout.write_parquet(p.out.groups(part), group_table(ids, dups, sorted(rejected), part))
        drops = [drop_row(dup) for dup in dups if not dup.is_representative]
        rejects = [{"key": r.key, "sample_id": ids.sample_ids[r.row], "shard": part, "url": None, "reason": r.reason,
                    "stage": "dedup"} for r in sorted(rejected.values())]
        layout.write_parquet(p.out.drop_keys_part(part), schemas.table(drops, schemas.DROP_KEYS))
        layout.write_parquet(p.out.rejects(part), schemas.table(rejects, schemas.REJECTS))
        self.dropped.inc(len(drops))
        yield Counter({"rows": n, "grouped_rows": n - len(rejected), "dropped": len(drops), "rejects": len(rejects)})


def group_table(ids, dups: list[GroupRow], rejected: list[int], part: str) -> pa.Table:
    """DEDUP_GROUPS of one part: every row not in ``rejected`` (sorted rows), in row order; a singleton unless it
    is in ``dups`` (its GroupRows, sorted by row).

    Built by column (the singleton values are the part's keys and sample ids, the few group rows written
    over them), not row by row: 100k-row dicts a part took 34 s of a 10M-row run (2.2 s at 1M).
    """
    n = len(ids.keys)
    keys, sample_ids = list(ids.keys), list(ids.sample_ids)
    group_id, rep_key = list(sample_ids), list(keys)
    size = np.ones(n, np.int64)
    is_rep = np.ones(n, bool)
    max_cos = np.zeros(n, np.float32)
    has_cos = np.zeros(n, bool)
    for dup in dups:
        r = dup.row
        group_id[r], rep_key[r], size[r], is_rep[r] = dup.group_id, dup.representative_key, dup.group_size, dup.is_representative
        if dup.max_cos is not None:  # null as in a singleton's row, never NaN
            max_cos[r], has_cos[r] = dup.max_cos, True
        keys[r], sample_ids[r] = dup.key, dup.sample_id
    table = pa.table({"key": keys, "sample_id": sample_ids, "group_id": group_id, "group_size": size,
                      "is_representative": is_rep, "representative_key": rep_key,
                      "max_cosine": pa.array(max_cos, pa.float32(), mask=~has_cos), "part": [part] * n},
                     schema=schemas.DEDUP_GROUPS)
    if rejected:
        keep = np.ones(n, bool)
        keep[np.asarray(rejected, np.int64)] = False
        table = table.filter(pa.array(keep))
    return table


class WriteChangedFn(beam.DoFn):
    """Incremental runs: (old part, [GroupRow]) -> ``changed/changed_{slot}.parquet`` and the part's new drops.

    A row is written when any of group_id, group_size, is_representative,
    representative_key or max_cosine (as float32) differs from its previous
    value (a previous singleton: its own sample id, 1, True, its own key, null),
    with the previous values alongside (:data:`models.storage.run_chain.CHANGED_GROUPS`).
    Old representatives that lost their place are written to
    ``drop_keys.parquet/demoted-{slot}.parquet``. Yields a stats Counter
    (``changed_rows``, ``demoted``, ``dropped``), and the part's chain slot
    when it wrote a changed file (tag ``parts``). ``slot``: the part's name
    unless another part of the chain shares it (:mod:`models.storage.run_chain`).
    """

    def __init__(self, params: DedupParams):
        self.params = params
        self.changed = Metrics.counter(NAMESPACE, "old_rows_changed")

    def process(self, element):
        part_index, rows = element
        p = self.params
        part, slot = p.parts[part_index], p.slot(part_index)
        changed, drops = [], []
        for row in sorted(rows, key=lambda r: r.row):
            prev = row.previous if row.previous is not None else PreviousGroup.singleton(row.sample_id, row.key)
            before = GroupRow(row.row, row.key, row.sample_id, prev.group_id, prev.group_size, prev.is_representative,
                              prev.representative_key, prev.max_cosine, None)
            if row.fields() == before.fields():
                continue
            changed.append(group_record(row, part) | {
                "previous_group_id": prev.group_id, "previous_group_size": prev.group_size,
                "previous_is_representative": prev.is_representative,
                "previous_representative_key": prev.representative_key, "previous_max_cosine": prev.max_cosine})
            if prev.is_representative and not row.is_representative:
                drops.append(drop_row(row))
        if changed:
            layout.write_parquet(p.out.changed(slot), schemas.table(changed, run_chain.CHANGED_GROUPS))
            yield pvalue.TaggedOutput("parts", slot)
        if drops:
            layout.write_parquet(p.out.demoted(slot), schemas.table(drops, schemas.DROP_KEYS))
        self.changed.inc(len(changed))
        yield Counter({"changed_rows": len(changed), "demoted": len(drops), "dropped": len(drops)})


def write_merges(rows: list, params: DedupParams) -> int:
    """merges.parquet (sorted by old group id); returns the number of merged groups."""
    rows = sorted(rows, key=lambda r: (r["old_group_id"], r["new_group_id"]))
    layout.write_parquet(params.out.merges, schemas.table(rows, run_chain.MERGES))
    return len(rows)


class WriteParts(beam.PTransform):
    """``{"rows", "rejects", "parts"}`` -> one stats Counter per written part.

    ``rows``: (part, GroupRow); ``rejects``: (part, Reject); ``parts``: the
    part indices to write (every one gets its files, even without duplicates).
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, inputs):
        return (
            {"rows": inputs["rows"], "rejects": inputs["rejects"],
             "parts": inputs["parts"] | "EveryPart" >> beam.Map(lambda i: (i, None))}
            | "GroupRowsByPart" >> beam.CoGroupByKey()
            | "WritePartFiles" >> beam.ParDo(WritePartFn(self.params))
        )
