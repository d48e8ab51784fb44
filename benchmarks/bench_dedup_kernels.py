"""Benchmark the near-duplicate kernels of models.dedup.kernels on planted data.

For each N, builds the same seeded planted embedding set and runs, each in a
fresh (spawned) process so peak RSS is per method:

* ``faiss-brute``  exact reference: faiss IndexFlatIP.range_search over all
  rows, near-threshold candidates re-decided in float64 (the models.dedup.kernels
  pair rule), so the reference and our kernels use the same decision.
* ``np-brute``     models.dedup.kernels.brute_force_pairs (blocked sgemm, upper
  triangle only).
* ``ours``         train_centroids (k = 2 sqrt(N) unless --k, on 64 k sampled
  rows, 20 iterations) + assign_with_spill (bounded spill, --max-spill) +
  partition_pairs per partition (search_partitioned). Wall time includes
  k-means training.
* ``semdedup``     SemDeDup-style baseline: same k-means partitions, all pairs
  within each cluster only (no spill: max_spill = 0).

The data are generated once per N and saved to a temporary .npy that each
worker loads. Prints wall time, peak RSS (resource.getrusage ru_maxrss of the
worker; "dataRSS" is the peak right after loading the input, so peakRSS -
dataRSS is what the method added), pairs found, recall against faiss-brute,
and the speed-up of each method over faiss-brute in the same run
(faiss-brute wall / method wall).

Planted data (unit vectors, seeded): background rows drawn around N/1000
topic centres (within-topic cosine ~0.5, so k-means partitions cut through
dense regions; never a duplicate), 10% of rows replaced by near-duplicate
groups of 2..50 members whose pairwise cosines straddle the threshold (some
groups are cliques, some are not), and 1% in chains a~b~c~... of geodesic steps
with cos 0.96 where non-adjacent members are below the threshold.

    .venv/bin/python benchmarks/bench_dedup_kernels.py --n 10000,100000 --dim 512
"""
from __future__ import annotations

import argparse
import concurrent.futures
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.dedup import kernels as dedup  # noqa: E402

METHODS = ("faiss-brute", "np-brute", "ours", "semdedup")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_embeddings(n: int, dim: int, seed: int, rows_per_topic: int = 1000) -> np.ndarray:
    """(n, dim) float32 unit rows with planted near-duplicate groups and chains."""
    rng = np.random.default_rng(seed)
    n_topics = max(1, n // rows_per_topic)
    centres = _unit(rng.standard_normal((n_topics, dim)))
    x = np.empty((n, dim), dtype=np.float32)
    step = 65536
    for s in range(0, n, step):  # blockwise: keeps float64 temporaries small
        m = min(step, n - s)
        topic = rng.integers(0, n_topics, m)
        noise = rng.standard_normal((m, dim)) * math.sqrt(1.04 / dim)
        x[s : s + m] = _unit(centres[topic] + noise)
    rows = rng.permutation(n)
    pos, budget = 0, n // 10
    while pos < budget:
        size = int(rng.integers(2, 51))
        g = rows[pos : pos + size]
        pos += size
        # |noise|^2 = s2 gives pairwise cos ~ 1 / (1 + s2): 0.935 .. 0.99.
        s2 = rng.uniform(0.01, 0.07)
        x[g] = _unit(x[g[0]] + rng.standard_normal((len(g), dim)) * math.sqrt(s2 / dim))
    phi = math.acos(0.96)
    while pos + 5 <= min(n, budget + max(5, n // 100)):
        g = rows[pos : pos + 5]
        pos += 5
        a = x[g[0]].astype(np.float64)
        u = rng.standard_normal(dim)
        u = u - (u @ a) * a
        u /= np.linalg.norm(u)
        steps = np.arange(5)[:, None] * phi
        x[g] = _unit(np.cos(steps) * a + np.sin(steps) * u)
    return x


def _faiss_brute(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    d = x.shape[1]
    band = dedup.decision_band(d)
    index = faiss.IndexFlatIP(d)
    index.add(x)
    ia, ib, cos = [], [], []
    for s in range(0, x.shape[0], 16384):
        lims, dist, lab = index.range_search(x[s : s + 16384], threshold - band)
        q = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = lab > q
        ia.append(q[keep])
        ib.append(lab[keep])
        cos.append(dist[keep])
    a, b, c = np.concatenate(ia), np.concatenate(ib), np.concatenate(cos)
    near = c < threshold + band
    exact = np.einsum("ij,ij->i", x[a[near]].astype(np.float64), x[b[near]].astype(np.float64))
    keep = np.ones(a.size, dtype=bool)
    keep[near] = exact >= threshold
    return a[keep], b[keep]


def _worker(method: str, data: str, threshold: float, seed: int, k: int, max_spill: int) -> dict:
    """Runs one method in a fresh process on the saved data; returns timings, RSS (MiB), pairs."""
    x = np.load(data)
    n = x.shape[0]
    ids = np.arange(n, dtype=np.int64)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info: dict = {}
    t0 = time.perf_counter()
    if method == "faiss-brute":
        a, b = _faiss_brute(x, threshold)
    elif method == "np-brute":
        a, b, _ = dedup.brute_force_pairs(ids, x, threshold)
    else:
        spill = max_spill if method == "ours" else 0
        rng = np.random.default_rng(seed + 1)
        sample = x[rng.choice(n, size=min(n, 64 * k), replace=False)]
        centroids = dedup.train_centroids(sample, k, seed=seed)
        t1 = time.perf_counter()
        assignment = dedup.assign_with_spill(x, centroids, threshold, spill)
        home, (indptr, _) = assignment
        t2 = time.perf_counter()
        a, b, _ = dedup.search_partitioned(ids, x, centroids, threshold, assignment=assignment)
        t3 = time.perf_counter()
        sizes = np.bincount(home, minlength=len(centroids))
        info = {
            "k": len(centroids),
            "train_s": t1 - t0,
            "assign_s": t2 - t1,
            "search_s": t3 - t2,
            "spill_per_row": float(np.diff(indptr).mean()),
            "max_partition": int(sizes.max()),
        }
    wall = time.perf_counter() - t0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"wall_s": wall, "rss_data_mib": rss_data, "rss_peak_mib": rss_peak, "a": a, "b": b, **info}


def _save_planted(path: str, n: int, dim: int, seed: int, rows_per_topic: int) -> None:
    np.save(path, planted_embeddings(n, dim, seed, rows_per_topic))


def _run_isolated(fn, *args):
    """Runs fn(*args) in a fresh spawned interpreter.

    The parent never holds the data: a spawned child's ru_maxrss starts from the
    parent's RSS at spawn time (Linux carries the hiwater mark across exec).
    """
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    return np.unique(np.minimum(a, b) * n + np.maximum(a, b))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows-per-topic", type=int, default=1000, help="background cluster size")
    p.add_argument("--n", default="10000,100000", help="comma-separated dataset sizes")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--k", type=int, default=0, help="partitions; 0 = round(2 * sqrt(N))")
    p.add_argument("--max-spill", type=int, default=dedup.DEFAULT_MAX_SPILL)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown methods {bad}; choose from {METHODS}")
    if "faiss-brute" not in methods:
        methods.insert(0, "faiss-brute")  # the reference for recall and speed ratios

    print(
        f"dim={args.dim} threshold={args.threshold} max_spill={args.max_spill} seed={args.seed}"
        f" rows_per_topic={args.rows_per_topic} cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f}"
    )
    for n in (int(v) for v in args.n.split(",")):
        k = args.k or max(1, round(2 * math.sqrt(n)))
        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "x.npy")
            _run_isolated(_save_planted, data, n, args.dim, args.seed, args.rows_per_topic)
            results = {
                m: _run_isolated(_worker, m, data, args.threshold, args.seed, k, args.max_spill) for m in methods
            }
        ref = _pair_keys(results["faiss-brute"]["a"], results["faiss-brute"]["b"], n)
        ref_wall = results["faiss-brute"]["wall_s"]
        print(f"\nN={n}  k={k}  reference pairs={ref.size}")
        print(f"{'method':12s} {'wall_s':>8s} {'speedup':>8s} {'dataRSS':>8s} {'peakRSS':>8s} {'pairs':>8s} {'recall':>8s}  details")
        for m in methods:
            r = results[m]
            got = _pair_keys(r["a"], r["b"], n)
            hit = np.intersect1d(got, ref, assume_unique=True).size
            recall = hit / ref.size if ref.size else 1.0
            extra = got.size - hit
            details = f"extra={extra}"
            if "k" in r:
                details += (
                    f" train={r['train_s']:.2f}s assign={r['assign_s']:.2f}s search={r['search_s']:.2f}s"
                    f" spill/row={r['spill_per_row']:.2f} max_part={r['max_partition']}"
                )
            print(
                f"{m:12s} {r['wall_s']:8.2f} {ref_wall / r['wall_s']:7.2f}x {r['rss_data_mib']:7.0f}M"
                f" {r['rss_peak_mib']:7.0f}M {got.size:8d} {recall:8.5f}  {details}"
            )
        if "ours" in results:
            ratio = results["ours"]["wall_s"] / ref_wall
            print(f"ours / faiss-brute wall time = {ratio:.3f} (ours is {1 / ratio:.1f}x faster), same run")


if __name__ == "__main__":
    main()
