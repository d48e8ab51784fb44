"""models.report.thumbnails: thumbnails from a real shard, and PNG copies found only by listing."""
from __future__ import annotations

import dataclasses

from PIL import Image

from models.report.metadata import scan_metadata
from models.report.thumbnails import copy_grids, copy_png, make_thumbnails
from models.storage.folders.report import ReportFolder
from tests.models.report import tiny


def test_thumbnails_from_the_shard(tmp_path):
    emb = tiny.write_embeddings(tmp_path)
    rows = scan_metadata(str(emb), set(tiny.KEYS), [], 1).rows
    report = ReportFolder(str(tmp_path / "r"))
    k0 = tiny.sid(tmp_path, "k0")
    wanted = {"k0", k0, "k2", "k5", "k-not-in-metadata"}   # k0 by key and by sample id: one row, one file
    thumbs = make_thumbnails(str(emb), rows, wanted, report, 32)
    assert thumbs.paths == {"k0": ReportFolder.thumb(k0), k0: ReportFolder.thumb(k0),
                            "k2": ReportFolder.thumb(tiny.sid(tmp_path, "k2"))}
    assert len(list((tmp_path / "r" / "thumbs").iterdir())) == 2
    with Image.open(tmp_path / "r" / thumbs.paths["k0"]) as im:
        assert im.format == "JPEG" and im.size == (32, 24)          # 64 x 48 into a 32 box
        r, g, b = im.convert("RGB").getpixel((16, 12))
        assert r > 150 and g < 60 and b < 60                          # k0 is red
    assert thumbs.notes == ["shard 00000: 1 image(s) not decodable (corrupt-image)"]


def test_rows_of_unlisted_shards_and_folders_without_shards(tmp_path):
    emb = tiny.write_embeddings(tmp_path)
    rows = scan_metadata(str(emb), set(tiny.KEYS), [], 1).rows
    rows["k1"] = dataclasses.replace(rows["k1"], shard="99999")
    thumbs = make_thumbnails(str(emb), rows, {"k1"}, ReportFolder(str(tmp_path / "r")), 32)
    assert thumbs.paths == {} and thumbs.notes == ["no thumbnails for rows of shards not listed in config.json: 99999"]
    bare = tiny.write_embeddings(tmp_path / "bare", with_shards=False)
    assert "lists no shards" in make_thumbnails(str(bare), rows, {"k0"}, ReportFolder(str(tmp_path / "r")), 32).notes[0]


def test_score_pngs(tmp_path):
    score = tiny.write_score(tmp_path)
    (score / "grids" / "fake.PNG").write_bytes(b"<svg onload=alert(1)>")
    (tmp_path / "escape.png").write_bytes(tiny.png((0, 0, 0)))
    report = ReportFolder(str(tmp_path / "r"))
    assert [g.name for g in copy_grids(str(score), report, 10)] == ["side_00", "side_01"]   # fake.PNG is not a PNG
    assert [g.name for g in copy_grids(str(score), report, 1)] == ["side_00"]
    assert not copy_png(str(score / "grids" / "fake.PNG"), report, "x.png") and not (tmp_path / "r" / "x.png").exists()
