"""Scale-out proof: embed -> dedup -> mine -> report on separate worker processes, every path on S3.

The stages run with Beam's PortableRunner against the local job service and
an EXTERNAL SDK worker pool (separate processes), and with Beam's DaskRunner
on a multi-process ``distributed.LocalCluster``; inputs and outputs live on
an S3 server on loopback (moto), so driver and workers share no local path.
Their outputs must equal an in-process run over local copies of the same
shards.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest

from models.storage import layout
from models.storage.ids import absolute_url
from pipelines import cli

pytest.importorskip("moto")
pytest.importorskip("s3fs")

_spec = importlib.util.spec_from_file_location(
    "dupmine_local_cluster", os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "local", "cluster.py"))
cluster_mod = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cluster_mod  # dataclasses look their module up by name
_spec.loader.exec_module(cluster_mod)

STAGE_FLAGS = {
    "embed": ["--model", "pixel"],
    "dedup": ["--threshold", "0.9"],
    "mine": ["--tagger", "none", "--min-support", "3"],
}


def _run_stages(root: str, shards: str, beam_args: list[str]) -> None:
    cli.main(["embed", "--input", shards, "--output", f"{root}/embed", *STAGE_FLAGS["embed"], *beam_args])
    cli.main(["dedup", "--embeddings", f"{root}/embed", "--output", f"{root}/dedup", *STAGE_FLAGS["dedup"], *beam_args])
    cli.main(["mine", "--embeddings", f"{root}/embed", "--groups", f"{root}/dedup", "--output", f"{root}/mine",
              *STAGE_FLAGS["mine"], *beam_args])


def _outputs(root: str, shards: str) -> dict:
    """The results that must not depend on the engine, with the shards' own URL (inside sample and group ids) cut out."""
    prefix = absolute_url(shards).rstrip("/") + "/"

    def rows(table) -> list[tuple]:
        return sorted(tuple(v.replace(prefix, "SHARDS/") if isinstance(v, str) else v for v in r.values())
                      for r in table.to_pylist())

    groups = layout.read_parquet(f"{root}/dedup/groups", ["sample_id", "key", "group_id", "group_size", "is_representative"])
    drops = layout.read_parquet(f"{root}/dedup/drop_keys.parquet", ["sample_id", "key", "group_id"])
    words = layout.read_parquet(f"{root}/mine/keyword_triggers.parquet", ["keyword", "n", "n_in_groups", "flagged"])
    prompts = layout.read_parquet(f"{root}/mine/flagged_prompts.parquet", ["prompt", "kind", "support"])
    rejects = layout.read_parquet(f"{root}/embed/rejects", ["key", "reason"])
    return {"groups": rows(groups), "drops": rows(drops), "words": rows(words), "prompts": rows(prompts),
            "rejects": rows(rejects)}


@pytest.fixture(scope="module")
def s3_cluster(tmp_path_factory):
    cluster = cluster_mod.LocalCluster(str(tmp_path_factory.mktemp("cluster")))
    with cluster:
        cluster.make_bucket("data")
        yield cluster


@pytest.fixture
def on_s3(s3_cluster, synthetic_shards, monkeypatch):
    """The synthetic shards uploaded to ``s3://data/<test>/shards/``; the driver's env points at the store."""
    import s3fs

    for k, v in s3_cluster.env.items():
        monkeypatch.setenv(k, v)
    root, samples = synthetic_shards
    fs = s3fs.S3FileSystem(endpoint_url=s3_cluster.endpoint, key=s3_cluster.env["AWS_ACCESS_KEY_ID"],
                           secret=s3_cluster.env["AWS_SECRET_ACCESS_KEY"])
    prefix = f"data/{os.path.basename(os.path.dirname(str(root)))}"
    fs.put(str(root) + "/", f"{prefix}/shards/", recursive=True)
    return root, samples, f"s3://{prefix}"


@pytest.fixture
def reference(synthetic_shards, tmp_path):
    root, _ = synthetic_shards
    local = str(tmp_path / "in_process")
    _run_stages(local, str(root), [])
    return local, str(root)


@pytest.mark.slow
def test_portable_runner_on_separate_workers_and_s3_equals_in_process(on_s3, reference, s3_cluster):
    _, samples, s3_root = on_s3
    _run_stages(f"{s3_root}/run", f"{s3_root}/shards/", s3_cluster.beam_args)
    got, want = _outputs(f"{s3_root}/run", f"{s3_root}/shards/"), _outputs(*reference)
    assert got == want
    assert len(want["groups"]) + len(want["rejects"]) == len(samples)  # every input sample is accounted for
    assert any(row[3] > 1 for row in want["groups"]) and want["drops"]  # (sample_id, key, group_id, group_size, ...)
    cli.main(["report", "--run", f"{s3_root}/run", "--output", f"{s3_root}/run/report"])
    assert layout.exists(f"{s3_root}/run/report/index.html")
    assert not os.path.exists("s3:"), "an s3:// output was written to a local folder"
    # Work really ran in the pool's SDK-harness processes: the pool log names the workers it started.
    with open(os.path.join(s3_cluster.workdir, "worker_pool.log"), encoding="utf-8", errors="replace") as f:
        assert "Starting worker with command" in f.read()


@pytest.mark.slow
def test_dask_runner_on_a_multiprocess_cluster_embeds_like_in_process(on_s3, reference):
    """Embed on Beam's DaskRunner (a multi-process ``distributed.LocalCluster``) equals the in-process embed.

    Only embed: Beam 2.77's DaskRunner gives a ParDo one output bag (``runners/dask/transform_evaluator.py``),
    so the tagged outputs dedup and mine use (edges, rejects, stats) cannot be routed there; README "Scale out".
    """
    pytest.importorskip("distributed")
    import numpy as np

    _, _, s3_root = on_s3
    local, shards = reference
    with cluster_mod.dask_cluster(n_workers=2) as beam_args:
        cli.main(["embed", "--input", f"{s3_root}/shards/", "--output", f"{s3_root}/dask/embed",
                  *STAGE_FLAGS["embed"], *beam_args])
    prefix_s3 = absolute_url(f"{s3_root}/shards/").rstrip("/") + "/"
    prefix_local = absolute_url(shards).rstrip("/") + "/"
    for part in ("00000", "00001", "00002"):
        got = layout.read_parquet(f"{s3_root}/dask/embed/metadata/metadata_{part}.parquet", ["sample_id", "key", "caption"])
        want = layout.read_parquet(f"{local}/embed/metadata/metadata_{part}.parquet", ["sample_id", "key", "caption"])
        assert [r["sample_id"].replace(prefix_s3, "") for r in got.to_pylist()] == \
            [r["sample_id"].replace(prefix_local, "") for r in want.to_pylist()]
        assert got.column("key").to_pylist() == want.column("key").to_pylist()
        np.testing.assert_array_equal(layout.read_npy(f"{s3_root}/dask/embed/img_emb/img_emb_{part}.npy"),
                                      layout.read_npy(f"{local}/embed/img_emb/img_emb_{part}.npy"))


def test_cluster_script_starts_prints_flags_and_stops(tmp_path):
    state_dir = str(tmp_path / "c")
    assert cluster_mod.main(["start", "--dir", state_dir]) == 0
    try:
        import json

        with open(os.path.join(state_dir, cluster_mod.STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
        assert state["beam_args"][:2] == ["--runner", "PortableRunner"] and "AWS_ENDPOINT_URL" in state["env"]
        for pid in state["pids"].values():
            os.kill(pid, 0)  # alive
    finally:
        assert cluster_mod.main(["stop", "--dir", state_dir]) == 0
    assert not os.path.exists(os.path.join(state_dir, cluster_mod.STATE_FILE))
    shutil.rmtree(state_dir, ignore_errors=True)
