"""ReportConfig: validation, and every field reaching the page through ``dupmine report``'s flags."""
from __future__ import annotations

import dataclasses
import re

import pytest
from PIL import Image

from models.report.config import ReportConfig
from tests.models.report import tiny


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(ReportConfig)])
@pytest.mark.parametrize("value", [0, -3, True, 2.0, "4"])
def test_rejects_non_positive_ints(field, value):
    with pytest.raises(ValueError, match=f"{field}="):
        ReportConfig(**{field: value})


def test_flags_are_built_from_the_config():
    from pipelines.report import build_parser

    args = build_parser().parse_args([])
    assert {f.name: getattr(args, f.name) for f in dataclasses.fields(ReportConfig)} == dataclasses.asdict(ReportConfig())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--max-rows", "0"])


def test_every_field_reaches_the_page(tmp_path):
    from pipelines import report

    t = tiny.write_all(tmp_path)
    index = report.run(["--embeddings", str(t.embeddings), "--dedup", str(t.dedup), "--mine", str(t.mine),
                        "--score", str(t.score), "--output", str(tmp_path / "r"),
                        "--max-groups", "1", "--max-members", "2", "--thumb-size", "20", "--max-rows", "1"])
    text = open(index, encoding="utf-8").read()
    top = text[text.index('<div id="top-groups">'):text.index('id="referenced-groups"')]
    assert top.count('class="group"') == 1 and top.count("<figure>") == 2             # max_groups, max_members
    assert 'width="20" height="20"' in text and "--thumb:20px" in text                 # thumb_size
    with Image.open(tmp_path / "r" / "thumbs" / sorted((tmp_path / "r" / "thumbs").iterdir())[0].name) as im:
        assert max(im.size) <= 20
    words = text[text.index('id="word-triggers"'):text.index('id="object-triggers"')]
    assert len(re.findall(r"<tr><td class=\"num\">", words)) == 1 and "Showing 1," in words   # max_rows


def test_report_written_to_an_object_store_url(tmp_path):
    import fsspec

    from models.report.render import ReportInputs, render_report

    t = tiny.write_all(tmp_path)
    index = render_report(ReportInputs(*map(str, t)), "memory://report-out/r/")
    assert index == "memory://report-out/r/index.html"
    fs = fsspec.filesystem("memory")
    assert "Content-Security-Policy" in fs.cat_file("/report-out/r/index.html").decode()
    assert len(fs.ls("/report-out/r/thumbs")) == 5 and fs.exists("/report-out/r/plots/group_sizes.png")
