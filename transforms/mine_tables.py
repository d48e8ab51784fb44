"""Beam steps that end a mine run: support filters, the tables, the calibration file, the manifest.

The tables are computed on one worker over counts already filtered to the
keywords with support (:class:`SupportFilter`); the manifest, the run's
commit point, is written only after every file it vouches for
(:class:`WriteManifest` waits on the count files, the tables and the
calibration file).
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue

from models.mine.object_triggers import ObjectTriggerConfig
from models.mine.plan import MineParams
from models.mine.tables import CaptionCount, PromptConfig, TableCounts, build_tables, stage_summary
from models.mine.word_triggers import WordTriggerConfig
from models.storage import layout, mine_chain, run_chain
from models.storage.folders.mine import MineFolder

CAPTIONS_PER_GROUP = 5


@dataclass(frozen=True)
class TableSettings:
    """What the final step needs besides the counts (picklable)."""

    output: str
    word: WordTriggerConfig
    object: ObjectTriggerConfig
    prompts: PromptConfig
    objects: tuple[str, ...]
    previous: str | None


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
        out = {name: counts[name] for name in ("kwin", "grp", "obj", "stats", "increment_stats")}
        # Only keywords with n >= min_support enter the tables: do not ship the long tail to the one writer.
        out["kw"] = counts["kw"] | "KeywordSupport" >> beam.Filter(lambda e: e[1] >= min_support)
        out["kwg"] = counts["kwg"] | "KeywordGroupSupport" >> beam.Filter(lambda e: e[1].n >= 2)
        out["kwo"] = counts["kwo"] | "KeywordObjectSupport" >> beam.Filter(lambda e: max(e[1]) >= support)
        out["cap"] = (counts["cap"]
                      | "ByGroup" >> beam.Map(lambda e: (e[0].group_id, (e[0].caption, e[1])))
                      | "GroupCaptions" >> beam.GroupByKey()
                      | "TopCaptions" >> beam.Map(top_captions))
        return out


def write_tables(_, settings: TableSettings, parts: int, increment: dict, **side) -> dict:
    """Compute and write the three tables and ``_stage/summary.json``; return the summary."""
    counts = TableCounts(kw=dict(side["kw"]), kwin=dict(side["kwin"]), kwg=sorted(side["kwg"]), grp=dict(side["grp"]),
                         obj=dict(side["obj"]), kwo=sorted(side["kwo"]), captions=dict(side["cap"]), stats=side["stats"])
    tables = build_tables(counts, list(settings.objects), settings.word, settings.object, settings.prompts)
    folder = MineFolder(settings.output)
    layout.write_parquet(folder.keyword_triggers, tables.words)
    layout.write_parquet(folder.object_triggers, tables.objects)
    layout.write_parquet(folder.flagged_prompts, tables.prompts)
    summary = stage_summary(tables, counts, parts, increment, settings.previous)
    layout.write_json(folder.stage_summary, summary)
    return summary


class WriteTables(beam.PTransform):
    """Filtered counts -> the tables and ``_stage/summary.json`` (one element: the summary)."""

    def __init__(self, settings: TableSettings, parts: int):
        super().__init__()
        self.settings, self.parts = settings, parts

    def expand(self, tables: dict):
        side = {k: (pvalue.AsSingleton(v) if k in ("stats", "increment_stats") else pvalue.AsList(v))
                for k, v in tables.items()}
        increment = side.pop("increment_stats")
        return (tables["stats"].pipeline | "One" >> beam.Create([None])
                | "ComputeTables" >> beam.Map(write_tables, self.settings, self.parts, increment, **side))


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
