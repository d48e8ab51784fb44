"""Duplicate groups for the gallery: the largest, the referenced ones, the size histogram, member cosines.

Reads ``groups/`` of a dedup output (schemas.DEDUP_GROUPS) in two streaming
passes, one part file in memory at a time, and only the embedding rows of the
members shown.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.report.reading import read_each
from models.report.rows import DuplicateGroup, ShownRow
from models.storage import layout
from models.storage.folders.dedup import DedupFolder
from models.storage.folders.report import ReportFolder


class GroupsShown(NamedTuple):
    """What the gallery shows of a dedup output."""

    top: list[DuplicateGroup]          # the largest groups, largest first (ties by group id)
    referenced: list[DuplicateGroup]   # groups named by triggers, prompts or extractions, not among ``top``
    size_hist: dict[int, int]          # group size -> number of groups (singletons included), sorted by size
    total: int                         # number of duplicate groups (size > 1)


def groups_folder(dedup: str, report: ReportFolder) -> str:
    """The folder of group rows to read.

    ``groups/``, or for an incremental dedup output the state of its whole run
    chain (its own ``groups/`` holds only the increment's new parts), written
    once to ``report.chain_state``.
    """
    from models.storage import run_chain

    folder = DedupFolder(dedup)
    if not layout.exists(folder.manifest) or len(run_chain.read_chain(dedup)) == 1:
        return folder.groups_dir
    layout.write_parquet(report.chain_state_groups, run_chain.load_groups(dedup, run_chain.STATE_COLUMNS))
    return report.chain_state


def _singletons(root: str, summary: dict | None) -> int:
    """Singleton groups: from dedup's ``summary.json`` when it has the counts, else counted in ``groups/``."""
    if summary and isinstance(summary.get("groups"), int) and isinstance(summary.get("duplicate_groups"), int):
        return summary["groups"] - summary["duplicate_groups"]
    return sum(int(pc.sum(pc.equal(t.column("group_size"), 1)).as_py() or 0) for t in read_each(root, ["group_size"]))


def shown_groups(dedup: str, summary: dict | None, max_groups: int, max_members: int,
                 referenced: Iterable[str], report: ReportFolder) -> GroupsShown:
    """Top groups by size, referenced groups not among them, the size histogram and the duplicate-group count.

    Two passes over ``groups/``: the distinct ``(group_id, group_size)`` of rows
    with ``group_size > 1``, then the rows of the groups shown (``key``,
    ``is_representative``, ``representative_key``), keeping at most
    ``max_members + 1`` keys per group.

    Raises:
      FileNotFoundError: the folder has no ``groups/`` (not a dedup output).
    """
    root = groups_folder(dedup, report)
    if not layout.exists(root):
        raise FileNotFoundError(f"{dedup!r} has no groups/ folder (not a dedup output?)")
    distinct = [t.group_by(["group_id", "group_size"]).aggregate([])
                for t in read_each(root, ["group_id", "group_size"], filters=[("group_size", ">", 1)])]
    per_group = (pa.concat_tables(distinct).group_by("group_id").aggregate([("group_size", "max")])
                 .sort_by([("group_size_max", "descending"), ("group_id", "ascending")])) if distinct else None
    ids = per_group.column("group_id").to_pylist() if per_group is not None else []
    size_of = dict(zip(ids, per_group.column("group_size_max").to_pylist())) if per_group is not None else {}
    hist = Counter(int(s) for s in size_of.values())
    singletons = _singletons(root, summary)
    if singletons:
        hist[1] = singletons
    top_ids = ids[:max_groups]
    extra_ids = sorted({g for g in referenced if g in size_of and g not in set(top_ids)}, key=lambda g: (-size_of[g], g))
    wanted = top_ids + extra_ids
    members = _members(root, wanted, max_members) if wanted else {}

    def make(gid: str) -> DuplicateGroup:
        m = members[gid]
        rep = m.representative()
        order = [rep] + [r for r in m.refs() if r != rep]
        return DuplicateGroup(gid, int(size_of[gid]), rep, order[:max_members], {r: m.key_of(r) for r in order[:max_members]})

    return GroupsShown([make(g) for g in top_ids], [make(g) for g in extra_ids], dict(sorted(hist.items())), len(ids))


class _Member(NamedTuple):
    key: str
    ref: str     # sample id when the dedup output has one, else the key


class _Members:
    """The members kept of one group while its rows stream by: the ``limit`` smallest by key, and the representative."""

    def __init__(self, limit: int):
        self.limit, self.kept, self.rep, self.rep_key = limit, [], None, None

    def add(self, row: dict) -> None:
        member = _Member(row["key"], row.get("sample_id") or row["key"])
        if row["is_representative"]:
            self.rep = member
        if self.rep_key is None:
            self.rep_key = row["representative_key"] or row["key"]
        self.kept.append(member)

    def trim(self) -> None:
        self.kept = sorted(set(self.kept))[: self.limit]

    def representative(self) -> str:
        """The flagged representative, else the member whose key is ``representative_key``, else that key."""
        if self.rep is not None:
            return self.rep.ref
        return next((m.ref for m in self.kept if m.key == self.rep_key), self.rep_key)

    def refs(self) -> list[str]:
        return [m.ref for m in sorted(set(self.kept))]

    def key_of(self, ref: str) -> str:
        known = {m.ref: m.key for m in self.kept} | ({self.rep.ref: self.rep.key} if self.rep else {})
        return known.get(ref, ref)


def _members(root: str, wanted: list[str], max_members: int) -> dict[str, _Members]:
    """Per wanted group, its representative and ``max_members + 1`` smallest members (memory bounded per part file)."""
    members: dict[str, _Members] = defaultdict(lambda: _Members(max_members + 1))
    for t in read_each(root, ["key", "sample_id", "group_id", "is_representative", "representative_key"],
                       filters=[("group_id", "in", wanted)]):
        for row in t.to_pylist():
            members[row["group_id"]].add(row)
        for m in members.values():
            m.trim()
    return members


def fill_cosines(embeddings: str, rows: dict[str, ShownRow], groups: list[DuplicateGroup]) -> None:
    """Set each group's ``cosine``: member . representative of the stored (float16) rows, renormalised in float32.

    Reads only the rows shown, memory-mapped where the filesystem allows.
    """
    folder = layout.EmbeddingFolder(embeddings)
    need: dict[str, set[int]] = defaultdict(set)
    for g in groups:
        for k in g.members:
            if k in rows:
                need[rows[k].part].add(rows[k].index)
    vectors: dict[tuple[str, int], np.ndarray] = {}
    for part, idx in need.items():
        order = np.array(sorted(idx), dtype=np.int64)
        x = np.asarray(layout.read_npy(folder.img_emb(part))[order], dtype=np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        vectors.update({(part, int(i)): x[j] for j, i in enumerate(order)})
    for g in groups:
        rep = rows.get(g.representative)
        if rep is None:
            continue
        r = vectors[(rep.part, rep.index)]
        for k in g.members:
            if k in rows:
                g.cosine[k] = float(vectors[(rows[k].part, rows[k].index)] @ r)
