"""models.report.plots: each figure carries the data it was given, and each saved PNG is that figure."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from models.report import plots
from models.report.rows import NnSimilarity
from models.storage.folders.report import ReportFolder

RED = (0xd1, 0x24, 0x2f)


def has_colour(path, rgb, tol=12) -> bool:
    with Image.open(path) as im:
        px = np.asarray(im.convert("RGB"), dtype=int)
    return bool((np.abs(px - np.array(rgb)).max(axis=2) <= tol).any())


def test_group_sizes(tmp_path):
    fig = plots.group_sizes_figure({1: 50, 2: 7, 10: 1})
    (line,) = fig.axes[0].lines
    np.testing.assert_array_equal(line.get_xydata(), [[1, 50], [2, 7], [10, 1]])
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    assert plots.group_sizes_figure({}) is None
    report = ReportFolder(str(tmp_path))
    rel = plots.plot_group_sizes({1: 50, 2: 7}, report)
    assert rel == "plots/group_sizes.png"
    with Image.open(tmp_path / rel) as im:
        assert im.format == "PNG" and im.size == (550, 360)


def test_keywords_split_flagged_and_drop_bad_rows():
    table = pa.table({"n": [10, 3, 5, 0], "lift": [1.5, 8.0, None, 2.0], "flagged": [False, True, True, None]})
    fig = plots.keywords_figure(table)
    tested, flagged = fig.axes[0].collections
    np.testing.assert_array_equal(tested.get_offsets(), [[10, 1.5]])   # n = 0 and lift = null are left out
    np.testing.assert_array_equal(flagged.get_offsets(), [[3, 8.0]])
    assert plots.keywords_figure(pa.table({"n": [1]})) is None
    assert plots.keywords_figure(pa.table({"n": [0], "lift": [1.0]})) is None


def test_score_histograms_and_thresholds(tmp_path):
    scores = pa.table({"check": ["wen"] * 4 + ["plaplace"] * 2 + ["empty"],
                       "statistic": [0.1, 0.2, 0.9, float("nan"), 1.0, 2.0, None],
                       "threshold": [0.5, 0.5, 0.5, 0.5, float("nan"), None, 0.1]})
    figs = plots.score_figures(scores)
    assert list(figs) == ["plaplace", "wen"]   # sorted; "empty" has no finite statistic
    ax = figs["wen"].axes[0]
    assert sum(p.get_height() for p in ax.patches) == 3   # the NaN statistic is not counted
    assert [tuple(line.get_xdata()) for line in ax.lines] == [(0.5, 0.5)]
    assert len(figs["plaplace"].axes[0].lines) == 0          # no finite threshold
    rels = plots.plot_scores(scores, ReportFolder(str(tmp_path)))
    assert rels == {c: ReportFolder.score_plot(c) for c in ("plaplace", "wen")}
    assert has_colour(tmp_path / rels["wen"], RED) and not has_colour(tmp_path / rels["plaplace"], RED)


def nn_hist(**kw) -> NnSimilarity:
    obj = {"bin_edges": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0], "counts": [400, 90, 0, 3, 12], "threshold": 0.9,
           "n_sampled": 505, "space": "cosine"} | kw
    return NnSimilarity.from_json(obj)


def test_nn_similarity_histogram(tmp_path):
    hist = nn_hist()
    assert hist.at_or_above_threshold() == 12
    fig = plots.nn_similarity_figure(hist)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [400, 90, 0, 3, 12]
    assert [p.get_x() for p in ax.patches] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.1] * 5)
    assert ax.get_yscale() == "log"
    assert ax.get_xlim() == pytest.approx((0.5 - 0.015, 1.0 + 0.015))   # the filled bins and the threshold
    assert [tuple(line.get_xdata()) for line in ax.lines] == [(0.9, 0.9)]
    wide = plots.nn_similarity_figure(nn_hist(bin_edges=[-1.0, -0.5, 0.0, 0.5, 0.75, 1.0], counts=[0, 0, 5, 7, 0],
                                              threshold=0.95))
    assert wide.axes[0].get_xlim() == pytest.approx((0.0 - 0.0285, 0.95 + 0.0285))
    assert "12 of 505" in ax.get_legend().get_texts()[0].get_text()
    rel = plots.plot_nn_similarity(hist, ReportFolder(str(tmp_path)))
    assert rel == "plots/nn_similarity.png" and has_colour(tmp_path / rel, RED)
    assert plots.nn_similarity_figure(nn_hist(counts=[0] * 5)) is None


@pytest.mark.parametrize("bad, message", [
    ({"counts": [1, 2]}, "bin_edges for 2 counts"),
    ({"bin_edges": [0.5, 0.4, 0.7, 0.8, 0.9, 1.0]}, "strictly increasing"),
    ({"counts": [1, -1, 0, 0, 0]}, "negative"),
    ({"threshold": float("nan")}, "not finite"),
    ({"counts": ["x"] * 5}, "non-numeric"),
])
def test_nn_similarity_rejects_malformed(bad, message):
    with pytest.raises(ValueError, match=message):
        nn_hist(**bad)
    with pytest.raises(ValueError, match="lacks \\['space'\\]"):
        NnSimilarity.from_json({"bin_edges": [0, 1], "counts": [1], "threshold": 0.5, "n_sampled": 1})


def test_saved_png_is_the_figure(tmp_path):
    """The file is the Agg rendering of the figure: same bytes as saving the figure again."""
    rel = plots.plot_group_sizes({1: 3, 4: 1}, ReportFolder(str(tmp_path)))
    fig = plots.group_sizes_figure({1: 3, 4: 1})
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert (tmp_path / rel).read_bytes() == buf.getvalue()
