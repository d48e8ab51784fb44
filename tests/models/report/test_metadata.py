"""models.report.metadata: keyword matching as the mine stage counts it, and the one-pass metadata scan."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from models.report.metadata import ExampleQuery, count_rows, keyword_regex, scan_metadata
from tests.models.report import tiny


def matches(keyword: str, captions: list[str]) -> list[bool]:
    return pc.match_substring_regex(pa.array(captions), keyword_regex(keyword), ignore_case=True).to_pylist()


def test_keyword_regex_matches_word_prefixes_in_order():
    assert matches("paint", ["Painting of a cat", "repaint the wall", "paint"]) == [True, False, True]
    assert matches("starry night", ["a STARRY, nights sky", "night starry", "starrynight"]) == [True, False, False]
    assert matches("café", ["le Café noir", "xcafé"]) == [True, False]  # Unicode word boundaries
    assert keyword_regex("  --  ") is None


def test_scan_finds_wanted_rows_and_bounded_examples(tmp_path):
    emb = tiny.write_embeddings(tmp_path)
    sid = {k: tiny.sid(tmp_path, k) for k in tiny.KEYS}
    # tagged by key or by sample id alike
    queries = [ExampleQuery("ball", {"k0", sid["k1"], "k3"}), ExampleQuery("cube", {"k0"}), ExampleQuery("", {"k0"})]
    scan = scan_metadata(str(emb), {"k4", sid["k2"], "missing"}, queries, per_query=2)
    assert scan.examples == [[sid["k0"], sid["k1"]], [], []]   # at most 2, in metadata order; k2 says "cube", not tagged
    assert set(scan.rows) == {sid["k0"], sid["k1"], sid["k2"], sid["k4"], "k4"}   # asked by key: found under it too
    row = scan.rows["k4"]
    assert row is scan.rows[sid["k4"]] and row.caption == "green" and row.part == "00000" and row.index == 4
    assert count_rows(str(emb)) == len(tiny.KEYS)
