"""A cost model for LAION-scale runs, from per-row constants measured on this machine in the same run.

    .venv/bin/python benchmarks/cost_model.py [--rows 400e6] [--dim 768] [--workers 100,1000] [--json OUT]

Measured here (one core each: BLAS and torch limited to one thread):

* pair search: seconds per (home x candidate) cosine of :func:`models.dedup.search.partition_pairs`
  on one partition-sized problem (``--rows-per-partition`` homes x as many candidates, at ``--dim``);
* assignment: seconds per row-centroid dot product of :func:`models.dedup.partition.assign_with_spill`
  with 4,096 direct centroids (the two-level quantizer scores ``K1 + nprobe K / K1`` fine
  centroids a row; the model multiplies that count by this constant);
* spill: mean partition memberships per row (home + visitors) and the largest partition / mean,
  from k-means + assignment on a topic-clustered synthetic sample (the benchmark's
  ``--background topics`` generator: within-topic cosine ~0.5, 2% planted near copies);
* mine: captions per second of the keyword extractor (spaCy blank + lookups), keywords per
  caption, and the vocabulary's growth (Heaps' law fit V(n) = a n^b on real LAION captions,
  ``../shared/data/laion_meta``) to size the tested family at N rows;
* embed: images and captions per second and FLOPs (``torch.utils.flop_counter``) of an open_clip
  ViT-B-32 (random weights: the same arithmetic as the pretrained model) at 224 px, fp32 on CPU;
  mean JPEG bytes of real 256 px img2dataset images (``../shared/data/cc3m``).

Everything else is arithmetic on the stage designs (what each stage reads, shuffles, gathers;
README "Scale out"). Inputs that are not measured are flags and are printed as such
(``--duplicate-fraction``, the fraction of rows in duplicate groups; ``--caption-bytes`` when no
real captions are found). Output: one markdown table per worker count (README "Cost model").
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1e9
CLIP_RETRIEVAL_IMG_S = 2500  # ViT-B/32 images/s on one A100 reported by clip-retrieval (not measured here)
SAMPLE_ID_BYTES = 100  # "<absolute shard URL>::<key>" as written by models.storage.ids, a typical length


def _best_of(fn, repeat: int = 3) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def topic_sample(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 unit rows around n/1000 topic centres, 2% in near-copy groups of 2-50 (cosine ~0.97)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((max(1, n // 1000), dim)))
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim)) * math.sqrt(1.04 / dim)
    rows = rng.permutation(n)[: int(0.02 * n)]
    pos = 0
    while pos + 2 <= len(rows):
        size = int(min(rng.integers(2, 51), len(rows) - pos))
        base = _unit(rng.standard_normal((1, dim)))
        x[rows[pos:pos + size]] = base + rng.standard_normal((size, dim)) * math.sqrt(0.03 / dim)
        pos += size
    return _unit(x)


def measure_dedup(dim: int, rows_per_partition: int, threshold: float, max_spill: int, spill_rows: int) -> dict:
    from models.dedup import partition, search

    rng = np.random.default_rng(1)
    homes = _unit(rng.standard_normal((rows_per_partition, dim)))
    cands = _unit(rng.standard_normal((rows_per_partition, dim)))
    ids = np.arange(rows_per_partition, dtype=np.int64)
    pair_s = _best_of(lambda: search.partition_pairs(ids, homes, ids + rows_per_partition, cands, threshold))
    # partition_pairs scores homes x (homes + candidates): n (2n) cosines.
    per_pair = pair_s / (rows_per_partition * 2 * rows_per_partition)

    cents = _unit(rng.standard_normal((4096, dim)))
    q = _unit(rng.standard_normal((8192, dim)))
    assign_s = _best_of(lambda: partition.assign_with_spill(q, cents, threshold, max_spill), repeat=2)
    per_dot = assign_s / (len(q) * len(cents))

    x = topic_sample(spill_rows, dim)
    k = max(1, spill_rows // rows_per_partition)
    c = partition.train_centroids(x[: min(len(x), 256 * k)], k, seed=0, niter=10)
    home, (indptr, spill) = partition.assign_with_spill(x, c, threshold, max_spill)
    sizes = np.bincount(home, minlength=k) + np.bincount(spill, minlength=k)
    return {"seconds_per_pair": per_pair, "seconds_per_centroid_dot": per_dot,
            "memberships_per_row": (len(home) + len(spill)) / len(home),
            "largest_partition_over_mean": float(sizes.max() / sizes.mean()),
            "spill_sample": f"{spill_rows} topic-clustered rows, K {k}, t {threshold}, max_spill {max_spill}"}


def _laion_captions() -> list | None:
    from pipelines.common import shared_data_file

    path = shared_data_file("laion_meta/img2dataset_test_10000.parquet")
    if path is None:
        return None
    import pyarrow.parquet as pq

    return [c for c in pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist() if c]


def measure_mine(caption_bytes: float) -> dict:
    from models.mine.keywords import KeywordExtractor

    caps = _laion_captions()
    if caps is None:
        return {"source": "none (no ../shared/data/laion_meta): mine constants not measured",
                "caption_bytes": caption_bytes}
    ex = KeywordExtractor()
    ex.extract_batch(caps[:200])  # load the pipeline outside the timing
    t0 = time.perf_counter()
    kws = ex.extract_batch(caps)
    sec = time.perf_counter() - t0
    ns, vs, seen = [], [], set()
    for i, k in enumerate(kws, 1):
        seen.update(k)
        if i % 500 == 0:
            ns.append(i)
            vs.append(len(seen))
    b, log_a = np.polyfit(np.log(ns), np.log(vs), 1)  # Heaps' law V(n) = a n^b
    return {"source": f"{len(caps)} real LAION captions", "captions_per_second": len(caps) / sec,
            "keywords_per_caption": float(np.mean([len(k) for k in kws])),
            "caption_bytes": float(np.mean([len(c.encode()) for c in caps])),
            "distinct_keywords_per_10k": vs[-1] * 10000 / ns[-1], "heaps_a": float(math.exp(log_a)), "heaps_b": float(b)}


def measure_embed(batch: int) -> dict:
    import torch

    from models.tv_compat import ensure_torchvision

    ensure_torchvision()  # before open_clip: the registry's torchvision on CPU torch

    torch.set_num_threads(1)
    import open_clip
    from torch.utils.flop_counter import FlopCounterMode

    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    img = torch.randn(batch, 3, 224, 224)
    txt = open_clip.get_tokenizer("ViT-B-32")(["a photo of an astronaut riding a horse on the moon"] * batch)
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            model.encode_image(img)
        img_flops = fc.get_total_flops() / batch
        with FlopCounterMode(display=False) as fc:
            model.encode_text(txt)
        txt_flops = fc.get_total_flops() / batch
        img_s = _best_of(lambda: model.encode_image(img), repeat=2) / batch
        txt_s = _best_of(lambda: model.encode_text(txt), repeat=2) / batch
    out = {"model": "open_clip ViT-B-32, 224 px, fp32, 1 CPU thread", "image_flops": img_flops,
           "text_flops": txt_flops, "seconds_per_image": img_s, "seconds_per_caption": txt_s,
           "params": sum(p.numel() for p in model.parameters())}
    from pipelines.common import shared_data_file

    tar = shared_data_file("cc3m/00000.tar")
    if tar is not None:
        with tarfile.open(tar) as t:
            sizes = [m.size for m in t.getmembers() if m.name.endswith(".jpg")]
        out["jpeg_bytes"] = float(np.mean(sizes))
        out["jpeg_source"] = f"{len(sizes)} real 256 px CC3M JPEGs"
    return out


def model_costs(m: dict, n: float, d: int, w: int, args) -> list[dict]:
    """Per stage: bytes read (total, per worker), shuffled, gathered on one worker, FLOPs, core-hours, memory."""
    dd, mi, em = m["dedup"], m["mine"], m["embed"]
    jpeg = em.get("jpeg_bytes", args.jpeg_bytes)
    cap = mi.get("caption_bytes", args.caption_bytes)
    meta = cap + 200  # url, key, sizes, hashes
    emb_bytes = 2 * d  # float16 a vector
    s = dd["memberships_per_row"]
    p = args.rows_per_partition
    k = math.ceil(n / p)
    k1 = max(1, round(math.sqrt(k)))
    direct = k <= args.max_direct_k
    dots_per_row = k if direct else k1 + args.nprobe * k / k1
    pairs = n * p * s  # sum over partitions of homes x (homes + visitors), K p (p s)
    dup_rows = args.duplicate_fraction * n
    stages = []
    embed_flops = n * (em["image_flops"] + em["text_flops"])
    embed_sec = n * (em["seconds_per_image"] + em["seconds_per_caption"])
    stages.append(dict(stage="embed", read=n * (jpeg + meta), shuffled=0.0, gathered="per-shard stats",
                       flops=embed_flops, core_hours=embed_sec / 3600,
                       memory=em["params"] * 4 + args.embed_batch * 3 * 224 * 224 * 4 * 8,
                       note=f"writes {2 * n * emb_bytes / GB:.0f} GB of float16 vectors; on GPUs: "
                            f"{n / CLIP_RETRIEVAL_IMG_S / 3600:,.0f} A100-hours at clip-retrieval's 2,500 img/s"))
    mem_partition = dd["largest_partition_over_mean"] * p * s * d * 4 + 4096 * 4096 * 4
    centroid_bytes = 4 * (k + (0 if direct else k1)) * d
    for transport, shuffled, read_extra in (
            ("shuffle", n * s * (emb_bytes + 12), n * s * (emb_bytes + 12) / w),
            ("reread", n * s * 12, n * emb_bytes * (1 - 1 / w))):
        flops = 2 * d * (pairs + n * dots_per_row)
        sec = pairs * dd["seconds_per_pair"] + n * dots_per_row * dd["seconds_per_centroid_dot"]
        stages.append(dict(
            stage=f"dedup ({transport})", read=n * (emb_bytes + meta) + read_extra * w, per_worker_read=
            n * (emb_bytes + meta) / w + read_extra, shuffled=shuffled + dup_rows * 48,
            gathered=f"k-means sample {min(args.max_train_rows, 256 * k) * emb_bytes / GB:.2f} GB; "
                     f"centroids {centroid_bytes / GB:.2f} GB to every worker",
            flops=flops, core_hours=sec / 3600, memory=mem_partition + centroid_bytes,
            note="reread on an object store: every search task reads ~all parts" if transport == "reread" else
            f"K {k:,} ({'direct' if direct else f'two-level, K1 {k1}, nprobe {args.nprobe}'}), {s:.2f} memberships/row"))
    if "captions_per_second" in mi:
        distinct = mi["heaps_a"] * n ** mi["heaps_b"]
        family = n * mi["keywords_per_caption"] / args.min_support  # pigeonhole: occurrences / support
        kw_rows = n * mi["keywords_per_caption"]
        parts = n / args.part_rows
        per_part = mi["heaps_a"] * args.part_rows ** mi["heaps_b"]
        stages.append(dict(stage="mine", read=n * meta, shuffled=parts * per_part * 40 + dup_rows * mi["keywords_per_caption"] * 40,
                           gathered=f"one row per tested keyword: <= {family:,.0f} (N kw/caption / min_support; "
                                    f"{distinct:,.0f} distinct keywords by Heaps' law, b {mi['heaps_b']:.2f})",
                           flops=float("nan"), core_hours=n / mi["captions_per_second"] / 3600,
                           memory=per_part * 200 * 4, note=f"{kw_rows / n:.1f} keywords/caption"))
    stages.append(dict(stage="apply", read=n * (jpeg + meta), shuffled=dup_rows * SAMPLE_ID_BYTES, gathered="counts",
                       flops=float("nan"), core_hours=float("nan"), memory=args.part_rows * (jpeg + meta) * 2,
                       note=f"writes {(1 - args.duplicate_fraction) * n * (jpeg + meta) / GB:,.0f} GB"))
    for st in stages:
        st.setdefault("per_worker_read", st["read"] / w)
        st["wall_hours"] = st["core_hours"] / (w * args.cores_per_worker)
    return stages


def _fmt(x, unit="GB"):
    if isinstance(x, str):
        return x
    if x != x:
        return "-"
    if unit == "GB":
        return f"{x / GB:,.1f} GB" if x < 1e13 else f"{x / 1e12:,.1f} TB"
    return f"{x:.3g}"


def table(stages: list[dict], n: float, d: int, w: int, cores: int) -> str:
    lines = [f"N = {n:,.0f} rows x {d}-d, W = {w} workers x {cores} cores", "",
             "| stage | read (total) | read / worker | shuffled | gathered on one worker | FLOPs | core-hours | "
             "wall (h) | memory / worker | note |", "|---" * 10 + "|"]
    for st in stages:
        lines.append(f"| {st['stage']} | {_fmt(st['read'])} | {_fmt(st['per_worker_read'])} | {_fmt(st['shuffled'])} | "
                     f"{st['gathered']} | {_fmt(st['flops'], '')} | {_fmt(st['core_hours'], '')} | "
                     f"{_fmt(st['wall_hours'], '')} | {_fmt(st['memory'])} | {st['note']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=float, default=400e6)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--workers", default="100,1000")
    ap.add_argument("--cores-per-worker", type=int, default=4)
    ap.add_argument("--rows-per-partition", type=int, default=2000, help="dedup's auto K = N / this")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--max-spill", type=int, default=8, help="dedup's default (models.dedup.partition.DEFAULT_MAX_SPILL)")
    ap.add_argument("--max-direct-k", type=int, default=8192)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument("--max-train-rows", type=int, default=262144)
    ap.add_argument("--min-support", type=int, default=10, help="mine's --min-support")
    ap.add_argument("--part-rows", type=int, default=10000, help="rows per img2dataset shard")
    ap.add_argument("--spill-rows", type=int, default=100000, help="rows of the measured spill sample")
    ap.add_argument("--duplicate-fraction", type=float, default=0.1, help="INPUT, not measured: rows in duplicate groups")
    ap.add_argument("--caption-bytes", type=float, default=60.0, help="INPUT when no real captions are found")
    ap.add_argument("--jpeg-bytes", type=float, default=12000.0, help="INPUT when no real images are found")
    ap.add_argument("--embed-batch", type=int, default=8)
    ap.add_argument("--json", help="write the measured constants and tables here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):  # every constant is per core
        measured = {"dedup": measure_dedup(args.dim, args.rows_per_partition, args.threshold, args.max_spill,
                                           args.spill_rows),
                    "mine": measure_mine(args.caption_bytes), "embed": measure_embed(args.embed_batch),
                    "loadavg": os.getloadavg()}
    print("measured constants (one core):")
    print(json.dumps(measured, indent=1, default=float))
    print(f"inputs: duplicate fraction {args.duplicate_fraction} (not measured)\n")
    out = {"measured": measured, "inputs": vars(args), "tables": {}}
    for w in (int(x) for x in args.workers.split(",")):
        stages = model_costs(measured, args.rows, args.dim, w, args)
        print(table(stages, args.rows, args.dim, w, args.cores_per_worker) + "\n")
        out["tables"][w] = stages
    print(f"measured in {time.monotonic() - started:.0f} s, load average {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
    return out


if __name__ == "__main__":
    main()
