"""Write the small dataset of run_example.sh: two img2dataset webdataset shards with planted duplicates.

    python deploy/flink/make_example_data.py DATA/shards

Each shard holds 60 distinct procedural drawings plus planted exact-duplicate
groups (identical JPEG bytes, sizes 4 and 3) and near-duplicate groups
(re-encoded, rescaled copies, sizes 6 and 3), and its sidecar ``NNNNN.parquet``
lists one failed download, as img2dataset writes it. No network, no weights.
"""
from __future__ import annotations

import argparse
import os
import sys

# Run from a checkout: the dupmine packages live two folders up (an installed dupmine wins).
sys.path.append(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def write_example_shards(root: str, n_shards: int = 2, n_unique: int = 60, seed: int = 0) -> list[str]:
    """Write ``root/00000.tar`` ... and their sidecars; return the shard paths."""
    from models.demo.synthetic import planted_dataset, write_webdataset_shard

    os.makedirs(root, exist_ok=True)
    paths = []
    for shard in range(n_shards):
        samples = planted_dataset(n_unique=n_unique, exact_groups=[4, 3], near_groups=[6, 3], seed=seed + shard, shard=shard)
        failed = [(f"{shard:05d}9999", "http://example.invalid/404.jpg", "HTTP Error 404: Not Found")]
        path = os.path.join(root, f"{shard:05d}.tar")
        write_webdataset_shard(path, samples, failed)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="folder for the shards")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_example_shards(args.output, seed=args.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
