"""``dupmine apply``: filtered copies of img2dataset shards, without the dropped samples.

    dupmine apply --input 'shards/{00000..00099}.tar' --drop dedup/drop_keys.parquet --output filtered/ [beam options]

Analysis and removal are separate steps: dedup (and mine/score) only write
decision lists; this command applies one. Kept samples are byte-identical,
dropped ones are gone, sidecar parquets are filtered to match, and
``manifest.json`` counts both per shard and in total.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass

from pipelines.common import make_pipeline, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.apply")


@dataclass(frozen=True)
class ApplyConfig:
    input: str
    drop: str
    output: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="the shards to filter (as for dupmine embed)")
    parser.add_argument("--drop", required=True, help="drop list: a dedup output folder (whole run chain), a Parquet file/folder with a key column "
                        "(drop_keys.parquet), or a .txt of keys")
    parser.add_argument("--output", required=True, help="folder for the filtered shards")


def build(p, cfg: ApplyConfig, shards):
    import apache_beam as beam
    from apache_beam.utils import shared

    from models.storage.shard_filter import filter_shard, load_drop_keys
    from transforms.common import Held

    handle = shared.Shared()

    class FilterShardFn(beam.DoFn):
        """One shard -> its filtered copy; the drop set is loaded once per worker process."""

        def setup(self):
            self.drop = handle.acquire(lambda: Held(load_drop_keys(cfg.drop)), tag=cfg.drop).value

        def process(self, shard):
            yield filter_shard(shard, cfg.output, self.drop).as_dict()

    return (p | "ListShards" >> beam.Create(shards) | "SpreadShards" >> beam.Reshuffle()
            | "FilterShards" >> beam.ParDo(FilterShardFn()) | "CollectCounts" >> beam.combiners.ToList())


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    import apache_beam as beam

    from models.storage import layout
    from models.storage.shards import list_shards

    parser = stage_parser("dupmine apply", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = ApplyConfig(args.input, args.drop, args.output)
    shards = list_shards(cfg.input)
    if not layout.exists(cfg.drop):
        raise FileNotFoundError(f"--drop {cfg.drop!r} does not exist")
    p = make_pipeline(beam_args, test_pipeline)
    counts = build(p, cfg, shards)
    manifest_path = layout.join(cfg.output, "manifest.json")
    counts | "WriteManifest" >> beam.Map(lambda rows: layout.write_json(manifest_path, {
        "config": asdict(cfg), "shards": sorted(rows, key=lambda r: r["shard"]),
        "kept": sum(r["kept"] for r in rows), "dropped": sum(r["dropped"] for r in rows)}))
    p.run().wait_until_finish()
    manifest = layout.read_json(manifest_path)
    log.info("apply done: kept %d, dropped %d samples in %d shard(s) -> %s", manifest["kept"], manifest["dropped"],
             len(manifest["shards"]), cfg.output)
    return manifest
