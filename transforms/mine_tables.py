"""Beam steps that end a mine run: support filters, the tables, the calibration file, the manifest.

No step gathers a dataset-sized collection (issue 11, item 4). What reaches one worker, per output:

* ``keyword_triggers.parquet``: one :class:`models.mine.keyed_tables.KeywordStat` per tested keyword
  (``n_w >= min_support``: the rows of the table) plus the duplicate groups' size histogram (O(distinct sizes)
  <= sqrt(2 N)) and the summed ``stats``; BH over the family needs them all at once: O(family).
* ``object_triggers.parquet``: one :class:`models.mine.keyed_tables.PairStat` per listed (keyword, object) pair
  (the rows of the table) plus the object counts (O(objects)) and the number of tested keywords.
* ``flagged_prompts.parquet`` and ``_stage/summary.json``: the two tables, the <= 5 most repeated captions of
  only the groups a flagged keyword names and the ``duplicate_caption_groups`` largest groups, the
  ``woc`` captions of the flagged pairs only, the number of duplicate groups.

Per-group and per-keyword work is keyed (:class:`KeywordStatistics`, :class:`PairStatistics`): a group's size is
joined to its (keyword, group) pairs by group id (CoGroupByKey), each keyword's pairs are folded into O(1)
numbers (CombinePerKey) and joined with its ``n_w`` and ``n_in_groups`` by keyword, p-values are computed per
batch where the rows lie; a group's captions are reduced to its top 5 by a combiner (never a list of all).
The manifest, the run's commit point, is written only after every file it vouches for
(:class:`WriteManifest` waits on the count files, the tables' summary and the calibration file).
"""
from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from models.mine.keyed_tables import (
    GroupPair,
    GroupSizes,
    keyword_row,
    keyword_stats,
    keyword_table,
    pair_row,
    pair_stats,
    pair_table,
    top_group,
)
from models.mine.object_triggers import ObjectTriggerConfig
from models.mine.plan import MineParams
from models.mine.tables import CaptionCount, PromptConfig, TableSet, flagged_pairs, flagged_prompts, stage_summary
from models.mine.word_triggers import WordTriggerConfig
from models.storage import layout, mine_chain, run_chain
from models.storage.folders.mine import MineFolder

CAPTIONS_PER_GROUP = 5
MAX_BATCH = 4096  # keywords / pairs per p-value batch
# What each one-worker step holds, as Beam distributions (namespace "mine"): rows of the tested family.
KEYWORD_ROWS = Metrics.distribution("mine", "keyword_rows_on_one_worker")
PAIR_ROWS = Metrics.distribution("mine", "pair_rows_on_one_worker")
PROMPT_GROUPS = Metrics.distribution("mine", "prompt_caption_groups_on_one_worker")


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


def _caption_order(c: CaptionCount) -> tuple:
    return -c.n, c.caption


class SupportFilter(beam.PTransform):
    """Whole counts -> what the tables read.

    ``kw`` keywords with ``n >= min_support``; ``kwg`` pairs with at least 2 rows; ``kwo`` pairs with
    ``max(tagged, mentioning) >= max(1, min_support // 2)``; the rest unchanged (``cap`` is reduced to the
    groups the prompts name, then to their top captions, inside :class:`WriteTables`).
    """

    def __init__(self, min_support: int):
        super().__init__()
        self.min_support = min_support

    def expand(self, counts: dict):
        min_support, support = self.min_support, max(1, self.min_support // 2)
        out = {name: counts[name] for name in ("kwin", "grp", "cap", "obj", "woc", "stats", "increment_stats")}
        out["kw"] = counts["kw"] | "KeywordSupport" >> beam.FlatMapTuple(
            lambda _, block: ((w, int(n)) for w, n in zip(block.keywords, block.n.tolist()) if n >= min_support))
        out["kwg"] = counts["kwg"] | "KeywordGroupSupport" >> beam.Filter(lambda e: e[1].n >= 2)
        out["kwo"] = counts["kwo"] | "KeywordObjectSupport" >> beam.Filter(lambda e: max(e[1]) >= support)
        return out


class TopCaptions(beam.PTransform):
    """``cap`` elements ((GroupCaption, rows)) -> (group_id, its ``CAPTIONS_PER_GROUP`` most repeated
    :class:`CaptionCount`, rows descending then caption), combined per group: O(5) state per group, however
    many distinct captions it has."""

    def expand(self, cap):
        return (cap | "ByGroup" >> beam.Map(lambda e: (e[0].group_id, CaptionCount(e[0].caption, int(e[1]))))
                | "TopPerGroup" >> beam.combiners.Top.PerKey(CAPTIONS_PER_GROUP, key=_caption_order, reverse=True))


# --------------------------------------------------------------------------- keyword table


def sized_pairs(element):
    """(group_id, {"pairs": [(keyword, Examples)], "size": [n_G]}) -> (keyword, GroupPair) for a known group.

    Pairs of a group without a size (not a duplicate group) are left out, as the one-writer table does.
    Streams the group's pairs: O(1) memory beyond the runner's iterable.
    """
    group, joined = element
    sizes = list(joined["size"])
    if not sizes:
        return
    size = int(sizes[0])
    for keyword, ex in joined["pairs"]:
        if ex.n > size:
            raise ValueError(f"pair_count exceeds the size of its group: ({keyword!r}, {group!r}) {ex.n} > {size}")
        yield keyword, GroupPair(int(ex.n), size, group, tuple(ex.keys))


def joined_keyword(element):
    """(keyword, {"n", "in_groups", "groups"}) -> KeywordRow for a tested keyword (one with ``n``)."""
    keyword, joined = element
    n = list(joined["n"])
    if n:
        yield keyword_row(keyword, n[0], sum(joined["in_groups"]), next(iter(joined["groups"]), None))


def _keyword_batch(rows, stats: dict, groups: GroupSizes, cfg: WordTriggerConfig):
    n_total = int(stats.get("rows_analysed", 0))
    groups.check(n_total)
    return keyword_stats(rows, n_total, groups, cfg)


def _write_keyword_table(stats: list, settings: TableSettings):
    KEYWORD_ROWS.update(len(stats))
    table = keyword_table(stats, settings.word)
    layout.write_parquet(MineFolder(settings.output).keyword_triggers, table)
    return table


class KeywordStatistics(beam.PTransform):
    """Filtered counts -> one element: the keyword-trigger table, written to ``keyword_triggers.parquet``.

    Steps: ``JoinGroupSizes`` (kwg by group id with grp), ``TopGroupPerKeyword`` (CombinePerKey, O(1) per
    keyword), ``JoinKeywordCounts`` (by keyword with kw and kwin), ``KeywordPValues`` (per batch; the group-size
    histogram and ``stats`` as singletons), ``RankKeywords`` (BH, flags, rank: O(family) on one worker).
    """

    def __init__(self, settings: TableSettings):
        super().__init__()
        self.settings = settings

    def expand(self, tables: dict):
        settings = self.settings
        histogram = (tables["grp"] | "GroupSize" >> beam.Map(lambda e: (int(e[1]), 1))
                     | "GroupsPerSize" >> beam.CombinePerKey(sum)
                     | "SizeHistogram" >> beam.combiners.ToList() | "AsGroupSizes" >> beam.Map(GroupSizes.from_counts))
        pairs = tables["kwg"] | "PairsByGroup" >> beam.Map(lambda e: (e[0].group_id, (e[0].keyword, e[1])))
        tops = ({"pairs": pairs, "size": tables["grp"]} | "JoinGroupSizes" >> beam.CoGroupByKey()
                | "SizedPairs" >> beam.FlatMap(sized_pairs)
                | "TopGroupPerKeyword" >> beam.CombinePerKey(top_group))
        rows = ({"n": tables["kw"], "in_groups": tables["kwin"], "groups": tops}
                | "JoinKeywordCounts" >> beam.CoGroupByKey() | "KeywordRows" >> beam.FlatMap(joined_keyword))
        return (rows | "BatchKeywords" >> beam.BatchElements(max_batch_size=MAX_BATCH)
                | "KeywordPValues" >> beam.FlatMap(_keyword_batch, pvalue.AsSingleton(tables["stats"]),
                                                   pvalue.AsSingleton(histogram), settings.word)
                | "GatherKeywordStats" >> beam.combiners.ToList()
                | "RankKeywords" >> beam.Map(_write_keyword_table, settings))


# --------------------------------------------------------------------------- object table


def joined_pairs(element, obj: dict, n_objects: int):
    """(keyword, {"n": [n_w], "pairs": [(object, TagMention)]}) -> PairRow per pair of a tested keyword."""
    keyword, joined = element
    n = list(joined["n"])
    if not n:
        return
    for o, v in joined["pairs"]:
        yield pair_row(keyword, o, n[0], int(obj.get(o, 0)), v.tagged, v.mentioned, n_objects)


def _pair_batch(rows, stats: dict):
    return pair_stats(rows, int(stats.get("rows_analysed", 0)))


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


def _write_object_table(stats: list, settings: TableSettings, keywords_tested: int, obj: dict):
    PAIR_ROWS.update(len(stats))
    naming = None
    if settings.vocab and settings.naming_threshold < 1.0:
        from models.mine.similarity import NamingCheck, minilm_available

        naming = NamingCheck(settings.vocab, settings.naming_threshold) if minilm_available() else None
    objects_tested = sum(int(obj.get(o, 0)) >= settings.object.min_support for o in range(len(settings.objects)))
    table = pair_table(stats, settings.objects, keywords_tested * objects_tested, settings.object,
                       _explainer(settings), naming)
    layout.write_parquet(MineFolder(settings.output).object_triggers, table)
    return table


class PairStatistics(beam.PTransform):
    """Filtered counts -> one element: the object-trigger table, written to ``object_triggers.parquet``.

    Steps: ``JoinPairMargins`` (kwo with kw by keyword; ``obj``, O(objects), as a side input), ``PairPValues``
    (per batch), ``RankPairs`` (BH over the K_tested * O_tested family, flags, naming check, rank: O(listed pairs)
    on one worker).
    """

    def __init__(self, settings: TableSettings):
        super().__init__()
        self.settings = settings

    def expand(self, tables: dict):
        settings, min_support = self.settings, self.settings.object.min_support
        tested = tables["kw"] | "ObjectSupport" >> beam.Filter(lambda e: e[1] >= min_support)
        count = tested | "KeywordsTested" >> beam.combiners.Count.Globally()
        obj = pvalue.AsDict(tables["obj"])
        pairs = tables["kwo"] | "PairsByKeyword" >> beam.Map(lambda e: (e[0].keyword, (e[0].object, e[1])))
        return ({"n": tested, "pairs": pairs} | "JoinPairMargins" >> beam.CoGroupByKey()
                | "PairRows" >> beam.FlatMap(joined_pairs, obj, len(settings.objects))
                | "BatchPairs" >> beam.BatchElements(max_batch_size=MAX_BATCH)
                | "PairPValues" >> beam.FlatMap(_pair_batch, pvalue.AsSingleton(tables["stats"]))
                | "GatherPairStats" >> beam.combiners.ToList()
                | "RankPairs" >> beam.Map(_write_object_table, settings, pvalue.AsSingleton(count), obj))


# --------------------------------------------------------------------------- prompts and summary


def write_prompts(objects, settings: TableSettings, parts: int, words, captions: dict, largest: list, n_groups: int,
                  trigger_captions: list, stats: dict, increment: dict) -> dict:
    """``flagged_prompts.parquet`` and ``_stage/summary.json`` from the two tables; returns the summary.

    ``captions``: {group_id: [CaptionCount]} of the groups the prompts can name only; ``largest``: the
    (group_id, size) of the ``duplicate_caption_groups`` largest groups.
    """
    PROMPT_GROUPS.update(len(captions))
    prompts = flagged_prompts(words, objects, captions, dict(largest), settings.prompts, dict(trigger_captions))
    folder = MineFolder(settings.output)
    layout.write_parquet(folder.flagged_prompts, prompts)
    summary = stage_summary(TableSet(words, objects, prompts), stats, n_groups, parts, increment, settings.previous,
                            dict(settings.notes))
    layout.write_json(folder.stage_summary, summary)
    return summary


def _flagged_groups(words) -> list:
    return [(r["top_group_id"], True) for r in words.select(["top_group_id", "flagged"]).to_pylist() if r["flagged"]]


class WriteTables(beam.PTransform):
    """Filtered counts -> trigger tables, then the prompts and ``_stage/summary.json`` (one element: the summary).

    Only the captions the prompts can use reach the one writer: ``cap`` of the flagged keywords' top groups and
    of the largest groups (filtered where it lies, then reduced to their top captions), ``woc`` of the flagged
    pairs, each filtered by a small side input (O(flagged + ``duplicate_caption_groups``)).
    """

    def __init__(self, settings: TableSettings, parts: int):
        super().__init__()
        self.settings, self.parts = settings, parts

    def expand(self, tables: dict):
        words = tables | "KeywordTable" >> KeywordStatistics(self.settings)
        objects = tables | "ObjectTable" >> PairStatistics(self.settings)
        largest = tables["grp"] | "LargestGroups" >> beam.combiners.Top.Of(
            max(1, self.settings.prompts.duplicate_caption_groups), key=lambda e: (-e[1], e[0]), reverse=True)
        named = ((words | "FlaggedGroups" >> beam.FlatMap(_flagged_groups),
                  largest | "LargestGroupIds" >> beam.FlatMap(lambda top: ((g, True) for g, _ in top)))
                 | "PromptGroups" >> beam.Flatten())
        captions = (tables["cap"] | "PromptGroupCaptions" >> beam.Filter(lambda e, keep: e[0].group_id in keep,
                                                                         pvalue.AsDict(named))
                    | "PromptCaptions" >> TopCaptions())
        flagged = objects | "FlaggedPairs" >> beam.FlatMap(lambda t: ((k, True) for k in flagged_pairs(t)))
        trigger = tables["woc"] | "TriggerCaptions" >> beam.Filter(lambda e, f: e[0] in f, pvalue.AsDict(flagged))
        n_groups = tables["grp"] | "CountGroups" >> beam.combiners.Count.Globally()
        return objects | "WritePrompts" >> beam.Map(
            write_prompts, self.settings, self.parts, pvalue.AsSingleton(words), pvalue.AsDict(captions),
            pvalue.AsSingleton(largest), pvalue.AsSingleton(n_groups), pvalue.AsList(trigger),
            pvalue.AsSingleton(tables["stats"]), pvalue.AsSingleton(tables["increment_stats"]))


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
