"""ReportFolder: every file the report writes, under hashed names for untrusted text."""
from __future__ import annotations

import re

from models.storage.folders.report import ReportFolder, digest


def test_names():
    f = ReportFolder("s3://bucket/report/")
    assert f.index == "s3://bucket/report/index.html"
    assert f.chain_state_groups == "s3://bucket/report/_chain_state/groups.parquet"
    assert f.path(ReportFolder.thumb("../../x")) == f"s3://bucket/report/thumbs/{digest('../../x')}.jpg"
    for rel in (ReportFolder.thumb("../../x"), ReportFolder.score_grid("../g"), ReportFolder.generation("../gen")):
        assert ".." not in rel and re.fullmatch(r"[a-z/]+/[0-9a-f]{32}\.(jpg|png)", rel)
    assert ReportFolder.score_plot("wen") == f"plots/score_wen_{digest('wen', 8)}.png"
    assert re.fullmatch(r"plots/score_[A-Za-z0-9_-]{40}_[0-9a-f]{8}\.png", ReportFolder.score_plot("../<b>" * 20))
    assert ReportFolder.score_plot("a/b") != ReportFolder.score_plot("a_b")   # the hash keeps sanitised names apart
    assert {ReportFolder.GROUP_SIZES_PLOT, ReportFolder.KEYWORD_PLOT, ReportFolder.NN_SIMILARITY_PLOT} == {
        "plots/group_sizes.png", "plots/keyword_lift_support.png", "plots/nn_similarity.png"}
