"""Row reads of embedding parts (transforms.dedup.read.read_npy_rows): the rows asked for, read by runs, never
the whole file, locally by pread and remotely by ranged requests."""
import numpy as np
import pytest

from models.storage import layout
from tests.models.storage.countingfs import CountingFileSystem
from transforms.dedup import read


@pytest.fixture
def counting():
    CountingFileSystem.reset()
    read._HEADERS.clear()
    yield CountingFileSystem
    CountingFileSystem.reset()
    read._HEADERS.clear()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_local_rows_equal_the_array_rows(tmp_path, dtype):
    arr = np.random.default_rng(0).standard_normal((1000, 24)).astype(dtype)
    path = str(tmp_path / "img_emb_0.npy")
    np.save(path, arr)
    rng = np.random.default_rng(1)
    for rows in (np.arange(0), np.arange(1000), np.array([999]), np.r_[0:5, 7, 9:12, 500, 998:1000],
                 np.sort(rng.choice(1000, 137, replace=False))):
        got = read.read_npy_rows(path, rows)
        assert got.dtype == dtype and got.shape == (len(rows), 24)
        np.testing.assert_array_equal(got, arr[rows])


def test_remote_rows_are_one_range_per_run_and_the_header_is_read_once(counting, monkeypatch):
    arr = np.arange(4000 * 8, dtype=np.float32).reshape(4000, 8)  # 32-byte rows
    path = "countmem://rows/img_emb_0.npy"
    layout.write_npy(path, arr)
    monkeypatch.setattr(read, "REMOTE_GAP_BYTES", 32 * 100)  # rows at most 100 apart share a range
    counting.reset()
    rows = np.array([3, 50, 140, 1000, 1001, 3999])  # runs: [3..140], [1000, 1001], [3999]
    np.testing.assert_array_equal(read.read_npy_rows(path, rows), arr[rows])
    data = [r for r in counting.ranges if r[1] != 0]  # the first range is the header
    assert [(s, e) for _, s, e, _ in data] == [(128 + 32 * lo, 128 + 32 * (hi + 1)) for lo, hi in
                                               ((3, 140), (1000, 1001), (3999, 3999))]
    assert counting.calls["info"] == 1 and sum(n for *_, n in data) < arr.nbytes / 10
    counting.reset()
    np.testing.assert_array_equal(read.read_npy_rows(path, np.array([7])), arr[[7]])
    assert counting.calls == {"cat_file": 1}  # header cached for the process: no info, no header read


def test_a_truncated_part_is_an_error_not_short_rows(tmp_path):
    path = str(tmp_path / "img_emb_0.npy")
    np.save(path, np.ones((100, 16), np.float16))
    with open(path, "r+b") as f:
        f.truncate(128 + 50 * 32)  # 50 of 100 rows left
    read._HEADERS.clear()
    np.testing.assert_array_equal(read.read_npy_rows(path, np.arange(10)), np.ones((10, 16), np.float16))
    with pytest.raises(ValueError, match="truncated part"):
        read.read_npy_rows(path, np.array([10, 80]))
    with pytest.raises(ValueError, match="cannot read rows"):
        read.read_npy_rows(path, np.array([100]))
