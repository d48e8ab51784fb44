"""The report's plots: matplotlib on an Agg canvas (no display, no global pyplot state), saved as PNG.

Each ``*_figure`` function draws one figure from the data (``None`` when
there is nothing to plot); each ``plot_*`` function saves it as a PNG into the
report folder and returns its report-relative path.
"""
from __future__ import annotations

import io
import math
from collections import defaultdict
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.report.reading import column
from models.report.rows import NnSimilarity
from models.storage import layout
from models.storage.folders.report import ReportFolder

BLUE, RED, GREY = "#1f6feb", "#d1242f", "#888888"


def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in the test and report extras
        raise ImportError("the report's plots need matplotlib: pip install 'dupmine[report]'") from exc
    fig = Figure(figsize=(5.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plain(text: str) -> str:
    """Text for matplotlib with mathtext switched off ($ escaped)."""
    return str(text).replace("$", r"\$")


def _save(fig, report: ReportFolder, rel: str) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    layout.atomic_write_bytes(report.path(rel), buf.getvalue())
    return rel


def _plain_log_ticks(ax, axes: str = "xy") -> None:
    """Log axes labelled 1, 2, 5, 10, 20, ... instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in [a for name, a in (("x", ax.xaxis), ("y", ax.yaxis)) if name in axes]:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN."""
    return np.asarray(pc.fill_null(table.column(name).cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=float)


def group_sizes_figure(hist: dict[int, int]):
    """Group size vs number of groups, log-log (singletons included): one marker line, x = sizes, y = counts."""
    if not hist:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    sizes = np.array(sorted(hist), dtype=float)
    counts = np.array([hist[int(s)] for s in sizes], dtype=float)
    ax.loglog(sizes, counts, "o", color=BLUE)
    _plain_log_ticks(ax)
    ax.set_xlabel("group size (images)")
    ax.set_ylabel("number of groups")
    ax.set_title("Group-size distribution")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_group_sizes(hist: dict[int, int], report: ReportFolder) -> str | None:
    fig = group_sizes_figure(hist)
    return None if fig is None else _save(fig, report, report.GROUP_SIZES_PLOT)


def keywords_figure(table: pa.Table | None):
    """Keyword support vs lift, log-log: a grey scatter of the tested keywords, a red one of the flagged.

    Rows with a null or non-positive support or lift are left out.
    """
    if table is None or table.num_rows == 0 or not {"n", "lift"} <= set(table.column_names):
        return None
    n, lift = _floats(table, "n"), _floats(table, "lift")
    flagged = np.asarray(column(table, "flagged"), dtype=object) == True  # noqa: E712 (nulls are not flagged)
    ok = np.isfinite(n) & np.isfinite(lift) & (n > 0) & (lift > 0)
    if not ok.any():
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(n[ok & ~flagged], lift[ok & ~flagged], s=10, alpha=0.5, color=GREY, label="tested")
    if (ok & flagged).any():
        ax.scatter(n[ok & flagged], lift[ok & flagged], s=18, color=RED, label="flagged")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("support n (captions with the keyword)")
    ax.set_ylabel("lift P(G|w) / P(G)")
    ax.set_title("Keywords: lift vs support")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_keywords(table: pa.Table | None, report: ReportFolder) -> str | None:
    fig = keywords_figure(table)
    return None if fig is None else _save(fig, report, report.KEYWORD_PLOT)


class _CheckValue(NamedTuple):
    statistic: float | None
    threshold: float | None


def score_figures(scores: pa.Table | None) -> dict:
    """One histogram of the statistic per score check, its finite thresholds (at most 3) as dashed vertical lines.

    Returns:
      ``{check: figure}``, checks sorted by name; checks without a finite statistic get no figure.
    """
    if scores is None or scores.num_rows == 0 or not {"check", "statistic"} <= set(scores.column_names):
        return {}
    by_check: dict[str, list[_CheckValue]] = defaultdict(list)
    for check, stat, thr in zip(column(scores, "check"), column(scores, "statistic"), column(scores, "threshold")):
        by_check[str(check)].append(_CheckValue(stat, thr))
    out = {}
    for check, values in sorted(by_check.items()):
        stats = np.array([float(v.statistic) for v in values if v.statistic is not None], dtype=float)
        stats = stats[np.isfinite(stats)]
        if stats.size == 0:
            continue
        fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(stats, bins=min(30, max(5, stats.size)), color=BLUE, alpha=0.8, edgecolor="white")
        thresholds = sorted({float(v.threshold) for v in values if v.threshold is not None and math.isfinite(float(v.threshold))})
        for t in thresholds[:3]:
            ax.axvline(t, color=RED, linestyle="--", label=f"threshold {t:.3g}")
        if thresholds:
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("statistic")
        ax.set_ylabel("prompts")
        ax.set_title(_plain(f"Score check: {check}"))
        out[check] = fig
    return out


def plot_scores(scores: pa.Table | None, report: ReportFolder) -> dict[str, str]:
    """:func:`score_figures` saved: ``{check: relative path}``."""
    return {check: _save(fig, report, report.score_plot(check)) for check, fig in score_figures(scores).items()}


def nn_similarity_figure(hist: NnSimilarity | None):
    """Dedup's sampled nearest-neighbour similarities: one bar per bin (log count), the threshold as a red line.

    Bars: ``ax.patches`` in bin order, left edge ``bin_edges[i]``, height
    ``counts[i]``; the threshold is the one vertical line. ``None`` when every count is 0.
    """
    if hist is None or not any(hist.counts):
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    edges = np.asarray(hist.bin_edges, dtype=float)
    ax.bar(edges[:-1], np.asarray(hist.counts, dtype=float), width=np.diff(edges), align="edge", color=BLUE,
           edgecolor="white", linewidth=0.5)
    ax.set_yscale("log")
    ax.set_ylim(0.5, 5.0 * max(hist.counts))   # headroom above the tallest bar for the legend
    filled = np.flatnonzero(np.asarray(hist.counts) > 0)   # dedup bins all of [-1, 1]: show where samples are
    lo, hi = min(edges[filled[0]], hist.threshold), max(edges[filled[-1] + 1], hist.threshold)
    pad = 0.03 * max(hi - lo, 1e-6)
    ax.set_xlim(lo - pad, hi + pad)
    _plain_log_ticks(ax, "y")
    above = hist.at_or_above_threshold()
    ax.axvline(hist.threshold, color=RED, linestyle="--",
               label=f"threshold {hist.threshold:.3g} ({above:,} of {hist.n_sampled:,} sampled at or above)")
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(_plain(f"nearest-neighbour similarity ({hist.space})"))
    ax.set_ylabel("sampled rows (log)")
    ax.set_title("Nearest-neighbour similarities (sample)")
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_nn_similarity(hist: NnSimilarity | None, report: ReportFolder) -> str | None:
    fig = nn_similarity_figure(hist)
    return None if fig is None else _save(fig, report, report.NN_SIMILARITY_PLOT)
