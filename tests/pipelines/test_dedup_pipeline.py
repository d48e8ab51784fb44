"""dedup end to end on planted embedding folders, checked against brute force + networkx."""
import os

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.storage import ids, layout, run_chain
from pipelines import dedup

T = 0.95


def _perturb(rng, base, cos):
    """A unit vector with cosine ~cos to ``base``."""
    noise = rng.standard_normal(base.shape)
    noise -= (noise @ base) * base
    noise /= np.linalg.norm(noise)
    angle = np.arccos(cos)
    return np.cos(angle) * base + np.sin(angle) * noise


def planted_folder(root, n_parts=3, rows_per_part=400, d=32, seed=0, laion_layout=False):
    """Random unit vectors + planted groups, chains, exact-hash pairs, bad rows and a duplicate key."""
    rng = np.random.default_rng(seed)
    n = n_parts * rows_per_part
    x = rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sha = [f"sha{i:06d}" for i in range(n)]
    keys = [f"{i:09d}" for i in range(n)]
    width = rng.integers(100, 300, n)
    height = rng.integers(100, 300, n)
    perm = rng.permutation(n)
    cursor = 0

    def take(k):
        nonlocal cursor
        out = perm[cursor:cursor + k]
        cursor += k
        return out

    for size in (2, 3, 5, 12, 30):          # tight groups spread over all parts
        idx = take(size)
        for j in idx[1:]:
            x[j] = _perturb(rng, x[idx[0]], 0.985)
    for _ in range(4):                       # chains a~b~c with cos(a, c) < t
        a, b, c = take(3)
        x[b] = _perturb(rng, x[a], 0.96)
        x[c] = _perturb(rng, x[b], 0.96)
        while x[a] @ x[c] >= T:
            x[c] = _perturb(rng, x[b], 0.96)
    ea, eb = take(2)                         # same bytes, unrelated vectors: joined by sha256
    sha[eb] = sha[ea]
    bad_nan, bad_zero = take(2)
    x[bad_nan, 0] = np.nan
    x[bad_zero] = 0.0
    dup_key = take(1)[0]
    while n_parts > 1 and dup_key // rows_per_part == perm[0] // rows_per_part:  # another part: another sample
        dup_key = take(1)[0]
    keys[dup_key] = keys[perm[0]]            # a key that appears twice: two samples (identity is the sample id)
    dup_key = max(dup_key, perm[0])
    x16 = x.astype(np.float16)
    folder = layout.EmbeddingFolder(str(root))
    sids = []
    for p in range(n_parts):
        rows = slice(p * rows_per_part, (p + 1) * rows_per_part)
        i = str(p) if laion_layout else f"{p:05d}"
        layout.write_npy(folder.img_emb(i), x16[rows])
        meta = {"key": keys[rows], "width": width[rows].tolist(), "height": height[rows].tolist()}
        if not laion_layout:
            meta["sha256"] = sha[rows]
        os.makedirs(os.path.dirname(folder.metadata(i)), exist_ok=True)
        pq.write_table(pa.table(meta), folder.metadata(i))
        if not laion_layout:
            layout.write_json(folder.marker(i), {"rows": rows_per_part})
        sids += [ids.sample_id(ids.absolute_url(folder.metadata(i)), k) for k in keys[rows]]
    return dict(x=x16.astype(np.float32), keys=keys, sids=sids, sha=sha, width=width, height=height,
                bad={bad_nan, bad_zero}, dup_key=dup_key, exact=(ea, eb), laion=laion_layout)


def expected_components(truth):
    x, keys = truth["x"], truth["keys"]
    valid = [i for i in range(len(keys)) if i not in truth["bad"]]
    v = x[valid]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    sims = v.astype(np.float64) @ v.T.astype(np.float64)
    g = nx.Graph()
    g.add_nodes_from(valid)
    ii, jj = np.nonzero(np.triu(sims >= T, 1))
    g.add_edges_from((valid[a], valid[b]) for a, b in zip(ii, jj))
    if not truth["laion"]:
        g.add_edge(*truth["exact"])
    return {frozenset(keys[i] + f"@{i}" for i in comp) for comp in nx.connected_components(g)}


def read_groups(out, truth):
    rows = []
    for name in sorted(os.listdir(os.path.join(out, "groups"))):
        rows += pq.read_table(os.path.join(out, "groups", name)).to_pylist()
    return rows


def components_from_output(out, truth):
    rows = read_groups(out, truth)
    # keys are unique except the planted duplicate key; sample ids are unique: map sample id -> index
    index = {sid: i for i, sid in enumerate(truth["sids"])}
    assert len(index) == len(truth["sids"])
    comps = {}
    for r in rows:
        assert truth["keys"][index[r["sample_id"]]] == r["key"]
        comps.setdefault(r["group_id"], set()).add(r["key"] + f"@{index[r['sample_id']]}")
    return {frozenset(c) for c in comps.values()}, rows


@pytest.fixture
def planted(tmp_path):
    return str(tmp_path / "emb"), planted_folder(tmp_path / "emb")


def test_groups_match_brute_force_components_with_exact_spill(planted, tmp_path):
    emb, truth = planted
    out = str(tmp_path / "dd")
    summary = dedup.run(["--embeddings", emb, "--output", out, "--partitions", "6", "--max-spill", "5"])
    got, rows = components_from_output(out, truth)
    assert got == expected_components(truth)
    # every input row is in groups or rejects, exactly once
    rejects = []
    for name in os.listdir(os.path.join(out, "rejects")):
        rejects += pq.read_table(os.path.join(out, "rejects", name)).to_pylist()
    assert len(rows) + len(rejects) == len(truth["keys"]) == summary["rows"]
    reasons = sorted(r["reason"].split(":")[0] for r in rejects)
    assert reasons == ["non-finite-embedding", "zero-embedding"]  # a repeated key is a second sample, not a reject
    # one representative per group, chosen by the documented rule
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group_id"], []).append(r)
    for members in by_group.values():
        reps = [m for m in members if m["is_representative"]]
        assert len(reps) == 1 and all(m["group_size"] == len(members) for m in members)
        idx = {m["sample_id"]: truth["sids"].index(m["sample_id"]) for m in members}
        area = {s: int(truth["width"][i] * truth["height"][i]) for s, i in idx.items()}
        best = min(members, key=lambda m: (-area[m["sample_id"]], m["key"]))
        assert reps[0]["key"] == best["key"] and all(m["representative_key"] == best["key"] for m in members)
        assert members[0]["group_id"] in idx  # a group is named by a member's sample id
        if len(members) > 1:
            assert all(m["max_cosine"] is not None for m in members)
    drops = pq.read_table(os.path.join(out, "drop_keys.parquet")).to_pylist()
    assert len(drops) == sum(len(m) - 1 for m in by_group.values()) == summary["rows_dropped"]
    dropped = {r["sample_id"] for r in rows if not r["is_representative"]}
    assert {d["sample_id"] for d in drops} == dropped and len(dropped) == len(drops)
    assert all(d["reason"].startswith(("near-duplicate of", "duplicate of")) for d in drops)
    edges = pq.read_table(os.path.join(out, "edges")).to_pylist()
    assert {e["kind"] for e in edges} == {"near", "exact"}
    near = [(e["key_a"], e["key_b"]) for e in edges if e["kind"] == "near"]
    assert len(near) == len(set(near))  # a pair found from both of its partitions is written once
    assert all(e["cosine"] >= T for e in edges if e["kind"] == "near")
    sizes = [len(m) for m in by_group.values() if len(m) > 1]
    assert summary["group_size_histogram"] == {s: sizes.count(s) for s in set(sizes)}
    assert summary["duplicate_groups"] == sum(1 for m in by_group.values() if len(m) > 1)


def test_same_groups_with_other_partitions_and_multiprocess_workers(planted, tmp_path):
    emb, truth = planted
    want = expected_components(truth)
    a = str(tmp_path / "a")
    dedup.run(["--embeddings", emb, "--output", a, "--partitions", "1"])
    assert components_from_output(a, truth)[0] == want
    b = str(tmp_path / "b")
    dedup.run(["--embeddings", emb, "--output", b, "--partitions", "4", "--max-spill", "3",
               "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert components_from_output(b, truth)[0] == want


def test_laion_layout_folder_without_hashes_or_markers(tmp_path):
    truth = planted_folder(tmp_path / "laion", n_parts=2, rows_per_part=300, laion_layout=True)
    out = str(tmp_path / "dd")
    summary = dedup.run(["--embeddings", str(tmp_path / "laion"), "--output", out, "--partitions", "3", "--max-spill", "2"])
    assert summary["parameters"]["parts"] == 2
    assert components_from_output(out, truth)[0] == expected_components(truth)


def test_dimension_mismatch_is_a_clear_error_naming_parts(tmp_path):
    folder = layout.EmbeddingFolder(str(tmp_path / "emb"))
    for i, d in (("0", 8), ("1", 16)):
        layout.write_npy(folder.img_emb(i), np.ones((2, d), np.float16))
        os.makedirs(os.path.dirname(folder.metadata(i)), exist_ok=True)
        pq.write_table(pa.table({"key": [f"{i}a", f"{i}b"]}), folder.metadata(i))
    with pytest.raises(ValueError, match=r"dimensions differ.*dim 8: parts \['0'\].*dim 16: parts \['1'\]"):
        dedup.run(["--embeddings", folder.root, "--output", str(tmp_path / "dd")])


def test_config_validation():
    with pytest.raises(ValueError, match="threshold"):
        dedup.DedupConfig(embeddings="e", output="o", threshold=1.5)
    cfg = dedup.DedupConfig(embeddings="e", output="o")
    assert cfg.resolve_k(10_000) == 5 and cfg.sample_size(10_000, 5) == 1280
    assert dedup.DedupConfig(embeddings="e", output="o", partitions=7, sample_fraction=0.5).sample_size(100, 7) == 50


def test_rerun_with_other_partitions_leaves_no_stale_files(planted, tmp_path):
    emb, truth = planted
    out = str(tmp_path / "dd")
    # --edges all: every pair is written, so the edge files of two partitionings hold the same pairs
    dedup.run(["--embeddings", emb, "--output", out, "--partitions", "6", "--max-spill", "5", "--edges", "all"])
    first = pq.read_table(os.path.join(out, "edges")).to_pylist()
    stale = os.path.join(out, "edges", "edges_stale.parquet")
    pq.write_table(pa.table({"key_a": ["x"], "key_b": ["y"], "cosine": [1.0], "kind": ["near"]}), stale)
    dedup.run(["--embeddings", emb, "--output", out, "--partitions", "1", "--edges", "all"])
    assert not os.path.exists(stale)
    again = {(e["key_a"], e["key_b"], e["kind"]): e["cosine"] for e in pq.read_table(os.path.join(out, "edges")).to_pylist()}
    before = {(e["key_a"], e["key_b"], e["kind"]): e["cosine"] for e in first}
    assert again.keys() == before.keys()  # same pairs; float32 BLAS tiles may differ in the last bits
    assert all(abs(again[k] - before[k]) < 1e-5 for k in before)
    assert components_from_output(out, truth)[0] == expected_components(truth)


def test_flags_are_built_from_the_config_and_reach_it():
    import argparse
    import dataclasses

    parser = argparse.ArgumentParser()
    dedup.add_arguments(parser)
    fields = {f.name: f for f in dataclasses.fields(dedup.DedupConfig)}
    assert {a.dest for a in parser._actions if a.dest != "help"} == set(fields)
    args = parser.parse_args(["--embeddings", "e", "--output", "o"])
    cfg = dedup.config_from_args(args)
    for name, f in fields.items():  # unset flags: the dataclass default, the one source of it
        if name not in ("embeddings", "output"):
            assert getattr(cfg, name) == f.default, name
    values = {"threshold": "0.9", "partitions": "7", "sample_fraction": "0.5", "seed": "3", "max_spill": "2",
              "niter": "4", "block_rows": "99"}
    argv = ["--embeddings", "e", "--output", "o"] + [x for n, v in values.items() for x in ("--" + n.replace("_", "-"), v)]
    cfg = dedup.config_from_args(parser.parse_args(argv))
    for name, v in values.items():
        assert getattr(cfg, name) == type(fields[name].default)(v), name
    assert dedup.config_from_args(parser.parse_args(["--embeddings", "e", "--output", "o", "--no-increment-index"])
                                  ).increment_index is False


def _brute_nn(truth):
    x, keys = truth["x"], truth["keys"]
    valid = [i for i in range(len(keys)) if i not in truth["bad"]]
    v = x[valid] / np.linalg.norm(x[valid], axis=1, keepdims=True)
    sims = v.astype(np.float64) @ v.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def test_nn_similarity_histogram_matches_brute_force(planted, tmp_path):
    emb, truth = planted
    nn = _brute_nn(truth)
    one = str(tmp_path / "one")  # one partition: every row's nearest neighbour is searched exactly
    dedup.run(["--embeddings", emb, "--output", one, "--partitions", "1", "--nn-sample", "100000"])
    rec = layout.read_json(os.path.join(one, "nn_similarity.json"))
    assert set(rec) == {"bin_edges", "counts", "threshold", "n_sampled", "space"} and rec["space"] == "cosine"
    assert rec["threshold"] == 0.95 and rec["n_sampled"] == len(nn) == sum(rec["counts"])
    assert len(rec["bin_edges"]) == len(rec["counts"]) + 1
    np.testing.assert_array_equal(rec["counts"], np.histogram(nn, bins=rec["bin_edges"])[0])
    many = str(tmp_path / "many")  # partitions + spill: exact above the threshold, a lower bound below it
    dedup.run(["--embeddings", emb, "--output", many, "--partitions", "6", "--max-spill", "5", "--nn-sample", "100000"])
    rec = layout.read_json(os.path.join(many, "nn_similarity.json"))
    edges = np.asarray(rec["bin_edges"])
    high = edges[:-1] >= 0.95 - 1e-9
    assert rec["n_sampled"] == len(nn)
    assert sum(np.asarray(rec["counts"])[high]) == int((nn >= edges[np.argmax(high)]).sum()) > 0
    few = str(tmp_path / "few")  # a sample: about nn_sample rows
    dedup.run(["--embeddings", emb, "--output", few, "--partitions", "2", "--nn-sample", "300"])
    assert 200 <= layout.read_json(os.path.join(few, "nn_similarity.json"))["n_sampled"] <= 400


def test_representative_is_the_largest_original_image(tmp_path):
    """Resized images all tie on width*height: the representative is chosen by original_width*original_height."""
    folder = layout.EmbeddingFolder(str(tmp_path / "emb"))
    eye = np.eye(8)
    x = np.stack([eye[0], eye[0], eye[0], eye[1], eye[1], eye[2]]).astype(np.float16)
    layout.write_npy(folder.img_emb("0"), x)
    os.makedirs(os.path.dirname(folder.metadata("0")), exist_ok=True)
    pq.write_table(pa.table({
        "key": ["a", "b", "c", "d", "e", "f"], "width": [256] * 6, "height": [256] * 6,
        "original_width": pa.array([640, 1920, 800, None, 300, 10], pa.int32()),
        "original_height": pa.array([480, 1080, 600, None, 300, 10], pa.int32()),
    }), folder.metadata("0"))
    out = str(tmp_path / "dd")
    dedup.run(["--embeddings", folder.root, "--output", out, "--partitions", "1"])
    rows = {r["key"]: r for r in pq.read_table(os.path.join(out, "groups")).to_pylist()}
    assert {k: rows[k]["representative_key"] for k in "abcde"} == {"a": "b", "b": "b", "c": "b", "d": "e", "e": "e"}
    # d has no original size: its resized 256x256 (65536) loses to e's original 300x300 (90000)


def test_increment_with_a_new_folder_whose_parts_are_named_like_the_chains(tmp_path):
    """img2dataset numbers shards from 00000 in every download: B's parts share A's names and row counts, yet are
    new data (a part is its folder + name + content, never its name alone)."""
    a = planted_folder(tmp_path / "A", n_parts=2, rows_per_part=200, seed=0)
    planted_folder(tmp_path / "B", n_parts=2, rows_per_part=200, seed=1)
    folder_b = layout.EmbeddingFolder(str(tmp_path / "B"))
    for part in ("00000", "00001"):  # other bytes than A's rows (the fixture numbers hashes by row)
        meta = pq.read_table(folder_b.metadata(part))
        sha = pa.array([f"b{h}" for h in meta.column("sha256").to_pylist()])
        pq.write_table(meta.set_column(meta.schema.get_field_index("sha256"), "sha256", sha), folder_b.metadata(part))
    x = np.asarray(layout.read_npy(folder_b.img_emb("00001"), mmap=False))
    x[7] = a["x"][5].astype(np.float16)  # a copy across the chain: B 00001 row 7 == A 00000 row 5
    layout.write_npy(folder_b.img_emb("00001"), x)
    dd_a, dd_b = str(tmp_path / "ddA"), str(tmp_path / "ddB")
    first = dedup.run(["--embeddings", str(tmp_path / "A"), "--output", dd_a, "--partitions", "3", "--max-spill", "2"])
    inc = dedup.run(["--embeddings", folder_b.root, "--output", dd_b, "--previous", dd_a])
    assert inc["increment"]["new_parts"] == 2 and inc["increment"]["rows"] == 400
    assert inc["rows"] == first["rows"] + 400
    chain = run_chain.read_chain(dd_b)
    assert [e.parts for e in chain] == [("00000", "00001"), ("00000", "00001")]
    slots = run_chain.part_locations(chain)
    assert list(slots) == ["00000", "00001", "00000@run1", "00001@run1"]
    state = {r["sample_id"]: r for r in run_chain.load_group_state(dd_b).to_pylist()}
    assert len(state) == inc["rows_grouped"]
    copy = ids.sample_id(ids.absolute_url(folder_b.metadata("00001")), a["keys"][200 + 7])
    assert state[copy]["group_id"] == a["sids"][5] and state[a["sids"][5]]["group_size"] == 2
    assert sum(r["group_size"] > 1 for r in state.values()) == inc["rows_in_duplicate_groups"]
    # the same folder again: nothing new
    again = dedup.run(["--embeddings", folder_b.root, "--output", str(tmp_path / "ddB2"), "--previous", dd_b])
    assert again["increment"]["new_parts"] == 0 and again["rows"] == inc["rows"]
    # a part of the chain rewritten in place is an error, not a silent skip
    meta = pq.read_table(folder_b.metadata("00000"))
    pq.write_table(meta.set_column(0, "key", pa.array([f"x{k}" for k in meta.column("key").to_pylist()])),
                   folder_b.metadata("00000"))
    with pytest.raises(ValueError, match="changed since"):
        dedup.run(["--embeddings", folder_b.root, "--output", str(tmp_path / "ddB3"), "--previous", dd_b])


def test_split_partitions_give_the_same_groups_pairs_and_nn_histogram(planted, tmp_path):
    """One partition of ~1,200 rows cut into block-pair tasks of <= 2 x 150 rows (a hot key made many): the same
    components, near pairs, edges and nearest-neighbour histogram as the whole partition searched in one task."""
    emb, truth = planted
    runs = {}
    for cap in (0, 150):
        out = str(tmp_path / f"cap{cap}")
        summary = dedup.run(["--embeddings", emb, "--output", out, "--partitions", "1", "--nn-sample", "100000",
                             "--edges", "all", "--max-partition-rows", str(cap)])
        edges = pq.read_table(os.path.join(out, "edges")).to_pylist()
        runs[cap] = (components_from_output(out, truth)[0], summary["increment"]["near_pairs"],
                     sorted((e["key_a"], e["key_b"], e["kind"]) for e in edges),
                     layout.read_json(os.path.join(out, "nn_similarity.json"))["counts"],
                     summary["increment"]["partitions_split"])
    assert (runs[0][4], runs[150][4]) == (0, 1)
    assert runs[0][0] == runs[150][0] == expected_components(truth)
    assert runs[0][1] == runs[150][1] > 0
    assert runs[0][2] == runs[150][2]
    assert runs[0][3] == runs[150][3]
    # incremental split: with spill too (several partitions, one of them over the cap)
    out = str(tmp_path / "spill")
    dedup.run(["--embeddings", emb, "--output", out, "--partitions", "3", "--max-spill", "2",
               "--max-partition-rows", "100"])
    assert components_from_output(out, truth)[0] == expected_components(truth)
