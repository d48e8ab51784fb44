"""TestPipeline + assert_that tests of the mine stage's composite steps on tiny inline data."""
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.mine.keywords import KeywordConfig
from models.mine.part_counts import CaptionSample, Examples, GroupCaption, KeywordGroup, KeywordObject, TagMention
from models.mine.plan import MineParams
from models.storage import layout
from models.storage.folders.mine import MineFolder
from transforms.mine_analyze import AnalyzeParts
from transforms.mine_counts import CombineCounts, ReadCounts, WriteCounts, count_shard
from transforms.mine_tables import SupportFilter, TopCaptions

KG = KeywordGroup


def _rows(_, block):
    return [(w, int(n)) for w, n in zip(block.keywords, block.n.tolist())]


def _blocks(pairs):
    from collections import Counter

    from models.mine.part_counts import keyword_blocks

    return keyword_blocks(Counter(dict(pairs)), 8)


def _params(root, parts, groups=None):
    return MineParams(embeddings=str(root / "emb"), groups=groups, output=str(root / "out"), parts=tuple(parts),
                      keyword_config=KeywordConfig(), vocab_path=None, tagger_spec="none", model=None, shard_paths=(),
                      seed=0, calibration_rows=10)


def _part(root, part, keys, captions):
    folder = layout.EmbeddingFolder(str(root / "emb"))
    layout.write_npy(folder.img_emb(part), __import__("numpy").zeros((len(keys), 4), "float16"))
    os.makedirs(os.path.dirname(folder.metadata(part)), exist_ok=True)
    pq.write_table(pa.table({"key": keys, "caption": captions}), folder.metadata(part))


def test_analyze_parts_counts_keywords_groups_and_captions(tmp_path):
    _part(tmp_path, "00000", ["a", "b", "c"], ["starry night", "Starry  night", "  "])
    _part(tmp_path, "00001", ["d"], ["red barn"])
    grows = [{"key": k, "group_id": "G", "group_size": 2, "is_representative": k == "a", "representative_key": "a",
              "max_cosine": None, "part": "00000"} for k in ("a", "b")]
    from models.storage import schemas
    layout.write_parquet(str(tmp_path / "dd" / "groups" / "groups_00000.parquet"), schemas.table(grows, schemas.DEDUP_GROUPS))
    params = _params(tmp_path, ["00000", "00001"], groups=str(tmp_path / "dd"))
    with TestPipeline() as p:
        out = p | beam.Create([0, 1]) | AnalyzeParts(params)
        combined = out | "Combine" >> CombineCounts()
        assert_that(combined["kw"] | beam.FlatMapTuple(_rows), equal_to([("starry", 2), ("night", 2), ("starry night", 2), ("red", 1), ("barn", 1),
                                              ("red barn", 1)]), label="kw")
        assert_that(combined["kwg"], equal_to([(KG("starry", "G"), Examples(2, ("a", "b"))),
                                               (KG("night", "G"), Examples(2, ("a", "b"))),
                                               (KG("starry night", "G"), Examples(2, ("a", "b")))]), label="kwg")
        assert_that(combined["grp"], equal_to([("G", 2)]), label="grp")
        assert_that(combined["cap"], equal_to([(GroupCaption("G", "starry night"), 1), (GroupCaption("G", "Starry night"), 1)]),
                    label="cap")
        assert_that(combined["stats"], equal_to([{"rows": 4, "rows_analysed": 3, "caption_rejects": 1, "object_tags": 0}]),
                    label="stats")
        assert_that(out["calibration"], equal_to([{}]), label="calibration")
    rejects = pq.read_table(MineFolder(params.output).rejects("00000")).to_pylist()
    assert [(r["key"], r["reason"]) for r in rejects] == [("c", "caption: empty caption")]


def test_combine_counts_sums_and_drops_cancelled_corrections():
    with TestPipeline() as p:
        src = {
            "kw": p | "kw" >> beam.Create(_blocks([("a", 1), ("b", 1)]) + _blocks([("a", 2), ("c", 0)])),
            "kwin": p | "kwin" >> beam.Create([("a", 1), ("a", -1), ("b", 2)]),
            "kwg": p | "kwg" >> beam.Create([(KG("a", "G"), Examples(1, ("k9",))), (KG("a", "G"), Examples(2, ("k1", "k5", "k7")))]),
            "grp": p | "grp" >> beam.Create([("G", 2), ("H", 1), ("H", -1)]),
            "cap": p | "cap" >> beam.Create([(GroupCaption("G", "x"), 1), (GroupCaption("G", "x"), 1)]),
            "obj": p | "obj" >> beam.Create([(0, 1), (0, 1)]),
            "kwo": p | "kwo" >> beam.Create([(KeywordObject("a", 0), TagMention(1, 0)), (KeywordObject("a", 0), TagMention(2, 1))]),
            "woc": p | "woc" >> beam.Create([(KeywordObject("a", 0), (CaptionSample("x", "X!", 2),)),
                                             (KeywordObject("a", 0), (CaptionSample("x", "x", 1), CaptionSample("y", "y", 1)))]),
            "stats": p | "stats" >> beam.Create([{"rows": 2}, {"rows": 3, "rows_analysed": 1}]),
        }
        out = src | CombineCounts()
        assert_that(out["woc"], equal_to([(KeywordObject("a", 0), (CaptionSample("x", "X!", 3), CaptionSample("y", "y", 1)))]),
                    label="woc")
        assert_that(out["kw"] | beam.FlatMapTuple(_rows), equal_to([("a", 3), ("b", 1)]), label="kw")
        assert_that(out["kwin"], equal_to([("b", 2)]), label="kwin")
        assert_that(out["kwg"], equal_to([(KG("a", "G"), Examples(3, ("k1", "k5", "k7")))]), label="kwg")
        assert_that(out["grp"], equal_to([("G", 2)]), label="grp")
        assert_that(out["cap"], equal_to([(GroupCaption("G", "x"), 2)]), label="cap")
        assert_that(out["kwo"], equal_to([(KeywordObject("a", 0), TagMention(3, 1))]), label="kwo")
        assert_that(out["stats"], equal_to([{"rows": 5, "rows_analysed": 1}]), label="stats")


def test_saved_counts_read_back_equal(tmp_path):
    out_dir = str(tmp_path / "m")
    elements = {
        "kw": [("a", 3), ("b", 1)], "kwin": [("a", 1)], "kwg": [(KG("a", "G"), Examples(3, ("k1", "k2")))],
        "grp": [("G", 3)], "cap": [(GroupCaption("G", "a cat"), 3)], "obj": [(2, 5)],
        "kwo": [(KeywordObject("a", 2), TagMention(4, 1))],
        "woc": [(KeywordObject("a", 2), (CaptionSample("a cat", "A cat", 3),))],
    }
    with TestPipeline() as p:
        counts = {name: p | f"C{name}" >> beam.Create(_blocks(v) if name == "kw" else v) for name, v in elements.items()}
        counts["stats"] = p | "Cstats" >> beam.Create([{"rows": 3}])
        written = counts | WriteCounts(out_dir)
        folder = MineFolder(out_dir)
        want = {folder.count_shard(name, count_shard(k)) for name, v in elements.items() for k, _ in v}
        assert_that(written, equal_to(sorted(want) + [folder.count_stats]))
    with TestPipeline() as p:
        for name, want in elements.items():
            read = p | f"R{name}" >> ReadCounts(out_dir, name)
            if name == "kw":
                read = read | beam.FlatMapTuple(_rows)
            assert_that(read, equal_to(want), label=f"check{name}")
    assert json.load(open(MineFolder(out_dir).count_stats)) == {"rows": 3}


def test_support_filter_keeps_only_supported_keys():
    with TestPipeline() as p:
        counts = {
            "kw": p | "kw" >> beam.Create(_blocks([("a", 10), ("b", 9)])),
            "kwg": p | "kwg" >> beam.Create([(KG("a", "G"), Examples(1, ("k",))), (KG("a", "H"), Examples(2, ("k",)))]),
            "kwo": p | "kwo" >> beam.Create([(KeywordObject("a", 0), TagMention(4, 0)), (KeywordObject("a", 1), TagMention(0, 5))]),
            "cap": p | "cap" >> beam.Create([(GroupCaption("G", c), n) for c, n in [("x", 1), ("y", 3), ("z", 3), ("u", 1), ("v", 1), ("w", 1)]]),
        }
        for name in ("kwin", "grp", "obj", "woc", "stats", "increment_stats"):
            counts[name] = p | name >> beam.Create([])
        out = counts | SupportFilter(10)
        assert_that(out["kw"], equal_to([("a", 10)]), label="kw")
        assert_that(out["kwg"], equal_to([(KG("a", "H"), Examples(2, ("k",)))]), label="kwg")
        assert_that(out["kwo"], equal_to([(KeywordObject("a", 1), TagMention(0, 5))]), label="kwo")
        top = out["cap"] | TopCaptions()
        assert_that(top | beam.MapTuple(lambda g, cs: (g, [tuple(c) for c in cs])),
                    equal_to([("G", [("y", 3), ("z", 3), ("u", 1), ("v", 1), ("w", 1)])]), label="cap")
