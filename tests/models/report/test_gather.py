"""models.report.gather on hand-made stage folders: the right rows, in the right order, bounded by the config."""
from __future__ import annotations

import pytest

from models.report.config import ReportConfig, ReportInputs
from models.report.gather import gather, reject_counts, stage_jsons
from models.report.rows import RejectCount
from models.storage import layout
from models.storage.folders.report import ReportFolder
from tests.models.report import tiny


@pytest.fixture
def folders(tmp_path):
    return tiny.write_all(tmp_path)


def run_gather(folders, tmp_path, **cfg):
    inputs = ReportInputs(*map(str, folders))
    return gather(inputs, ReportFolder(str(tmp_path / "report")), ReportConfig(**cfg))


def test_groups_rows_and_examples(folders, tmp_path):
    d = run_gather(folders, tmp_path)
    sid = {k: tiny.sid(tmp_path, k) for k in tiny.KEYS}   # groups carry sample ids: members are named by them
    assert [(g.group_id, g.size, g.representative, g.members) for g in d.top_groups] == [
        ("k0", 3, sid["k0"], [sid["k0"], sid["k1"], sid["k2"]]), ("k4", 2, sid["k4"], [sid["k4"], sid["k3"]])]
    assert d.top_groups[1].keys == {sid["k4"]: "k4", sid["k3"]: "k3"}
    assert d.size_hist == {1: 1, 2: 1, 3: 1} and d.groups_total == 2 and d.extra_groups == []
    cos = d.top_groups[0].cosine  # float16-stored unit vectors: k1 . k0 = 0.8, k2 . k0 = 0.6
    assert cos[sid["k0"]] == pytest.approx(1.0, abs=1e-3) and cos[sid["k1"]] == pytest.approx(0.8, abs=1e-3)
    assert cos[sid["k2"]] == pytest.approx(0.6, abs=1e-3) and d.top_groups[1].cosine[sid["k3"]] == pytest.approx(0.0, abs=1e-3)
    # captions and locations only for the rows shown (members, 3 example keys, extraction matches, object examples),
    # under their sample ids, and under the plain keys that word examples and extractions name them by
    assert {r.key for r in d.rows.values()} == {"k0", "k1", "k2", "k3", "k4"}
    assert set(d.rows) == {sid[k] for k in ("k0", "k1", "k2", "k3", "k4")} | {"k0", "k1", "k2", "k3"}
    row = d.rows[sid["k2"]]
    assert row.caption == tiny.CAPTIONS["k2"] and row.index == 2 and row.shard == "00000" and d.rows["k2"] is row
    # the object trigger's examples: tagged "ball" AND captioned "red" (k3 is tagged but says "green")
    assert d.object_examples == [[sid["k0"], sid["k1"]]]
    assert {d.rows[r].key for r in d.thumbs} == {"k0", "k1", "k2", "k3", "k4"}
    for ref, rel in d.thumbs.items():   # one file per row, named by its sample id, whichever name points to it
        assert rel == ReportFolder.thumb(d.rows[ref].sample_id) and layout.exists(str(tmp_path / "report" / rel))


def test_ranked_tables_and_limits(folders, tmp_path):
    d = run_gather(folders, tmp_path, max_rows=2, max_groups=1, max_members=2)
    assert [w.keyword for w in d.words] == ["beta", "alpha"]          # flagged first, then by rank, max_rows
    assert d.words_all.num_rows == 3
    assert [p.prompt for p in d.prompts] == ["a red ball", "green"]  # by rank
    assert [e.generation_id for e in d.extractions] == ["r00g000000", "r01g000000"]  # most similar first, max_rows
    assert [g.group_id for g in d.top_groups] == ["k0"] and list(d.top_groups[0].keys.values()) == ["k0", "k1"]
    assert [g.group_id for g in d.extra_groups] == ["k4"]            # referenced by a prompt, a word and an extraction
    assert [g.name for g in d.grids] == ["side_00", "side_01"]
    # every generation shown has an image: r01g000000 saved by the score stage, the others cut from their run's grid
    assert d.generations == {g: ReportFolder.generation(g) for g in ("r00g000000", "r01g000000", "r01g000001")}
    assert [(pg.prompt, pg.total, pg.in_band, [r.generation_id for r in pg.shown], pg.grid.name)
            for pg in d.prompt_generations] == [("a red ball", 2, 2, ["r01g000000", "r01g000001"], "side_01")]
    assert {g: (gg.total, [r.generation_id for r in gg.shown]) for g, gg in d.group_generations.items()} == {
        "k0": (2, ["r01g000000", "r01g000001"]), "k4": (1, ["r00g000000"])}
    assert set(d.plots) == {"group_sizes", "keyword_lift_support", "score:plaplace", "score:wen"}


def test_rejects_and_stage_jsons(folders):
    inputs = ReportInputs(*map(str, folders))
    assert reject_counts(inputs) == [RejectCount("embeddings", "corrupt-image", 1), RejectCount("dedup", "zero-vector", 2)]
    found = stage_jsons(inputs)
    assert found["embeddings"]["stats"] == {"rows": 6, "rejects": 1} and "summary" in found["dedup"]
    assert found["mine"] == {} and found["score"] == {}


def test_metadata_without_key_column_uses_row_keys(tmp_path):
    """LAION-style metadata with image_path and no key: rows are named as models.storage.ids.row_keys names them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = tiny.write_embeddings(tmp_path, with_shards=False)
    paths = [f"img/{k}.jpg" for k in tiny.KEYS]
    pq.write_table(pa.table({"image_path": paths, "caption": [tiny.CAPTIONS[k] for k in tiny.KEYS]}),
                   emb / "metadata" / "metadata_00000.parquet")
    rows = [r | {"key": f"img/{r['key']}.jpg", "group_id": f"img/{r['group_id']}.jpg",
                 "representative_key": f"img/{r['representative_key']}.jpg"} for r in tiny.group_rows()]
    from models.storage import schemas
    layout.write_parquet(str(tmp_path / "dd" / "groups" / "groups_0.parquet"), schemas.table(rows, schemas.DEDUP_GROUPS))
    d = gather(ReportInputs(embeddings=str(emb), dedup=str(tmp_path / "dd")), ReportFolder(str(tmp_path / "r")), ReportConfig())
    assert d.rows["img/k1.jpg"].caption == tiny.CAPTIONS["k1"]   # groups without sample ids name members by key
    assert d.top_groups[0].members == ["img/k0.jpg", "img/k1.jpg", "img/k2.jpg"]
    assert d.top_groups[0].cosine["img/k1.jpg"] == pytest.approx(0.8, abs=1e-3)
    assert d.thumbs == {} and "lists no shards" in d.thumb_notes[0]


def test_same_key_in_two_downloads_stays_two_rows(tmp_path):
    """img2dataset numbers keys from 0 in every download: a copy across two downloads shares its key, not its row."""
    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from models.storage import ids, schemas

    emb = tmp_path / "emb"
    colours = {"a": (220, 0, 0), "b": (0, 0, 220)}
    shards, sids = [], {}
    for i, (folder, colour) in enumerate(colours.items()):
        (tmp_path / folder).mkdir()
        shard = tmp_path / folder / "00000.tar"
        tiny.write_shard(shard, {"k0": tiny.jpeg(colour)})
        sids[folder] = ids.sample_id(ids.absolute_url(str(shard)), "k0")
        part = f"0000{i}"
        shards.append({"path": str(shard), "format": "webdataset", "shard_id": part})
        layout.write_parquet(str(emb / "metadata" / f"metadata_{part}.parquet"),
                             pa.table({"key": ["k0"], "sample_id": [sids[folder]], "caption": [f"from {folder}"], "shard": [part]}))
        layout.write_npy(str(emb / "img_emb" / f"img_emb_{part}.npy"), np.array([[1.0, 0.0]], np.float16))
        layout.write_json(str(emb / "_done" / f"{part}.json"), {})
    layout.write_json(str(emb / "config.json"), {"shards": shards})
    rows = [{"key": "k0", "sample_id": sids[f], "group_id": sids["a"], "group_size": 2, "is_representative": f == "a",
             "representative_key": "k0", "max_cosine": 1.0, "part": p} for f, p in (("a", "00000"), ("b", "00001"))]
    layout.write_parquet(str(tmp_path / "dd" / "groups" / "groups_00000.parquet"), schemas.table(rows, schemas.DEDUP_GROUPS))
    d = gather(ReportInputs(embeddings=str(emb), dedup=str(tmp_path / "dd")), ReportFolder(str(tmp_path / "r")), ReportConfig())
    (group,) = d.top_groups
    assert group.members == [sids["a"], sids["b"]] and group.keys == {sids["a"]: "k0", sids["b"]: "k0"}
    assert [d.rows[m].caption for m in group.members] == ["from a", "from b"]
    assert len({d.thumbs[m] for m in group.members}) == 2
    for folder, m in zip(colours, group.members):
        with Image.open(tmp_path / "r" / d.thumbs[m]) as im:
            assert np.abs(np.array(im.convert("RGB").getpixel((5, 5))) - colours[folder]).max() < 40
