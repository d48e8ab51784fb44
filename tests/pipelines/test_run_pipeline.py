"""dupmine run: config precedence, caching by parameters, end to end on a small input."""
import argparse
import logging
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
    assert second["cached"] == STAGES.split(",")  # skipped, and shown with the time that produced the result
    assert second["seconds"] == first["seconds"] and "(earlier run, unchanged)" in capsys.readouterr().out
    assert second["duplicate_groups"] == first["duplicate_groups"]
    stale = os.path.join(out, "dedup", "edges", "stale.parquet")
    open(stale, "w").close()
    third = run.run(argv[:-2] + ["--set", "dedup.threshold=0.99", "--only", STAGES])
    assert third["cached"] == ["embed"] and third["seconds"]["embed"] == first["seconds"]["embed"]
    assert isinstance(third["seconds"]["dedup"], float) and isinstance(third["seconds"]["mine"], float)
    assert not os.path.exists(stale) and third["duplicate_groups"] <= first["duplicate_groups"]


def test_unknown_stage_keys_are_errors_that_list_the_allowed_keys(tmp_path):
    with pytest.raises(ValueError, match=r"dedup has no option 'treshold'; allowed keys: .*threshold"):
        run.resolve_config(_args(input="i", output="o", set=["dedup.treshold=0.9"]))
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump({"mine": {"min_suport": 3}}))
    with pytest.raises(ValueError, match=r"mine has no option 'min_suport'; allowed keys: .*min_support"):
        run.resolve_config(_args(config=str(bad), input="i", output="o"))
    with pytest.raises(ValueError, match="mine has no option 'embeddings'"):  # run wires the folders itself
        run.resolve_config(_args(input="i", output="o", set=["mine.embeddings=elsewhere"]))


def test_defaults_come_from_the_stage_parsers():
    for stage, keys in run.SHOWN.items():
        parser = run.stage_parser_of(stage)
        assert run.stage_defaults()[stage] == {k: parser.get_default(k) for k in keys}
    assert run.stage_defaults()["mine"]["min_support"] == 10 and run.stage_defaults()["embed"]["batch_size"] == 64


def test_whole_config_is_checked_before_any_work(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="dupmine.run")
    out = tmp_path / "r"
    # pixel embeddings have no text tower: an unset tagger becomes none, said in one line
    cfg = run.run(["--input", "x", "--output", str(out), "--model", "pixel", "--dry-run"])
    assert cfg["mine"]["tagger"] == "none"
    assert any("no object tags" in r.getMessage() for r in caplog.records)
    # asked for explicitly, zero-shot on pixel embeddings fails before anything is written
    with pytest.raises(ValueError, match="has none; use an openclip: model"):
        run.run(["--input", "x", "--output", str(out), "--model", "pixel", "--tagger", "zero-shot"])
    # a value the stage's own parser rejects fails at start too
    with pytest.raises(ValueError, match="embed: its flags"):
        run.run(["--input", "x", "--output", str(out), "--model", "pixel", "--set", "embed.batch_size=-3"])
    with pytest.raises(ValueError, match="unknown stage"):
        run.run(["--input", "x", "--output", str(out), "--only", "embed,dedupe"])
    assert not out.exists()
