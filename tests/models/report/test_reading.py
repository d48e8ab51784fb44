"""models.report.reading: tolerant readers (missing files, missing columns, interrupted writes)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from models.report.reading import (column, files_with_suffix, parquet_files, parquet_rows, read_each, read_json_object,
                                   read_table)
from models.storage import layout


def test_folders_files_and_missing(tmp_path):
    folder = tmp_path / "groups"
    folder.mkdir()
    pq.write_table(pa.table({"a": [1, 2]}), folder / "p1.parquet")
    pq.write_table(pa.table({"a": [3], "b": ["x"]}), folder / "p0.parquet")
    (folder / "p2.parquet.tmp-123").write_bytes(b"half written")
    (folder / "notes.txt").write_text("x")
    assert [f.rsplit("/", 1)[1] for f in parquet_files(str(folder))] == ["p0.parquet", "p1.parquet"]
    assert parquet_files(str(folder / "p1.parquet")) == [str(folder / "p1.parquet")]
    assert parquet_files(str(tmp_path / "missing")) == [] and read_table(str(tmp_path / "missing")) is None
    assert [t.column_names for t in read_each(str(folder), ["b", "zzz"])] == [["b"], []]
    table = read_table(str(folder))
    assert sorted(table.column("a").to_pylist()) == [1, 2, 3] and table.column("b").null_count == 2
    assert read_table(str(folder), ["a"], filters=[("a", ">", 1)]).column("a").to_pylist() == [3, 2]
    assert parquet_rows(str(folder / "p1.parquet")) == 2
    assert column(table, "zzz") == [None] * 3 and column(None, "a") == []


def test_json_and_suffix_listing(tmp_path):
    layout.write_json(str(tmp_path / "list.json"), [1, 2])
    layout.write_json(str(tmp_path / "obj.json"), {"k": 1})
    assert read_json_object(str(tmp_path / "list.json")) == {"value": [1, 2]}
    assert read_json_object(str(tmp_path / "obj.json")) == {"k": 1} and read_json_object(str(tmp_path / "no.json")) is None
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.png").write_bytes(b"1")
    (tmp_path / "g" / "B.PNG").write_bytes(b"2")
    (tmp_path / "g" / "dir.png").mkdir()
    (tmp_path / "g" / "c.jpg").write_bytes(b"3")
    found = files_with_suffix(str(tmp_path / "g"), ".png")
    assert sorted(found) == ["B", "a"] and files_with_suffix(str(tmp_path / "none"), ".png") == {}


def test_object_store_urls():
    """memory:// stands in for s3:// / gs://: the same readers, no local path assumed."""
    root = "memory://report-reading"
    layout.write_parquet(f"{root}/groups/g0.parquet", pa.table({"a": [1]}))
    layout.atomic_write_bytes(f"{root}/grids/side_00.png", b"png")
    assert parquet_files(f"{root}/groups") == [f"{root}/groups/g0.parquet"]
    assert read_table(f"{root}/groups").column("a").to_pylist() == [1] and parquet_rows(f"{root}/groups/g0.parquet") == 1
    assert files_with_suffix(f"{root}/grids", ".png") == {"side_00": f"{root}/grids/side_00.png"}
