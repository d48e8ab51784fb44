"""Turn summed co-occurrence counts into trigger tables, flagged prompts and the stage summary.

Plain Python over the already-combined counts of the mine stage
(keywords with support >= ``min_support`` only, see :class:`TableCounts`);
the statistics live in :mod:`models.mine.word_triggers` and
:mod:`models.mine.object_triggers`. :func:`word_table`, :func:`object_table` and
:func:`build_tables` hold every count in one process (every group's size and
captions): the one-writer reference. The mine stage computes the same tables
per key (:mod:`models.mine.keyed_tables`, :mod:`transforms.mine_tables`); the
prompts (:func:`flagged_prompts`) and the summary (:func:`stage_summary`) are
shared by both.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from models.mine.object_triggers import ObjectTriggerConfig, object_trigger_table
from models.mine.part_counts import CaptionSample, KeywordObject, caption_key, top_captions
from models.mine.word_triggers import WordTriggerConfig, word_trigger_table
from models.storage import schemas

__all__ = ["CaptionCount", "PromptConfig", "TableCounts", "TableSet", "build_tables", "flagged_pairs", "flagged_prompts",
           "merge_near_duplicates", "object_table", "stage_summary", "word_table"]


class CaptionCount(NamedTuple):
    caption: str
    n: int


@dataclass(frozen=True)
class PromptConfig:
    """How many flagged prompts of each kind to emit."""

    max_prompts: int = 200
    captions_per_trigger: int = 2
    duplicate_caption_groups: int = 50


@dataclass(frozen=True)
class TableCounts:
    """The combined counts of the one-writer reference (support-filtered, but every group: dataset-sized).

    Attributes:
      kw: {keyword: rows with it} (keywords with n >= min_support).
      kwin: {keyword: its rows in duplicate groups}.
      kwg: [(KeywordGroup, Examples)] for duplicate groups, sorted.
      grp: {group_id: analysed rows in the group} (duplicate groups only).
      obj: {object index: tagged rows}.
      kwo: [(KeywordObject, TagMention)], sorted.
      captions: {group_id: [CaptionCount]} most repeated first.
      stats: summed per-part totals (``rows``, ``rows_analysed``, ...).
    """

    kw: dict
    kwin: dict
    kwg: list
    grp: dict
    obj: dict
    kwo: list
    captions: dict
    stats: dict

    @property
    def n_total(self) -> int:
        return int(self.stats.get("rows_analysed", 0))


class TableSet(NamedTuple):
    words: pa.Table    # KEYWORD_TRIGGERS
    objects: pa.Table  # OBJECT_TRIGGERS
    prompts: pa.Table  # FLAGGED_PROMPTS


def word_table(counts: TableCounts, cfg: WordTriggerConfig) -> pa.Table:
    """Keyword-group statistics for keywords with ``n >= cfg.min_support``.

    Returns:
      Table with :data:`models.storage.schemas.KEYWORD_TRIGGERS` columns, ranked.
    """
    kw = counts.kw
    words = sorted(w for w, n in kw.items() if n >= cfg.min_support)
    if not words:
        return schemas.table([], schemas.KEYWORD_TRIGGERS)
    index = {w: i for i, w in enumerate(words)}
    groups = sorted(counts.grp)
    gindex = {g: i for i, g in enumerate(groups)}
    pairs = [(index[k.keyword], gindex[k.group_id], ex) for k, ex in counts.kwg
             if k.keyword in index and k.group_id in gindex]
    examples = {(w, g): list(ex.keys) for w, g, ex in pairs}
    t = word_trigger_table(
        words, np.asarray([kw[w] for w in words], np.int64),
        np.asarray([w for w, _, _ in pairs], np.int64), np.asarray([g for _, g, _ in pairs], np.int64),
        np.asarray([ex.n for _, _, ex in pairs], np.int64), np.arange(len(groups), dtype=np.int64),
        np.asarray([counts.grp[g] for g in groups], np.int64), counts.n_total,
        n_in_groups=np.asarray([counts.kwin.get(w, 0) for w in words], np.int64), config=cfg,
    ).to_pylist()
    rows = []
    for r in t:
        top = r["top_group_id"]
        rows.append({
            "keyword": r["keyword"], "n": r["n"], "n_in_groups": r["n_in_groups"],
            "top_group_id": groups[top] if top >= 0 else None, "top_group_share": r["top_group_share"],
            "lift": r["lift"], "p_value": r["p_value"], "q_value": r["q_value"],
            "example_keys": examples.get((r["keyword_index"], top), []), "flagged": r["flagged"], "rank": r["rank"],
        })
    return schemas.table(rows, schemas.KEYWORD_TRIGGERS)


def object_table(counts: TableCounts, objects: list[str], cfg: ObjectTriggerConfig, explain=None, naming=None) -> pa.Table:
    """Keyword-object statistics for keywords with ``n >= cfg.min_support`` and every listed pair.

    ``naming(keywords, object_indices) -> (n,) float`` scores whether a flagged candidate's keyword itself names
    the object (:class:`models.mine.similarity.NamingCheck`; its ``threshold``): those pairs are not flagged.
    ``explain(keyword, object_index) -> str`` fills ``unmentioned_reason`` of the flagged pairs (the mention
    test's account of why the captions do not name the object). The BH family size is the table's
    ``bh_family`` schema metadata.
    """
    kw = counts.kw
    words = sorted(w for w, n in kw.items() if n >= cfg.min_support)
    index = {w: i for i, w in enumerate(words)}
    pairs = [(index[k.keyword], k.object, v) for k, v in counts.kwo if k.keyword in index]
    if not words or not pairs:
        return schemas.table([], schemas.OBJECT_TRIGGERS).replace_schema_metadata({"bh_family": "0"})
    arrays = (words, list(objects), np.asarray([kw[w] for w in words], np.int64),
              np.asarray([counts.obj.get(o, 0) for o in range(len(objects))], np.int64), counts.n_total,
              np.asarray([w for w, _, _ in pairs], np.int64), np.asarray([o for _, o, _ in pairs], np.int64),
              np.asarray([v.tagged for _, _, v in pairs], np.int64), np.asarray([v.mentioned for _, _, v in pairs], np.int64))
    t = object_trigger_table(*arrays, config=cfg)
    reasons: dict[tuple[str, int], str] = {}
    if naming is not None:
        cand = [(r["keyword"], r["object_index"]) for r in t.to_pylist() if r["flagged"]]
        sims = naming([k for k, _ in cand], [o for _, o in cand]) if cand else []
        named = {c: float(s) for c, s in zip(cand, sims) if s >= naming.threshold}
        if named:
            mask = [(words[k], o) in named for k, o, _ in pairs]
            t = object_trigger_table(*arrays, config=cfg, named=np.asarray(mask))
            reasons = {c: f"not flagged: the keyword names the object (all-MiniLM-L6-v2 cosine {s:.3f} >= "
                          f"{naming.threshold})" for c, s in named.items()}
    family = t.schema.metadata[b"bh_family"].decode()
    rows = zip(t.column("keyword").to_pylist(), t.column("object_index").to_pylist(), t.column("flagged").to_pylist())
    column = [reasons.get((k, o)) or (explain(k, o) if f and explain is not None else None) for k, o, f in rows]
    t = t.append_column("unmentioned_reason", pa.array(column, pa.string()))
    return t.select(schemas.OBJECT_TRIGGERS.names).cast(schemas.OBJECT_TRIGGERS).replace_schema_metadata(
        {"bh_family": family})


def merge_near_duplicates(captions: list[CaptionCount]) -> list[CaptionCount]:
    """Captions with the same :func:`models.mine.part_counts.caption_key` as one (counts summed, the most
    frequent form shown), most frequent first."""
    merged = top_captions((CaptionSample(caption_key(c.caption), c.caption, c.n) for c in captions), limit=len(captions))
    return [CaptionCount(c.caption, c.n) for c in merged]


def flagged_pairs(objects: pa.Table) -> list[KeywordObject]:
    """The flagged (keyword, object index) pairs of an object-trigger table."""
    return [KeywordObject(r["keyword"], r["object_index"]) for r in objects.to_pylist() if r["flagged"]]


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _finite(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def flagged_prompts(words: pa.Table, objects: pa.Table, captions: dict, grp: dict, cfg: PromptConfig,
                    object_captions: dict | None = None) -> pa.Table:
    """The prompts handed to scoring, deduplicated and capped; real captions wherever there are some.

    Sources, in this order: the most repeated captions of each flagged
    keyword's top group that contain the keyword (``word-trigger``; near-duplicate
    captions merged; longer n-grams first, so a caption is attributed to
    "starry night" rather than to "starry"); for each flagged object trigger
    (w, o) the most frequent real captions containing w among the images
    tagged with o that do not name o (``object-trigger``; the template "a
    photo of a w" only where there is none); the most repeated caption of the
    largest duplicate groups (``duplicate-caption``).

    Args:
      captions: {group_id: [CaptionCount]} most repeated first; only the flagged keywords' top groups and the
        ``cfg.duplicate_caption_groups`` largest groups are read, so only those need to be there.
      grp: {group_id: rows}; only the ``cfg.duplicate_caption_groups`` largest (rows descending, then id) are
        read, so those suffice.
      object_captions: {KeywordObject: (CaptionSample, ...)} for the flagged object triggers.
    """
    object_captions = object_captions or {}
    out, seen = [], set()

    def add(prompt, kind, keyword, obj, group_ids, support, evidence):
        norm = " ".join(str(prompt).lower().split())
        if not norm or norm in seen or len(out) >= cfg.max_prompts:
            return
        seen.add(norm)
        out.append({"prompt": prompt, "kind": kind, "keyword": keyword, "object": obj, "group_ids": group_ids,
                    "support": int(support), "evidence": json.dumps(evidence, sort_keys=True), "rank": len(out) + 1})

    # Longest n-gram first, so "starry night" (not "starry" or "night") names the shared captions.
    flagged = sorted((r for r in words.to_pylist() if r["flagged"]), key=lambda r: (-len(r["keyword"].split()), r["rank"]))
    for r in flagged:
        g = r["top_group_id"]
        cands = merge_near_duplicates(captions.get(g, []))
        hits = [c for c in cands if r["keyword"] in c.caption.lower()] or cands[:1]
        evidence = {k: _finite(r[k]) for k in ("n", "n_in_groups", "top_group_share", "lift", "p_value", "q_value")}
        for c in hits[: cfg.captions_per_trigger]:
            add(c.caption, "word-trigger", r["keyword"], None, [g], c.n, evidence | {"caption_count": c.n})
    for r in objects.to_pylist():
        if not r["flagged"]:
            continue
        evidence = {k: _finite(r[k]) for k in ("n_w", "n_wo", "p_o_given_w", "p_o_given_not_w", "lift", "absent_fraction", "q_value")}
        real = object_captions.get(KeywordObject(r["keyword"], r["object_index"]), ())
        for c in real[: cfg.captions_per_trigger]:
            add(c.caption, "object-trigger", r["keyword"], r["object"], [], c.n, evidence | {"caption_count": c.n})
        if not real:
            add(f"a photo of {_article(r['keyword'])} {r['keyword']}", "object-trigger", r["keyword"], r["object"], [],
                r["n_wo"], evidence | {"caption_count": 0, "template": True})
    for g in sorted(grp, key=lambda g: (-grp[g], g))[: cfg.duplicate_caption_groups]:
        for c in captions.get(g, [])[:1]:
            add(c.caption, "duplicate-caption", None, None, [g], c.n, {"group_size": grp[g], "caption_count": c.n})
    return schemas.table(out, schemas.FLAGGED_PROMPTS)


def build_tables(counts: TableCounts, objects: list[str], word_cfg: WordTriggerConfig, obj_cfg: ObjectTriggerConfig,
                 prompt_cfg: PromptConfig, explain=None, object_captions: dict | None = None, naming=None) -> TableSet:
    """The three output tables from the combined counts (``object_captions``: see :func:`flagged_prompts`)."""
    words = word_table(counts, word_cfg)
    objs = object_table(counts, objects, obj_cfg, explain, naming)
    return TableSet(words, objs, flagged_prompts(words, objs, counts.captions, counts.grp, prompt_cfg, object_captions))


def stage_summary(tables: TableSet, stats: dict, duplicate_groups: int, parts: int, increment: dict | None,
                  previous: str | None, notes: dict | None = None) -> dict:
    """The numbers ``summary.json`` reports.

    Args:
      stats: the summed per-part totals (``rows``, ``rows_analysed``, ``caption_rejects``, ``object_tags``).
      duplicate_groups: duplicate groups with analysed captions.
      increment: this run's new parts and changed rows (None: a run from scratch).
    """
    return {
        "rows": int(stats.get("rows", 0)), "rows_analysed": int(stats.get("rows_analysed", 0)),
        "caption_rejects": int(stats.get("caption_rejects", 0)), "object_tags": int(stats.get("object_tags", 0)),
        "keywords_tested": tables.words.num_rows,
        "word_triggers": int(sum(tables.words.column("flagged").to_pylist())),
        "object_pairs_listed": tables.objects.num_rows,
        "object_pairs_tested": int(tables.objects.schema.metadata[b"bh_family"]) if tables.objects.schema.metadata else 0,
        "object_triggers": int(sum(tables.objects.column("flagged").to_pylist())),
        "flagged_prompts": tables.prompts.num_rows, "duplicate_groups_with_captions": int(duplicate_groups),
        "increment": {"parts": parts, "rows": int((stats if increment is None else increment).get("rows", 0)),
                      "changed_rows": int((increment or {}).get("changed_rows", 0))},
        "previous": previous,
        **(notes or {}),
    }
