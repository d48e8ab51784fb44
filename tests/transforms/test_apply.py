"""transforms/apply.py: the shard join and the per-shard filter, on Beam's in-process runner."""
import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.testing.util import assert_that, equal_to

from models.storage import ids, layout
from models.storage.shard_filter import DropList, DropListKind
from models.storage.shards import list_shards
from tests.helpers import jpeg, noise_image, sample_members, write_tar
from transforms.apply import UNMATCHED, ApplyDropList, FilterShardFn


def _shards(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_tar(tmp_path / d / "00000.tar", sample_members("k0", jpeg(noise_image(0))) + sample_members("k1", jpeg(noise_image(1))))
    return list_shards(f"{tmp_path}/a,{tmp_path}/b")


def test_filter_shard_fn_filters_joined_shards_and_reports_unmatched_urls(beam_pipeline, tmp_path):
    a, b = _shards(tmp_path)
    out = str(tmp_path / "out")
    joined = [(a.url, {"shard": [a], "drop": ["k1"]}), (b.url, {"shard": [b], "drop": []}),
              ("s3://other/0.tar", {"shard": [], "drop": ["x", "y"]})]
    with beam_pipeline as p:
        bare = p | "Bare" >> beam.Create(["k0"])
        results = (p | beam.Create(joined)
                   | beam.ParDo(FilterShardFn(out), beam.pvalue.AsList(bare)).with_outputs(UNMATCHED, main="counts"))
        assert_that(results.counts | beam.Map(lambda r: (r["shard"], r["kept"], r["dropped"])),
                    equal_to([("a_00000", 0, 2), ("b_00000", 1, 1)]), label="Counts")
        assert_that(results[UNMATCHED], equal_to([("s3://other/0.tar", 2)]), label="Unmatched")


def test_apply_drop_list_writes_the_manifest_last_with_every_shard(beam_pipeline, tmp_path):
    a, b = _shards(tmp_path)
    drop = tmp_path / "drop.parquet"
    pq.write_table(pa.table({"sample_id": [ids.sample_id(b.url, "k0")]}), drop)
    manifest = str(tmp_path / "out" / "manifest.json")
    with beam_pipeline as p:
        _ = p | ApplyDropList([a, b], DropList(DropListKind.PARQUET, (str(drop),)), str(tmp_path / "out"), manifest, {"x": 1})
    m = layout.read_json(manifest)
    assert [(r["shard"], r["kept"], r["dropped"]) for r in m["shards"]] == [("a_00000", 2, 0), ("b_00000", 1, 1)]
    assert (m["kept"], m["dropped"], m["unmatched_drop_rows"], m["config"]) == (3, 1, 0, {"x": 1})
