"""Object triggers on real data: the flagged pairs of the string mention test vs the semantic one, judged.

On the CC3M shard in ``../shared/data/cc3m`` (3,650 real captioned images)
with the shared MobileNet v2 ImageNet classifier as the tagger and the LVIS
vocabulary's synonyms: embeds the shard with the weight-free ``pixel`` model
(object triggers do not use the embeddings), then runs ``dupmine mine``
twice on it, ``--mention string --naming-threshold 1`` (the test before the
semantic one) and the defaults (semantic test + MiniLM naming check), and
prints each run's flagged (keyword, object) pairs with the WordNet relation
between the keyword and the object (synonym, hypernym, hyponym, whole, part,
sibling under one parent within 2 steps, or none), so a reader can judge
which flagged pairs are really unmentioned objects.

    flock /tmp/dupmine-bench.lock .venv/bin/python benchmarks/bench_object_triggers.py [--min-support 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def relation(wn, keyword: str, synset) -> str:
    """How a keyword's noun senses relate to the object's synset in WordNet."""
    senses = wn.synsets(keyword.replace(" ", "_"), pos="n")
    if not senses:
        return "keyword not in WordNet"
    best = None
    for s in senses:
        if s == synset:
            return "synonym"
        up = {h: d for h, d in _ancestors(s, 6)}
        down = {h: d for h, d in _ancestors(synset, 6)}
        if synset in up:
            cand = (up[synset], f"hyponym of the object ({up[synset]} steps)")
        elif s in down:
            cand = (down[s], f"hypernym of the object ({down[s]} steps)")
        elif s in synset.part_holonyms() + synset.member_holonyms():
            cand = (1, "whole of the object")
        elif synset in s.part_holonyms() + s.member_holonyms():
            cand = (1, "part of the object")
        else:
            common = [(up[c] + down[c], c) for c in up if c in down and up[c] <= 2 and down[c] <= 2]
            cand = (min(common)[0] + 10, f"sibling under {min(common)[1].name()}") if common else None
        if cand and (best is None or cand[0] < best[0]):
            best = cand
    return best[1] if best else "none"


def _ancestors(s, depth):
    out, frontier = [], [(s, 0)]
    while frontier:
        node, d = frontier.pop()
        if d >= depth:
            continue
        for h in node.hypernyms() + node.instance_hypernyms():
            out.append((h, d + 1))
            frontier.append((h, d + 1))
    best = {}
    for h, d in out:
        best[h] = min(d, best.get(h, d))
    return list(best.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--min-support", type=int, default=3)
    ap.add_argument("--work", default=None)
    args = ap.parse_args(argv)
    from models.mine.semantic import entry_synsets, load_wordnet, wordnet_available
    from models.mine.taggers.classifier import read_labels, vocab_for_labels
    from models.mine.vocab import read_synset_ids, with_synsets
    from models.storage import layout
    from pipelines import embed, mine
    from pipelines.common import shared_data_file

    shard = shared_data_file("cc3m", "00000.tar")
    model = shared_data_file("models", "mobilenet_v2_imagenet.onnx")
    labels = shared_data_file("models", "imagenet_labels.txt")
    lvis = shared_data_file("vocab", "lvis_v1_categories.json")
    if not (shard and model and labels and lvis and wordnet_available()):
        print("needs ../shared/data (cc3m, MobileNet v2, LVIS) and WordNet at /usr/share/wordnet")
        return 1
    work = args.work or tempfile.mkdtemp(prefix="bench_object_triggers_")
    print(f"bench_object_triggers: cpus={os.cpu_count()} loadavg={os.getloadavg()} work={work}", flush=True)
    emb = os.path.join(work, "emb")
    if not layout.exists(os.path.join(emb, "config.json")):
        embed.run(["--input", shard, "--output", emb, "--model", "pixel", "--progress-seconds", "1000"])
    common = ["--embeddings", emb, "--tagger", f"onnx-classifier:{model},{labels}", "--vocab", lvis,
              "--min-support", str(args.min_support)]
    runs = {"string test (before)": ["--mention", "string", "--naming-threshold", "1"], "semantic test (after)": []}
    wn = load_wordnet()
    vocab = with_synsets(vocab_for_labels(read_labels(labels)[1:]), read_synset_ids(shared_data_file(
        "vocab", "imagenet_lsvrc_2015_synsets.txt")))
    for name, extra in runs.items():
        out = os.path.join(work, name.split()[0])
        t = time.perf_counter()
        summary = mine.run(common + ["--output", out] + extra)
        rows = [r for r in layout.read_parquet(os.path.join(out, "object_triggers.parquet")).to_pylist() if r["flagged"]]
        print(f"\n== {name}: {len(rows)} flagged of {summary['object_pairs_tested']} pairs tested "
              f"({time.perf_counter() - t:.0f} s; {summary.get('mention_test')})")
        for r in rows:
            rel = relation(wn, r["keyword"], entry_synsets(wn, vocab[r["object_index"]])[0])
            print(f"  {r['keyword']:>22} -> {r['object']:<22} n_w={r['n_w']:3d} n_wo={r['n_wo']:3d} q={r['q_value']:.2g}"
                  f"  WordNet: {rel}")
    print(f"\nloadavg at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
