"""Turn summed co-occurrence counts into trigger tables, flagged prompts and the stage summary.

Plain Python over the small, already-combined counts of the mine stage
(keywords with support >= ``min_support`` only, see :func:`TableCounts`);
the statistics live in :mod:`models.mine.word_triggers` and
:mod:`models.mine.object_triggers`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from models.mine.object_triggers import ObjectTriggerConfig, object_trigger_table
from models.mine.part_counts import Examples, KeywordGroup, KeywordObject, TagMention
from models.mine.word_triggers import WordTriggerConfig, word_trigger_table
from models.storage import schemas

__all__ = ["CaptionCount", "PromptConfig", "TableCounts", "TableSet", "build_tables", "flagged_prompts",
           "object_table", "stage_summary", "word_table"]


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
    """The combined counts the tables read (small: support-filtered).

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


def object_table(counts: TableCounts, objects: list[str], cfg: ObjectTriggerConfig) -> pa.Table:
    """Keyword-object statistics for keywords with ``n >= cfg.min_support`` and every listed pair."""
    kw = counts.kw
    words = sorted(w for w, n in kw.items() if n >= cfg.min_support)
    index = {w: i for i, w in enumerate(words)}
    pairs = [(index[k.keyword], k.object, v) for k, v in counts.kwo if k.keyword in index]
    if not words or not pairs:
        return schemas.table([], schemas.OBJECT_TRIGGERS)
    t = object_trigger_table(
        words, list(objects), np.asarray([kw[w] for w in words], np.int64),
        np.asarray([counts.obj.get(o, 0) for o in range(len(objects))], np.int64), counts.n_total,
        np.asarray([w for w, _, _ in pairs], np.int64), np.asarray([o for _, o, _ in pairs], np.int64),
        np.asarray([v.tagged for _, _, v in pairs], np.int64), np.asarray([v.mentioned for _, _, v in pairs], np.int64),
        config=cfg,
    )
    return t.select(schemas.OBJECT_TRIGGERS.names).cast(schemas.OBJECT_TRIGGERS)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _finite(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def flagged_prompts(words: pa.Table, objects: pa.Table, captions: dict, grp: dict, cfg: PromptConfig) -> pa.Table:
    """The prompts handed to scoring, deduplicated and capped.

    Sources, in this order: captions of each flagged keyword's top group that
    contain the keyword (``word-trigger``; longer n-grams first, so a caption
    is attributed to "starry night" rather than to "starry"); a prompt built from each flagged
    object trigger's keyword (``object-trigger``); the most repeated caption of
    the largest duplicate groups (``duplicate-caption``).

    Args:
      captions: {group_id: [CaptionCount]} most repeated first.
      grp: {group_id: rows}.
    """
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
        cands = captions.get(g, [])
        hits = [c for c in cands if r["keyword"] in c.caption.lower()] or cands[:1]
        evidence = {k: _finite(r[k]) for k in ("n", "n_in_groups", "top_group_share", "lift", "p_value", "q_value")}
        for c in hits[: cfg.captions_per_trigger]:
            add(c.caption, "word-trigger", r["keyword"], None, [g], c.n, evidence | {"caption_count": c.n})
    for r in objects.to_pylist():
        if not r["flagged"]:
            continue
        evidence = {k: _finite(r[k]) for k in ("n_w", "n_wo", "p_o_given_w", "p_o_given_not_w", "lift", "absent_fraction", "q_value")}
        add(f"a photo of {_article(r['keyword'])} {r['keyword']}", "object-trigger", r["keyword"], r["object"], [], r["n_wo"], evidence)
    for g in sorted(grp, key=lambda g: (-grp[g], g))[: cfg.duplicate_caption_groups]:
        for c in captions.get(g, [])[:1]:
            add(c.caption, "duplicate-caption", None, None, [g], c.n, {"group_size": grp[g], "caption_count": c.n})
    return schemas.table(out, schemas.FLAGGED_PROMPTS)


def build_tables(counts: TableCounts, objects: list[str], word_cfg: WordTriggerConfig, obj_cfg: ObjectTriggerConfig,
                 prompt_cfg: PromptConfig) -> TableSet:
    """The three output tables from the combined counts."""
    words = word_table(counts, word_cfg)
    objs = object_table(counts, objects, obj_cfg)
    return TableSet(words, objs, flagged_prompts(words, objs, counts.captions, counts.grp, prompt_cfg))


def stage_summary(tables: TableSet, counts: TableCounts, parts: int, increment: dict | None,
                  previous: str | None) -> dict:
    """The numbers ``summary.json`` reports (``increment``: this run's new parts and changed rows)."""
    stats = counts.stats
    return {
        "rows": int(stats.get("rows", 0)), "rows_analysed": counts.n_total,
        "caption_rejects": int(stats.get("caption_rejects", 0)), "object_tags": int(stats.get("object_tags", 0)),
        "keywords_tested": tables.words.num_rows,
        "word_triggers": int(sum(tables.words.column("flagged").to_pylist())),
        "object_pairs_tested": tables.objects.num_rows,
        "object_triggers": int(sum(tables.objects.column("flagged").to_pylist())),
        "flagged_prompts": tables.prompts.num_rows, "duplicate_groups_with_captions": len(counts.grp),
        "increment": {"parts": parts, "rows": int((stats if increment is None else increment).get("rows", 0)),
                      "changed_rows": int((increment or {}).get("changed_rows", 0))},
        "previous": previous,
    }
