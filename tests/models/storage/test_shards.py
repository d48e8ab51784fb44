import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage.shards import InputError, Reject, Sample, ShardFormat, expand_braces, list_shards, read_shard
from tests.helpers import jpeg, noise_image, sample_members, write_tar


def _items(shard):
    return list(read_shard(shard))


def test_expand_braces_ranges_lists_and_padding():
    assert expand_braces("a/{00008..00011}.tar") == [f"a/{i:05d}.tar" for i in range(8, 12)]
    assert expand_braces("{x,y}/{1..2}") == ["x/1", "x/2", "y/1", "y/2"]
    with pytest.raises(InputError):
        expand_braces("{5..1}")


def test_list_shards_globs_braces_folders_and_errors(tmp_path):
    for i in range(3):
        write_tar(tmp_path / f"{i:05d}.tar", sample_members(f"{i:05d}0000", jpeg(noise_image(i))))
    pq.write_table(pa.table({"key": ["x"], "status": ["success"]}), tmp_path / "00000.parquet")  # sidecar, not a shard
    by_dir = list_shards(str(tmp_path))
    assert [s.shard_id for s in by_dir] == ["00000", "00001", "00002"]
    assert all(s.format == ShardFormat.WEBDATASET for s in by_dir)
    assert [s.shard_id for s in list_shards(str(tmp_path / "{00001..00002}.tar"))] == ["00001", "00002"]
    assert len(list_shards(str(tmp_path / "*.tar"))) == 3
    assert len(list_shards(f"file://{tmp_path}/00000.tar")) == 1  # fsspec URL
    with pytest.raises(InputError, match="matches no file"):
        list_shards(str(tmp_path / "{00005..00006}.tar"))


def test_same_stem_in_two_folders_gets_distinct_ids(tmp_path):
    for d in ("a", "b"):
        os.makedirs(tmp_path / d)
        write_tar(tmp_path / d / "00000.tar", sample_members("000000000", jpeg(noise_image(0))))
    ids = [s.shard_id for s in list_shards(f"{tmp_path}/a/00000.tar,{tmp_path}/b/00000.tar")]
    assert ids == ["a_00000", "b_00000"]


def test_tar_sidecar_failed_rows_become_rejects(tmp_path):
    write_tar(tmp_path / "00000.tar", sample_members("000000000", jpeg(noise_image(0))) + sample_members("000000001", jpeg(noise_image(1))))
    pq.write_table(pa.table({
        "key": ["000000000", "000000001", "000000002", "000000003"],
        "url": ["u0", "u1", "u2", "u3"],
        "status": ["success", "success", "failed_to_download", "failed_to_resize"],
        "error_message": [None, None, "HTTP Error 404: Not Found", "cannot identify image file"],
    }), tmp_path / "00000.parquet")
    items = _items(list_shards(str(tmp_path / "00000.tar"))[0])
    samples = [i for i in items if isinstance(i, Sample)]
    rejects = {i.key: i.reason for i in items if isinstance(i, Reject)}
    assert [s.key for s in samples] == ["000000000", "000000001"]
    assert samples[0].caption == "a caption" and samples[0].meta["url"] == "http://x.invalid/000000000.jpg"
    assert rejects == {"000000002": "failed_to_download: HTTP Error 404: Not Found",
                       "000000003": "failed_to_resize: cannot identify image file"}


def test_truncated_tar_keeps_good_samples_and_rejects_the_rest(tmp_path):
    members = []
    for i in range(4):
        members += sample_members(f"00000000{i}", jpeg(noise_image(i, (128, 128))))
    write_tar(tmp_path / "00000.tar", members)
    pq.write_table(pa.table({"key": [f"00000000{i}" for i in range(4)], "status": ["success"] * 4}), tmp_path / "00000.parquet")
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: int(len(data) * 0.6)])
    items = _items(list_shards(str(tmp_path / "00000.tar"))[0])
    keys = [i.key for i in items]
    assert sorted(keys) == [f"00000000{i}" for i in range(4)]  # every sample accounted for exactly once
    assert any(isinstance(i, Sample) for i in items)
    reasons = [i.reason for i in items if isinstance(i, Reject)]
    assert any(r.startswith("truncated-shard") for r in reasons) or any(r.startswith("missing-from-shard") for r in reasons)


def test_truncated_tar_without_sidecar_records_a_shard_level_reject(tmp_path):
    write_tar(tmp_path / "00000.tar", sample_members("000000000", jpeg(noise_image(0, (256, 256)))))
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[:700])
    items = _items(list_shards(str(tmp_path / "00000.tar"))[0])
    assert len(items) == 1 and isinstance(items[0], Reject) and items[0].reason.startswith("truncated-shard")


def test_members_missing_json_txt_or_image(tmp_path):
    img = jpeg(noise_image(0))
    members = [
        ("000000000.jpg", img), ("000000000.txt", b"only txt"),                       # no json: embedded, sha computed
        ("000000001.jpg", img), ("000000001.json", json.dumps({"key": "000000001", "caption": "from json", "status": "success"}).encode()),
        ("000000002.txt", b"orphan caption"),                                        # no image
        ("000000003.jpg", img), ("000000003.txt", "caf\xe9".encode("latin-1")),      # not UTF-8
    ]
    write_tar(tmp_path / "00000.tar", members)
    items = {i.key: i for i in _items(list_shards(str(tmp_path / "00000.tar"))[0])}
    assert items["000000000"].caption == "only txt" and len(items["000000000"].meta["sha256"]) == 64
    assert items["000000001"].caption == "from json"
    assert isinstance(items["000000002"], Reject) and items["000000002"].reason == "missing-image"
    assert items["000000003"].caption == "caf\ufffd"


def test_empty_and_vanished_shards(tmp_path):
    write_tar(tmp_path / "00000.tar", [])
    shard = list_shards(str(tmp_path / "00000.tar"))[0]
    assert _items(shard) == []
    os.remove(tmp_path / "00000.tar")
    items = _items(shard)
    assert len(items) == 1 and items[0].key == "" and items[0].reason.startswith("shard-missing")


def test_parquet_and_files_formats(tmp_path):
    img = jpeg(noise_image(0))
    pq.write_table(pa.table({
        "key": ["000000000", "000000001"], "url": ["u0", "u1"], "caption": ["c0", None],
        "status": ["success", "failed_to_download"], "error_message": [None, "timeout"],
        "jpg": [img, None],
    }), tmp_path / "00000.parquet")
    shard = list_shards(str(tmp_path / "00000.parquet"))[0]
    assert shard.format == ShardFormat.PARQUET
    items = _items(shard)
    assert isinstance(items[0], Sample) and items[0].image == img and items[0].caption == "c0"
    assert isinstance(items[1], Reject) and items[1].reason == "failed_to_download: timeout"

    files = tmp_path / "files" / "00000"
    os.makedirs(files)
    for name, data in sample_members("000000005", img, caption="from files"):
        (files / name).write_bytes(data)
    shards = list_shards(str(tmp_path / "files"))
    assert [(s.format, s.shard_id) for s in shards] == [(ShardFormat.FILES, "00000")]
    (item,) = _items(shards[0])
    assert item.key == "000000005" and item.caption == "from files"


# --- transient errors are raised, verified damage is a reject (issue 14.3) ------------------------


def _remote_tar(name: str, n: int = 3, sidecar: bool = True, stem: str = "00000"):
    """A tar shard (+ sidecar) on the counting in-memory filesystem; returns its ShardRef and size."""
    from models.storage import layout
    from tests.models.storage.countingfs import CountingFileSystem  # noqa: F401 - registers countmem://

    from tests.models.storage.builders import tar_bytes

    members = []
    for i in range(n):
        members += sample_members(f"00000000{i}", jpeg(noise_image(i, (96, 96))))
    data = tar_bytes(members)
    layout.atomic_write_bytes(f"countmem://{name}/{stem}.tar", data)
    if sidecar:
        layout.write_parquet(f"countmem://{name}/{stem}.parquet",
                             pa.table({"key": [f"00000000{i}" for i in range(n)], "status": ["success"] * n}))
    return list_shards(f"countmem://{name}/{stem}.tar")[0], len(data)


@pytest.fixture
def counting():
    from tests.models.storage.countingfs import CountingFileSystem

    CountingFileSystem.reset()
    yield CountingFileSystem
    CountingFileSystem.reset()


def test_a_failed_info_raises_instead_of_shard_missing(counting):
    shard, _ = _remote_tar("tr1")
    counting.fail["info"] = 1
    with pytest.raises(ConnectionResetError):
        _items(shard)
    assert [type(i) for i in _items(shard)] == [Sample] * 3  # the retry reads it whole


def test_a_connection_reset_mid_tar_raises_instead_of_truncated_shard(counting):
    shard, size = _remote_tar("tr2")
    counting.fail["read_after"] = size // 2
    with pytest.raises(ConnectionResetError):
        _items(shard)


def test_a_failed_sidecar_read_raises(counting):
    shard, _ = _remote_tar("tr3")
    counting.fail["cat_file"] = 1  # the sidecar is the first whole-file read
    with pytest.raises(ConnectionResetError):
        _items(shard)


def test_verified_truncation_and_corruption_are_rejects(tmp_path):
    members = []
    for i in range(4):
        members += sample_members(f"00000000{i}", jpeg(noise_image(i, (96, 96))))
    write_tar(tmp_path / "00000.tar", members)
    data = (tmp_path / "00000.tar").read_bytes()
    # cut exactly at a member boundary: tarfile stops silently there; the missing end block proves truncation
    import tarfile as _tarfile

    with _tarfile.open(tmp_path / "00000.tar") as tar:
        offsets = [m.offset for m in tar.getmembers()]
    (tmp_path / "00000.tar").write_bytes(data[: offsets[6]])
    items = _items(list_shards(str(tmp_path / "00000.tar"))[0])
    assert [i.key for i in items if isinstance(i, Sample)] == ["000000000", "000000001"]  # members 0-5
    assert [i.reason.split(" ")[0] for i in items if isinstance(i, Reject)] == ["truncated-shard"]
    # a garbage header mid-archive: tarfile also stops silently; the block it stopped at is not zeros
    damaged = bytearray(data)
    damaged[offsets[6]: offsets[6] + 512] = b"\xff" * 512
    (tmp_path / "00000.tar").write_bytes(bytes(damaged))
    items = _items(list_shards(str(tmp_path / "00000.tar"))[0])
    assert [i.reason.split(" ")[0] for i in items if isinstance(i, Reject)] == ["corrupt-shard"]


def test_listing_a_remote_folder_opens_no_sidecar_footer(counting):
    for stem in ("00000", "00001"):
        _remote_tar("ls1", stem=stem)
    counting.reset()
    shards = list_shards("countmem://ls1")
    assert [s.shard_id for s in shards] == ["00000", "00001"] and counting.calls["open"] == 0
    counting.reset()
    assert len(list_shards("countmem://ls1/{00000..00001}.tar")) == 2
    assert counting.calls == {"info": 2}  # one info per named shard, nothing opened
