"""Everything the page shows, read from the stage folders into a :class:`ReportData`.

Cost: one streaming pass over the metadata parts (``key``, ``caption``,
``shard`` columns, one part in memory at a time) to find the captions of the
rows shown and the object-trigger examples; memory-mapped reads of only the
needed rows of ``img_emb``; one pass over the shards that hold a shown key.
The report never loads all embeddings or all images. Tables read whole are
the small ranked ones (triggers, flagged prompts, scores, extractions).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from models.report.config import ReportConfig, ReportInputs
from models.report.groups import fill_cosines, shown_groups
from models.report.metadata import ExampleQuery, count_rows, scan_metadata
from models.report.plots import plot_group_sizes, plot_keywords, plot_nn_similarity, plot_scores
from models.report.reading import read_each, read_json_object, read_table
from models.report.rows import (DuplicateGroup, Extraction, FlaggedPrompt, NnSimilarity, ObjectTrigger, PromptScore,
                                RejectCount, ScoreImage, ShownRow, WordTrigger, rows_of)
from models.report.generations import (GroupGenerations, PromptGenerations, by_group, by_prompt, generation_images,
                                       run_sizes)
from models.report.thumbnails import copy_grids, make_thumbnails
from models.storage import layout
from models.storage.folders.dedup import DedupFolder
from models.storage.folders.mine import MineFolder
from models.storage.folders.report import ReportFolder
from models.storage.folders.score import ScoreFolder

EXAMPLE_CAPTIONS = 3       # example captions per word trigger
STAGE_JSONS = ("config", "summary", "stats")


@dataclass
class ReportData:
    """Everything read from the stage folders, limited to what the page shows."""

    stage_json: dict[str, dict[str, dict]] = field(default_factory=dict)   # stage -> {"config"|"summary"|"stats": obj}
    rejects: list[RejectCount] = field(default_factory=list)
    rows_embedded: int | None = None          # counted from metadata footers when stats.json lacks "rows"
    size_hist: dict[int, int] = field(default_factory=dict)                # group size -> groups
    top_groups: list[DuplicateGroup] = field(default_factory=list)
    extra_groups: list[DuplicateGroup] = field(default_factory=list)
    groups_total: int = 0
    words: list[WordTrigger] = field(default_factory=list)                 # shown: flagged first, then by rank
    words_all: pa.Table | None = None                                      # every keyword tested
    objects: list[ObjectTrigger] = field(default_factory=list)
    object_examples: list[list[str]] = field(default_factory=list)         # per shown object trigger: example keys
    prompts: list[FlaggedPrompt] = field(default_factory=list)
    prompt_scores: pa.Table | None = None
    extractions: list[Extraction] = field(default_factory=list)            # most similar first
    side_summary: dict | None = None
    grids: list[ScoreImage] = field(default_factory=list)
    generations: dict[str, str] = field(default_factory=dict)              # generation_id -> relative path
    prompt_generations: list[PromptGenerations] = field(default_factory=list)   # per shown flagged prompt
    group_generations: dict[str, GroupGenerations] = field(default_factory=dict)  # per shown group
    rows: dict[str, ShownRow] = field(default_factory=dict)
    thumbs: dict[str, str] = field(default_factory=dict)                   # key -> relative path
    thumb_notes: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)                    # plot name -> relative path
    nn_similarity: NnSimilarity | None = None                              # dedup's sampled NN histogram
    nn_similarity_plot: str | None = None                                  # its plot (relative path)
    nn_similarity_note: str | None = None                                  # why there is no plot, when the file is bad

    @property
    def groups(self) -> list[DuplicateGroup]:
        return self.top_groups + self.extra_groups

    def score_rows(self) -> list[PromptScore]:
        return rows_of(self.prompt_scores, PromptScore)


def stage_jsons(inputs: ReportInputs) -> dict[str, dict[str, dict]]:
    """``{stage: {"config": .., "summary": .., "stats": ..}}`` for the JSON files each given stage folder has."""
    out = {}
    for stage, root in inputs.as_dict().items():
        if root is None:
            continue
        found = {}
        for name in STAGE_JSONS:
            obj = read_json_object(layout.join(root, f"{name}.json"))
            if obj is not None:
                found[name] = obj
        out[stage] = found
    return out


def reject_counts(inputs: ReportInputs) -> list[RejectCount]:
    """Per stage, rows of ``rejects/`` by reason (up to its first ':'), most frequent first."""
    out = []
    for stage, root in inputs.as_dict().items():
        if root is None:
            continue
        counts: Counter = Counter()
        for table in read_each(layout.join(root, "rejects"), ["reason"]):
            if "reason" not in table.column_names:
                continue
            for item in pc.value_counts(table.column("reason")).to_pylist():
                reason = item["values"] or "unknown"
                counts[reason.split(":", 1)[0].strip() or "unknown"] += int(item["counts"])
        out += [RejectCount(stage, reason, n) for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out


def _ranked(table: pa.Table | None, limit: int, flagged_first: bool) -> pa.Table | None:
    """The first ``limit`` rows, flagged first (when asked) then by ``rank``, for the columns present."""
    if table is None or table.num_rows == 0:
        return None
    order = [(c, o) for c, o in (("flagged", "descending"), ("rank", "ascending"))
             if c in table.column_names and (flagged_first or c == "rank")]
    return (table.sort_by(order) if order else table).slice(0, limit)


def _gather_mine(d: ReportData, mine: str, cfg: ReportConfig) -> None:
    folder = MineFolder(mine)
    d.words_all = read_table(folder.keyword_triggers)
    d.words = rows_of(_ranked(d.words_all, cfg.max_rows, True), WordTrigger)
    d.objects = rows_of(_ranked(read_table(folder.object_triggers), cfg.max_rows, True), ObjectTrigger)
    d.prompts = rows_of(_ranked(read_table(folder.flagged_prompts), cfg.max_rows, False), FlaggedPrompt)


def _gather_score(d: ReportData, score: str, report: ReportFolder, cfg: ReportConfig) -> list[Extraction]:
    """Scores, the top extractions, the SIDE summary and grids; returns every extraction row, most similar first."""
    folder = ScoreFolder(score)
    d.prompt_scores = read_table(folder.prompt_scores)
    ext = read_table(folder.extractions)
    every: list[Extraction] = []
    if ext is not None and ext.num_rows:
        ext = ext.sort_by([("similarity", "descending")]) if "similarity" in ext.column_names else ext
        every = rows_of(ext, Extraction)
        d.extractions = every[: cfg.max_rows]
    d.side_summary = read_json_object(folder.side_summary)
    d.grids = copy_grids(score, report, cfg.max_rows)
    return every


def _gather_generations(d: ReportData, score: str, every: list[Extraction], report: ReportFolder, cfg: ReportConfig) -> None:
    """SIDE generations per shown flagged prompt and per shown group, and the images of every generation shown."""
    d.prompt_generations = by_prompt(every, [str(p.prompt) for p in d.prompts], d.grids, cfg.max_members)
    d.group_generations = by_group(every, {g.group_id for g in d.groups}, cfg.max_members)
    shown = list(d.extractions) + [r for pg in d.prompt_generations for r in pg.shown]
    shown += [r for gg in d.group_generations.values() for r in gg.shown]
    d.generations = generation_images(score, [str(r.generation_id) for r in shown], run_sizes(every), report)


def _gather_nn_similarity(d: ReportData, dedup: str, report: ReportFolder) -> None:
    """Dedup's ``nn_similarity.json`` (absent: nothing; malformed: a note with every problem) and its plot."""
    obj = read_json_object(DedupFolder(dedup).nn_similarity)
    if obj is None:
        return
    try:
        d.nn_similarity = NnSimilarity.from_json(obj)
    except ValueError as exc:
        d.nn_similarity_note = f"{DedupFolder.NN_SIMILARITY} not plotted: {exc}"
        return
    d.nn_similarity_plot = plot_nn_similarity(d.nn_similarity, report)
    if d.nn_similarity_plot is None:
        d.nn_similarity_note = f"{DedupFolder.NN_SIMILARITY} not plotted: every count is 0"


def _object_queries(d: ReportData, mine: str) -> list[ExampleQuery]:
    """Per shown object trigger: its keyword and the rows tagged with its object (sample ids, else keys)."""
    names = sorted({str(r.object) for r in d.objects})
    tags = read_table(MineFolder(mine).object_tags_dir, ["key", "sample_id", "object"], filters=[("object", "in", names)])
    tagged: dict[str, set[str]] = defaultdict(set)
    if tags is not None:
        for row in tags.to_pylist():
            tagged[row["object"]].add(row.get("sample_id") or row["key"])
    return [ExampleQuery(str(r.keyword or ""), tagged.get(str(r.object), set())) for r in d.objects]


def _gather_embeddings(d: ReportData, embeddings: str, mine: str | None, report: ReportFolder, cfg: ReportConfig) -> None:
    if "rows" not in d.stage_json.get("embeddings", {}).get("stats", {}):
        d.rows_embedded = count_rows(embeddings)
    beside = d.extractions + [r for pg in d.prompt_generations for r in pg.shown]
    matched = {str(r.matched_key) for r in beside if r.matched_key is not None}
    wanted = {k for g in d.groups for k in g.members} | matched
    wanted |= {k for r in d.words for k in (r.example_keys or [])[:EXAMPLE_CAPTIONS]}
    queries = _object_queries(d, mine) if d.objects and mine is not None else []
    scan = scan_metadata(embeddings, wanted, queries, cfg.max_members)
    d.rows = scan.rows
    d.object_examples = scan.examples if queries else [[] for _ in d.objects]
    fill_cosines(embeddings, d.rows, d.groups)
    thumb_keys = {k for g in d.groups for k in g.members} | {k for ex in d.object_examples for k in ex} | matched
    thumbs = make_thumbnails(embeddings, d.rows, thumb_keys, report, cfg.thumb_size)
    d.thumbs, d.thumb_notes = thumbs.paths, thumbs.notes


def gather(inputs: ReportInputs, report: ReportFolder, cfg: ReportConfig) -> ReportData:
    """Read every given stage folder, copy and make the images shown into ``report``, draw the plots."""
    d = ReportData(stage_json=stage_jsons(inputs), rejects=reject_counts(inputs))
    referenced: list[str] = []
    every_extraction: list[Extraction] = []
    if inputs.mine is not None:
        _gather_mine(d, inputs.mine, cfg)
        referenced += [r.top_group_id for r in d.words if r.top_group_id]
        referenced += [g for r in d.prompts for g in (r.group_ids or []) if g]
    if inputs.score is not None:
        every_extraction = _gather_score(d, inputs.score, report, cfg)
        referenced += [r.group_id for r in d.extractions if r.group_id]
    if inputs.dedup is not None:
        summary = d.stage_json.get("dedup", {}).get("summary")
        _gather_nn_similarity(d, inputs.dedup, report)
        shown = shown_groups(inputs.dedup, summary, cfg.max_groups, cfg.max_members, referenced, report)
        d.top_groups, d.extra_groups, d.size_hist, d.groups_total = shown.top, shown.referenced, shown.size_hist, shown.total
    if inputs.score is not None:
        _gather_generations(d, inputs.score, every_extraction, report, cfg)
    if inputs.embeddings is not None:
        _gather_embeddings(d, inputs.embeddings, inputs.mine, report, cfg)
    else:
        d.object_examples = [[] for _ in d.objects]
        if d.groups:
            d.thumb_notes.append("no embeddings folder given: captions, cosines and thumbnails are not available")
    plot = plot_group_sizes(d.size_hist, report)
    if plot:
        d.plots["group_sizes"] = plot
    plot = plot_keywords(d.words_all, report)
    if plot:
        d.plots["keyword_lift_support"] = plot
    for check, rel in plot_scores(d.prompt_scores, report).items():
        d.plots[f"score:{check}"] = rel
    return d
