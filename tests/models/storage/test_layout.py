import io

import numpy as np
import pyarrow as pa
import pytest

from models.storage import layout
from tests.models.storage.countingfs import CountingFileSystem


@pytest.fixture
def counting():
    CountingFileSystem.reset()
    yield CountingFileSystem
    CountingFileSystem.reset()


def test_npy_header_is_a_range_read_not_the_whole_array(counting):
    arr = np.zeros((4096, 128), np.float16)  # 1 MiB of data
    layout.write_npy("countmem://t1/img_emb_0.npy", arr)
    counting.reset()
    shape, dtype = layout.npy_shape("countmem://t1/img_emb_0.npy")
    assert shape == (4096, 128) and dtype == np.float16
    assert counting.calls == {"cat_file": 1} and counting.ranges[0][3] <= layout.NPY_HEADER_GUESS


def test_npy_header_longer_than_the_guess_takes_a_second_range():
    buf = io.BytesIO()
    np.save(buf, np.zeros((2,), dtype=[(f"field_{i:04d}", "<f4") for i in range(200)]))
    layout.atomic_write_bytes("memory://t2/wide.npy", buf.getvalue())
    shape, dtype = layout.npy_shape("memory://t2/wide.npy")
    assert shape == (2,) and len(dtype.names) == 200


def test_whole_file_reads_are_one_request_with_no_info(counting):
    layout.write_npy("countmem://t3/a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    layout.write_parquet("countmem://t3/m.parquet", pa.table({"key": ["a", "b"]}))
    layout.write_json("countmem://t3/c.json", {"x": 1})
    counting.reset()
    np.testing.assert_array_equal(layout.read_npy("countmem://t3/a.npy"), np.arange(6).reshape(2, 3))
    assert layout.read_parquet("countmem://t3/m.parquet").column("key").to_pylist() == ["a", "b"]
    assert layout.read_json("countmem://t3/c.json") == {"x": 1}
    assert counting.calls == {"cat_file": 3}


def test_exists_is_false_only_for_a_verified_absence(counting):
    layout.write_json("countmem://t4/c.json", {})
    assert layout.exists("countmem://t4/c.json") and not layout.exists("countmem://t4/none.json")
    counting.fail["info"] = 1
    with pytest.raises(ConnectionResetError):  # fsspec's own exists() would have said False
        layout.exists("countmem://t4/c.json")


def test_parquet_folder_reads_as_one_table():
    layout.write_parquet("memory://t5/d.parquet/part-0.parquet", pa.table({"key": ["a"]}))
    layout.write_parquet("memory://t5/d.parquet/part-1.parquet", pa.table({"key": ["b"]}))
    assert sorted(layout.read_parquet("memory://t5/d.parquet").column("key").to_pylist()) == ["a", "b"]


def test_embedding_folder_is_still_importable_from_layout():
    from models.storage.folders.embed import EmbeddingFolder

    assert layout.EmbeddingFolder is EmbeddingFolder
