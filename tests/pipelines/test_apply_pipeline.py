"""apply round trip: embed -> dedup -> apply, in all three img2dataset formats."""
import os

import pyarrow as pa
import pyarrow.parquet as pq

from models.storage import layout
from models.storage.shards import Sample, list_shards, read_shard
from pipelines import apply, dedup, embed


def _samples(path):
    return {s.key: s for shard in list_shards(path) for s in read_shard(shard) if isinstance(s, Sample)}


def test_embed_dedup_apply_round_trip_webdataset(synthetic_shards, tmp_path):
    root, samples = synthetic_shards
    emb, dd, out = (str(tmp_path / d) for d in ("emb", "dd", "filtered"))
    embed.run(["--input", str(root), "--output", emb, "--model", "pixel"])
    summary = dedup.run(["--embeddings", emb, "--output", dd, "--threshold", "0.9"])
    drops = set(layout.read_parquet(os.path.join(dd, "drop_keys.parquet")).column("key").to_pylist())
    assert drops and len(drops) == summary["rows_dropped"]
    manifest = apply.run(["--input", str(root), "--drop", os.path.join(dd, "drop_keys.parquet"), "--output", out])
    before, after = _samples(str(root)), _samples(out)
    assert set(after) == set(before) - drops
    assert manifest["kept"] == len(after) and manifest["dropped"] == len(drops)
    for key, s in after.items():  # kept samples byte-identical
        assert s.image == before[key].image and s.caption == before[key].caption
    # sidecar filtered: failed downloads kept, dropped keys gone
    side = pq.read_table(os.path.join(out, "00000.parquet")).to_pylist()
    assert {r["key"] for r in side} & drops == set()
    assert any(r["status"] == "failed_to_download" for r in side)
    # a dedup folder works as the drop list too (the union over its run chain)
    again = apply.run(["--input", str(root), "--drop", dd, "--output", str(tmp_path / "filtered_from_dir")])
    assert (again["kept"], again["dropped"]) == (manifest["kept"], manifest["dropped"])
    # the filtered output is itself valid dupmine input
    assert embed.run(["--input", out, "--output", str(tmp_path / "emb2"), "--model", "pixel"])["rows"] == len(after)


def test_apply_parquet_and_files_formats_and_text_drop_list(tmp_path):
    from tests.helpers import jpeg, noise_image, sample_members

    imgs = [jpeg(noise_image(i)) for i in range(4)]
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(4)], "caption": ["c"] * 4, "status": ["success"] * 4,
                             "jpg": imgs}), tmp_path / "00000.parquet")
    files = tmp_path / "files" / "00001"
    os.makedirs(files)
    for i in range(3):
        for name, data in sample_members(f"f{i}", imgs[i]):
            (files / name).write_bytes(data)
    (tmp_path / "drop.txt").write_text("k1\nk3\nf0\n")
    m1 = apply.run(["--input", str(tmp_path / "00000.parquet"), "--drop", str(tmp_path / "drop.txt"), "--output", str(tmp_path / "o1")])
    assert (m1["kept"], m1["dropped"]) == (2, 2)
    t = pq.read_table(tmp_path / "o1" / "00000.parquet")
    assert t.column("key").to_pylist() == ["k0", "k2"] and t.column("jpg").to_pylist() == [imgs[0], imgs[2]]
    m2 = apply.run(["--input", str(tmp_path / "files"), "--drop", str(tmp_path / "drop.txt"), "--output", str(tmp_path / "o2")])
    assert (m2["kept"], m2["dropped"]) == (2, 1)
    assert sorted(os.listdir(tmp_path / "o2" / "00001")) == sorted(n for n in os.listdir(files) if not n.startswith("f0."))
    assert (tmp_path / "o2" / "00001" / "f1.jpg").read_bytes() == imgs[1]


def _two_folders_same_keys(tmp_path):
    """Two downloads, a/ and b/, whose shards and keys are named alike (img2dataset restarts at 000000000)."""
    import json as _json

    from tests.helpers import jpeg, noise_image, sample_members, write_tar

    for d, seed in (("a", 0), ("b", 10)):
        os.makedirs(tmp_path / d)
        members = []
        for i in range(3):
            members += sample_members(f"00000000{i}", jpeg(noise_image(seed + i)))
        write_tar(tmp_path / d / "00000.tar", members)
        pq.write_table(pa.table({"key": [f"00000000{i}" for i in range(3)], "status": ["success"] * 3}),
                       tmp_path / d / "00000.parquet")
        (tmp_path / d / "00000_stats.json").write_text(_json.dumps(
            {"count": 3, "successes": 3, "failed_to_download": 0, "status_dict": {"success": 3}}))
    return f"{tmp_path}/a,{tmp_path}/b"


def test_sample_ids_drop_only_the_named_shards_sample_and_stats_add_up(tmp_path):
    import json as _json

    from models.storage import ids

    inputs = _two_folders_same_keys(tmp_path)
    a_url = ids.absolute_url(str(tmp_path / "a" / "00000.tar"))
    pq.write_table(pa.table({"sample_id": [ids.sample_id(a_url, "000000001"), "s3://elsewhere/0.tar::x"],
                             "key": ["000000001", "x"]}), tmp_path / "drop.parquet")
    m = apply.run(["--input", inputs, "--drop", str(tmp_path / "drop.parquet"), "--output", str(tmp_path / "out")])
    by_shard = {r["shard"]: (r["kept"], r["dropped"]) for r in m["shards"]}
    assert by_shard == {"a_00000": (2, 1), "b_00000": (3, 0)}  # b's 000000001 is another sample: kept
    assert m["unmatched_drop_rows"] == 1 and m["unmatched_examples"] == ["s3://elsewhere/0.tar"]
    outs = {s.key for s in read_shard(list_shards(str(tmp_path / "out" / "a_00000.tar"))[0])}
    assert outs == {"000000000", "000000002"}  # the two inputs named 00000.tar do not overwrite each other
    assert len([s for s in read_shard(list_shards(str(tmp_path / "out" / "b_00000.tar"))[0])]) == 3
    stats = _json.loads((tmp_path / "out" / "a_00000_stats.json").read_text())
    assert (stats["count"], stats["successes"], stats["status_dict"]["success"]) == (2, 2, 2)
    assert stats["dupmine_apply"] == {"dropped": 1}


def test_key_only_drop_lists_still_drop_the_key_in_every_shard(tmp_path):
    inputs = _two_folders_same_keys(tmp_path)
    (tmp_path / "drop.txt").write_text("000000002\n")
    m = apply.run(["--input", inputs, "--drop", str(tmp_path / "drop.txt"), "--output", str(tmp_path / "out")])
    assert (m["kept"], m["dropped"], m["unmatched_drop_rows"]) == (4, 2, 0)


def test_parquet_shard_without_key_column_is_filtered_by_the_readers_keys(tmp_path):
    from models.storage import ids
    from tests.helpers import jpeg, noise_image

    imgs = [jpeg(noise_image(i)) for i in range(3)]
    pq.write_table(pa.table({"image_path": ["p/0.jpg", "p/1.jpg", "p/2.jpg"], "caption": ["c"] * 3, "jpg": imgs}),
                   tmp_path / "00000.parquet")
    (shard,) = list_shards(str(tmp_path / "00000.parquet"))
    read = [s for s in read_shard(shard) if isinstance(s, Sample)]
    assert [s.key for s in read] == ["p/0.jpg", "p/1.jpg", "p/2.jpg"] and read[1].key_source == "image_path"
    (tmp_path / "drop.txt").write_text(read[1].sample_id + "\n")
    m = apply.run(["--input", str(tmp_path / "00000.parquet"), "--drop", str(tmp_path / "drop.txt"), "--output", str(tmp_path / "o")])
    assert (m["kept"], m["dropped"]) == (2, 1)
    assert read[1].sample_id == ids.sample_id(shard.url, "p/1.jpg")
    assert pq.read_table(tmp_path / "o" / "00000.parquet").column("image_path").to_pylist() == ["p/0.jpg", "p/2.jpg"]


def test_every_config_field_reaches_its_consumer(tmp_path):
    from tests.pipelines.config_checks import parse_stage_flags

    args = parse_stage_flags(apply.add_arguments, apply.ApplyConfig, ["--input", "i", "--drop", "d", "--output", "o"])
    assert apply.config_from_args(args) == apply.ApplyConfig(input="i", drop="d", output="o")
    # each field changes what the run does: input -> which shards, drop -> what goes, output -> where it lands
    inputs = _two_folders_same_keys(tmp_path)
    (tmp_path / "d1.txt").write_text("000000000\n")
    (tmp_path / "d2.txt").write_text("000000000\n000000001\n")
    runs = {
        "base": ["--input", inputs, "--drop", str(tmp_path / "d1.txt"), "--output", str(tmp_path / "o1")],
        "input": ["--input", str(tmp_path / "a"), "--drop", str(tmp_path / "d1.txt"), "--output", str(tmp_path / "o2")],
        "drop": ["--input", inputs, "--drop", str(tmp_path / "d2.txt"), "--output", str(tmp_path / "o3")],
    }
    got = {name: apply.run(argv) for name, argv in runs.items()}
    assert (got["base"]["kept"], got["base"]["dropped"]) == (4, 2)
    assert (got["input"]["kept"], got["input"]["dropped"]) == (2, 1)
    assert (got["drop"]["kept"], got["drop"]["dropped"]) == (2, 4)
    assert got["base"]["config"] == {"input": inputs, "drop": str(tmp_path / "d1.txt"), "output": str(tmp_path / "o1")}
    assert os.path.exists(tmp_path / "o1" / "manifest.json") and os.path.exists(tmp_path / "o3" / "manifest.json")
