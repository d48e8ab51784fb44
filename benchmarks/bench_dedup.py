"""Benchmark `dupmine dedup` end to end: wall time, peak memory and recall at N = 10k, 100k, 1M.

For each N a planted embedding folder is written (LAION layout: float16
``img_emb/img_emb_{i}.npy`` parts of at most ``--part-rows`` rows plus
``metadata/metadata_{i}.parquet`` with key, width, height, sha256), then each
method runs in its own subprocess (under ``/usr/bin/time -v`` when present,
so "peak RSS" is that process's maximum resident set; a watchdog kills a run
whose process tree passes ``--mem-limit-gb``):

* ``dupmine``   ``pipelines.dedup.run`` with default flags (threshold 0.95,
  auto partitions K = ceil(N / 2000), max spill 8) on Beam's in-process
  FnApiRunner, plus ``--edges all`` (unless ``--dedup-args`` names
  ``--edges``): pair recall needs every pair, and the default ``spanning``
  writes only a spanning forest (its pair count is in the summary,
  ``near_pairs``); its edges are read back from ``edges/*.parquet``. Pass
  ``--dedup-args '--vectors shuffle'`` (or ``reread``) to pick the vector
  transport (the planted folders are local, so ``auto`` is ``reread``).
* ``faiss-brute`` exact reference: faiss ``IndexFlatIP.range_search`` over all
  rows, near-threshold candidates re-decided in float64 (the same pair rule as
  the pipeline), for N <= ``--brute-max`` (default 100k; at 1M it would need
  ~N^2 d / 2 = 2.6e14 multiply-adds, hours on 2 cores).
* ``semdedup``  SemDeDup-style baseline: the same spherical k-means (same K,
  sample size, seed, iterations), then all pairs within each cluster only
  (no spill), in process, as SemDeDup computes them: each cluster's full
  similarity matrix, its upper triangle thresholded (:func:`semdedup_pairs`).
* ``kernels``   (optional, ``--kernels``) our partitioned search in one process
  without Beam (train, assign with the default spill, search): separates kernel time
  from Beam overhead.
* ``sample``    at N > ``--brute-max``: exact search (faiss IndexFlatIP, k = 64)
  of ``--sample-queries`` random rows against all rows; its pairs estimate
  recall on pairs that are not planted.

Every worker sees the vectors exactly as the pipeline does: float16 read as
float32 and divided by the float32 row norm.

Reference pairs: faiss-brute where run; otherwise the planted ground truth,
i.e. all pairs inside each planted group or chain whose float64 cosine is
>= t (computed exactly per group). At the brute-force sizes both are printed,
showing whether the planted truth is complete. Recall = found reference pairs
/ reference pairs; precision = found pairs with float64 cosine >= t / found
pairs (must be 1.0).

Planted data: random unit 512-d rows (``--background random``, the issue's
setting; ``topics`` draws them around N/1000 topic centres with within-topic
cosine ~0.5, closer to CLIP) with ``--planted-fraction`` (2%) of rows in
near-duplicate groups of 2..50 members (pairwise cosine ~0.955..0.995) and
``--chain-fraction`` (0.2%) in chains of 5 with adjacent cosine 0.96 and
non-adjacent members below t (connected only through the chain).

    .venv/bin/python benchmarks/bench_dedup.py [--sizes 10000,100000,1000000] [--keep-data]
        [--data-dir /tmp/bench_dedup] [--dedup-args '--partitions 1000'] [--kernels]
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import resource
import shlex
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from models.dedup.partition import DEFAULT_MAX_SPILL  # noqa: E402

DIM = 512
SEED = 1234          # pipeline default k-means seed; the SemDeDup baseline uses the same
ROWS_PER_PARTITION = 2000
CHAIN_LEN = 5


# --------------------------------------------------------------------------- data


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def plan(n: int, seed: int, planted_fraction: float, chain_fraction: float):
    """Planted structure: (rows, group index) of groups and chains, and their generators."""
    rng = np.random.default_rng([seed, n, 1])
    perm = rng.permutation(n)
    pos = 0
    groups, chains = [], []
    budget = int(round(planted_fraction * n))
    while pos + 2 <= budget:
        size = int(min(rng.integers(2, 51), budget - pos))
        groups.append(np.sort(perm[pos:pos + size]))
        pos += size
    chain_budget = pos + int(round(chain_fraction * n))
    while pos + CHAIN_LEN <= chain_budget:
        chains.append(perm[pos:pos + CHAIN_LEN].copy())  # chain order matters: member j is j steps from the start
        pos += CHAIN_LEN
    return groups, chains


def write_folder(root: str, n: int, seed: int, part_rows: int, planted_fraction: float, chain_fraction: float,
                 background: str) -> dict:
    """Writes the planted embedding folder part by part (memory: one part); returns its description."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.storage import layout

    groups, chains = plan(n, seed, planted_fraction, chain_fraction)
    rng = np.random.default_rng([seed, n, 2])
    n_topics = max(1, n // 1000)
    centres = _unit(rng.standard_normal((n_topics, DIM))) if background == "topics" else None
    g_base = _unit(rng.standard_normal((len(groups), DIM)))
    g_s2 = rng.uniform(0.005, 0.045, len(groups))      # |noise|^2: pairwise cos ~ 1 / (1 + s2)
    c_a = _unit(rng.standard_normal((len(chains), DIM)))
    c_u = rng.standard_normal((len(chains), DIM))
    c_u -= np.einsum("ij,ij->i", c_u, c_a)[:, None] * c_a
    c_u = _unit(c_u)
    phi = math.acos(0.96)
    # row -> (kind, index, position)
    kind = np.zeros(n, np.int8)
    owner = np.full(n, -1, np.int64)
    step = np.zeros(n, np.int64)
    for gi, rows in enumerate(groups):
        kind[rows], owner[rows] = 1, gi
    for ci, rows in enumerate(chains):
        kind[rows], owner[rows], step[rows] = 2, ci, np.arange(CHAIN_LEN)
    folder = layout.EmbeddingFolder(root)
    for p, s in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - s)
        prng = np.random.default_rng([seed, n, 3, p])
        if centres is None:
            x = prng.standard_normal((m, DIM))
        else:
            x = centres[prng.integers(0, n_topics, m)] + prng.standard_normal((m, DIM)) * math.sqrt(1.04 / DIM)
        k, o, st = kind[s:s + m], owner[s:s + m], step[s:s + m]
        g = np.flatnonzero(k == 1)
        if g.size:
            x[g] = g_base[o[g]] + prng.standard_normal((g.size, DIM)) * np.sqrt(g_s2[o[g]] / DIM)[:, None]
        c = np.flatnonzero(k == 2)
        if c.size:
            ang = st[c][:, None] * phi
            x[c] = np.cos(ang) * c_a[o[c]] + np.sin(ang) * c_u[o[c]]
        x = _unit(x).astype(np.float16)
        i = f"{p:05d}"
        layout.write_npy(folder.img_emb(i), x)
        keys = [f"{r:09d}" for r in range(s, s + m)]
        sha = [os.urandom(32).hex() for _ in range(m)]  # unique: no exact-hash joins, but the hash path runs
        wh = prng.integers(64, 1025, (2, m)).astype(np.int32)
        os.makedirs(os.path.dirname(folder.metadata(i)), exist_ok=True)
        pq.write_table(pa.table({"key": keys, "sha256": sha, "width": wh[0], "height": wh[1]}), folder.metadata(i))
    desc = {"n": n, "dim": DIM, "part_rows": part_rows, "seed": seed, "background": background,
            "groups": len(groups), "chains": len(chains),
            "planted_rows": int(sum(len(g) for g in groups) + sum(len(c) for c in chains))}
    np.savez(os.path.join(root, "planted.npz"), group_rows=np.concatenate(groups) if groups else np.zeros(0, np.int64),
             group_sizes=np.asarray([len(g) for g in groups], np.int64),
             chain_rows=np.concatenate(chains) if chains else np.zeros(0, np.int64))
    with open(os.path.join(root, "planted.json"), "w") as f:
        json.dump(desc, f)
    return desc


def load_vectors(root: str, rows: np.ndarray | None = None) -> np.ndarray:
    """float32 rows exactly as the pipeline sees them (float16 -> float32, divided by the float32 norm)."""
    from models.storage import layout

    folder = layout.EmbeddingFolder(root)
    parts = folder.parts()
    mats = [layout.read_npy(folder.img_emb(i)) for i in parts]
    if rows is None:
        out = np.empty((sum(m.shape[0] for m in mats), mats[0].shape[1]), np.float32)
        s = 0
        for m in mats:
            for b in range(0, m.shape[0], 65536):
                x = np.asarray(m[b:b + 65536], np.float32)
                out[s + b:s + b + x.shape[0]] = x / np.linalg.norm(x, axis=1)[:, None]
            s += m.shape[0]
        return out
    starts = np.cumsum([0] + [m.shape[0] for m in mats])
    rows = np.asarray(rows, np.int64)
    out = np.empty((rows.size, mats[0].shape[1]), np.float32)
    pi = np.searchsorted(starts, rows, side="right") - 1
    for p in np.unique(pi):
        sel = np.flatnonzero(pi == p)
        local = rows[sel] - starts[p]
        order = np.argsort(local)
        x = np.asarray(mats[p][local[order]], np.float32)
        out[sel[order]] = x / np.linalg.norm(x, axis=1)[:, None]
    return out


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.unique(np.minimum(a, b) << 32 | np.maximum(a, b))


def planted_truth(root: str, threshold: float) -> np.ndarray:
    """Pair keys of all pairs inside planted groups / chains with float64 cosine >= t."""
    z = np.load(os.path.join(root, "planted.npz"))
    out = []
    gr = z["group_rows"]
    bounds = np.concatenate([[0], np.cumsum(z["group_sizes"])])
    members = [gr[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    cr = z["chain_rows"]
    members += [cr[i:i + CHAIN_LEN] for i in range(0, cr.size, CHAIN_LEN)]
    allrows = np.concatenate(members) if members else np.zeros(0, np.int64)
    vecs = load_vectors(root, allrows).astype(np.float64)
    s = 0
    for rows in members:
        v = vecs[s:s + len(rows)]
        s += len(rows)
        g = v @ v.T
        i, j = np.nonzero(np.triu(g >= threshold, 1))
        if i.size:
            out.append(pair_keys(rows[i], rows[j]))
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def float64_cos(root: str, keys: np.ndarray, chunk: int = 200000) -> np.ndarray:
    """float64 cosine of each pair key, from the vectors as the pipeline sees them."""
    out = np.empty(keys.size, np.float64)
    for s in range(0, keys.size, chunk):
        k = keys[s:s + chunk]
        a, b = k >> 32, k & 0xFFFFFFFF
        rows, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
        v = load_vectors(root, rows).astype(np.float64)
        out[s:s + k.size] = np.einsum("ij,ij->i", v[inv[:k.size]], v[inv[k.size:]])
    return out


# --------------------------------------------------------------------------- workers (run in subprocesses)


def _band(d: int) -> float:
    from models.dedup.kernels import decision_band

    return decision_band(d)


def _recheck(x: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray, t: float):
    band = _band(x.shape[1])
    near = c < t + band
    exact = np.einsum("ij,ij->i", x[a[near]].astype(np.float64), x[b[near]].astype(np.float64))
    keep = np.ones(a.size, bool)
    keep[near] = exact >= t
    keep &= c >= t - band
    return a[keep], b[keep]


def worker_brute(root: str, t: float, info: dict):
    import faiss

    x = load_vectors(root)
    info["rss_data_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    ia, ib, cs = [], [], []
    for s in range(0, x.shape[0], 16384):
        lims, dist, lab = index.range_search(x[s:s + 16384], t - _band(x.shape[1]))
        q = np.repeat(np.arange(s, s + len(lims) - 1), np.diff(lims.astype(np.int64)))
        keep = lab > q
        ia.append(q[keep]); ib.append(lab[keep]); cs.append(dist[keep])
    a, b = _recheck(x, np.concatenate(ia), np.concatenate(ib), np.concatenate(cs), t)
    info["compute_s"] = time.perf_counter() - t0
    return pair_keys(a, b)


def semdedup_pairs(x: np.ndarray, home: np.ndarray, t: float):
    """All pairs >= t inside each cluster as SemDeDup computes them (Abbas et al. 2023, arXiv:2303.09540,
    Algorithm 1): the cluster's full similarity matrix X X^T (one sgemm), then its strict upper triangle, scanned
    by the pipeline's own tile kernel (its row-max prefilter); candidates within the float32 band re-decided in
    float64 (the pipeline's pair rule)."""
    from models.dedup.search import _tile_edges

    order = np.argsort(home, kind="stable")
    bounds = np.flatnonzero(np.diff(home[order])) + 1
    lo = np.float32(t - _band(x.shape[1]))
    out_a, out_b, out_c = [], [], []
    for rows in np.split(order, bounds):
        xc = x[rows]
        i, j, c = _tile_edges(xc, xc, lo, diagonal=True)  # the full X X^T, its strict upper triangle kept
        out_a.append(rows[i]); out_b.append(rows[j]); out_c.append(c)
    a, b, c = (np.concatenate(v) for v in (out_a, out_b, out_c))
    return _recheck(x, np.minimum(a, b), np.maximum(a, b), c, t)


def worker_clustered(root: str, t: float, info: dict, max_spill: int, k: int, sample_size: int, niter: int):
    from models.dedup import kernels as dedup

    x = load_vectors(root)
    n = x.shape[0]
    info["rss_data_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    rng = np.random.default_rng(SEED)
    sample = x[np.sort(rng.choice(n, min(n, sample_size), replace=False))]
    centroids = dedup.train_centroids(sample, min(k, len(sample)), seed=SEED, niter=niter)
    t1 = time.perf_counter()
    assignment = dedup.assign_with_spill(x, centroids, t, max_spill)
    home, (indptr, _) = assignment
    t2 = time.perf_counter()
    if max_spill == 0:  # SemDeDup: each cluster's full similarity matrix, its upper triangle thresholded
        a, b = semdedup_pairs(x, home, t)
    else:
        a, b, _ = dedup.search_partitioned(np.arange(n, dtype=np.int64), x, centroids, t, max_spill,
                                           assignment=assignment)
    t3 = time.perf_counter()
    sizes = np.bincount(home, minlength=len(centroids))
    info.update(compute_s=t3 - t0, train_s=t1 - t0, assign_s=t2 - t1, search_s=t3 - t2, k=len(centroids),
                spill_per_row=float(np.diff(indptr).mean()), max_partition=int(sizes.max()))
    return pair_keys(a, b)


def worker_sample(root: str, t: float, info: dict, n_queries: int, k: int = 64):
    import faiss

    x = load_vectors(root)
    n = x.shape[0]
    info["rss_data_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    q = np.sort(np.random.default_rng(7).choice(n, min(n, n_queries), replace=False))
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    dist, lab = index.search(x[q], k)
    info["truncated_queries"] = int((dist[:, -1] >= t - _band(x.shape[1])).sum())  # k too small for these
    qq = np.repeat(q, k)
    a, b = _recheck(x, qq, lab.ravel().astype(np.int64), dist.ravel(), t)
    keep = a != b
    info["compute_s"] = time.perf_counter() - t0
    np.save(info.pop("_queries_path"), q)
    return pair_keys(a[keep], b[keep])


def _rss_mib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1024 for line in f if line.startswith("VmRSS:"))


def trace_stages(path: str) -> None:
    """Benchmark-only instrumentation: log every FnApiRunner bundle (fused stage) with its seconds and RSS to ``path``.

    Lines are flushed as they happen, so a run killed by the watchdog shows the stage it was in.
    """
    try:
        from apache_beam.runners.portability.fn_api_runner import fn_runner
    except ImportError:
        return
    orig = getattr(fn_runner.FnApiRunner, "_execute_bundle", None)
    if orig is None:  # private Beam API; skip the trace if it moved
        return
    log = open(path, "w", buffering=1)
    t0 = time.perf_counter()
    peak = [0]

    def sample():
        while True:
            try:
                peak[0] = max(peak[0], _rss_mib())
            except (OSError, StopIteration):
                pass
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()

    def patched(self, ctx, bcm, bundle_input):
        # Composite and step: "AssignAndSearch-ExactGroups", not one "AssignAndSearch" for a dozen stages.
        names = re.findall(r"ref_AppliedPTransform_(?:Deduplicate-|AnalyzeParts-)?([A-Za-z]+(?:-[A-Za-z]+)?)",
                           bcm.stage.name)
        short = ("+".join(dict.fromkeys(n for n in names if n.split("-")[0] not in ("ListParts", "Impulse")))[:120]
                 or bcm.stage.name[:120])
        start, r0 = time.perf_counter(), _rss_mib()
        peak[0] = r0
        log.write(f"START {start - t0:8.1f} {r0:7d} {short}\n")
        out = orig(self, ctx, bcm, bundle_input)
        log.write(f"END   {time.perf_counter() - t0:8.1f} {time.perf_counter() - start:8.1f}s rss {r0}->{_rss_mib()}"
                  f" peak {peak[0]} MiB {short}\n")
        return out

    fn_runner.FnApiRunner._execute_bundle = patched


def stage_report(path: str, top: int = 6) -> str:
    """The slowest fused stages of a traced run and, if it died, the stage it was in."""
    if not os.path.exists(path):
        return ""
    lines = open(path).read().splitlines()
    ends = []
    for line in lines:
        m = re.match(r"END\s+(\S+)\s+(\S+)s rss (\d+)->(\d+) peak (\d+) MiB (.*)", line)
        if m:
            ends.append((float(m.group(2)), int(m.group(5)), m.group(6)))
    ends.sort(reverse=True)
    out = [f"      {sec:7.1f} s  peak {pk:6d} MiB  {name}" for sec, pk, name in ends[:top]]
    if lines and lines[-1].startswith("START"):
        m = re.match(r"START\s+(\S+)\s+(\d+) (.*)", lines[-1])
        out.append(f"      unfinished: {m.group(3)} (started at {m.group(1)} s with RSS {m.group(2)} MiB)")
    return "\n".join(out)


def worker_pipeline(root: str, t: float, info: dict, out: str, extra: list[str], trace: str | None = None):
    from pipelines import dedup as stage

    if trace:
        trace_stages(trace)
    t0 = time.perf_counter()
    edges = [] if any(a == "--edges" or a.startswith("--edges=") for a in extra) else ["--edges", "all"]
    summary = stage.run(["--embeddings", root, "--output", out, "--threshold", str(t)] + edges + extra)
    info["compute_s"] = time.perf_counter() - t0
    info["summary"] = summary
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(out, "edges", "*.parquet")))
    ka, kb, kinds = [], [], []
    for f in files:
        tab = pq.read_table(f, columns=["key_a", "key_b", "kind"])
        ka += tab.column("key_a").to_pylist(); kb += tab.column("key_b").to_pylist(); kinds += tab.column("kind").to_pylist()
    info["edge_rows"] = len(ka)
    info["exact_edges"] = sum(k == "exact" for k in kinds)
    a = np.asarray([int(k) for k in ka], np.int64)
    b = np.asarray([int(k) for k in kb], np.int64)
    return pair_keys(a, b)


def worker_main(args) -> None:
    info: dict = {"method": args.worker}
    t0 = time.perf_counter()
    if args.worker == "faiss-brute":
        keys = worker_brute(args.data, args.threshold, info)
    elif args.worker in ("semdedup", "kernels"):
        keys = worker_clustered(args.data, args.threshold, info, 0 if args.worker == "semdedup" else args.max_spill,
                                args.k, args.sample_size, args.niter)
    elif args.worker == "sample":
        info["_queries_path"] = args.result + ".queries.npy"
        keys = worker_sample(args.data, args.threshold, info, args.sample_queries)
    elif args.worker == "dupmine":
        keys = worker_pipeline(args.data, args.threshold, info, args.output, shlex.split(args.dedup_args), args.result + ".stages")
    else:
        raise ValueError(args.worker)
    info["worker_s"] = time.perf_counter() - t0
    info["rss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    np.save(args.result + ".npy", keys)
    with open(args.result + ".json", "w") as f:
        json.dump(info, f, default=str)


# --------------------------------------------------------------------------- driver


def run_worker(method: str, args, data: str, result: str, extra: list[str]) -> dict:
    """Runs one worker subprocess; returns its info plus wall_s, peak_rss_mib (time -v or getrusage), load."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--data", data, "--result", result,
           "--threshold", str(args.threshold)] + extra
    measured = run_measured(cmd, result + ".log", str(REPO), args.mem_limit_gb, args.timeout)
    info: dict = {}
    if os.path.exists(result + ".json"):
        with open(result + ".json") as f:
            info = json.load(f)
    info.update(measured)
    if measured["rc"] != 0 or measured["killed"]:
        tail = open(result + ".log").read()[-3000:]
        info["error"] = measured["killed"] or f"exit {measured['rc']}"
        print(f"  !! {method} failed ({info['error']}); log tail:\n{tail}", flush=True)
    return info


def _fmt_ratio(a, b):
    return f"{a / b:.3f}" if a and b else "-"


def main(argv: list[str] | None = None) -> int:
    global DIM
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--dim", type=int, default=DIM, help="embedding dimension of the planted folders")
    ap.add_argument("--part-rows", type=int, default=100_000)
    ap.add_argument("--planted-fraction", type=float, default=0.02)
    ap.add_argument("--chain-fraction", type=float, default=0.002)
    ap.add_argument("--background", choices=("random", "topics"), default="random")
    ap.add_argument("--brute-max", type=int, default=100_000, help="largest N for the faiss brute-force reference")
    ap.add_argument("--sample-queries", type=int, default=2000, help="query rows of the sampled exact search at larger N")
    ap.add_argument("--methods", default="dupmine,semdedup", help="besides the reference: dupmine, semdedup, kernels")
    ap.add_argument("--kernels", action="store_true", help="also run our kernels in one process without Beam")
    ap.add_argument("--dedup-args", default="", help="extra flags for the pipeline, e.g. '--partitions 1000'")
    ap.add_argument("--data-dir", default=None, help="where planted folders go (default: a temp dir)")
    ap.add_argument("--keep-data", action="store_true", help="keep the planted folders and outputs")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="kill a run whose RSS passes this")
    ap.add_argument("--timeout", type=float, default=1800.0, help="kill a run after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    # worker mode (internal)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--sample-size", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--niter", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--max-spill", type=int, default=DEFAULT_MAX_SPILL, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    DIM = args.dim
    if args.worker:
        worker_main(args)
        return 0

    methods = [m for m in args.methods.split(",") if m]
    if args.kernels and "kernels" not in methods:
        methods.append("kernels")
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base = args.data_dir or tempfile.mkdtemp(prefix="bench_dedup_")
    os.makedirs(base, exist_ok=True)
    t = args.threshold
    print(f"bench_dedup: dim={DIM} threshold={t} background={args.background} planted={args.planted_fraction:.1%}"
          f" chains={args.chain_fraction:.1%} cpus={os.cpu_count()} loadavg={os.getloadavg()}"
          f" time -v={'yes' if os.path.exists('/usr/bin/time') else 'no (getrusage)'} dedup-args={args.dedup_args!r}",
          flush=True)
    rows_out = []
    growth: dict = {}
    for n in sizes:
        root = os.path.join(base, f"emb_{n}x{DIM}_{args.background}")
        work = os.path.join(base, f"work_{n}x{DIM}")
        os.makedirs(work, exist_ok=True)
        t0 = time.perf_counter()
        if not os.path.exists(os.path.join(root, "planted.json")):
            shutil.rmtree(root, ignore_errors=True)
            desc = write_folder(root, n, args.seed, args.part_rows, args.planted_fraction, args.chain_fraction,
                                args.background)
        else:
            desc = json.load(open(os.path.join(root, "planted.json")))
        gen_s = time.perf_counter() - t0
        truth = planted_truth(root, t)
        k = max(1, math.ceil(n / ROWS_PER_PARTITION))
        m = re.search(r"--partitions[= ](\d+)", args.dedup_args)
        if m and int(m.group(1)):
            k = int(m.group(1))
        sample_size = min(n, 256 * k)
        print(f"\nN={n}: {desc['groups']} planted groups + {desc['chains']} chains ({desc['planted_rows']} rows),"
              f" {truth.size} planted pairs >= t; K={k}, k-means sample {sample_size}; data written in {gen_s:.1f} s",
              flush=True)
        results: dict = {}
        brute = n <= args.brute_max
        order = (["faiss-brute"] if brute else ["sample"]) + methods
        for method in order:
            extra = []
            if method in ("semdedup", "kernels"):
                extra = ["--k", str(k), "--sample-size", str(sample_size)]
            elif method == "sample":
                extra = ["--sample-queries", str(args.sample_queries)]
            elif method == "dupmine":
                extra = ["--output", os.path.join(work, "dedup_out"), "--dedup-args=" + args.dedup_args]
            res = run_worker(method, args, root, os.path.join(work, method), extra)
            keys_path = os.path.join(work, method) + ".npy"
            res["keys"] = np.load(keys_path) if os.path.exists(keys_path) and not res.get("error") else None
            results[method] = res
            print(f"  {method:12s} done: wall {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mib']:.0f} MiB,"
                  f" load {res['load_start']:.2f}..{res['load_max']:.2f}", flush=True)
        if brute:
            ref = results["faiss-brute"]["keys"]
            extra_ref = np.setdiff1d(ref, truth).size
            missing_ref = np.setdiff1d(truth, ref).size
            print(f"  reference faiss-brute: {ref.size} pairs; planted truth {truth.size} pairs;"
                  f" brute pairs not planted: {extra_ref}; planted pairs brute missed: {missing_ref}")
        else:
            ref = truth
            s = results["sample"]
            q = np.load(os.path.join(work, "sample") + ".queries.npy") if s.get("keys") is not None else None
            if q is not None:
                sk = s["keys"]
                not_planted = np.setdiff1d(sk, truth)
                print(f"  sampled exact search: {q.size} random query rows vs all {n} rows (faiss IndexFlatIP, k=64,"
                      f" {s.get('truncated_queries')} queries truncated): {sk.size} pairs >= t, {not_planted.size} of them"
                      f" not in the planted truth")
        ref_wall = results.get("faiss-brute", {}).get("wall_s")
        for method in order:
            r = results[method]
            if method == "sample":
                got = r["keys"]
                if got is not None:
                    q = np.load(os.path.join(work, "sample") + ".queries.npy")
                    rows_out.append((n, "sample-exact", r, None, got.size, None, None, None))
                continue
            got = r["keys"]
            recall = prec = s_recall = None
            if got is not None:
                recall = np.intersect1d(got, ref, assume_unique=True).size / ref.size if ref.size else 1.0
                outside = np.setdiff1d(got, ref, assume_unique=True)
                below = int((float64_cos(root, outside) < t).sum()) if outside.size else 0
                prec = 1.0 - below / got.size if got.size else 1.0
                if not brute and results["sample"].get("keys") is not None and method != "faiss-brute":
                    q = np.load(os.path.join(work, "sample") + ".queries.npy")
                    sk = results["sample"]["keys"]
                    # our pairs touching a sampled query
                    qa, qb = got >> 32, got & 0xFFFFFFFF
                    mine = got[np.isin(qa, q) | np.isin(qb, q)]
                    s_recall = np.intersect1d(mine, sk).size / sk.size if sk.size else 1.0
            rows_out.append((n, method, r, recall, None if got is None else got.size, prec, s_recall,
                             _fmt_ratio(r["wall_s"], ref_wall) if ref_wall and method != "faiss-brute" else "-"))
            growth.setdefault(method, {})[n] = (r["wall_s"], r.get("compute_s")) if not r.get("error") else None
        if not args.keep_data:
            shutil.rmtree(os.path.join(work, "dedup_out"), ignore_errors=True)
            if not args.data_dir:
                shutil.rmtree(root, ignore_errors=True)
        # detail lines
        for method in order:
            r = results[method]
            if method == "dupmine" and r.get("summary"):
                sm = r["summary"]
                print(f"  dupmine summary: seconds {sm['seconds']}, K={sm['parameters']['resolved_partitions']},"
                      f" sample {sm['parameters']['resolved_sample_size']}, duplicate groups {sm['duplicate_groups']},"
                      f" rows in dup groups {sm['rows_in_duplicate_groups']}, dropped {sm['rows_dropped']},"
                      f" edge rows {r.get('edge_rows')} (exact {r.get('exact_edges')}), near pairs"
                      f" {sm['increment'].get('near_pairs')}, vectors {sm['parameters'].get('resolved_vectors')},"
                      f" edges {sm['parameters'].get('edges')}")
            if method == "dupmine":
                rep = stage_report(os.path.join(work, method) + ".stages")
                if rep:
                    print(f"  dupmine slowest fused Beam stages (FnApiRunner bundles):\n{rep}")
            if "train_s" in r:
                print(f"  {method} kernels: train {r['train_s']:.1f} s, assign {r['assign_s']:.1f} s,"
                      f" search {r['search_s']:.1f} s, spill/row {r['spill_per_row']:.2f},"
                      f" max partition {r['max_partition']} rows (data load {r['worker_s'] - r['compute_s']:.1f} s)")

    print("\n== results (reference: faiss-brute where N <= --brute-max, else planted truth; recall_s = recall on"
          " pairs of the sampled exact search)")
    print(f"{'N':>8s} {'method':12s} {'wall_s':>8s} {'work_s':>8s} {'peakRSS_MB':>10s} {'recall':>8s} {'recall_s':>8s}"
          f" {'precision':>9s} {'pairs':>8s} {'/brute':>7s}  load")
    for n, method, r, recall, pairs, prec, s_recall, ratio in rows_out:
        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"
        print(f"{n:8d} {method:12s} {r['wall_s']:8.1f} {f(r.get('compute_s'), '8.1f')} {r['peak_rss_mib']:10.0f}"
              f" {f(recall, '8.5f')} {f(s_recall, '8.5f')} {f(prec, '9.6f')} {f(pairs, '8d')} {ratio or '-':>7s}"
              f"  {r['load_start']:.2f}..{r['load_max']:.2f}{'  ' + r['error'] if r.get('error') else ''}")
    ns = sorted({n for n, *_ in rows_out})
    if len(ns) > 1:
        print("\n== time growth between sizes: wall ratio / work ratio (work_s: the method itself, without interpreter"
              " start and data load); N log N and N^2 ratios for comparison")
        for method, by_n in growth.items():
            parts = []
            for a, b in zip(ns, ns[1:]):
                if by_n.get(a) and by_n.get(b):
                    nlogn = (b * math.log(b)) / (a * math.log(a))
                    (wa, ca), (wb, cb) = by_n[a], by_n[b]
                    work = f"x{cb / ca:.1f}" if ca and cb else "-"
                    parts.append(f"{a}->{b}: x{wb / wa:.1f} / {work} (N log N x{nlogn:.1f}, N^2 x{(b / a) ** 2:.0f})")
            if parts:
                print(f"  {method:12s} " + "; ".join(parts))
    print(f"\nloadavg at end: {os.getloadavg()}; data under {base}{' (kept)' if args.keep_data or args.data_dir else ''}")
    if not args.keep_data and not args.data_dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
