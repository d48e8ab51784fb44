"""``dupmine demo``: build a small LAION-like dataset offline and run the pipeline on it.

    dupmine demo [--output demo_out] [--model pixel] [beam options]

Writes two img2dataset webdataset shards of procedural drawings with planted
exact and near-duplicate groups (plus failed downloads in the sidecars) to
``OUTPUT/shards``, embeds them into ``OUTPUT/embeddings``, groups them into
``OUTPUT/dedup`` and prints how the planted groups came out.
"""
from __future__ import annotations

import argparse
import os

import numpy as np

from pipelines.common import split_args


def build_shards(root: str, seed: int = 0) -> list[list]:
    """Two shards with planted groups; returns the samples per shard."""
    from models.synthetic import planted_dataset, write_webdataset_shard

    os.makedirs(root, exist_ok=True)
    shards = []
    for shard in range(2):
        samples = planted_dataset(n_unique=150, exact_groups=[4, 3], near_groups=[6, 3], seed=seed + shard, shard=shard)
        failed = [(f"{shard:05d}9999", "http://example.invalid/404.jpg", "HTTP Error 404: Not Found")]
        write_webdataset_shard(os.path.join(root, f"{shard:05d}.tar"), samples, failed)
        shards.append(samples)
    return shards


def planted_group_report(emb_root: str, shards: list[list]) -> list[str]:
    """Min within-group cosine per planted group vs the max cosine to anything outside."""
    from models import layout

    folder = layout.EmbeddingFolder(emb_root)
    keys, vecs = [], []
    for i in folder.parts():
        keys += layout.read_parquet(folder.metadata(i), ["key"]).column("key").to_pylist()
        vecs.append(np.asarray(layout.read_npy(folder.img_emb(i)), np.float32))
    x = np.concatenate(vecs)
    row = {k: j for j, k in enumerate(keys)}
    truth = {s.key: (si, s.truth_group) for si, samples in enumerate(shards) for s in samples}
    lines = []
    for group in sorted({v for v in truth.values() if v[1] >= 0}):
        members = [row[k] for k, g in truth.items() if g == group and k in row]
        others = np.setdiff1d(np.arange(len(x)), members)
        sims = x[members] @ x[members].T
        outside = float((x[members] @ x[others].T).max())
        lines.append(f"shard {group[0]} planted group {group[1]}: {len(members)} members, "
                     f"min cosine inside {sims.min():.3f}, max cosine to any other image {outside:.3f}")
    return lines


def dedup_report(dedup_root: str, shards: list[list]) -> list[str]:
    """How each planted group came out of dedup: recovered exactly, split, or merged with others."""
    from models import layout

    groups = {r["key"]: r for r in layout.read_parquet(layout.join(dedup_root, "groups")).to_pylist()}
    truth: dict = {}
    for si, samples in enumerate(shards):
        for s in samples:
            truth.setdefault((si, s.truth_group), []).append(s.key)
    lines, exact = [], 0
    for (si, g), keys in sorted(truth.items()):
        if g < 0:
            continue
        found = {groups[k]["group_id"] for k in keys if k in groups}
        members = sum(1 for r in groups.values() if r["group_id"] in found)
        ok = len(found) == 1 and members == len(keys)
        exact += ok
        lines.append(f"shard {si} planted group {g} ({len(keys)} images): "
                     + ("recovered exactly" if ok else f"in {len(found)} group(s) with {members} members"))
    false_groups = {r["group_id"] for r in groups.values() if r["group_size"] > 1} - {
        groups[k]["group_id"] for (si, g), keys in truth.items() if g >= 0 for k in keys if k in groups}
    lines.append(f"{exact} of {len(lines)} planted groups recovered exactly; {len(false_groups)} other duplicate group(s)")
    return lines


def run(argv: list[str] | None = None) -> None:
    from pipelines import dedup, embed

    parser = argparse.ArgumentParser(prog="dupmine demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--model", default="pixel", help="embedding model spec for the demo (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.9, help="dedup cosine threshold for the demo (default %(default)s)")
    args, beam_args = split_args(parser, argv)
    shard_dir = os.path.join(args.output, "shards")
    shards = build_shards(shard_dir, args.seed)
    emb_dir = os.path.join(args.output, "embeddings")
    stats = embed.run(["--input", shard_dir, "--output", emb_dir, "--model", args.model, *beam_args])
    print(f"\nembedded {stats.get('rows', 0)} images, {stats.get('rejects', 0)} rejects "
          f"(see {emb_dir}/rejects); embeddings in {emb_dir}")
    for line in planted_group_report(emb_dir, shards):
        print("  " + line)
    dd_dir = os.path.join(args.output, "dedup")
    summary = dedup.run(["--embeddings", emb_dir, "--output", dd_dir, "--threshold", str(args.threshold), *beam_args])
    print(f"\ndedup: {summary['rows_grouped']} rows, {summary['duplicate_groups']} duplicate groups, "
          f"{summary['rows_dropped']} rows to drop ({100 * summary['duplicate_fraction']:.1f}%); see {dd_dir}")
    for line in dedup_report(dd_dir, shards):
        print("  " + line)
