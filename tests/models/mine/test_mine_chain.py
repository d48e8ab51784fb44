"""Tests for models.storage.mine_chain: manifests round-trip, parts identified by folder + name + content."""
import numpy as np
import pyarrow as pa
import pytest

from models.storage import layout, mine_chain


def _folder(root, name, parts):
    folder = layout.EmbeddingFolder(str(root / name))
    for part, rows in parts.items():
        layout.write_npy(folder.img_emb(part), np.zeros((rows, 4), np.float16))
        layout.write_parquet(folder.metadata(part), pa.table({"key": [f"{i:09d}" for i in range(rows)]}))
        layout.write_json(folder.marker(part), {})
    return folder.root


def test_manifest_round_trip_and_read_errors(tmp_path):
    emb = _folder(tmp_path, "A", {"00000": 3})
    entry = mine_chain.MineEntry(run=str(tmp_path / "m"), embeddings=emb, parts=("00000",), groups=None,
                                 contents=(mine_chain.part_identity(emb, "00000"),))
    with pytest.raises(ValueError, match="not a finished dupmine mine output"):
        mine_chain.read_mine_chain(str(tmp_path / "m"))
    mine_chain.write_mine_manifest(str(tmp_path / "m"), [entry])
    layout.write_json(str(tmp_path / "m" / "counts" / "stats.json"), {})
    (back,) = mine_chain.read_mine_chain(str(tmp_path / "m"))
    assert back.parts == ("00000",) and back.contents == entry.contents and back.embeddings == emb
    assert mine_chain.MineEntry.from_json(entry.to_json()) == entry


def test_uncounted_parts_by_source_and_content(tmp_path):
    a = _folder(tmp_path, "A", {"00000": 3, "00001": 2})
    b = _folder(tmp_path, "B", {"00000": 3, "00002": 4})  # same part names as A: new data
    chain = [mine_chain.MineEntry(run="r", embeddings=a, parts=("00000", "00001"), groups=None,
                                  contents=tuple(mine_chain.part_identity(a, p) for p in ("00000", "00001")))]
    assert mine_chain.uncounted_parts(chain, a, ["00000", "00001", "00003"]) == ["00003"]
    assert mine_chain.uncounted_parts(chain, b, ["00000", "00002"]) == ["00000", "00002"]
    layout.write_parquet(layout.EmbeddingFolder(a).metadata("00001"), pa.table({"key": ["x", "y", "z", "w"]}))
    with pytest.raises(ValueError, match="part 00001 of .* changed since"):
        mine_chain.uncounted_parts(chain, a, ["00001"])
    legacy = [mine_chain.MineEntry(run="r", embeddings=a, parts=("00001",), groups=None)]  # no contents: by name
    assert mine_chain.uncounted_parts(legacy, a, ["00001"]) == []
