"""models.report.page: escaping of every untrusted field, number formatting, JSON tables."""
from __future__ import annotations

import re

import pyarrow as pa

from models.report.config import ReportConfig, ReportInputs
from models.report.gather import ReportData
from models.report.page import CSP, KvKind, cut, evidence_lines, fmt, group_anchor, kv_tree, pct, render_page
from models.report.rows import (DuplicateGroup, Extraction, FlaggedPrompt, ObjectTrigger, RejectCount, ScoreImage,
                                ShownRow, WordTrigger)
from tests.models.report.test_report import PageChecker

EVIL = '<script>alert(1)</script>"\'&<img src=x onerror=alert(2)>'


def hostile_data() -> ReportData:
    """A ReportData whose every text field is the same hostile string (with a per-field suffix)."""
    def e(tag):
        return f"{EVIL}{tag}"

    key, gid = e("key"), e("gid")
    return ReportData(
        stage_json={"mine": {"summary": {e("jsonkey"): e("jsonvalue"), "flagged_prompts": e("count")}}},
        rejects=[RejectCount(e("stage"), e("reason"), 3)],
        top_groups=[DuplicateGroup(gid, 2, key, [key, e("member")], cosine={e("member"): 0.5})], groups_total=1,
        words=[WordTrigger(e("word"), 3, 2, gid, 0.5, 2.0, 0.01, [key], True, 1)],
        words_all=pa.table({"flagged": [True]}),
        objects=[ObjectTrigger(e("kw"), e("obj"), 2, 2, 1.0, 0.1, 3.0, 0.5, 0.01, True, 1)], object_examples=[[key]],
        prompts=[FlaggedPrompt(e("prompt"), e("kind"), e("pkw"), None, [gid, e("gid2")], 3, e("evidence"), 1)],
        prompt_scores=pa.table({"prompt": [e("prompt"), e("scored")], "check": [e("check")] * 2, "statistic": [1.0, 2.0],
                                "decision": [e("decision"), "yes"]}),
        extractions=[Extraction(e("gen"), e("eprompt"), key, 0.9, e("band"), gid)],
        side_summary={e("side"): [1, 2]}, grids=[ScoreImage(e("grid"), "score/grids/abc.png")],
        rows={key: ShownRow(key, e("sid"), e("caption"), None, "0", 0)}, thumbs={key: "thumbs/abc.jpg"},
        thumb_notes=[e("note")], plots={"score:" + e("plot"): "plots/x.png"},
    )


def test_every_untrusted_field_is_escaped():
    inputs = ReportInputs(embeddings=EVIL + "folder", dedup="d", mine="m", score="s")
    text = render_page(hostile_data(), inputs, ReportConfig())
    checker = PageChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack
    assert checker.tags.count("script") == 0
    # only our images: the key's thumbnail (group card, object example, extraction), the plot and the grid
    assert sorted(v for t, n, v in checker.attrs if t == "img" and n == "src") == [
        "plots/x.png", "score/grids/abc.png"] + ["thumbs/abc.jpg"] * 3
    assert not [a for a in checker.attrs if a[1].startswith("on")]
    assert "<script>" not in text and "<img src=x" not in text
    parsed = "".join(checker.text) + " ".join(v or "" for _, _, v in checker.attrs)
    for tag in ("key", "gid", "member", "word", "kw", "obj", "prompt", "kind", "pkw", "gid2", "evidence", "scored", "check",
                "decision", "gen", "eprompt", "band", "side", "grid", "caption", "note", "plot", "stage", "reason",
                "jsonkey", "jsonvalue", "count", "folder"):
        assert EVIL + tag in parsed, tag           # shown, as text, intact
    # attributes escaped with the stdlib's spelling, quotes included
    assert f'title="{EVIL.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace(chr(34), "&quot;").replace(chr(39), "&#x27;")}caption"' in text
    assert f'content="{CSP.replace(chr(39), "&#x27;")}"' in text
    assert f'id="{group_anchor(EVIL + "gid")}"' in text and re.fullmatch(r"group-[0-9a-f]{16}", group_anchor(EVIL))


def test_formatting():
    assert [fmt(v) for v in (None, True, 1234567, 0.000123456, float("nan"), float("inf"), -float("inf"), "x")] == [
        "\u2013", "yes", "1,234,567", "0.000123", "\u2013", "\u221e", "-\u221e", "x"]
    assert pct(0.12345) == "12.35%" and pct(None) == "\u2013"
    assert cut("abcdef", 4) == "abc\u2026" and cut("abc", 4) == "abc" and cut(None) == ""


def test_kv_tree_shapes():
    bands = kv_tree({"low": {"AMS": 0.1, "UMS": 0.05}, "high": {"AMS": 0.25, "UMS": 0.5}})
    assert bands.kind == KvKind.MATRIX and bands.columns == ("AMS", "UMS")
    assert bands.rows == (("low", ("0.1", "0.05")), ("high", ("0.25", "0.5")))
    assert kv_tree({}).kind == KvKind.EMPTY
    long = kv_tree(list(range(25)))
    assert long.kind == KvKind.LONG and long.count == 25 and long.text == str(list(range(20)))
    nested = kv_tree({"a": [{"b": 1}, {"c": None}], "d": 0.5, "e": True})
    assert nested.kind == KvKind.TABLE
    assert [row.name for row in nested.rows] == ["a", "d", "e"]
    items, half, yes = (row.value for row in nested.rows)
    assert items.kind == KvKind.ITEMS and [n.rows for n in items.rows] == [(("b", kv_tree(1)),), (("c", kv_tree(None)),)]
    assert half.text == "0.5" and yes.text == "True" and kv_tree(None).text == "null"


def test_evidence_lines():
    assert evidence_lines('{"lift": 8.0, "groups": ["a", "b"]}') == [("lift", "8"), ("groups", '["a", "b"]')]
    assert evidence_lines("not json") is None and evidence_lines("[1]") is None and evidence_lines(None) is None
