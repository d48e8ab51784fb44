"""Per-shard embedding: completion markers are never stale and never written after a transient failure."""
import pytest

from models.embed import shard_job
from models.embed.embedders import EmbedderConfig, PixelEmbedder
from models.embed.shard_job import ShardJob, embed_shard, shard_is_done, write_shard
from models.storage import layout
from models.storage.folders.embed import EmbeddingFolder
from models.storage.shards import list_shards


def test_overwrite_removes_the_old_marker_before_writing(synthetic_shards, tmp_path, monkeypatch):
    root, _ = synthetic_shards
    folder = EmbeddingFolder(str(tmp_path / "emb"))
    shard = list_shards(str(root / "00000.tar"))[0]
    result = embed_shard(shard, PixelEmbedder(), ShardJob())
    write_shard(folder, result, "fp1")
    assert shard_is_done(folder, shard, "fp1") and folder.parts() == ["00000"]

    def crash(path, table):
        raise RuntimeError("killed while writing metadata")

    monkeypatch.setattr(shard_job.layout, "write_parquet", crash)
    with pytest.raises(RuntimeError):
        write_shard(folder, result, "fp1")  # --overwrite rewrite dies half way: img_emb new, metadata old
    assert not layout.exists(folder.marker("00000"))  # so the half-written shard is not taken as done
    assert folder.parts() == [] and not shard_is_done(folder, shard, "fp1")


def test_a_transient_read_error_raises_and_leaves_no_marker(tmp_path):
    from transforms.embed import EmbedShardFn
    from tests.models.storage.countingfs import CountingFileSystem
    from tests.models.storage.test_shards import _remote_tar

    CountingFileSystem.reset()
    shard, size = _remote_tar("emb-transient", n=4)
    out = str(tmp_path / "emb")
    fn = EmbedShardFn(EmbedderConfig("pixel", "cpu"), ShardJob(batch_size=2), out, "fp", overwrite=False)
    fn.setup()
    CountingFileSystem.fail["read_after"] = size // 2
    with pytest.raises(ConnectionResetError):
        list(fn.process(shard))
    folder = EmbeddingFolder(out)
    assert not layout.exists(folder.marker(shard.shard_id))  # Beam retries the bundle; nothing says "done"
    (stats,) = list(fn.process(shard))  # the retry
    assert (stats["rows"], stats["rejects"]) == (4, 0) and layout.exists(folder.marker(shard.shard_id))
    CountingFileSystem.reset()
