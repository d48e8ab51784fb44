import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from models.storage import layout
from models.embed.shard_job import ShardJob, embed_shard, write_shard
from models.embed.embedders import PixelEmbedder
from models.storage.shards import list_shards
from pipelines import cli, embed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _keys(out: str) -> Counter:
    """How many times each key appears in metadata + rejects of the completed shards."""
    folder = layout.EmbeddingFolder(out)
    seen: Counter = Counter()
    for i in folder.parts():
        seen.update(layout.read_parquet(folder.metadata(i), ["key"]).column("key").to_pylist())
        seen.update(layout.read_parquet(folder.rejects(i), ["key"]).column("key").to_pylist())
    return seen


def test_cli_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    assert "embed" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli.main(["embed", "--help"])
    assert e.value.code == 0
    assert "--model" in capsys.readouterr().out
    assert cli.main(["nope"]) == 2


def test_every_config_field_reaches_its_consumer():
    args = ["--input", "x", "--output", "y", "--model", "onnx:/m.onnx", "--batch-size", "7", "--device", "cpu",
            "--preprocess", '{"size": 9}', "--max-pixels", "123", "--decode-workers", "3", "--threads", "2",
            "--overwrite", "--progress-seconds", "5"]
    import argparse

    parser = argparse.ArgumentParser()
    embed.add_arguments(parser)
    cfg = embed.config_from_args(parser.parse_args(args))
    assert cfg.embedder.model == "onnx:/m.onnx" and cfg.embedder.device == "cpu"
    assert cfg.embedder.preprocess == '{"size": 9}' and cfg.embedder.threads == 2
    assert cfg.job == ShardJob(batch_size=7, max_pixels=123, decode_workers=3, progress_seconds=5.0)
    assert cfg.overwrite and cfg.output_fingerprint_params() == {"model": "onnx:/m.onnx", "preprocess": '{"size": 9}', "max_pixels": 123}
    with pytest.raises(ValueError, match="device"):
        embed.EmbedConfig(input="x", output="y", device="tpu")


def test_run_writes_config_and_stats_and_every_sample_once(synthetic_shards, tmp_path):
    root, samples = synthetic_shards
    out = str(tmp_path / "emb")
    stats = embed.run(["--input", str(root / "{00000..00002}.tar"), "--output", out, "--model", "pixel", "--device", "cpu"])
    assert stats["rows"] + stats["rejects"] == len(samples)
    assert _keys(out) == Counter({k: 1 for k in samples})
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["config"]["model"] == "pixel" and cfg["embedder"]["dim"] == PixelEmbedder.KEEP ** 2 and len(cfg["shards"]) == 3
    # A rerun skips every shard and changes nothing.
    before = {i: os.path.getmtime(layout.EmbeddingFolder(out).img_emb(i)) for i in ("00000", "00001", "00002")}
    again = embed.run(["--input", str(root), "--output", out, "--model", "pixel"])
    assert again["skipped"] == 3 and again["rows"] == stats["rows"]
    assert before == {i: os.path.getmtime(layout.EmbeddingFolder(out).img_emb(i)) for i in before}


def test_crash_midway_then_rerun_has_each_sample_exactly_once(synthetic_shards, tmp_path):
    root, samples = synthetic_shards
    out = str(tmp_path / "emb")
    folder = layout.EmbeddingFolder(out)
    shards = list_shards(str(root))
    fp = layout.fingerprint(embed.EmbedConfig(input="", output="", model="pixel").output_fingerprint_params())
    write_shard(folder, embed_shard(shards[0], PixelEmbedder(), ShardJob()), fp)  # finished before the crash
    partial = embed_shard(shards[1], PixelEmbedder(), ShardJob())  # crashed after data, before its marker
    layout.write_npy(folder.img_emb("00001"), partial.img_emb[:5])
    assert folder.parts() == ["00000"]  # unmarked shards are invisible to readers
    stats = embed.run(["--input", str(root), "--output", out, "--model", "pixel"])
    assert stats["skipped"] == 1 and stats["shards"] == 3
    assert _keys(out) == Counter({k: 1 for k in samples})


def test_changed_parameters_redo_shards_and_drop_stale_text_embeddings(synthetic_shards, tmp_path):
    root, _ = synthetic_shards
    out = str(tmp_path / "emb")
    embed.run(["--input", str(root), "--output", out, "--model", "openclip:dupmine-tiny/random", "--batch-size", "16"])
    folder = layout.EmbeddingFolder(out)
    assert layout.read_npy(folder.text_emb("00000")).shape[1] == 64
    tiny = np.array(layout.read_npy(folder.img_emb("00000")))
    stats = embed.run(["--input", str(root), "--output", out, "--model", "pixel"])
    assert stats.get("skipped", 0) == 0
    pixel = np.array(layout.read_npy(folder.img_emb("00000")))
    assert not os.path.exists(folder.text_emb("00000")) and pixel.shape[1] == PixelEmbedder.KEEP ** 2
    assert pixel.shape == tiny.shape and not np.array_equal(pixel, tiny)  # both 64-d: the content was redone


def test_multiprocess_runner_gives_same_outputs_as_in_process(synthetic_shards, tmp_path):
    root, _ = synthetic_shards
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    embed.run(["--input", str(root), "--output", a, "--model", "pixel"])
    embed.run(["--input", str(root), "--output", b, "--model", "pixel", "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    fa, fb = layout.EmbeddingFolder(a), layout.EmbeddingFolder(b)
    assert fa.parts() == fb.parts()
    for i in fa.parts():
        np.testing.assert_array_equal(layout.read_npy(fa.img_emb(i)), layout.read_npy(fb.img_emb(i)))
        assert layout.read_parquet(fa.metadata(i)).equals(layout.read_parquet(fb.metadata(i)))


def test_killed_process_then_rerun_has_each_sample_exactly_once(tmp_path):
    from models.demo.synthetic import planted_dataset, write_webdataset_shard

    root = tmp_path / "shards"
    root.mkdir()
    keys = set()
    for shard in range(6):
        samples = planted_dataset(n_unique=150, exact_groups=[2], near_groups=[2], seed=shard, shard=shard, size=160)
        write_webdataset_shard(str(root / f"{shard:05d}.tar"), samples)
        keys |= {s.key for s in samples}
    out = tmp_path / "emb"
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "pipelines.cli", "embed", "--input", str(root), "--output", str(out),
           "--model", "pixel", "--decode-workers", "1", "--batch-size", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "_done").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(os.listdir(out / "_done")) if (out / "_done").exists() else 0
    assert done_before < 6, "the run finished before it could be killed; make the shards bigger"
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert _keys(str(out)) == Counter({k: 1 for k in keys})


def test_metadata_and_rejects_carry_sample_ids_that_tell_colliding_keys_apart(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.storage import ids
    from tests.helpers import jpeg, noise_image, sample_members, write_tar

    for d, seed in (("a", 0), ("b", 5)):
        os.makedirs(tmp_path / d)
        write_tar(tmp_path / d / "00000.tar", sample_members("000000000", jpeg(noise_image(seed))))
        pq.write_table(pa.table({"key": ["000000000", "000000001"], "status": ["success", "failed_to_download"],
                                 "error_message": [None, "404"]}), tmp_path / d / "00000.parquet")
    out = str(tmp_path / "emb")
    embed.run(["--input", f"{tmp_path}/a,{tmp_path}/b", "--output", out, "--model", "pixel"])
    folder = layout.EmbeddingFolder(out)
    meta = {i: layout.read_parquet(folder.metadata(i)).to_pylist() for i in folder.parts()}
    rejects = {i: layout.read_parquet(folder.rejects(i)).to_pylist() for i in folder.parts()}
    a, b = (ids.absolute_url(str(tmp_path / d / "00000.tar")) for d in ("a", "b"))
    assert [m["sample_id"] for m in meta["a_00000"]] == [ids.sample_id(a, "000000000")]
    assert [m["sample_id"] for m in meta["b_00000"]] == [ids.sample_id(b, "000000000")]
    assert [m["key"] for m in meta["a_00000"]] == ["000000000"]  # the plain key is kept
    assert [r["sample_id"] for r in rejects["b_00000"]] == [ids.sample_id(b, "000000001")]
    assert folder.part_ids("a_00000") == (["000000000"], [ids.sample_id(a, "000000000")], "sample_id")


def test_parquet_shards_without_key_take_ids_from_image_path_and_the_summary_says_so(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import jpeg, noise_image

    pq.write_table(pa.table({"image_path": ["x/0.jpg", "x/1.jpg"], "caption": ["a", "b"], "md5": ["m0", "m1"],
                             "jpg": [jpeg(noise_image(0)), jpeg(noise_image(1))]}), tmp_path / "00000.parquet")
    stats = embed.run(["--input", str(tmp_path / "00000.parquet"), "--output", str(tmp_path / "emb"), "--model", "pixel"])
    assert embed.key_source_note(stats) == "ids from image_path (2 rows); exact matching on sha256"
    meta = layout.read_parquet(layout.EmbeddingFolder(str(tmp_path / "emb")).metadata("00000")).to_pylist()
    assert [(m["key"], m["md5"]) for m in meta] == [("x/0.jpg", "m0"), ("x/1.jpg", "m1")]
    assert all(len(m["sha256"]) == 64 for m in meta)


def test_flag_defaults_are_the_config_defaults():
    from tests.pipelines.config_checks import parse_stage_flags

    args = parse_stage_flags(embed.add_arguments, embed.EmbedConfig, ["--input", "x", "--output", "y"])
    assert embed.config_from_args(args) == embed.EmbedConfig(input="x", output="y")
