import apache_beam as beam
import numpy as np
from apache_beam.testing.util import assert_that, equal_to

from models.storage import layout
from models.embed.shard_job import ShardJob
from models.embed.embedders import EmbedderConfig, PixelEmbedder
from models.storage.shards import list_shards
from transforms.common import sum_counters
from transforms.embed import EmbedShards


def test_sum_counters_adds_fields():
    assert sum_counters([{"rows": 2, "shards": 1}, {"rows": 3, "shards": 1, "rejects": 1}]) == {"rows": 5, "shards": 2, "rejects": 1}
    assert sum_counters([]) == {}


def test_embed_shards_transform_writes_every_sample_once(beam_pipeline, synthetic_shards, tmp_path):
    root, samples = synthetic_shards
    out = str(tmp_path / "emb")
    shards = list_shards(str(root))
    n_ok = sum(1 for s in samples.values() if s is not None)
    with beam_pipeline as p:
        stats = p | beam.Create(shards) | EmbedShards(EmbedderConfig("pixel", "cpu"), ShardJob(batch_size=8), out, "fp1")
        assert_that(stats, equal_to([{
            "shards": 3, "rows": n_ok, "rejects": 3, "count.read": n_ok + 3, "count.decoded": n_ok,
            "count.embedded": n_ok, "count.rejected": 3, "count.rejected.failed_to_download": 3,
            "count.key_source.key": n_ok,  # every key from the members' names / .json, none made up
        }]))
    folder = layout.EmbeddingFolder(out)
    assert folder.parts() == ["00000", "00001", "00002"]
    for i in folder.parts():
        emb = layout.read_npy(folder.img_emb(i))
        meta = layout.read_parquet(folder.metadata(i)).to_pylist()
        assert emb.dtype == np.float16 and emb.shape == (len(meta), PixelEmbedder.KEEP ** 2)
        np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
        for row in meta:  # row-aligned: metadata row j describes embedding j
            assert samples[row["key"]].caption == row["caption"] and row["shard"] == i and len(row["sha256"]) == 64
        rejects = layout.read_parquet(folder.rejects(i)).to_pylist()
        assert [r["reason"] for r in rejects] == ["failed_to_download: HTTP Error 404: Not Found"]
