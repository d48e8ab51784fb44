"""Tests for models.mine.tables (tables from combined counts, prompts, summary) and the config's flags."""
import argparse
import dataclasses
import json
import math

import pytest
from scipy import stats

from models.mine.config import MineConfig, flag_specs
from models.mine.object_triggers import ObjectTriggerConfig
from models.mine.part_counts import Examples, KeywordGroup, KeywordObject, TagMention
from models.mine.tables import CaptionCount, PromptConfig, TableCounts, build_tables, stage_summary
from models.mine.word_triggers import WordTriggerConfig


def _counts():
    # N = 100 rows; "moon" in 20 rows, 12 of them in group G (size 12); "sky" in 30 rows spread out.
    return TableCounts(
        kw={"moon": 20, "sky": 30, "rare": 2}, kwin={"moon": 12, "sky": 3},
        kwg=[(KeywordGroup("moon", "G"), Examples(12, ("k1", "k2", "k3"))), (KeywordGroup("sky", "G"), Examples(3, ("k4",)))],
        grp={"G": 12}, obj={0: 14, 1: 40},
        kwo=[(KeywordObject("moon", 0), TagMention(14, 0)), (KeywordObject("sky", 1), TagMention(12, 30))],
        captions={"G": [CaptionCount("the moon over the sea", 9), CaptionCount("a poster", 3)]},
        stats={"rows": 101, "rows_analysed": 100, "caption_rejects": 1, "object_tags": 55})


def test_tables_match_hand_computed_statistics():
    counts = _counts()
    t = build_tables(counts, ["flag", "tree"], WordTriggerConfig(min_support=10), ObjectTriggerConfig(min_support=10),
                     PromptConfig())
    words = {r["keyword"]: r for r in t.words.to_pylist()}
    assert set(words) == {"moon", "sky"}  # "rare" lacks support
    moon = words["moon"]
    assert moon["top_group_id"] == "G" and moon["top_group_share"] == pytest.approx(12 / 20)
    assert moon["lift"] == pytest.approx(12 * 100 / (20 * 12))
    # one group of size 12: the union bound is the single-group hypergeometric tail
    assert moon["p_value"] == pytest.approx(stats.hypergeom.sf(11, 100, 12, 20))
    assert moon["flagged"] is False and moon["example_keys"] == ["k1", "k2", "k3"]  # lift 5 < 10
    objs = {(r["keyword"], r["object"]): r for r in t.objects.to_pylist()}
    mf = objs[("moon", "flag")]
    assert mf["lift"] == pytest.approx(14 * 100 / (20 * 14)) and mf["absent_fraction"] == 1.0
    assert mf["p_value"] == pytest.approx(stats.fisher_exact([[14, 6], [0, 80]], alternative="greater")[1])
    assert mf["flagged"] is True
    assert objs[("sky", "tree")]["flagged"] is False  # mentioned in every caption
    prompts = t.prompts.to_pylist()
    assert [p["kind"] for p in prompts] == ["object-trigger", "duplicate-caption"]
    assert prompts[1]["prompt"] == "the moon over the sea" and json.loads(prompts[1]["evidence"])["group_size"] == 12
    summary = stage_summary(t, counts.stats, len(counts.grp), parts=2, increment=None, previous=None)
    assert summary["rows"] == 101 and summary["rows_analysed"] == 100 and summary["keywords_tested"] == 2
    assert summary["object_triggers"] == 1 and summary["increment"] == {"parts": 2, "rows": 101, "changed_rows": 0}


def test_word_trigger_prompts_are_the_group_captions_with_the_keyword():
    counts = dataclasses.replace(_counts(), grp={"G": 12}, kw={"moon": 12, "sky": 30},
                                 kwg=[(KeywordGroup("moon", "G"), Examples(12, ("k1",)))], kwo=[], obj={}, stats={"rows_analysed": 1000})
    t = build_tables(counts, [], WordTriggerConfig(min_support=10), ObjectTriggerConfig(min_support=10), PromptConfig())
    word = [p for p in t.prompts.to_pylist() if p["kind"] == "word-trigger"]
    assert [p["prompt"] for p in word] == ["the moon over the sea"] and word[0]["support"] == 9


def test_every_config_field_is_a_flag_with_its_default():
    parser = argparse.ArgumentParser()
    from pipelines import mine

    mine.add_arguments(parser)
    args = parser.parse_args(["--embeddings", "e", "--output", "o"])
    cfg = mine.config_from_args(args)
    for f in dataclasses.fields(MineConfig):
        if f.name not in ("embeddings", "output"):
            assert getattr(cfg, f.name) == f.default, f.name
    assert [s.name for s in flag_specs()] == [f.name for f in dataclasses.fields(MineConfig)]
    for s in flag_specs():
        assert s.flag in parser._option_string_actions


def test_config_rejects_bad_values_listing_the_accepted_ones():
    with pytest.raises(ValueError, match="zero-shot.*onnx-classifier.*tags:PARQUET.*none"):
        MineConfig(embeddings="e", output="o", tagger="clip")
    with pytest.raises(ValueError, match="--fdr"):
        MineConfig(embeddings="e", output="o", fdr=0.0)
    with pytest.raises(ValueError, match="--mention"):
        MineConfig(embeddings="e", output="o", mention="fuzzy")
    assert math.isclose(MineConfig(embeddings="e", output="o").fdr, 0.05)
