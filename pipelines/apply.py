"""``dupmine apply``: filtered copies of img2dataset shards, without the dropped samples.

    dupmine apply --input 'shards/{00000..00099}.tar' --drop dedup/ --output filtered/ [beam options]

Analysis and removal are separate steps: dedup (and mine/score) only write
decision lists; this command applies one. Kept samples are byte-identical,
dropped ones are gone, sidecar parquets and ``_stats.json`` are filtered to
match, and ``manifest.json`` counts both per shard and in total. Drop lists
name samples by sample id (``SHARD_URL::KEY``), joined to the shards by URL;
lists of bare keys (older dedup outputs) drop the key in every shard.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, fields

from pipelines.common import make_pipeline, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.apply")

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ApplyConfig:
    """Resolved options of the apply stage (written into ``OUTPUT/manifest.json``)."""

    input: str
    drop: str
    output: str

    def __post_init__(self):
        for f in fields(self):
            if not getattr(self, f.name):
                raise ValueError(f"--{f.name} must be given")

    @property
    def manifest(self) -> str:
        from models.storage import layout

        return layout.join(self.output, MANIFEST)


HELP = {
    "input": "the shards to filter (as for dupmine embed)",
    "drop": "drop list: a dedup output folder (whole run chain), a Parquet file/folder with a sample_id (or key) "
            "column (drop_keys.parquet), or a .txt of sample ids or keys",
    "output": "folder for the filtered shards",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(ApplyConfig):
        parser.add_argument(f"--{f.name}", required=True, help=HELP[f.name])


def config_from_args(args: argparse.Namespace) -> ApplyConfig:
    return ApplyConfig(**{f.name: getattr(args, f.name) for f in fields(ApplyConfig)})


def build(p, cfg: ApplyConfig, shards, drops):
    """Wire the stage: shards + drop rows -> JoinDropsToShards -> FilterShards -> WriteManifest."""
    from transforms.apply import ApplyDropList

    return p | "ApplyDropList" >> ApplyDropList(shards, drops, cfg.output, cfg.manifest, asdict(cfg))


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    from models.storage import layout
    from models.storage.shard_filter import resolve_drop_list
    from models.storage.shards import list_shards

    parser = stage_parser("dupmine apply", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    shards = list_shards(cfg.input)
    drops = resolve_drop_list(cfg.drop)
    p = make_pipeline(beam_args, test_pipeline)
    build(p, cfg, shards, drops)
    p.run().wait_until_finish()
    manifest = layout.read_json(cfg.manifest)
    log.info("apply done: kept %d, dropped %d samples in %d shard(s) -> %s", manifest["kept"], manifest["dropped"],
             len(manifest["shards"]), cfg.output)
    return manifest
