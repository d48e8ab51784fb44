"""Benchmark `dupmine mine`: keyword throughput in the pipeline vs a plain spaCy loop, and full runs at scale.

Part 1, throughput (one process, same captions, same spaCy pipeline):

* ``loop``: ``for doc in nlp.pipe(captions, batch_size=512): pass`` with the
  pipeline ``KeywordExtractor(KeywordConfig()).load()`` returns
  (``spacy.blank("en")`` + lookup lemmatizer), on the raw captions; also with
  ``[t.lemma_ for t in doc]`` in the loop body;
* ``extractor``: ``KeywordExtractor.extract_with_reasons`` (normalisation +
  ``nlp.pipe`` + keyword rule), the call the pipeline's DoFn makes;
* ``pipeline``: ``pipelines.mine.run([..., '--tagger', 'none'])`` wall time
  on an embedding folder holding those captions (8-d dummy embeddings, which
  ``--tagger none`` never reads), no groups. It includes Beam start-up, the
  extractor load in the DoFn's setup, counting, combining and the tables.

Captions: the 10k real LAION captions in
``../shared/data/laion_meta/img2dataset_test_10000.parquet`` (column TEXT)
when present, else synthetic ones, repeated to ``--throughput-n``. Prints
captions/s of each and the ratio pipeline / loop (goal >= 0.8).

Part 2, full ``mine`` (``--tagger none``) at ``--sizes`` rows (default 100k,
1M), each in a subprocess under ``/usr/bin/time -v`` (peak RSS of the run; a
watchdog kills it past ``--mem-limit-gb``). Captions are synthetic: a
bigram Markov chain trained on the LAION captions (so keyword n-grams keep
appearing as N grows, as in real data) with ``--planted-fraction`` (2%) of
rows in planted duplicate groups of 2..50 rows sharing a caption (some with
an extra word), and a planted word trigger ("zorblax quintaro") in 10 groups
plus a few rows outside them. A groups folder (``groups/groups_{i}.parquet``,
the dedup output schema) marks the groups. Prints wall time, peak RSS, the
summary counts and whether peak RSS grows with N.

    .venv/bin/python benchmarks/bench_mine.py [--throughput-n 100000] [--sizes 100000,1000000] [--keep-data]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import run_measured  # noqa: E402
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TRIGGER = "zorblax quintaro"


def load_captions() -> tuple[list, str]:
    shared = Path(os.environ.get("DUPMINE_SHARED_DATA", REPO / ".." / "shared" / "data")).resolve()
    path = shared / "laion_meta" / "img2dataset_test_10000.parquet"
    if path.is_file():
        import pyarrow.parquet as pq

        caps = pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist()
        return caps, f"LAION {path.name} ({len(caps)} real captions)"
    rng = np.random.default_rng(0)
    words = ("astronaut riding horse moon painting starry night van gogh oil canvas print poster wall art vintage "
             "photo stock image royalty free vector illustration the of a and with on").split()
    return [" ".join(rng.choice(words, size=rng.integers(4, 16))) for _ in range(10000)], "synthetic captions"


def write_folder(root: str, captions: list, part_rows: int, groups: dict | None = None) -> None:
    """Embedding folder (8-d dummy float16 vectors, key + caption metadata) and, optionally, a groups folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.storage import layout
    from models.storage import schemas

    folder = layout.EmbeddingFolder(os.path.join(root, "emb"))
    n = len(captions)
    for p, s in enumerate(range(0, n, part_rows)):
        m = min(part_rows, n - s)
        i = f"{p:05d}"
        layout.write_npy(folder.img_emb(i), np.ones((m, 8), np.float16) / np.float16(np.sqrt(8)))
        keys = [f"{r:09d}" for r in range(s, s + m)]
        os.makedirs(os.path.dirname(folder.metadata(i)), exist_ok=True)
        pq.write_table(pa.table({"key": keys, "caption": captions[s:s + m]}), folder.metadata(i))
        if groups is not None:
            gid, gsize = groups["id"][s:s + m], groups["size"][s:s + m]
            gkeys = [keys[j] if gid[j] < 0 else f"{gid[j]:09d}" for j in range(m)]
            t = pa.table({"key": keys, "group_id": gkeys, "group_size": gsize.astype(np.int64),
                          "is_representative": [gkeys[j] == keys[j] for j in range(m)], "representative_key": gkeys,
                          "max_cosine": pa.nulls(m, pa.float32()), "part": [i] * m}, schema=schemas.DEDUP_GROUPS)
            layout.write_parquet(os.path.join(root, "dd", "groups", f"groups_{i}.parquet"), t)


# --------------------------------------------------------------------------- synthetic corpus


def markov_captions(source: list, n: int, seed: int) -> list[str]:
    """n captions from a bigram Markov chain over the source captions' lowercase words."""
    succ: dict[str, list[str]] = {}
    starts: list[str] = []
    for c in source:
        if not isinstance(c, str):
            continue
        w = c.split()
        if not w:
            continue
        starts.append(w[0])
        for a, b in zip(w, w[1:] + ["</s>"]):
            succ.setdefault(a, []).append(b)
    rng = np.random.default_rng(seed)
    r = rng.random((n, 41)).tolist()
    first = rng.integers(0, len(starts), n).tolist()
    out = []
    for i in range(n):
        w = starts[first[i]]
        words = [w]
        ri = r[i]
        for k in range(40):
            nxt = succ.get(w)
            if not nxt:
                break
            w = nxt[int(ri[k] * len(nxt))]
            if w == "</s>":
                break
            words.append(w)
        out.append(" ".join(words))
    return out


def planted_corpus(source: list, n: int, seed: int, planted_fraction: float) -> tuple[list[str], dict]:
    caps = markov_captions(source, n, seed)
    rng = np.random.default_rng([seed, 1])
    perm = rng.permutation(n)
    gid = np.full(n, -1, np.int64)
    gsize = np.ones(n, np.int64)
    pos, budget, g = 0, int(planted_fraction * n), 0
    extra = markov_captions(source, 1000, seed + 1)
    while pos + 2 <= budget:
        size = int(min(rng.integers(2, 51), budget - pos))
        rows = np.sort(perm[pos:pos + size])
        pos += size
        base = caps[rows[0]]
        if g < 10:
            base = f"{base} {TRIGGER}"
        for j, r in enumerate(rows):
            caps[r] = base if rng.random() < 0.7 else f"{base} {extra[int(rng.integers(0, 1000))].split()[-1]}"
        gid[rows], gsize[rows] = rows[0], size
        g += 1
    for r in perm[pos:pos + 5]:  # the trigger outside its groups too
        caps[r] = f"{TRIGGER} {caps[r]}"
    return caps, {"id": gid, "size": gsize, "groups": g, "rows_in_groups": pos}


# --------------------------------------------------------------------------- subprocess runs


def run_mine_subprocess(argv: list[str], log_path: str, mem_limit_gb: float, timeout: float) -> dict:
    code = "import json,sys; from pipelines import mine; s = mine.run(sys.argv[1:]); print('SUMMARY ' + json.dumps(s))"
    cmd = [sys.executable, "-c", code] + argv
    measured = run_measured(cmd, log_path, str(REPO), mem_limit_gb, timeout)
    text = open(log_path).read()
    m = re.search(r"^SUMMARY (.*)$", text, re.M)
    if measured["rc"] != 0 or measured["killed"]:
        print(f"  !! mine failed ({measured['killed'] or 'exit ' + str(measured['rc'])}); log tail:\n{text[-3000:]}", flush=True)
    return measured | {"summary": json.loads(m.group(1)) if m else None}


# --------------------------------------------------------------------------- main


def throughput(captions: list, base: str, part_rows: int, repeat: int) -> dict:
    """Each timed method starts from a freshly loaded spaCy pipeline (untimed), as the pipeline's DoFn does, so no
    method inherits a warm tokenizer cache from another; repeats of the 10k captions warm it equally for all."""
    from models.mine.keywords import KeywordConfig, KeywordExtractor
    from pipelines import mine

    t0 = time.perf_counter()
    KeywordExtractor(KeywordConfig()).load()
    load_s = time.perf_counter() - t0
    raw = [c if isinstance(c, str) else "" for c in captions]
    n = len(captions)

    def best(fn):
        times = []
        for _ in range(repeat):
            fresh = KeywordExtractor(KeywordConfig())
            fresh.load()
            t = time.perf_counter()
            fn(fresh)
            times.append(time.perf_counter() - t)
        return min(times)

    def loop(ex):
        for _doc in ex.nlp.pipe(raw, batch_size=512):
            pass

    def loop_lemma(ex):
        for doc in ex.nlp.pipe(raw, batch_size=512):
            [t.lemma_ for t in doc]

    def extractor(ex):
        ex.extract_with_reasons(captions)

    t_loop, t_lemma, t_ex = best(loop), best(loop_lemma), best(extractor)
    t0 = time.perf_counter()
    KeywordExtractor(KeywordConfig()).load()  # what the DoFn's setup pays per run once spaCy is imported
    reload_s = time.perf_counter() - t0
    # Warm the process-wide imports (Apache Beam, pyarrow writers, statistics) with an untimed run on 1,000
    # captions, as the loop had spaCy imported before it was timed; per-run costs (Beam graph, DoFn setup,
    # extractor reload) stay in the timed runs.
    warm = os.path.join(base, "throughput_warmup")
    write_folder(warm, captions[:1000], part_rows)
    mine.run(["--embeddings", os.path.join(warm, "emb"), "--output", os.path.join(warm, "mine_out"), "--tagger", "none"])
    shutil.rmtree(warm, ignore_errors=True)
    root = os.path.join(base, "throughput")
    shutil.rmtree(root, ignore_errors=True)
    write_folder(root, captions, part_rows)
    out = os.path.join(root, "mine_out")
    t_pipe, stages = [], {}
    for _ in range(repeat):
        stages = {}
        with stage_timer(stages):
            t = time.perf_counter()
            summary = mine.run(["--embeddings", os.path.join(root, "emb"), "--output", out, "--tagger", "none"])
            t_pipe.append(time.perf_counter() - t)
    shutil.rmtree(root, ignore_errors=True)
    return {"n": n, "load_s": load_s, "reload_s": reload_s, "loop": t_loop, "loop_lemma": t_lemma, "extractor": t_ex,
            "pipeline": min(t_pipe), "pipeline_all": t_pipe, "summary": summary, "stages": stages}


class stage_timer:
    """Benchmark-only instrumentation: seconds per fused FnApiRunner stage, accumulated into ``into``."""

    def __init__(self, into: dict):
        self.into = into

    def __enter__(self):
        try:
            from apache_beam.runners.portability.fn_api_runner import fn_runner
        except ImportError:
            self.cls = None
            return self
        self.cls, self.orig = fn_runner.FnApiRunner, getattr(fn_runner.FnApiRunner, "_execute_bundle", None)
        if self.orig is None:  # private Beam API; no stage split if it moved
            self.cls = None
            return self
        into, orig = self.into, self.orig

        def patched(runner, ctx, bcm, bundle_input):
            names = (re.findall(r"ref_AppliedPTransform_(?:AnalyzeParts-)?([A-Za-z]+)", bcm.stage.name)
                     or re.findall(r"AnalyzeParts/([A-Za-z]+)/", bcm.stage.name))
            short = "+".join(dict.fromkeys(x for x in names if x not in ("ListParts", "Impulse")))[:60] or "other"
            t = time.perf_counter()
            try:
                return orig(runner, ctx, bcm, bundle_input)
            finally:
                into[short] = into.get(short, 0.0) + time.perf_counter() - t

        self.cls._execute_bundle = patched
        return self

    def __exit__(self, *exc):
        if self.cls is not None:
            self.cls._execute_bundle = self.orig
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--throughput-n", type=int, default=100_000, help="captions for the throughput comparison (0: skip)")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions of each throughput measurement (best kept)")
    ap.add_argument("--sizes", default="100000,1000000", help="rows of the full mine runs (empty: skip)")
    ap.add_argument("--part-rows", type=int, default=100_000, help="rows per embedding part")
    ap.add_argument("--planted-fraction", type=float, default=0.02)
    ap.add_argument("--mine-args", default="", help="extra flags for the full runs (e.g. Beam's --direct_num_workers=2 ...)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--keep-data", action="store_true")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=1800.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    base = args.data_dir or tempfile.mkdtemp(prefix="bench_mine_")
    os.makedirs(base, exist_ok=True)
    source, desc = load_captions()
    print(f"bench_mine: cpus={os.cpu_count()} loadavg={os.getloadavg()} captions from {desc};"
          f" part rows {args.part_rows}", flush=True)
    thr = None
    if args.throughput_n:
        caps = (source * (-(-args.throughput_n // len(source))))[:args.throughput_n]
        thr = throughput(caps, base, args.part_rows, args.repeat)
        print(f"throughput done, loadavg {os.getloadavg()}", flush=True)
    runs = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        t0 = time.perf_counter()
        caps, groups = planted_corpus(source, n, args.seed, args.planted_fraction)
        root = os.path.join(base, f"corpus_{n}")
        shutil.rmtree(root, ignore_errors=True)
        write_folder(root, caps, args.part_rows, groups)
        del caps
        gen_s = time.perf_counter() - t0
        print(f"N={n}: corpus written in {gen_s:.1f} s ({groups['groups']} planted groups, {groups['rows_in_groups']} rows)",
              flush=True)
        argv_ = ["--embeddings", os.path.join(root, "emb"), "--groups", os.path.join(root, "dd"),
                 "--output", os.path.join(root, "mine_out"), "--tagger", "none"] + args.mine_args.split()
        res = run_mine_subprocess(argv_, os.path.join(base, f"mine_{n}.log"), args.mem_limit_gb, args.timeout)
        res["n"] = n
        runs.append(res)
        print(f"  mine N={n}: wall {res['wall_s']:.1f} s, peak RSS {res['peak_rss_mib']:.0f} MiB,"
              f" load {res['load_start']:.2f}..{res['load_max']:.2f}", flush=True)
        if not args.keep_data:
            shutil.rmtree(root, ignore_errors=True)

    if thr:
        n = thr["n"]
        print(f"\n== keyword throughput: {n} captions ({desc}, repeated), spaCy blank('en') + lookup lemmatizer,"
              f" batch 512, best of {args.repeat}")
        print(f"{'method':44s} {'seconds':>8s} {'captions/s':>11s} {'vs loop':>8s}")
        for label, key in (("plain loop: for doc in nlp.pipe(...): pass", "loop"),
                           ("plain loop + [t.lemma_ for t in doc]", "loop_lemma"),
                           ("KeywordExtractor.extract_with_reasons", "extractor"),
                           ("pipelines.mine.run(--tagger none), wall", "pipeline")):
            print(f"{label:44s} {thr[key]:8.2f} {n / thr[key]:11.0f} {thr['loop'] / thr[key]:8.2f}")
        print(f"ratio pipeline / plain loop (captions/s) = {thr['loop'] / thr['pipeline']:.2f}"
              f" (vs loop + lemma_: {thr['loop_lemma'] / thr['pipeline']:.2f}; extractor / loop"
              f" {thr['loop'] / thr['extractor']:.2f}); first load incl. spaCy import {thr['load_s']:.2f} s (not timed"
              f" in either), reload {thr['reload_s']:.2f} s (in the pipeline's DoFn setup);"
              f" pipeline runs {[round(x, 1) for x in thr['pipeline_all']]}")
        top = sorted(thr["stages"].items(), key=lambda kv: -kv[1])
        rest = thr["pipeline"] - sum(v for _, v in top)
        print("  pipeline time by fused stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in top[:4] if v >= 0.05)
              + f", other stages {sum(v for _, v in top[4:]):.1f} s, outside stages (graph, start-up) {rest:.1f} s")
    if runs:
        print("\n== full mine (--tagger none) on synthetic Markov captions with planted duplicate groups")
        print(f"{'N':>8s} {'wall_s':>8s} {'stage_s':>8s} {'rows/s':>8s} {'peakRSS_MB':>10s} {'kw_tested':>9s}"
              f" {'word_trig':>9s} {'prompts':>7s} {'dup_grps':>8s}  load")
        for r in runs:
            s = r["summary"] or {}
            print(f"{r['n']:8d} {r['wall_s']:8.1f} {s.get('seconds', float('nan')):8.1f} {r['n'] / r['wall_s']:8.0f}"
                  f" {r['peak_rss_mib']:10.0f} {s.get('keywords_tested', '-'):>9} {s.get('word_triggers', '-'):>9}"
                  f" {s.get('flagged_prompts', '-'):>7} {s.get('duplicate_groups_with_captions', '-'):>8}"
                  f"  {r['load_start']:.2f}..{r['load_max']:.2f}{'  ' + str(r['killed']) if r['killed'] else ''}")
        ok = [r for r in runs if r["summary"]]
        if len(ok) > 1:
            a, b = ok[0], ok[-1]
            print(f"peak RSS x{b['peak_rss_mib'] / a['peak_rss_mib']:.2f} for N x{b['n'] / a['n']:.0f};"
                  f" wall x{b['wall_s'] / a['wall_s']:.2f}")
    print(f"\nloadavg at end: {os.getloadavg()}")
    if not args.keep_data and not args.data_dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
