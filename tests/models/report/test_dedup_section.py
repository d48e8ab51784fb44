"""The dedup section plots dedup's ``nn_similarity.json`` (issue 14 item 11) when the file is there."""
from __future__ import annotations

import json

from PIL import Image

from models.report.render import ReportInputs, render_report
from tests.models.report import tiny
from tests.models.report.test_plots import RED, has_colour
from tests.models.report.test_report import check_page

NN = {"bin_edges": [0.0, 0.25, 0.5, 0.75, 0.9, 1.0], "counts": [10, 300, 120, 4, 6], "threshold": 0.9,
      "n_sampled": 440, "space": "cosine"}


def report_text(tmp_path, nn: dict | str | None) -> str:
    dd = tiny.write_dedup(tmp_path)
    if nn is not None:
        (dd / "nn_similarity.json").write_text(nn if isinstance(nn, str) else json.dumps(nn))
    index = render_report(ReportInputs(dedup=str(dd)), str(tmp_path / "r"))
    text, _ = check_page(index)
    return text[text.index('id="groups"'):text.index('id="word-triggers"')]


def test_histogram_with_threshold_in_the_dedup_section(tmp_path):
    section = report_text(tmp_path, NN)
    assert '<h3 id="nn-similarity">' in section and '<img src="plots/nn_similarity.png"' in section
    assert "440 sampled rows, each with the cosine similarity" in section and "(0.9)" in section
    plot = tmp_path / "r" / "plots" / "nn_similarity.png"
    with Image.open(plot) as im:
        assert im.size == (550, 360)
    assert has_colour(plot, RED)   # the threshold line


def test_absent_and_malformed_files(tmp_path):
    assert "nn-similarity" not in report_text(tmp_path / "a", None)
    bad = report_text(tmp_path / "b", NN | {"counts": [1, 2], "threshold": "high"})
    assert '<p class="note" id="nn-similarity">nn_similarity.json not plotted: nn_similarity.json has a non-numeric' in bad
    bad = report_text(tmp_path / "c", NN | {"counts": [1, 2]})
    assert "6 bin_edges for 2 counts" in bad and not (tmp_path / "c" / "r" / "plots" / "nn_similarity.png").exists()
    assert "every count is 0" in report_text(tmp_path / "d", NN | {"counts": [0] * 5})
