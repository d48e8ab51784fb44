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
