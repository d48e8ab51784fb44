"""Benchmark an incremental dedup run: its cost against a one-shot run over old + new, and what it reads.

A planted folder of N + M rows (``bench_dedup.write_folder``: topic-clustered
float16 rows, 2% in near-duplicate groups) is split by parts into OLD (the
first N rows) and NEW (the last M); each run is its own subprocess
(``measure.run_measured``: wall time, peak RSS):

* ``one-shot``  ``dupmine dedup`` over OLD + NEW from scratch (the reference:
  what a user without increments reruns);
* ``base``      ``dupmine dedup`` over OLD (sets up the chain; not a ratio);
* ``increment`` ``dupmine dedup --embeddings NEW --previous base`` with OLD's
  ``.npy`` files moved away first, so any read of an old vector fails the run:
  it must read only NEW and the chain's increment index.
* ``--baseline-tree DIR`` (optional): the same base run and increment from
  another checkout (e.g. ``git worktree add /tmp/before HEAD~1``), before the
  old vectors are moved away: the cost of the previous design.

Printed: wall seconds and peak RSS per run, the increment / one-shot time
ratio, the bytes of the index partition files the increment could read
against the old embeddings' bytes, and the agreement of the chain's groups
with the one-shot groups (row-level group_size / is_representative, which
depend on recall, equal for every row when recall is exact).

    .venv/bin/python benchmarks/bench_increment.py [--old 500000] [--new 5000,50000] [--dim 256]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import bench_dedup  # noqa: E402
from measure import run_measured  # noqa: E402


def _link_parts(src: str, dst: str, parts: list[str]) -> None:
    from models.storage import layout

    s, d = layout.EmbeddingFolder(src), layout.EmbeddingFolder(dst)
    for part in parts:
        for a, b in ((s.img_emb(part), d.img_emb(part)), (s.metadata(part), d.metadata(part)),
                     (s.marker(part), d.marker(part))):
            if os.path.exists(a):
                os.makedirs(os.path.dirname(b), exist_ok=True)
                shutil.copy(a, b)  # copies: moving OLD's vectors away must not touch the one-shot folder


def _dedup(python: str, tree: str, emb: str, out: str, work: str, name: str, extra: list[str], args) -> dict:
    cmd = [python, "-c", "import sys; from pipelines import dedup; dedup.run(sys.argv[1:])",
           "--embeddings", emb, "--output", out, *extra]
    res = run_measured(cmd, os.path.join(work, f"{name}.log"), tree, args.mem_limit_gb, args.timeout)
    if res["rc"] != 0:
        raise SystemExit(f"{name} failed (rc {res['rc']}, {res['killed']}); see {work}/{name}.log")
    res["summary"] = json.load(open(os.path.join(out, "summary.json")))
    return res


def _state(dedup_dir: str) -> dict:
    from models.storage import run_chain

    t = run_chain.load_group_state(dedup_dir)  # keyed by plain key: unique in the planted folder, while sample
    cols = [t.column(c).to_pylist() for c in ("key", "group_size", "is_representative")]  # ids name the folder
    return {s: (g, r) for s, g, r in zip(*cols)}


def _bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=int, default=500_000, help="rows in the base run (N)")
    ap.add_argument("--new", default="5000,50000", help="comma-separated increment sizes (M)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--part-rows", type=int, default=5000, help="rows per part (the increment is whole parts)")
    ap.add_argument("--dedup-args", default="", help="extra flags for every dedup run")
    ap.add_argument("--baseline-tree", default=None, help="another checkout to run the same increment from")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--mem-limit-gb", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bench_dedup.DIM = args.dim
    python = sys.executable
    extra = args.dedup_args.split()
    work = args.data_dir or tempfile.mkdtemp(prefix="bench_increment_")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    for m in (int(x) for x in args.new.split(",")):
        if args.old % args.part_rows or m % args.part_rows:
            raise SystemExit("--old and every --new must be multiples of --part-rows")
        root = os.path.join(work, f"n{args.old}_m{m}")
        shutil.rmtree(root, ignore_errors=True)
        full = os.path.join(root, "all")
        bench_dedup.write_folder(full, args.old + m, args.seed, args.part_rows, 0.02, 0.002, "topics")
        from models.storage import layout

        parts = layout.EmbeddingFolder(full).parts()
        n_old = args.old // args.part_rows
        old, new = os.path.join(root, "old"), os.path.join(root, "new")
        _link_parts(full, old, parts[:n_old])
        _link_parts(full, new, parts[n_old:])
        runs = {"one-shot": _dedup(python, str(REPO), full, os.path.join(root, "dd_all"), root, "one-shot", extra, args),
                "base": _dedup(python, str(REPO), old, os.path.join(root, "dd_old"), root, "base", extra, args)}
        if args.baseline_tree:  # its own base run: chains of other versions need not be readable by each other
            _dedup(python, args.baseline_tree, old, os.path.join(root, "dd_old_before"), root, "base-before", extra,
                   args)
            runs["increment (baseline tree)"] = _dedup(
                python, args.baseline_tree, new, os.path.join(root, "dd_inc_before"), root, "before",
                ["--previous", os.path.join(root, "dd_old_before")] + extra, args)
        moved = os.path.join(root, "old_vectors")
        shutil.move(os.path.join(old, "img_emb"), moved)  # an increment that reads an old vector fails
        runs["increment"] = _dedup(python, str(REPO), new, os.path.join(root, "dd_inc"), root, "increment",
                                   ["--previous", os.path.join(root, "dd_old")] + extra, args)
        shutil.move(moved, os.path.join(old, "img_emb"))
        chain, once = _state(os.path.join(root, "dd_inc")), _state(os.path.join(root, "dd_all"))
        agree = sum(chain.get(s) == v for s, v in once.items()) / max(1, len(once))
        index_bytes = _bytes(os.path.join(root, "dd_old", "partitions"))
        old_bytes = _bytes(os.path.join(old, "img_emb"))
        print(f"\nN = {args.old:,} old rows, M = {m:,} new rows, dim {args.dim} (load {os.getloadavg()[0]:.1f})")
        print(f"{'run':<28}{'wall s':>9}{'peak RSS MiB':>14}{'rows changed':>14}")
        for name, r in runs.items():
            inc = r["summary"].get("increment", {})
            print(f"{name:<28}{r['wall_s']:>9.1f}{r['peak_rss_mib']:>14.0f}{inc.get('rows_changed', 0):>14,}")
        print(f"increment / one-shot time: {runs['increment']['wall_s'] / runs['one-shot']['wall_s']:.3f}")
        if args.baseline_tree:
            print(f"increment / baseline-tree increment time: "
                  f"{runs['increment']['wall_s'] / runs['increment (baseline tree)']['wall_s']:.3f}")
        print(f"old vectors read by the increment: 0 bytes (they were moved away); stored partition files "
              f"{index_bytes / 2**20:.0f} MiB vs old img_emb {old_bytes / 2**20:.0f} MiB")
        print(f"rows whose (group_size, is_representative) equal the one-shot run's: {agree:.5f} of {len(once):,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
