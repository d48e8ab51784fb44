"""Incremental dedup and mine: A, then B with --previous, equals one run over A+B."""
from __future__ import annotations

import argparse
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage import run_chain
from models.storage import layout
from pipelines import dedup, mine
from pipelines import run as run_stage

D = 48
ROWS = {"00000": 150, "00001": 150, "00002": 100, "00003": 100}  # A: 00000-00001, B: 00002-00003
A_PARTS, B_PARTS = ("00000", "00001"), ("00002", "00003")
FILLER = ("red", "blue", "green", "small", "large", "bright", "wooden", "table", "garden", "city", "river", "street",
          "sunset", "window", "flower", "mountain", "bicycle", "coffee", "winter", "summer", "forest", "market")
DEDUP_FLAGS = ["--threshold", "0.95", "--partitions", "3", "--max-spill", "2"]  # max-spill = K-1: exact recall
MINE_FLAGS = ["--tagger", "none", "--min-support", "3"]


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _perturb(rng, base, cos):
    noise = rng.standard_normal(base.shape)
    noise -= (noise @ base) * base
    noise /= np.linalg.norm(noise)
    return np.cos(np.arccos(cos)) * base + np.sin(np.arccos(cos)) * noise


def planted(root, seed=0):
    """Folders A, B and AB (all four parts) over the same rows, and the planted row indices.

    * G0: 3 A rows, nothing new joins (must stay untouched);
    * G1: 6 A rows + 4 B rows captioned "starry night" (a word trigger spanning A and B); one B row has the
      largest image, so it becomes the representative and demotes G1's old one;
    * G2, G3: two A groups whose centres are 30 degrees apart; a B row between them merges them;
    * G4: 3 B rows only; an A singleton and a B row with equal sha256; a B row reusing an A key (another
      sample: its own sample id); a NaN B row.

    Metadata carries ``sample_id`` as dupmine's embed writes it (shard URL::key): A, B and AB were embedded
    from the same shards, so their rows have the same identities.
    """
    rng = np.random.default_rng(seed)
    n = sum(ROWS.values())
    x = _unit(rng.standard_normal((n, D)))
    keys = [f"{i:09d}" for i in range(n)]
    sha = [f"sha{i:06d}" for i in range(n)]
    width = rng.integers(100, 300, n)
    height = rng.integers(100, 300, n)
    captions = [" ".join(rng.choice(FILLER, 4)) for _ in range(n)]
    groups = {"G0": [5, 160, 20], "G1": [10, 30, 170, 180, 190, 40, 310, 320, 410, 420], "G4": [340, 430, 440]}
    for members in groups.values():
        for j in members[1:]:
            x[j] = _perturb(rng, x[members[0]], 0.99)
    width[310], height[310] = 1000, 1000
    u, v, bridge = 50, 70, 330                  # G2 = {50, 60, 200}, G3 = {70, 210, 220}
    ortho = _unit(_perturb(rng, x[u], 0.0))
    half = np.deg2rad(15.0)
    x[v] = np.cos(2 * half) * x[u] + np.sin(2 * half) * ortho
    x[bridge] = np.cos(half) * x[u] + np.sin(half) * ortho
    for base, members in ((u, (60, 200)), (v, (210, 220))):
        for j in members:
            x[j] = _perturb(rng, x[base], 0.995)
    groups["G2"], groups["G3"] = [u, 60, 200], [v, 210, 220]
    sha[350] = sha[90]                          # new row, same bytes as an old singleton
    keys[360] = keys[100]                       # new row reusing an old key: a sample of its own
    x[370] = np.nan
    for i in groups["G1"] + [120]:
        captions[i] = f"the starry night {captions[i]}"
    for i in groups["G2"] + groups["G3"] + [bridge]:
        captions[i] = f"blue whale {captions[i]}"
    for i in rng.choice(np.arange(n), 20, replace=False):
        captions[i] = f"{captions[i]} poster"
    x16 = x.astype(np.float16)
    folders = {name: layout.EmbeddingFolder(str(root / name)) for name in ("A", "B", "AB")}
    sids, first = [], 0
    for part, rows in ROWS.items():
        sids += [f"file:///shards/{part}.tar::{keys[i]}" for i in range(first, first + rows)]
        first += rows
    start = 0
    for part, rows in ROWS.items():
        sl = slice(start, start + rows)
        start += rows
        for name in ("AB", "A" if part in A_PARTS else "B"):
            folder = folders[name]
            layout.write_npy(folder.img_emb(part), x16[sl])
            os.makedirs(os.path.dirname(folder.metadata(part)), exist_ok=True)
            pq.write_table(pa.table({"key": keys[sl], "sample_id": sids[sl], "caption": captions[sl], "sha256": sha[sl],
                                     "width": width[sl].tolist(), "height": height[sl].tolist()}), folder.metadata(part))
            layout.write_json(folder.marker(part), {"rows": rows})
    return {name: f.root for name, f in folders.items()}, {"keys": keys, "sids": sids, "groups": groups, "bridge": bridge}


def _state(dedup_dir):
    rows = run_chain.load_group_state(dedup_dir).to_pylist()
    assert len({r["sample_id"] for r in rows}) == len(rows)
    return {r["sample_id"]: r for r in rows}


def _files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _tables(out):
    return {name: pq.read_table(os.path.join(out, name)).to_pylist()
            for name in ("keyword_triggers.parquet", "object_triggers.parquet", "flagged_prompts.parquet")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    folders, truth = planted(root)
    out = {name: str(root / name) for name in ("ddA", "ddB", "ddAB", "mA", "mB", "mAB")}
    summaries = {
        "ddA": dedup.run(["--embeddings", folders["A"], "--output", out["ddA"], *DEDUP_FLAGS]),
        # B's folder holds only the new parts; no flags: threshold, seed and max-spill come from the chain
        "ddB": dedup.run(["--embeddings", folders["B"], "--output", out["ddB"], "--previous", out["ddA"]]),
        "ddAB": dedup.run(["--embeddings", folders["AB"], "--output", out["ddAB"], *DEDUP_FLAGS]),
        "mA": mine.run(["--embeddings", folders["A"], "--groups", out["ddA"], "--output", out["mA"], *MINE_FLAGS]),
        "mB": mine.run(["--embeddings", folders["B"], "--groups", out["ddB"], "--output", out["mB"],
                        "--previous", out["mA"], *MINE_FLAGS]),
        "mAB": mine.run(["--embeddings", folders["AB"], "--groups", out["ddAB"], "--output", out["mAB"], *MINE_FLAGS]),
    }
    return root, folders, truth, out, summaries


def test_chain_gives_the_groups_of_one_run_over_a_and_b(runs):
    _, _, truth, out, summaries = runs
    keys, sids, groups = truth["keys"], truth["sids"], truth["groups"]
    chain, once = _state(out["ddB"]), _state(out["ddAB"])
    fields = ("group_id", "group_size", "is_representative", "representative_key")
    assert {k: tuple(r[f] for f in fields) for k, r in chain.items()} == {k: tuple(r[f] for f in fields) for k, r in once.items()}
    for k, r in once.items():
        assert (chain[k]["max_cosine"] is None) == (r["max_cosine"] is None)
        assert r["max_cosine"] is None or chain[k]["max_cosine"] == pytest.approx(r["max_cosine"], abs=1e-5)
    # the planted structure: an old group that gains members keeps its id, a bridge merges two old groups
    assert {chain[sids[i]]["group_id"] for i in groups["G1"]} == {sids[10]} and chain[sids[10]]["group_size"] == 10
    old_rep = _state(out["ddA"])[sids[10]]["representative_key"]
    assert chain[sids[10]]["representative_key"] == keys[310] and chain[sids[310]]["is_representative"]
    merged = groups["G2"] + groups["G3"] + [truth["bridge"]]
    assert {chain[sids[i]]["group_id"] for i in merged} == {sids[50]} and chain[sids[50]]["group_size"] == 7
    assert chain[sids[350]]["group_id"] == sids[90] and chain[sids[90]]["group_size"] == 2   # sha256 joins new x old
    assert keys[360] == keys[100] and chain[sids[100]]["part"] == "00000"                  # the reused key stays A's
    assert chain[sids[360]]["part"] == "00002" and chain[sids[360]]["key"] == keys[100]     # and B's is its own sample
    assert {chain[sids[i]]["group_id"] for i in groups["G4"]} == {sids[340]}
    merges = pq.read_table(os.path.join(out["ddB"], "merges.parquet")).to_pylist()
    assert merges == [{"old_group_id": sids[70], "new_group_id": sids[50], "old_group_size": 3, "new_group_size": 7}]
    assert run_chain.load_merges(out["ddB"]).num_rows == 1
    # drop sets only grow: the union over the chain is the one-shot drop list
    drops_chain = run_chain.load_drop_keys(out["ddB"]).column("sample_id").to_pylist()
    drops_once = pq.read_table(os.path.join(out["ddAB"], "drop_keys.parquet")).column("sample_id").to_pylist()
    assert sorted(drops_chain) == sorted(drops_once) and len(drops_chain) == len(set(drops_chain))
    demoted = pq.read_table(os.path.join(out["ddB"], "drop_keys.parquet")).column("key").to_pylist()
    assert old_rep in demoted and old_rep not in pq.read_table(os.path.join(out["ddA"], "drop_keys.parquet")).column("key").to_pylist()
    # the state summary of the chain is the one-shot summary
    for key in ("rows", "rows_grouped", "rejects", "groups", "duplicate_groups", "rows_in_duplicate_groups", "rows_dropped",
                "group_size_histogram"):
        assert summaries["ddB"][key] == summaries["ddAB"][key], key
    assert summaries["ddB"]["increment"]["merged_groups"] == 1 and summaries["ddB"]["increment"]["rows_demoted"] >= 1


def test_increment_writes_only_new_and_changed_rows(runs):
    _, folders, truth, out, summaries = runs
    keys, groups = truth["keys"], truth["groups"]
    inc = out["ddB"]
    assert _files(os.path.join(inc, "groups")) == [f"groups_{p}.parquet" for p in B_PARTS]
    new_rows = pq.read_table(os.path.join(inc, "groups")).num_rows
    rejects = pq.read_table(os.path.join(inc, "rejects")).to_pylist()
    assert new_rows + len(rejects) == sum(ROWS[p] for p in B_PARTS)
    assert sorted(r["reason"].split(":")[0] for r in rejects) == ["non-finite-embedding"]  # a reused key is kept
    # changed: every old row of the groups B reached (G1's 6, G2+G3's 6, the sha256 singleton), nothing else
    changed = pq.read_table(os.path.join(inc, "changed")).to_pylist()
    touched = groups["G1"][:6] + groups["G2"] + groups["G3"] + [90]
    assert sorted(r["key"] for r in changed) == sorted(keys[i] for i in touched)
    assert all(r["group_size"] > r["previous_group_size"] for r in changed)
    assert keys[5] not in {r["key"] for r in changed}  # G0: untouched
    assert summaries["ddB"]["increment"]["rows_changed"] == len(changed)
    edges = pq.read_table(os.path.join(inc, "edges")).to_pylist()
    a_keys = set(pq.read_table(os.path.join(out["ddA"], "groups")).column("key").to_pylist())
    assert edges and all(e["key_a"] not in a_keys or e["key_b"] not in a_keys for e in edges)  # never old x old
    chain = run_chain.read_chain(inc)
    assert [e.parts for e in chain] == [A_PARTS, B_PARTS] and chain[1].previous == run_chain.normalize_path(out["ddA"])
    assert chain[1].changed_parts == A_PARTS and chain[1].threshold == 0.95 and chain[1].max_spill == 2
    assert np.array_equal(np.load(os.path.join(inc, "centroids.npy")), np.load(os.path.join(out["ddA"], "centroids.npy")))


def test_chain_gives_the_triggers_of_one_run_over_a_and_b(runs):
    _, _, truth, out, summaries = runs
    chain, once = _tables(out["mB"]), _tables(out["mAB"])
    words = {r["keyword"]: r for r in chain["keyword_triggers.parquet"]}
    assert words["starry night"]["flagged"] and words["starry night"]["top_group_id"] == truth["sids"][10]
    assert words["blue whale"]["top_group_id"] == truth["sids"][50]  # counted in the merged group
    for name in chain:
        assert len(chain[name]) == len(once[name]), name
        for a, b in zip(chain[name], once[name]):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == (pytest.approx(b[k], rel=1e-9, abs=1e-12) if isinstance(b[k], float) else b[k]), (name, k)
    for key in ("rows", "rows_analysed", "caption_rejects", "keywords_tested", "word_triggers", "flagged_prompts",
                "duplicate_groups_with_captions"):
        assert summaries["mB"][key] == summaries["mAB"][key], key
    assert summaries["mB"]["increment"] == {"parts": 2, "rows": sum(ROWS[p] for p in B_PARTS), "changed_rows": 13}
    assert _files(os.path.join(out["mB"], "rejects")) == [f"rejects_{p}.parquet" for p in B_PARTS]
    # a from-scratch mine over all parts reads the dedup chain's state
    full = str(runs[0] / "mFull")
    mine.run(["--embeddings", runs[1]["AB"], "--groups", out["ddB"], "--output", full, *MINE_FLAGS])
    assert _tables(full) == once


def test_rerunning_an_increment_is_idempotent(runs):
    root, folders, _, out, _ = runs
    again = str(root / "ddB")

    def snapshot(folder):
        return {os.path.relpath(os.path.join(d, f), folder): pq.read_table(os.path.join(d, f)).to_pylist()
                for d, _, files in os.walk(folder) for f in files if f.endswith(".parquet")}

    before = snapshot(again)
    dedup.run(["--embeddings", folders["B"], "--output", again, "--previous", out["ddA"]])
    assert snapshot(again) == before
    before = snapshot(out["mB"])
    mine.run(["--embeddings", folders["B"], "--groups", out["ddB"], "--output", out["mB"], "--previous", out["mA"], *MINE_FLAGS])
    assert snapshot(out["mB"]) == before


def test_increment_errors_name_the_bad_values(runs):
    root, folders, _, out, _ = runs
    with pytest.raises(ValueError, match=r"--threshold 0.9 differs from the threshold 0.95"):
        dedup.run(["--embeddings", folders["B"], "--output", str(root / "x"), "--previous", out["ddA"], "--threshold", "0.9"])
    with pytest.raises(ValueError, match="is a run of the --previous chain"):
        dedup.run(["--embeddings", folders["B"], "--output", out["ddA"], "--previous", out["ddA"]])
    with pytest.raises(ValueError, match="no manifest.json"):
        dedup.run(["--embeddings", folders["B"], "--output", str(root / "x"), "--previous", str(root / "nowhere")])
    with pytest.raises(ValueError, match="must be the dedup increment built on"):
        mine.run(["--embeddings", folders["B"], "--groups", out["ddAB"], "--output", str(root / "x"),
                  "--previous", out["mA"], *MINE_FLAGS])
    with pytest.raises(ValueError, match=r"--max-ngram 2 \(previous 3\)"):
        mine.run(["--embeddings", folders["B"], "--groups", out["ddB"], "--output", str(root / "x"),
                  "--previous", out["mA"], *MINE_FLAGS, "--max-ngram", "2"])
    shutil.rmtree(root / "x", ignore_errors=True)


def test_run_passes_previous_to_dedup_and_mine(tmp_path):
    args = argparse.Namespace(input="in", output=str(tmp_path / "r2"), config=None, set=None, dry_run=False, only=None,
                              previous=str(tmp_path / "r1"), **{k: None for k in run_stage.SHORTCUTS})
    cfg = run_stage.resolve_config(args)
    dedup_argv, mine_argv = run_stage.stage_argv("dedup", cfg), run_stage.stage_argv("mine", cfg)
    assert dedup_argv[dedup_argv.index("--previous") + 1] == os.path.join(str(tmp_path / "r1"), "dedup")
    assert mine_argv[mine_argv.index("--previous") + 1] == os.path.join(str(tmp_path / "r1"), "mine")
    assert "--previous" not in run_stage.stage_argv("embed", cfg)
    with pytest.raises(ValueError, match="is the --output folder"):
        run_stage.resolve_config(argparse.Namespace(**{**vars(args), "previous": args.output}))


def test_report_of_an_increment_shows_the_whole_chain(runs, tmp_path):
    """The increment's own groups/ holds only its new parts; the report must show the groups of the chain."""
    import re

    from models.report.render import ReportInputs, render_report

    root, folders, truth, out, summaries = runs
    index = render_report(ReportInputs(dedup=out["ddB"]), str(tmp_path / "rB"))
    one_shot = render_report(ReportInputs(dedup=out["ddAB"]), str(tmp_path / "rAB"))

    def groups_shown(path):
        return sorted(re.findall(r"group id <span class=\"key\">([^<]+)<", open(path, encoding="utf-8").read()))

    assert groups_shown(index) and groups_shown(index) == groups_shown(one_shot)


def test_increment_with_split_partitions_equals_the_unsplit_increment(runs):
    """Block-pair tasks of oversized partitions (models.dedup.balance) keep the new x old search of an increment."""
    root, folders, _, out, summaries = runs
    split = str(root / "ddB_split")
    summary = dedup.run(["--embeddings", folders["B"], "--output", split, "--previous", out["ddA"],
                         "--max-partition-rows", "8"])
    assert summary["increment"]["partitions_split"] > 0 == summaries["ddB"]["increment"]["partitions_split"]
    fields = ("group_id", "group_size", "is_representative", "representative_key")
    got, want = _state(split), _state(out["ddB"])
    assert {k: tuple(r[f] for f in fields) for k, r in got.items()} == {k: tuple(r[f] for f in fields) for k, r in want.items()}
    for k, r in want.items():  # float32 tiles of other shapes round the same cosine differently (decisions are float64)
        assert (got[k]["max_cosine"] is None) == (r["max_cosine"] is None)
        assert r["max_cosine"] is None or got[k]["max_cosine"] == pytest.approx(r["max_cosine"], abs=1e-5)
    assert summary["increment"]["near_pairs"] == summaries["ddB"]["increment"]["near_pairs"]


def test_a_chain_of_three_runs_never_reads_old_vectors(runs):
    """A, then 00002, then 00003, each run's vectors deleted once it is done: an increment reads only its new
    parts' vectors (old rows come from the chain's increment index, newest run first), and the three-run chain
    still gives the one-shot groups over all four parts."""
    root, folders, _, out, summaries = runs
    base = root / "three"
    chain_dirs = {}
    for name, parts in (("A", A_PARTS), ("B2", ("00002",)), ("B3", ("00003",))):
        src = folders["A"] if name == "A" else folders["B"]
        dst = layout.EmbeddingFolder(str(base / name))
        for part in parts:
            src_f = layout.EmbeddingFolder(src)
            for a, b in ((src_f.img_emb(part), dst.img_emb(part)), (src_f.metadata(part), dst.metadata(part)),
                         (src_f.marker(part), dst.marker(part))):
                os.makedirs(os.path.dirname(b), exist_ok=True)
                shutil.copy(a, b)
        chain_dirs[name] = dst
    previous = None
    for name in ("A", "B2", "B3"):
        dd = str(base / f"dd{name}")
        flags = DEDUP_FLAGS if previous is None else ["--previous", previous]
        summary = dedup.run(["--embeddings", chain_dirs[name].root, "--output", dd, *flags])
        for part in layout.EmbeddingFolder(chain_dirs[name].root).parts():
            os.remove(chain_dirs[name].img_emb(part))  # nothing later may read these vectors
        previous = dd
    assert os.listdir(os.path.join(previous, "partitions")) and os.listdir(os.path.join(previous, "index", "groups"))
    fields = ("group_id", "group_size", "is_representative", "representative_key")
    got, want = _state(previous), _state(out["ddAB"])
    assert {k: tuple(r[f] for f in fields) for k, r in got.items()} == {k: tuple(r[f] for f in fields) for k, r in want.items()}
    for key in ("rows", "rows_grouped", "duplicate_groups", "rows_in_duplicate_groups", "rows_dropped"):
        assert summary[key] == summaries["ddAB"][key], key
    drops = run_chain.load_drop_keys(previous).column("sample_id").to_pylist()
    once = pq.read_table(os.path.join(out["ddAB"], "drop_keys.parquet")).column("sample_id").to_pylist()
    assert sorted(drops) == sorted(once)


def test_a_chain_without_an_increment_index_is_a_clear_error(runs, tmp_path):
    root, folders, _, out, _ = runs
    old = tmp_path / "old"
    shutil.copytree(out["ddA"], old)
    manifest = layout.read_json(str(old / "manifest.json"))
    for entry in manifest["chain"]:
        entry.pop("index_buckets")  # a run written before increments read an index
        entry["run"] = str(old)
    layout.write_json(str(old / "manifest.json"), manifest)
    with pytest.raises(ValueError, match="has no increment index"):
        dedup.run(["--embeddings", folders["B"], "--output", str(tmp_path / "x"), "--previous", str(old)])


def test_count_buckets_scale_with_parts_and_increments_keep_the_chains(runs, tmp_path, monkeypatch):
    """One keyword-total bucket per part here (at least 1): the tables equal the 8-bucket runs', and the increment
    merges its kw blocks into the chain's 2 buckets where its own rule would give 1 for B's 2 parts."""
    from models.mine import part_counts

    assert [part_counts.count_shards(n) for n in (0, 800, 801, 41000)] == [8, 8, 9, 410]
    monkeypatch.setattr(part_counts, "COUNT_SHARDS", 1)
    monkeypatch.setattr(part_counts, "PARTS_PER_COUNT_SHARD", 1)
    _, folders, _, out, _ = runs
    m_a, m_b, m_ab = (str(tmp_path / n) for n in ("mA", "mB", "mAB"))
    mine.run(["--embeddings", folders["A"], "--groups", out["ddA"], "--output", m_a, *MINE_FLAGS])
    monkeypatch.setattr(part_counts, "PARTS_PER_COUNT_SHARD", 2)  # B alone would get 1 bucket: it must keep A's 2
    mine.run(["--embeddings", folders["B"], "--groups", out["ddB"], "--output", m_b, "--previous", m_a, *MINE_FLAGS])
    monkeypatch.setattr(part_counts, "PARTS_PER_COUNT_SHARD", 1)
    mine.run(["--embeddings", folders["AB"], "--groups", out["ddAB"], "--output", m_ab, *MINE_FLAGS])
    shards = {n: layout.read_json(os.path.join(d, "config.json"))["count_shards"] for n, d in
              (("A", m_a), ("B", m_b), ("AB", m_ab))}
    assert shards == {"A": 2, "B": 2, "AB": 4}
    assert len(_files(os.path.join(m_ab, "counts", "kw"))) == 4
    assert _tables(m_ab) == _tables(out["mAB"]) and _tables(m_b) == _tables(out["mAB"])


def test_no_increment_index_saves_the_space_and_ends_the_chain(runs, tmp_path):
    root, folders, _, out, summaries = runs
    bare = str(tmp_path / "bare")
    summary = dedup.run(["--embeddings", folders["A"], "--output", bare, *DEDUP_FLAGS, "--no-increment-index"])
    assert summary["duplicate_groups"] == summaries["ddA"]["duplicate_groups"]
    assert not os.path.exists(os.path.join(bare, "partitions")) and not os.path.exists(os.path.join(bare, "index"))
    assert run_chain.read_chain(bare)[-1].index_buckets == 0
    with pytest.raises(ValueError, match="--no-increment-index"):
        dedup.run(["--embeddings", folders["B"], "--output", str(tmp_path / "x"), "--previous", bare])
    cfg = {"output": "r", "dedup": {"increment_index": False, "threshold": 0.9}}
    assert run_stage.stage_argv("dedup", cfg)[-3:] == ["--no-increment-index", "--threshold", "0.9"]
