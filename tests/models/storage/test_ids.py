import os

import pyarrow as pa

from models.storage import ids


def test_row_keys_take_key_then_image_path_then_url_then_row_number():
    both = pa.table({"key": ["a", "b"], "image_path": ["x.jpg", "y.jpg"]})
    assert ids.row_keys(both, "0") == (["a", "b"], "key")
    clip_retrieval = pa.table({"image_path": ["x.jpg", "y.jpg"], "caption": ["c", "d"]})
    assert ids.row_keys(clip_retrieval, "0") == (["x.jpg", "y.jpg"], "image_path")
    laion = pa.table({"url": ["http://a/1.jpg", "http://a/2.jpg"], "NSFW": ["UNLIKELY", "NSFW"]})
    assert ids.row_keys(laion, "0") == (["http://a/1.jpg", "http://a/2.jpg"], "url")
    assert ids.row_keys(pa.table({"caption": ["c", "d"]}), "7") == (["7:0", "7:1"], "row")


def test_a_key_column_with_nulls_falls_through():
    meta = pa.table({"key": ["a", None], "url": ["u1", "u2"]})
    assert ids.row_keys(meta, "0") == (["u1", "u2"], "url")


def test_sample_ids_qualify_colliding_keys_by_their_shard(tmp_path):
    a = ids.absolute_url(str(tmp_path / "a" / "00000.tar"))
    b = ids.absolute_url(str(tmp_path / "b" / "00000.tar"))
    assert ids.sample_id(a, "000000000") != ids.sample_id(b, "000000000")
    assert a == "file://" + os.path.join(str(tmp_path), "a", "00000.tar")
    rel = os.path.relpath(str(tmp_path / "a" / "00000.tar"))
    assert ids.absolute_url(rel) == a
    assert ids.absolute_url("s3://bucket/laion/00000.tar") == "s3://bucket/laion/00000.tar"
