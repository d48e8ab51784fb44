"""dupmine run: config precedence, caching by parameters, end to end on a small input."""
import argparse
import os

import pytest
import yaml

from pipelines import run

STAGES = "embed,dedup,mine"


def _args(**kw):
    base = dict(input=None, output=None, config=None, set=None, dry_run=False, only=None)
    base.update({k: None for k in run.SHORTCUTS})
    base.update(kw)
    return argparse.Namespace(**base)


def test_config_precedence_defaults_file_shortcut_set(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"input": "in/", "embed": {"model": "pixel", "batch_size": 8},
                                        "dedup": {"threshold": 0.8}}))
    cfg = run.resolve_config(_args(config=str(cfg_file), output="out", threshold=0.85, set=["dedup.threshold=0.9", "mine.tagger=none"]))
    assert cfg["input"] == "in/" and cfg["output"] == "out"
    assert cfg["embed"] == {"model": "pixel", "batch_size": 8, "device": "auto"}
    assert cfg["dedup"]["threshold"] == 0.9           # --set beats the shortcut, which beats the file
    assert cfg["mine"]["tagger"] == "none" and cfg["mine"]["min_support"] == 10  # default kept
    cfg = run.resolve_config(_args(config=str(cfg_file), output="out", threshold=0.85))
    assert cfg["dedup"]["threshold"] == 0.85
    with pytest.raises(ValueError, match="STAGE.KEY"):
        run.resolve_config(_args(input="i", output="o", set=["nostage.x=1"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("embeds: {}\n")
    with pytest.raises(ValueError, match="unknown key 'embeds'"):
        run.resolve_config(_args(config=str(bad), output="o"))
    with pytest.raises(ValueError, match="--input is required"):
        run.resolve_config(_args(output="o"))


def test_stage_flags_reach_stage_parsers(tmp_path):
    import importlib

    cfg = run.resolve_config(_args(input="in", output=str(tmp_path), set=["embed.batch_size=7", "dedup.max_spill=3",
                                                                          "mine.min_support=4", "embed.overwrite=true"]))
    for stage in ("embed", "dedup", "mine"):
        parser = argparse.ArgumentParser()
        importlib.import_module(f"pipelines.{stage}").add_arguments(parser)
        parsed = parser.parse_args(run.stage_argv(stage, cfg))
        for key, value in cfg[stage].items():
            assert getattr(parsed, key) == value, (stage, key)
    assert run.stage_argv("score", cfg) is None  # no target: no scoring


def test_dry_run_prints_resolved_config(tmp_path, capsys):
    run.run(["--input", "x", "--output", str(tmp_path / "r"), "--model", "pixel", "--dry-run"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["embed"]["model"] == "pixel" and not os.path.exists(tmp_path / "r")


def test_run_end_to_end_skips_when_unchanged_and_redoes_on_change(synthetic_shards, tmp_path, capsys):
    root, samples = synthetic_shards
    out = str(tmp_path / "run")
    argv = ["--input", str(root), "--output", out, "--model", "pixel", "--tagger", "none", "--threshold", "0.9",
            "--min-support", "3", "--only", STAGES]
    first = run.run(argv)
    assert first["rows_in"] == len(samples) and first["rows_embedded"] == len(samples) - 3
    assert first["rejects_by_reason"] == {"embed: failed_to_download": 3}
    assert first["duplicate_groups"] >= 6 and all(isinstance(first["seconds"][s], float) for s in STAGES.split(","))
    assert "dupmine run summary" in capsys.readouterr().out
    assert yaml.safe_load(open(os.path.join(out, "config.yaml")))["dedup"]["threshold"] == 0.9
    second = run.run(argv)
    assert second["seconds"] == {s: "skipped" for s in STAGES.split(",")}
    assert second["duplicate_groups"] == first["duplicate_groups"]
    stale = os.path.join(out, "dedup", "edges", "stale.parquet")
    open(stale, "w").close()
    third = run.run(argv[:-2] + ["--set", "dedup.threshold=0.99", "--only", STAGES])
    assert third["seconds"]["embed"] == "skipped"
    assert isinstance(third["seconds"]["dedup"], float) and isinstance(third["seconds"]["mine"], float)
    assert not os.path.exists(stale) and third["duplicate_groups"] <= first["duplicate_groups"]
