"""Embed throughput: `dupmine embed` (Beam, in-process runner) vs a plain Python loop.

Same images, same model, same threads, decode included, in one process:

    python benchmarks/bench_embed.py [--n 256] [--models openclip:ViT-B-32/random,onnx:MOBILENET]

Prints images/s of both and the ratio pipeline/loop (goal >= 0.85), and
decode throughput of Pillow with ``draft`` against a full decode.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from models.embed.embedders import EmbedderConfig, l2_normalise, load_embedder  # noqa: E402
from models.storage.imaging import decode_image  # noqa: E402
from models.storage.shards import Sample, list_shards, read_shard  # noqa: E402
from models.demo.synthetic import planted_dataset, write_webdataset_shard  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
MOBILENET = os.path.join(SHARED, "models", "mobilenet_v1_embedding.onnx")
MOBILENET_PRE = '{"size": 224, "resize": "squash", "offset": 128, "scale": 128}'


def plain_loop(shard_dir: str, cfg: EmbedderConfig, batch_size: int) -> tuple[int, float]:
    emb = load_embedder(cfg)
    start, n = time.perf_counter(), 0
    for shard in list_shards(shard_dir):
        batch, texts = [], []
        items = [s for s in read_shard(shard) if isinstance(s, Sample)]
        for i, s in enumerate(items):
            batch.append(emb.preprocess(decode_image(s.image, emb.image_size).image))
            texts.append(s.caption or "")
            if len(batch) == batch_size or i == len(items) - 1:
                l2_normalise(emb.embed_images(np.stack(batch)))
                if emb.has_text:
                    l2_normalise(emb.embed_texts(texts))
                n += len(batch)
                batch, texts = [], []
    return n, time.perf_counter() - start


def pipeline(shard_dir: str, cfg: EmbedderConfig, batch_size: int) -> tuple[int, float]:
    from pipelines import embed

    out = tempfile.mkdtemp(prefix="bench_embed_")
    args = ["--input", shard_dir, "--output", out, "--model", cfg.model, "--batch-size", str(batch_size),
            "--device", cfg.device, "--progress-seconds", "1e9"]
    if cfg.preprocess:
        args += ["--preprocess", cfg.preprocess]
    load_embedder(cfg)  # warm the same import/model caches the loop had
    start = time.perf_counter()
    stats = embed.run(args)
    return stats["rows"], time.perf_counter() - start


def decode_bench(images: list[bytes], size: int) -> None:
    for label, target in (("full decode", None), (f"draft to {size}px", size)):
        start = time.perf_counter()
        for data in images:
            decode_image(data, target)
        dt = time.perf_counter() - start
        print(f"  decode {label:<18} {len(images) / dt:8.1f} img/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256, help="images")
    ap.add_argument("--size", type=int, default=512, help="source image side (decode cost)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--models", default="openclip:ViT-B-32/random" + (f",onnx:{MOBILENET}" if os.path.exists(MOBILENET) else ""))
    args = ap.parse_args()
    shard_dir = tempfile.mkdtemp(prefix="bench_shards_")
    samples = planted_dataset(n_unique=args.n, exact_groups=[], near_groups=[], seed=0, size=args.size)
    write_webdataset_shard(os.path.join(shard_dir, "00000.tar"), samples)
    print(f"{args.n} images of {args.size}x{args.size} JPEG, batch {args.batch_size}, {os.cpu_count()} CPUs")
    decode_bench([s.image for s in samples], 224)
    for model in args.models.split(","):
        cfg = EmbedderConfig(model, "auto", MOBILENET_PRE if model.startswith("onnx:") else None)
        n_loop, t_loop = plain_loop(shard_dir, cfg, args.batch_size)
        n_pipe, t_pipe = pipeline(shard_dir, cfg, args.batch_size)
        assert n_loop == n_pipe == args.n
        loop_rate, pipe_rate = n_loop / t_loop, n_pipe / t_pipe
        print(f"  {model.split('/')[-1] if model.startswith('onnx') else model}: loop {loop_rate:7.1f} img/s, "
              f"pipeline {pipe_rate:7.1f} img/s (startup included), ratio {pipe_rate / loop_rate:.2f} (goal >= 0.85)")


if __name__ == "__main__":
    main()
