"""TestPipeline tests of transforms.score's composite steps, and the stage config."""
from __future__ import annotations

import argparse
import dataclasses
import json

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from models.score.checks import ScoreItem, ScoreRow
from models.score.targets.closed_form import MemorizerTarget, VPSchedule, save_memorizer
from pipelines import score as score_pipeline
from transforms import score as score_transforms


def memorizer_spec(tmp_path, d=6):
    rng = np.random.default_rng(0)
    x = np.concatenate([np.repeat(rng.standard_normal((1, d)), 10, axis=0), rng.standard_normal((10, d))])
    target = MemorizerTarget(x, None, VPSchedule.linear(200), cond_labels=np.array([0] * 10 + [1] * 10))
    path = str(tmp_path / "t.npz")
    save_memorizer(path, target)
    with open(path + ".prompts.json", "w") as f:
        json.dump({"memorized": 0, "generic": 1}, f)
    return f"memorizer:{path}"


def stage_cfg(tmp_path, **kw):
    base = dict(flagged=str(tmp_path / "f.parquet"), target=memorizer_spec(tmp_path), output=str(tmp_path / "out"),
                checks=("wen",), n_samples=2, steps=10, n_dirs=8, wen_n=2, fpr=0.5)
    return score_pipeline.ScoreStageConfig(**(base | kw))


def test_score_items_yields_one_named_row_per_check(tmp_path):
    cfg = stage_cfg(tmp_path, checks=("wen", "plaplace"))
    items = [ScoreItem("flagged", "memorized"), ScoreItem("reference", "generic")]
    with TestPipeline() as p:
        rows = p | beam.Create(items) | score_transforms.ScoreItems(cfg, score_transforms.ContextHandle(cfg))
        keys = rows | beam.Map(lambda r: (type(r).__name__, r.role, r.prompt, r.check, r.cost_evals > 0))
        assert_that(keys, equal_to([("ScoreRow", "flagged", "memorized", c, True) for c in ("wen", "plaplace")]
                                   + [("ScoreRow", "reference", "generic", c, True) for c in ("wen", "plaplace")]))
        # the duplicated prompt's Wen magnitude exceeds the generic one
        wen = (rows | beam.Filter(lambda r: r.check == "wen") | beam.Map(lambda r: (r.prompt, r.statistic))
               | beam.combiners.ToDict() | beam.Map(lambda d: d["memorized"] > d["generic"] > 0))
        assert_that(wen, equal_to([True]), label="WenOrder")


def test_calibrate_and_write_decides_against_reference_rows(tmp_path):
    path = str(tmp_path / "scores.parquet")

    def row(role, prompt, stat):
        return ScoreRow(role, prompt, "wen", stat, 0.0, 2, 0, 4, 0.1)

    rows = [row("flagged", "a", 3.0), row("flagged", "b", 1.0), row("reference", "r1", 1.5), row("reference", "r2", 0.5)]
    with TestPipeline() as p:
        n = p | beam.Create(rows) | score_transforms.CalibrateAndWrite(0.5, path)
        assert_that(n, equal_to([4]))
    out = {r["prompt"]: r for r in pq.read_table(path).to_pylist()}
    assert out["a"]["threshold"] == 1.5 and out["a"]["decision"] and not out["b"]["decision"]


def test_argparse_is_built_from_the_config_and_every_field_reaches_it(tmp_path):
    parser = argparse.ArgumentParser()
    score_pipeline.add_arguments(parser)
    args = parser.parse_args(["--flagged", "f", "--target", "gmm:x", "--output", "o", "--train", "emb"])
    defaults = score_pipeline.ScoreStageConfig(flagged="f", target="gmm:x", output="o", train="emb")
    assert score_pipeline.config_from_args(args) == defaults
    # a non-default value for every field reaches the config, its ScoreConfig and its SideConfig
    changed = {"n_reference": 3, "max_prompts": 4, "n_samples": 5, "steps": 6, "t_small": 7, "n_dirs": 9, "wen_n": 2,
               "fpr": 0.25, "seed": 11, "side_k": 12, "side_tau": 0.3, "side_lambda": 5.0, "side_n_syn": 13,
               "side_n_g": 14, "side_prompts": 2, "device": "cpu", "checks": "wen", "reference": "r.txt",
               "jeon_n": 3, "guidance_scale": 2.5, "plaplace_aggregate": "mean", "wen_until": 700,
               "train": "emb", "groups": "dd"}
    missing = {f.name for f in dataclasses.fields(score_pipeline.ScoreStageConfig)} - set(changed) - {"flagged", "target", "output"}
    assert not missing, f"fields not covered by this test: {missing}"
    argv = ["--flagged", "f", "--target", "gmm:x", "--output", "o"]
    for k, v in changed.items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    cfg = score_pipeline.config_from_args(parser.parse_args(argv))
    for k, v in changed.items():
        assert getattr(cfg, k) == (("wen",) if k == "checks" else v), k
    s, side = cfg.score, cfg.side
    assert (s.n_samples, s.steps, s.t_small, s.n_dirs, s.wen_n, s.fpr, s.seed) == (5, 6, 7, 9, 2, 0.25, 11)
    assert (s.jeon_n, s.guidance_scale, s.plaplace_aggregate, s.wen_until) == (3, 2.5, "mean", 700)
    assert (side.k, side.tau, side.lambda_, side.n_syn, side.n_g, side.steps, side.seed) == (12, 0.3, 5.0, 13, 14, 6, 11)


def test_config_errors_name_the_flag():
    with pytest.raises(ValueError, match="--n-samples|n_samples"):
        score_pipeline.ScoreStageConfig(flagged="f", target="gmm:x", output="o", checks=("wen",), n_samples=0)
    with pytest.raises(ValueError, match="--side-n-g"):
        score_pipeline.ScoreStageConfig(flagged="f", target="gmm:x", output="o", checks=("wen",), side_n_g=0)
