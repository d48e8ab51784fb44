"""models.report.groups: the gallery's groups against hand-counted answers and a numpy cosine reference."""
from __future__ import annotations

import numpy as np
import pytest

from models.report.groups import fill_cosines, shown_groups
from models.report.rows import DuplicateGroup, ShownRow
from models.storage import layout, schemas
from models.storage.folders.report import ReportFolder
from tests.models.report import tiny


def test_histogram_counts_singletons_without_summary(tmp_path):
    dd = tiny.write_dedup(tmp_path, summary=False)
    shown = shown_groups(str(dd), None, 5, 8, [], ReportFolder(str(tmp_path / "r")))
    assert shown.size_hist == {1: 1, 2: 1, 3: 1} and shown.total == 2


def test_summary_singletons_win_and_members_are_bounded(tmp_path):
    dd = tiny.write_dedup(tmp_path)
    layout.write_json(str(dd / "summary.json"), {"groups": 12, "duplicate_groups": 2})
    shown = shown_groups(str(dd), layout.read_json(str(dd / "summary.json")), 1, 2, ["k4", "k5", "nope"],
                         ReportFolder(str(tmp_path / "r")))
    assert shown.size_hist[1] == 10
    sid = {k: tiny.sid(tmp_path, k) for k in tiny.KEYS}
    assert [(g.group_id, g.members) for g in shown.top] == [("k0", [sid["k0"], sid["k1"]])]
    # referenced: k4 is a duplicate group outside the top; k5 is a singleton and "nope" does not exist
    assert [(g.group_id, g.representative, g.members) for g in shown.referenced] == [("k4", sid["k4"], [sid["k4"], sid["k3"]])]
    assert shown.referenced[0].keys == {sid["k4"]: "k4", sid["k3"]: "k3"}


def test_representative_from_representative_key_when_not_flagged(tmp_path):
    rows = [r | {"is_representative": False} for r in tiny.group_rows()]   # keys only: representative_key names it
    layout.write_parquet(str(tmp_path / "dd" / "groups" / "groups_0.parquet"), schemas.table(rows, schemas.DEDUP_GROUPS))
    shown = shown_groups(str(tmp_path / "dd"), None, 5, 8, [], ReportFolder(str(tmp_path / "r")))
    assert [g.members[0] for g in shown.top] == ["k0", "k4"]


def test_missing_groups_folder(tmp_path):
    (tmp_path / "dd").mkdir()
    with pytest.raises(FileNotFoundError, match="no groups/"):
        shown_groups(str(tmp_path / "dd"), None, 5, 8, [], ReportFolder(str(tmp_path / "r")))


def test_cosines_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 16)).astype(np.float16)
    emb = tmp_path / "emb"
    layout.write_npy(str(emb / "img_emb" / "img_emb_0.npy"), x)
    import pyarrow as pa
    import pyarrow.parquet as pq
    (emb / "metadata").mkdir()
    pq.write_table(pa.table({"key": [f"r{i}" for i in range(5)]}), emb / "metadata" / "metadata_0.parquet")
    rows = {f"r{i}": ShownRow(f"r{i}", f"s::r{i}", None, None, "0", i) for i in range(5)}
    g = DuplicateGroup("r3", 3, "r3", ["r3", "r0", "r4"])
    fill_cosines(str(emb), rows, [g])
    u = x.astype(np.float32) / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    for k in g.members:
        i = int(k[1:])
        assert g.cosine[k] == pytest.approx(float(u[i] @ u[3]), abs=1e-6)
