"""Embedding folders as LAION and clip-retrieval publish them (issue 14.6): no key, md5 not sha256, text_emb/."""
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage import ids, layout
from models.storage.folders.embed import EmbeddingFolder, exact_hashes

# The columns of LAION-400M's published embedding metadata, without key (as some releases ship it).
LAION_COLUMNS = ("image_path", "caption", "NSFW", "similarity", "LICENSE", "url", "md5")


def _unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def laion_folder(root, urls, captions, parts=2):
    """img_emb/img_emb_{i}.npy, text_emb/text_emb_{i}.npy, metadata/metadata_{i}.parquet, as LAION's release."""
    rng = np.random.default_rng(0)
    chunks = np.array_split(np.arange(len(urls)), parts)
    for i, rows in enumerate(chunks):
        n = len(rows)
        np.save(f"{root}/img_emb/img_emb_{i}.npy", _unit(rng, n))
        np.save(f"{root}/text_emb/text_emb_{i}.npy", _unit(rng, n))
        md5 = [hashlib.md5(urls[r].encode()).hexdigest() for r in rows]
        md5[1] = md5[0]  # one exact duplicate pair
        pq.write_table(pa.table({
            "image_path": [f"{i:05d}/{r:09d}.jpg" for r in rows], "caption": [captions[r] for r in rows],
            "NSFW": ["UNLIKELY"] * n, "similarity": rng.uniform(0.28, 0.4, n), "LICENSE": ["?"] * n,
            "url": [urls[r] for r in rows], "md5": md5,
        }), f"{root}/metadata/metadata_{i}.parquet")
    return EmbeddingFolder(str(root))


@pytest.fixture
def folder_root(tmp_path):
    for sub in ("img_emb", "text_emb", "metadata"):
        (tmp_path / sub).mkdir()
    return tmp_path


def _check_laion_shaped(folder: EmbeddingFolder, n_rows: int):
    assert folder.parts() == ["0", "1"]  # no _done/: a published folder has every part
    meta = layout.read_parquet(folder.metadata("0"))
    assert set(meta.column_names) == set(LAION_COLUMNS)
    part_ids = folder.part_ids("0")
    assert part_ids.key_source == "image_path" and part_ids.keys[0] == "00000/000000000.jpg"
    source = ids.absolute_url(folder.metadata("0"))
    assert part_ids.sample_ids[0] == ids.sample_id(source, "00000/000000000.jpg")
    assert len(set(part_ids.sample_ids + folder.part_ids("1").sample_ids)) == n_rows  # unique across parts
    hashes = exact_hashes(meta)
    assert hashes.algorithm == "md5" and hashes.values[0] == hashes.values[1] and hashes.values[0].startswith("md5:")
    text = folder.read_text_emb("0")
    assert text.shape == layout.read_npy(folder.img_emb("0")).shape and folder.has_text_emb("1")
    assert folder.describe() == {"key_source": "image_path", "exact_hash": "md5", "text_emb": True,
                                 "note": "ids from image_path; exact matching on md5"}


def test_synthetic_laion_shaped_folder_is_read_as_published(folder_root):
    urls = [f"http://img.invalid/{i}.jpg" for i in range(20)]
    folder = laion_folder(folder_root, urls, [f"caption {i}" for i in range(20)])
    _check_laion_shaped(folder, 20)


def test_real_laion_metadata_rows_in_the_release_layout(shared_data, folder_root):
    rows = pq.read_table(shared_data / "laion_meta" / "img2dataset_test_10000.parquet", columns=["URL", "TEXT"])
    rows = rows.slice(0, 500)
    folder = laion_folder(folder_root, rows.column("URL").to_pylist(), rows.column("TEXT").to_pylist())
    _check_laion_shaped(folder, 500)
    meta = layout.read_parquet(folder.metadata("1"))
    assert meta.column("url").to_pylist()[0] == rows.column("URL").to_pylist()[250]


def test_clip_retrieval_folder_without_hash_or_key_says_exact_matching_is_off(folder_root):
    np.save(folder_root / "img_emb" / "img_emb_0.npy", _unit(np.random.default_rng(1), 3))
    pq.write_table(pa.table({"image_path": ["a.jpg", "b.jpg", "c.jpg"], "caption": ["x", "y", "z"]}),
                   folder_root / "metadata" / "metadata_0.parquet")
    folder = EmbeddingFolder(str(folder_root))
    assert exact_hashes(layout.read_parquet(folder.metadata("0"))) == (["", "", ""], None)
    assert folder.read_text_emb("0") is None and not folder.has_text_emb("0")
    assert folder.describe()["note"] == "ids from image_path; exact matching off (no sha256 or md5 column)"
    # no image_path either: url, then PART:ROW
    pq.write_table(pa.table({"caption": ["x", "y", "z"]}), folder_root / "metadata" / "metadata_0.parquet")
    assert folder.part_ids("0").keys == ["0:0", "0:1", "0:2"] and folder.part_ids("0").key_source == "row"


def test_sha256_is_preferred_over_md5_and_a_part_missing_its_metadata_is_an_error(folder_root):
    meta = pa.table({"key": ["a", "b"], "sha256": ["s1", None], "md5": ["m1", "m2"]})
    assert exact_hashes(meta) == (["sha256:s1", ""], "sha256")
    np.save(folder_root / "img_emb" / "img_emb_0.npy", _unit(np.random.default_rng(1), 2))
    with pytest.raises(ValueError, match="row-aligned"):
        EmbeddingFolder(str(folder_root)).parts()
