"""Turn summed co-occurrence counts into trigger tables and flagged prompts.

Plain Python over the small, already-combined counts of the mine stage
(keywords with support >= ``min_support`` only); the statistics themselves
live in :mod:`models.mine.statistics`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from models.storage import schemas
from models.mine.statistics import ObjectTriggerConfig, WordTriggerConfig, object_trigger_table, word_trigger_table


@dataclass(frozen=True)
class PromptConfig:
    """How many flagged prompts of each kind to emit."""

    max_prompts: int = 200
    captions_per_trigger: int = 2
    duplicate_caption_groups: int = 50


def word_table(kw: dict, kwin: dict, kwg: list, grp: dict, n_total: int, cfg: WordTriggerConfig) -> pa.Table:
    """Keyword-group statistics for keywords with ``n >= cfg.min_support``.

    Args:
      kw: {keyword: rows with it}. kwin: {keyword: its rows in duplicate groups}.
      kwg: [((keyword, group_id), (rows, example_keys))] for duplicate groups.
      grp: {group_id: analysed rows in the group} (duplicate groups only).
      n_total: analysed rows N.

    Returns:
      Table with :data:`models.storage.schemas.KEYWORD_TRIGGERS` columns, ranked.
    """
    words = sorted(w for w, n in kw.items() if n >= cfg.min_support)
    index = {w: i for i, w in enumerate(words)}
    groups = sorted(grp)
    gindex = {g: i for i, g in enumerate(groups)}
    pairs = [(index[w], gindex[g], n, ex) for (w, g), (n, ex) in kwg if w in index and g in gindex]
    if not words:
        return schemas.table([], schemas.KEYWORD_TRIGGERS)
    examples = {(k, g): list(ex) for k, g, _, ex in pairs}
    t = word_trigger_table(
        words, np.asarray([kw[w] for w in words], np.int64),
        np.asarray([p[0] for p in pairs], np.int64), np.asarray([p[1] for p in pairs], np.int64),
        np.asarray([p[2] for p in pairs], np.int64), np.arange(len(groups), dtype=np.int64),
        np.asarray([grp[g] for g in groups], np.int64), n_total,
        n_in_groups=np.asarray([kwin.get(w, 0) for w in words], np.int64), config=cfg,
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


def object_table(kw: dict, obj: dict, kwo: list, objects: list[str], n_total: int, cfg: ObjectTriggerConfig) -> pa.Table:
    """Keyword-object statistics for keywords with ``n >= cfg.min_support`` and every listed pair.

    Args:
      kw: {keyword: rows}. obj: {object index: tagged rows}.
      kwo: [((keyword, object index), (tagged rows with w, rows with w mentioning o))].
      objects: object names by index. n_total: analysed rows N.
    """
    words = sorted(w for w, n in kw.items() if n >= cfg.min_support)
    index = {w: i for i, w in enumerate(words)}
    pairs = [(index[w], o, c, m) for (w, o), (c, m) in kwo if w in index]
    if not words or not pairs:
        return schemas.table([], schemas.OBJECT_TRIGGERS)
    t = object_trigger_table(
        words, list(objects), np.asarray([kw[w] for w in words], np.int64),
        np.asarray([obj.get(o, 0) for o in range(len(objects))], np.int64), n_total,
        np.asarray([p[0] for p in pairs], np.int64), np.asarray([p[1] for p in pairs], np.int64),
        np.asarray([p[2] for p in pairs], np.int64), np.asarray([p[3] for p in pairs], np.int64), config=cfg,
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
      captions: {group_id: [(caption, count), ...]} most repeated first.
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
        hits = [(c, n) for c, n in cands if r["keyword"] in c.lower()] or cands[:1]
        evidence = {k: _finite(r[k]) for k in ("n", "n_in_groups", "top_group_share", "lift", "p_value", "q_value")}
        for caption, n in hits[: cfg.captions_per_trigger]:
            add(caption, "word-trigger", r["keyword"], None, [g], n, evidence | {"caption_count": n})
    for r in objects.to_pylist():
        if not r["flagged"]:
            continue
        evidence = {k: _finite(r[k]) for k in ("n_w", "n_wo", "p_o_given_w", "p_o_given_not_w", "lift", "absent_fraction", "q_value")}
        add(f"a photo of {_article(r['keyword'])} {r['keyword']}", "object-trigger", r["keyword"], r["object"], [], r["n_wo"], evidence)
    for g in sorted(grp, key=lambda g: (-grp[g], g))[: cfg.duplicate_caption_groups]:
        for caption, n in captions.get(g, [])[:1]:
            add(caption, "duplicate-caption", None, None, [g], n, {"group_size": grp[g], "caption_count": n})
    return schemas.table(out, schemas.FLAGGED_PROMPTS)
