"""The keyed, distributed mine tables (transforms.mine_tables) equal the one-writer reference (models.mine.tables).

The corpus is built row by row in plain Python (groups of repeated sizes, keywords tied on their top group,
planted word and object triggers), its counts computed here exactly, then fed to both computations.
"""
import math
from collections import Counter, defaultdict

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from models.mine.object_triggers import ObjectTriggerConfig
from models.mine.part_counts import (CaptionSample, Examples, GroupCaption, KeywordGroup, KeywordObject, TagMention,
                                     caption_key, keyword_blocks, top_captions)
from models.mine.tables import (CaptionCount, PromptConfig, TableCounts, TableSet, flagged_pairs, flagged_prompts,
                                object_table, stage_summary, word_table)
from models.mine.word_triggers import WordTriggerConfig
from models.storage import layout
from models.storage.folders.mine import MineFolder
from transforms.mine_tables import SupportFilter, TableSettings, WriteTables

OBJECTS = ("flag", "tree", "dog", "car", "moon", "lamp")
FILLER = [f"w{i}" for i in range(30)]


def corpus(seed=0, n=900):
    """Rows as (key, group or None, caption, keywords, tags, mentioned objects)."""
    rng = np.random.default_rng(seed)
    sizes = [2, 2, 2, 3, 3, 5, 5, 5, 8, 8, 12, 12, 20, 30, 40, 6, 6, 4, 4, 4]
    group = [None] * n
    order = rng.permutation(n)
    at = 0
    for g, s in enumerate(sizes):
        for i in order[at:at + s]:
            group[i] = f"G{g:02d}"
        at += s
    members = defaultdict(list)
    for i, g in enumerate(group):
        if g:
            members[g].append(i)
    words = [{str(w) for w in rng.choice(FILLER, rng.integers(1, 4), replace=False)} for _ in range(n)]
    for i in members["G14"][:34]:
        words[i] |= {"starry", "starry night"}         # a word trigger in the 40-row group
    for i in members["G13"][:6] + members["G12"][:6]:  # tied top count: the smaller group (G12, 20 rows) wins
        words[i].add("tie")
    for i in members["G10"][:5] + members["G11"][:5]:  # tied count and size: the smaller id wins
        words[i].add("twin")
    for i in rng.choice(n, 80, replace=False):
        words[i].add("astronaut")
    rows = []
    for i in range(n):
        tags = {o for o in range(len(OBJECTS)) if rng.random() < 0.08}
        if "astronaut" in words[i] and rng.random() < 0.9:
            tags.add(0)
        if "w3" in words[i] and rng.random() < 0.7:
            tags.add(1)
            words[i].add("tree")                      # names the object: mentioned
        mentioned = {o for o, name in enumerate(OBJECTS) if name in words[i]}
        g = group[i]
        caption = (f"poster of {g}" if g and rng.random() < 0.6 else " ".join(sorted(words[i])) + f" {i % 7}")
        rows.append((f"k{i:04d}", g, caption, sorted(words[i]), tags, mentioned))
    return rows


def counts_of(rows):
    """Exact combined counts (the ``(key, value)`` elements of models.mine.part_counts) of the rows."""
    size = Counter(g for _, g, *_ in rows if g)
    dup = {g for g, s in size.items() if s > 1}
    kw, kwin, obj = Counter(), Counter(), Counter()
    kwg, cap, kwo = defaultdict(list), Counter(), defaultdict(lambda: [0, 0])
    woc = defaultdict(Counter)
    for key, g, caption, words, tags, mentioned in rows:
        for o in tags:
            obj[o] += 1
        for w in words:
            kw[w] += 1
            if g in dup:
                kwin[w] += 1
                kwg[KeywordGroup(w, g)].append(key)
            for o in tags | mentioned:
                kwo[KeywordObject(w, o)][0] += o in tags
                kwo[KeywordObject(w, o)][1] += o in mentioned
                if o in tags and o not in mentioned:
                    woc[KeywordObject(w, o)][caption] += 1
        if g in dup:
            cap[GroupCaption(g, caption)] += 1
    return {
        "kw": dict(kw), "kwin": dict(kwin), "grp": {g: size[g] for g in dup}, "obj": dict(obj),
        "kwg": {k: Examples(len(v), tuple(sorted(v)[:3])) for k, v in kwg.items()}, "cap": dict(cap),
        "kwo": {k: TagMention(*v) for k, v in kwo.items()},
        "woc": {k: top_captions(CaptionSample(caption_key(c), c, m) for c, m in v.items()) for k, v in woc.items()},
        "stats": {"rows": len(rows) + 3, "rows_analysed": len(rows), "caption_rejects": 3, "object_tags": sum(obj.values())},
    }


def one_writer(c, settings, parts, increment):
    """Today's computation: every count on one writer (support filters as in SupportFilter)."""
    min_support = settings.word.min_support
    captions = defaultdict(list)
    for k, m in c["cap"].items():
        captions[k.group_id].append(CaptionCount(k.caption, m))
    counts = TableCounts(
        kw={w: m for w, m in c["kw"].items() if m >= min_support}, kwin=c["kwin"],
        kwg=sorted((k, v) for k, v in c["kwg"].items() if v.n >= 2), grp=c["grp"], obj=c["obj"],
        kwo=sorted((k, v) for k, v in c["kwo"].items() if max(v) >= max(1, min_support // 2)),
        captions={g: sorted(v, key=lambda x: (-x.n, x.caption))[:5] for g, v in captions.items()}, stats=c["stats"])
    words = word_table(counts, settings.word)
    objects = object_table(counts, list(settings.objects), settings.object)
    trigger = {k: c["woc"][k] for k in flagged_pairs(objects) if k in c["woc"]}
    prompts = flagged_prompts(words, objects, counts.captions, counts.grp, settings.prompts, trigger)
    tables = TableSet(words, objects, prompts)
    return tables, stage_summary(tables, c["stats"], len(counts.grp), parts, increment, settings.previous,
                                 dict(settings.notes))


def distributed(c, settings, parts, increment):
    with TestPipeline() as p:
        src = {name: p | f"Create{name}" >> beam.Create(sorted(c[name].items())) for name in
               ("kwin", "kwg", "grp", "cap", "obj", "kwo", "woc")}
        src["kw"] = p | "Createkw" >> beam.Create(keyword_blocks(Counter(c["kw"]), 4))
        src["stats"] = p | "Createstats" >> beam.Create([c["stats"]])
        src["increment_stats"] = p | "Createincrement" >> beam.Create([increment])
        src | SupportFilter(settings.word.min_support) | WriteTables(settings, parts)
    folder = MineFolder(settings.output)
    read = [pq.read_table(path) for path in (folder.keyword_triggers, folder.object_triggers, folder.flagged_prompts)]
    return TableSet(*read), layout.read_json(folder.stage_summary)


def same_rows(got, want):
    assert got.schema.names == want.schema.names and got.num_rows == want.num_rows
    for g, w in zip(got.to_pylist(), want.to_pylist()):
        assert g.keys() == w.keys()
        for k in g:
            if isinstance(w[k], float):
                assert (math.isnan(g[k]) and math.isnan(w[k])) or abs(g[k] - w[k]) <= 1e-12 * max(1.0, abs(w[k])), (k, g, w)
            else:
                assert g[k] == w[k], (k, g, w)


@pytest.mark.parametrize("multiplicity", ["union", "touched"])
def test_distributed_tables_equal_the_one_writer_tables(tmp_path, multiplicity):
    c = counts_of(corpus())
    settings = TableSettings(output=str(tmp_path / "m"), word=WordTriggerConfig(min_support=4, min_lift=2.0, multiplicity=multiplicity),
                             object=ObjectTriggerConfig(min_support=4), prompts=PromptConfig(duplicate_caption_groups=6),
                             objects=OBJECTS, previous=None, notes=(("tagger", "given"),))
    increment = {"rows": 900, "changed_rows": 0}
    want, want_summary = one_writer(c, settings, 2, increment)
    got, got_summary = distributed(c, settings, 2, increment)
    words = {r["keyword"]: r for r in want.words.to_pylist()}
    # the corpus exercises what the keyed steps must get right: ties, several flags of each kind, many groups
    assert words["tie"]["top_group_id"] == "G12" and words["twin"]["top_group_id"] == "G10"
    assert words["starry night"]["flagged"] and sum(r["flagged"] for r in words.values()) >= 2
    assert sum(want.objects.column("flagged").to_pylist()) >= 1 and len(c["grp"]) == 20
    assert {p["kind"] for p in want.prompts.to_pylist()} == {"word-trigger", "object-trigger", "duplicate-caption"}
    same_rows(got.words, want.words)
    same_rows(got.objects, want.objects)
    assert got.objects.schema.metadata[b"bh_family"] == want.objects.schema.metadata[b"bh_family"]
    assert got.prompts.to_pylist() == want.prompts.to_pylist()
    assert got_summary == want_summary


def test_distributed_tables_without_groups_or_objects(tmp_path):
    rows = [(f"k{i}", None, f"cap {i % 3}", ["a", "b"] if i % 2 else ["a"], set(), set()) for i in range(40)]
    c = counts_of(rows)
    settings = TableSettings(output=str(tmp_path / "m"), word=WordTriggerConfig(min_support=4),
                             object=ObjectTriggerConfig(min_support=4), prompts=PromptConfig(), objects=(), previous=None)
    want, want_summary = one_writer(c, settings, 1, None)
    got, got_summary = distributed(c, settings, 1, None)
    assert want.words.num_rows == 2 and want.objects.num_rows == 0
    same_rows(got.words, want.words)
    same_rows(got.objects, want.objects)
    assert got.objects.schema.metadata[b"bh_family"] == b"0" and got.prompts.num_rows == 0
    assert got_summary == want_summary


def _ancestors(applied):
    """Every transform whose output ``applied`` reads, through main and side inputs (the steps Beam runs first)."""
    seen, todo = {}, [applied]
    while todo:
        t = todo.pop()
        for pc in list(t.main_inputs.values()) + [s.pvalue for s in t.side_inputs]:
            producer = pc.producer
            if producer is not None and producer.full_label not in seen:
                seen[producer.full_label] = producer
                todo.append(producer)
    return set(seen)


def test_manifest_waits_on_every_file_of_the_run(tmp_path):
    """``manifest.json`` (the commit point) is written by a step downstream of every step that writes a file."""
    from models.mine.keywords import KeywordConfig
    from models.mine.part_counts import COUNT_NAMES
    from models.mine.plan import MineParams
    from transforms.mine import FromScratch, Mine

    params = MineParams(embeddings=str(tmp_path / "emb"), groups=None, output=str(tmp_path / "out"), parts=("00000",),
                        keyword_config=KeywordConfig(), vocab_path=None, tagger_spec="none", model=None, shard_paths=(),
                        seed=0, calibration_rows=10)
    settings = TableSettings(output=params.output, word=WordTriggerConfig(), object=ObjectTriggerConfig(),
                             prompts=PromptConfig(), objects=(), previous=None)
    folder = layout.EmbeddingFolder(params.embeddings)
    layout.write_npy(folder.img_emb("00000"), np.zeros((1, 4), "float16"))
    layout.write_parquet(folder.metadata("00000"), pa.table({"key": ["a"], "caption": ["a cat"]}))
    p = beam.Pipeline()
    _ = p | "Mine" >> Mine(params, settings, FromScratch())
    steps = {}

    class Visit(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            steps[node.full_label] = node

    p.visit(Visit())
    manifest = steps["Mine/WriteManifest/WriteManifestFile"]
    writers = {"Mine/WriteTables/KeywordTable/RankKeywords", "Mine/WriteTables/ObjectTable/RankPairs",
               "Mine/WriteTables/WritePrompts", "Mine/WriteCalibration/WriteCalibrationFile",
               "Mine/SaveCounts/WriteStatsCounts"} | {f"Mine/SaveCounts/Write{n.capitalize()}" for n in COUNT_NAMES}
    assert writers <= set(steps)
    assert writers <= _ancestors(manifest)
    # the summary (the manifest's main input) comes after both tables are written
    assert {"Mine/WriteTables/KeywordTable/RankKeywords", "Mine/WriteTables/ObjectTable/RankPairs"} <= _ancestors(
        steps["Mine/WriteTables/WritePrompts"])
