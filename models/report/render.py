"""Static HTML report of a dupmine run (embed, dedup, mine and score outputs): the entry point.

:func:`render_report` reads the stage folders named by a :class:`ReportInputs`
(:mod:`models.report.gather`), writes the thumbnails, copied score images and
plots, then the page (:mod:`models.report.page`) into one self-contained
folder laid out by :class:`models.storage.folders.report.ReportFolder`. The
page opens from disk (``file://``) with no server and no network.
"""
from __future__ import annotations

import logging
import os

from models.report.config import ReportConfig, ReportInputs
from models.report.gather import gather
from models.report.page import render_page
from models.storage import layout
from models.storage.folders.report import ReportFolder

log = logging.getLogger("dupmine.report")

__all__ = ["ReportConfig", "ReportInputs", "render_report"]


def _report_root(output_dir: str) -> str:
    """A local folder made absolute; an fsspec URL (``s3://...``) as given."""
    return output_dir.rstrip("/") if "://" in output_dir else os.path.abspath(output_dir)


def render_report(inputs: ReportInputs, output_dir: str, **options) -> str:
    """Write the static report folder and return the path of its ``index.html``.

    Args:
      inputs: the stage folders (local paths or fsspec URLs); ``None`` ones get a note.
      output_dir: folder to write (local path or fsspec URL); files of an earlier report are overwritten.
      **options: :class:`ReportConfig` fields (``max_groups``, ``max_members``, ``thumb_size``, ``max_rows``).

    Returns:
      Path of ``output_dir/index.html``.

    Raises:
      ValueError: a size or count is not positive, or every input is ``None``.
      TypeError: an option that is not a :class:`ReportConfig` field.
      FileNotFoundError: a given input folder does not exist, or the dedup folder has no ``groups/``.
    """
    cfg = ReportConfig(**options)
    if not any(inputs.as_dict().values()):
        raise ValueError("nothing to report: every input folder (embeddings, dedup, mine, score) is None")
    for name, path in inputs.as_dict().items():
        if path is not None and not layout.exists(path):
            raise FileNotFoundError(f"{name} folder {path!r} does not exist")
    report = ReportFolder(_report_root(output_dir))
    data = gather(inputs, report, cfg)
    layout.atomic_write_bytes(report.index, render_page(data, inputs, cfg).encode("utf-8"))
    log.info("report: %d groups, %d thumbnails, %d plots -> %s", len(data.groups), len(data.thumbs), len(data.plots), report.index)
    return report.index
