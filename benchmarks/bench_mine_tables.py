"""Benchmark the mine stage's table step: the keyed steps (transforms.mine_tables) vs the one-writer computation.

Synthetic combined counts of ``--groups`` duplicate groups (sizes 2 + geometric(0.4), capped at 200, as many
singleton rows as grouped rows), ``--keywords`` Zipf-distributed keywords (2 per row), 40 objects (30 % of rows
tagged, a planted object trigger), 20 planted word triggers (groups of 30), two captions per group. The counts are saved as
a mine run saves them (``counts/{name}/*.parquet``) and read back with ``ReadCounts``; then

* ``one-writer``: ``models.mine.tables`` word/object tables and prompts over every count held in one process
  (what ``WriteTables`` did with ``AsList`` side inputs), timed; the elements and pickled bytes it gathers;
* ``keyed``: ``SupportFilter | WriteTables`` on the DirectRunner (one process, so it pays Beam's per-element
  cost without spreading it over workers), timed; the rows its one-worker steps hold (Beam distributions).

Both tables are checked equal. Prints one JSON line.

    flock /tmp/dupmine-bench.lock .venv/bin/python benchmarks/bench_mine_tables.py [--groups 200000] [--keywords 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models.mine.object_triggers import ObjectTriggerConfig  # noqa: E402
from models.mine.part_counts import (COUNT_SHARDS, CaptionSample, Examples, GroupCaption, KeywordGroup,  # noqa: E402
                                     KeywordObject, TagMention, keyword_blocks)
from models.mine.tables import (CaptionCount, PromptConfig, TableCounts, TableSet, flagged_pairs,  # noqa: E402
                                flagged_prompts, object_table, stage_summary, word_table)
from models.mine.word_triggers import WordTriggerConfig  # noqa: E402
from models.storage import layout, schemas  # noqa: E402
from models.storage.folders.mine import MineFolder  # noqa: E402

OBJECTS = tuple(f"object{i}" for i in range(40))


def synthetic_counts(n_groups: int, n_keywords: int, seed: int = 0) -> dict:
    """Combined counts {name: {key: value}} of a synthetic corpus (see the module docstring)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(2 + rng.geometric(0.4, n_groups) - 1, 200)
    planted_groups = np.arange(0, n_groups, max(1, n_groups // 20))
    sizes[planted_groups] = 30
    group_of = np.repeat(np.arange(n_groups), sizes)
    n = 2 * group_of.size
    group_of = np.concatenate([group_of, np.full(n - group_of.size, -1)])
    weights = 1.0 / np.arange(1, n_keywords + 1)
    words = rng.choice(n_keywords, (n, 2), p=weights / weights.sum())
    tags = np.where(rng.random(n) < 0.3, rng.integers(0, len(OBJECTS), n), -1)
    tags[(words[:, 0] < 5) & (rng.random(n) < 0.8)] = 0
    starts = np.concatenate([[0], np.cumsum(sizes)])
    planted = {int(starts[g]): int(g) for g in planted_groups}
    kw, kwin, obj, kwo, cap = Counter(), Counter(), Counter(), Counter(), Counter()
    kwg: dict = defaultdict(list)
    woc: dict = defaultdict(Counter)
    plant_rows = {r: f"plant{g}" for start, g in planted.items() for r in range(start, start + int(sizes[g]))}
    for r in range(n):
        g = int(group_of[r])
        ws = {f"k{w}" for w in words[r]} | ({plant_rows[r]} if r in plant_rows else set())
        caption = f"caption {g} {r % 2}" if g >= 0 else f"single {r}"
        gid = f"G{g:07d}" if g >= 0 else None
        o = int(tags[r])
        if o >= 0:
            obj[o] += 1
        for w in ws:
            kw[w] += 1
            if gid:
                kwin[w] += 1
                kwg[KeywordGroup(w, gid)].append(f"{r:09d}")
            if o >= 0:
                kwo[KeywordObject(w, o)] += 1
                if w in ("k0", "k1", "k2", "k3", "k4"):
                    woc[KeywordObject(w, o)][caption] += 1
        if gid:
            cap[GroupCaption(gid, caption)] += 1
    return {
        "kw": kw, "kwin": kwin, "grp": {f"G{g:07d}": int(s) for g, s in enumerate(sizes)}, "obj": obj,
        "kwg": {k: Examples(len(v), tuple(sorted(v)[:3])) for k, v in kwg.items()}, "cap": cap,
        "kwo": {k: TagMention(v, 0) for k, v in kwo.items()},
        "woc": {k: tuple(CaptionSample(c, c, m) for c, m in sorted(v.items(), key=lambda x: (-x[1], x[0]))[:5])
                for k, v in woc.items()},
        "stats": {"rows": n, "rows_analysed": n, "caption_rejects": 0, "object_tags": int(sum(obj.values()))},
    }


def save_counts(counts: dict, out: str) -> None:
    """Write the counts as a mine run's ``counts/`` folder (what an increment or ReadCounts reads)."""
    from transforms.mine_counts import COUNT_SCHEMAS, count_shard, encode_count

    folder = MineFolder(out)
    for bucket, block in keyword_blocks(Counter(counts["kw"]), COUNT_SHARDS):
        layout.write_parquet(folder.count_shard("kw", bucket), schemas.table(
            [{"keyword": w, "n": int(m)} for w, m in zip(block.keywords, block.n.tolist())], COUNT_SCHEMAS["kw"]))
    for name in ("kwin", "kwg", "grp", "cap", "obj", "kwo", "woc"):
        shards = defaultdict(list)
        for item in counts[name].items():
            shards[count_shard(item[0])].append(encode_count(name, item))
        for shard, rows in shards.items():
            layout.write_parquet(folder.count_shard(name, shard), schemas.table(rows, COUNT_SCHEMAS[name]))


def settings_for(out: str):
    from transforms.mine_tables import TableSettings

    return TableSettings(output=out, word=WordTriggerConfig(), object=ObjectTriggerConfig(), prompts=PromptConfig(),
                         objects=OBJECTS, previous=None)


def one_writer(c: dict, settings) -> tuple[TableSet, dict]:
    """The tables with every supported count on one writer; returns them and what that writer gathered."""
    min_support = settings.word.min_support
    captions = defaultdict(list)
    for k, m in c["cap"].items():
        captions[k.group_id].append(CaptionCount(k.caption, m))
    gathered = {
        "kw": [(w, m) for w, m in c["kw"].items() if m >= min_support], "kwin": list(c["kwin"].items()),
        "kwg": [(k, v) for k, v in c["kwg"].items() if v.n >= 2], "grp": list(c["grp"].items()),
        "obj": list(c["obj"].items()), "kwo": [(k, v) for k, v in c["kwo"].items() if max(v) >= max(1, min_support // 2)],
        "cap": [(g, sorted(v, key=lambda x: (-x.n, x.caption))[:5]) for g, v in captions.items()]}
    counts = TableCounts(kw=dict(gathered["kw"]), kwin=dict(gathered["kwin"]), kwg=sorted(gathered["kwg"]),
                         grp=dict(gathered["grp"]), obj=dict(gathered["obj"]), kwo=sorted(gathered["kwo"]),
                         captions=dict(gathered["cap"]), stats=c["stats"])
    words = word_table(counts, settings.word)
    objects = object_table(counts, list(settings.objects), settings.object)
    trigger = {k: c["woc"][k] for k in flagged_pairs(objects) if k in c["woc"]}
    prompts = flagged_prompts(words, objects, counts.captions, counts.grp, settings.prompts, trigger)
    tables = TableSet(words, objects, prompts)
    stage_summary(tables, c["stats"], len(counts.grp), 1, None, None)
    size = {name: len(v) for name, v in gathered.items()}
    return tables, {"elements": sum(size.values()), "by_count": size,
                    "pickled_mb": round(len(pickle.dumps(gathered, protocol=5)) / 2**20, 1)}


def keyed(counts_dir: str, settings) -> dict:
    """``ReadCounts | SupportFilter | WriteTables`` on the DirectRunner; the one-worker distributions."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from transforms.mine_counts import ReadCounts
    from transforms.mine_tables import SupportFilter, WriteTables

    p = beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner", "--direct_num_workers", "1"]))
    counts = {name: p | f"Read{name}" >> ReadCounts(counts_dir, name)
              for name in ("kw", "kwin", "kwg", "grp", "cap", "obj", "kwo", "woc")}
    stats = layout.read_json(MineFolder(counts_dir).count_stats)
    counts["stats"] = p | "Stats" >> beam.Create([stats])
    counts["increment_stats"] = p | "IncrementStats" >> beam.Create([stats])
    _ = counts | SupportFilter(settings.word.min_support) | WriteTables(settings, 1)
    result = p.run()
    result.wait_until_finish()
    dist = result.metrics().query(MetricsFilter().with_namespace("mine"))["distributions"]
    return {d.key.metric.name: d.committed.max for d in dist}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=200_000)
    ap.add_argument("--keywords", type=int, default=20_000)
    args = ap.parse_args(argv)
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        c = synthetic_counts(args.groups, args.keywords)
        save_counts(c, os.path.join(tmp, "counts_run"))
        layout.write_json(MineFolder(os.path.join(tmp, "counts_run")).count_stats, c["stats"])
        t_make = time.perf_counter() - t0
        t0 = time.perf_counter()
        want, gathered = one_writer(c, settings_for(os.path.join(tmp, "old")))
        t_old = time.perf_counter() - t0
        settings = settings_for(os.path.join(tmp, "new"))
        t0 = time.perf_counter()
        held = keyed(os.path.join(tmp, "counts_run"), settings)
        t_new = time.perf_counter() - t0
        folder = MineFolder(settings.output)
        got = [pq.read_table(f) for f in (folder.keyword_triggers, folder.object_triggers, folder.flagged_prompts)]
        equal = [a.num_rows == b.num_rows and a.to_pylist() == b.to_pylist() for a, b in zip(got, want)]
    out = {"groups": args.groups, "keywords": args.keywords, "rows": c["stats"]["rows"], "make_s": round(t_make, 1),
           "one_writer_s": round(t_old, 2), "one_writer_gathered": gathered, "keyed_directrunner_s": round(t_new, 1),
           "keyed_one_worker_rows": held, "tables_equal": equal, "keyed_rows": [t.num_rows for t in got], "word_rows": want[0].num_rows,
           "word_triggers": int(sum(want[0].column("flagged").to_pylist())), "object_rows": want[1].num_rows,
           "load": os.getloadavg()[0]}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
