"""Beam steps that end a mine run: support filters, the tables, the calibration file, the manifest.

The tables are computed on one worker over counts already filtered to the
keywords with support (:class:`SupportFilter`); the manifest, the run's
commit point, is written only after every file it vouches for
(:class:`WriteManifest` waits on the count files, the tables and the
calibration file).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue

from models.mine.object_triggers import ObjectTriggerConfig
from models.mine.plan import MineParams
from models.mine.tables import (
    CaptionCount,
    PromptConfig,
    TableCounts,
    TableSet,
    flagged_pairs,
    flagged_prompts,
    object_table,
    stage_summary,
    word_table,
)
from models.mine.word_triggers import WordTriggerConfig
from models.storage import layout, mine_chain, run_chain
from models.storage.folders.mine import MineFolder

CAPTIONS_PER_GROUP = 5


@dataclass(frozen=True)
class TableSettings:
    """What the final steps need besides the counts (picklable)."""

    output: str
    word: WordTriggerConfig
    object: ObjectTriggerConfig
    prompts: PromptConfig
    objects: tuple[str, ...]
    previous: str | None
    vocab: tuple = ()               # the tagger's VocabEntry objects (for the flagged pairs' reasons)
    keyword_config: object = None   # models.mine.keywords.KeywordConfig
    mention: str = "semantic"
    wordnet_depth: int = 3
    naming_threshold: float = 1.0   # >= 1: no keyword-names-object check
    notes: tuple = ()               # (name, value) lines for the summary (mention test, tagger)


class ComputedTables(NamedTuple):
    words: pa.Table
    objects: pa.Table


def top_captions(element, per_group: int = CAPTIONS_PER_GROUP):
    """(group_id, [(caption, count)]) -> (group_id, most repeated CaptionCounts, count descending)."""
    group, items = element
    return group, [CaptionCount(c, n) for c, n in sorted(items, key=lambda x: (-x[1], x[0]))[:per_group]]


class SupportFilter(beam.PTransform):
    """Whole counts -> what the tables read.

    ``kw`` keywords with ``n >= min_support``; ``kwg`` pairs with at least 2 rows; ``kwo`` pairs with
    ``max(tagged, mentioning) >= max(1, min_support // 2)``; ``cap`` as
    (group_id, its most repeated captions); the rest unchanged.
    """

    def __init__(self, min_support: int):
        super().__init__()
        self.min_support = min_support

    def expand(self, counts: dict):
        min_support, support = self.min_support, max(1, self.min_support // 2)
        out = {name: counts[name] for name in ("kwin", "grp", "obj", "woc", "stats", "increment_stats")}
        # Only keywords with n >= min_support enter the tables: do not ship the long tail to the one writer.
        out["kw"] = counts["kw"] | "KeywordSupport" >> beam.FlatMapTuple(
            lambda _, block: ((w, int(n)) for w, n in zip(block.keywords, block.n.tolist()) if n >= min_support))
        out["kwg"] = counts["kwg"] | "KeywordGroupSupport" >> beam.Filter(lambda e: e[1].n >= 2)
        out["kwo"] = counts["kwo"] | "KeywordObjectSupport" >> beam.Filter(lambda e: max(e[1]) >= support)
        out["cap"] = (counts["cap"]
                      | "ByGroup" >> beam.Map(lambda e: (e[0].group_id, (e[0].caption, e[1])))
                      | "GroupCaptions" >> beam.GroupByKey()
                      | "TopCaptions" >> beam.Map(top_captions))
        return out


def _explainer(settings: TableSettings):
    """The mention test's ``explain`` over the tagger's vocabulary (built once per worker, only when needed)."""
    from models.mine.keywords import KeywordExtractor
    from models.mine.mentions import mention_test

    cache: dict = {}

    def explain(keyword: str, entry: int) -> str:
        if "m" not in cache:
            cache["m"] = mention_test(list(settings.vocab), KeywordExtractor(settings.keyword_config), settings.mention,
                                      settings.wordnet_depth)
        return cache["m"].explain(keyword, entry)

    return explain if settings.vocab else None


def _table_counts(side: dict) -> TableCounts:
    return TableCounts(kw=dict(side["kw"]), kwin=dict(side["kwin"]), kwg=sorted(side["kwg"]), grp=dict(side["grp"]),
                       obj=dict(side["obj"]), kwo=sorted(side["kwo"]), captions=dict(side["cap"]), stats=side["stats"])


def compute_tables(_, settings: TableSettings, **side) -> ComputedTables:
    """Keyword and object trigger tables, written; returned for the prompt step."""
    counts = _table_counts(side)
    words = word_table(counts, settings.word)
    naming = None
    if settings.vocab and settings.naming_threshold < 1.0:
        from models.mine.similarity import NamingCheck, minilm_available

        naming = NamingCheck(settings.vocab, settings.naming_threshold) if minilm_available() else None
    objects = object_table(counts, list(settings.objects), settings.object, _explainer(settings), naming)
    folder = MineFolder(settings.output)
    layout.write_parquet(folder.keyword_triggers, words)
    layout.write_parquet(folder.object_triggers, objects)
    return ComputedTables(words, objects)


def write_prompts(tables: ComputedTables, settings: TableSettings, parts: int, increment: dict, trigger_captions,
                  **side) -> dict:
    """``flagged_prompts.parquet`` and ``_stage/summary.json``; returns the summary."""
    counts = _table_counts(side)
    prompts = flagged_prompts(tables.words, tables.objects, counts.captions, counts.grp, settings.prompts,
                              dict(trigger_captions))
    folder = MineFolder(settings.output)
    layout.write_parquet(folder.flagged_prompts, prompts)
    summary = stage_summary(TableSet(tables.words, tables.objects, prompts), counts, parts, increment,
                            settings.previous, dict(settings.notes))
    layout.write_json(folder.stage_summary, summary)
    return summary


class WriteTables(beam.PTransform):
    """Filtered counts -> trigger tables, then the flagged object pairs' real captions, then the prompts and
    ``_stage/summary.json`` (one element: the summary).

    Only the captions of flagged (keyword, object) pairs reach the one writer: ``woc`` is filtered by the
    flagged pairs (a small side input) where it lies.
    """

    def __init__(self, settings: TableSettings, parts: int):
        super().__init__()
        self.settings, self.parts = settings, parts

    def expand(self, tables: dict):
        names = ("kw", "kwin", "kwg", "grp", "obj", "kwo", "cap")
        side = {k: pvalue.AsList(tables[k]) for k in names}
        side["stats"] = pvalue.AsSingleton(tables["stats"])
        computed = (tables["stats"].pipeline | "One" >> beam.Create([None])
                    | "ComputeTables" >> beam.Map(compute_tables, self.settings, **side))
        flagged = computed | "FlaggedPairs" >> beam.FlatMap(lambda t: ((k, True) for k in flagged_pairs(t.objects)))
        captions = tables["woc"] | "TriggerCaptions" >> beam.Filter(lambda e, f: e[0] in f, pvalue.AsDict(flagged))
        return computed | "WritePrompts" >> beam.Map(
            write_prompts, self.settings, self.parts, pvalue.AsSingleton(tables["increment_stats"]),
            pvalue.AsList(captions), **side)


def _write_calibration(calibration: dict, output: str) -> str:
    """Write ``tagger_calibration.json`` when there is one; the path or '' (so later steps can wait on it)."""
    if not calibration:
        return ""
    path = MineFolder(output).calibration
    layout.write_json(path, calibration)
    return path


class WriteCalibration(beam.PTransform):
    """Calibration dict -> ``tagger_calibration.json`` (one element: its path, or '' without a calibration)."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, calibration):
        return calibration | "WriteCalibrationFile" >> beam.Map(_write_calibration, self.output)


def manifest_entry(params: MineParams, previous: str | None) -> mine_chain.MineEntry:
    """This run's chain entry: the parts it counted, with their content identities."""
    return mine_chain.MineEntry(
        run=run_chain.normalize_path(params.output), embeddings=run_chain.normalize_path(params.embeddings),
        parts=tuple(params.parts), groups=run_chain.normalize_path(params.groups) if params.groups else None,
        previous=run_chain.normalize_path(previous) if previous else None,
        contents=tuple(mine_chain.part_identity(params.embeddings, p) for p in params.parts))


def _write_manifest(summary: dict, output: str, chain: tuple, entry: mine_chain.MineEntry, *_written) -> dict:
    mine_chain.write_mine_manifest(output, list(chain) + [entry])
    return summary


class WriteManifest(beam.PTransform):
    """``{"summary", "counts", "calibration"}`` -> ``manifest.json`` after all of them are written (the commit point)."""

    def __init__(self, output: str, chain: tuple, entry: mine_chain.MineEntry):
        super().__init__()
        self.output, self.chain, self.entry = output, chain, entry

    def expand(self, written: dict):
        return written["summary"] | "WriteManifestFile" >> beam.Map(
            _write_manifest, self.output, self.chain, self.entry,
            pvalue.AsList(written["counts"]), pvalue.AsList(written["calibration"]))
