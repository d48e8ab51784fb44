"""--vectors {shuffle,reread} x --edges {spanning,all} on the planted set (groups, chains, straddle pairs
spilled across partitions): identical results between the transports, spanning edges with the components
of all pairs, pair counts equal to the distinct pairs, and the whole pipeline's groups and drop keys equal."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from models.dedup import kernels
from models.dedup.plan import DedupParams, EdgeMode, VectorTransport
from models.storage import layout
from pipelines import dedup
from tests.models.dedup.planted import K, T, _pair_keys, _pipeline_edges, make_planted
from tests.pipelines.test_dedup_pipeline import planted_folder
from transforms.dedup.read import ReadPartFn
from transforms.dedup.rows import Piece, Role, Spill, split_gid
from transforms.dedup.search import AssignPiecesFn, SearchPartitionFn, assign

PARTS = 4


@pytest.fixture(scope="module")
def planted():
    return make_planted()


@pytest.fixture(scope="module")
def folder(planted, tmp_path_factory):
    """The planted rows as 4 float32 parts (stored float32: shuffled as stored, so exactly the reread rows)."""
    root = str(tmp_path_factory.mktemp("planted") / "emb")
    f = layout.EmbeddingFolder(root)
    chunks = np.array_split(np.arange(len(planted["x"])), PARTS)
    for p, rows in enumerate(chunks):
        layout.write_npy(f.img_emb(f"{p:05d}"), planted["x"][rows])
        os.makedirs(os.path.dirname(f.metadata(f"{p:05d}")), exist_ok=True)
        pq.write_table(pa.table({"key": [str(r) for r in rows]}), f.metadata(f"{p:05d}"))
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chunks])])
    return root, offsets


def _search(root, offsets, centroids, vectors, edges, block_rows=4096, merge_bytes=None):
    """Every partition's search outputs, outside Beam: (edges {(row, row): cos}, roots, max_cos, pairs); with
    ``merge_bytes`` the blocks are assigned by :class:`AssignPiecesFn` (one bundle, pieces cut from the held
    blocks), else block by block (:func:`assign`)."""
    params = DedupParams(embeddings=root, output=root + "_out", parts=tuple(f"{p:05d}" for p in range(PARTS)),
                         dim=64, threshold=T, max_spill=kernels.DEFAULT_MAX_SPILL, sample_size=0, seed=0, niter=1,
                         k=K, block_rows=block_rows, n_rows=int(offsets[-1]), vectors=vectors, edges=edges)
    blocks = [block for part in range(PARTS) for block in ReadPartFn(params).process(part)]
    if merge_bytes is None:
        assigned = [e for block in blocks for e in assign(block, centroids, params)]
    else:
        fn = AssignPiecesFn(params, merge_bytes)
        fn.start_bundle()
        assigned = [e for block in blocks for e in fn.process(block, centroids)] + [w.value for w in fn.finish_bundle()]
    by_partition: dict = {}
    for partition, piece in assigned:
        by_partition.setdefault(partition, []).append(piece)
    out = {"edges": {}, "roots": [], "max_cos": {}, "pairs": 0}
    n_edges = 0
    for partition, pieces in sorted(by_partition.items()):
        for o in SearchPartitionFn(params).process((partition, pieces), centroids):
            if o.tag == "edges":
                part, batch = o.value
                assert (split_gid(batch.a)[0] == part).all() and (batch.a < batch.b).all()
                n_edges += len(batch.a)
                for a, b, c in zip(batch.a.tolist(), batch.b.tolist(), batch.cos.tolist()):
                    out["edges"][(_row(a, offsets), _row(b, offsets))] = c
            elif o.tag == "roots":
                out["roots"].append((_row(o.value[0], offsets), _row(o.value[1], offsets)))
            elif o.tag == "max_cos":
                node = _row(o.value[0], offsets)
                out["max_cos"][node] = max(out["max_cos"].get(node, -1.0), o.value[1])
            elif o.tag == "pairs":
                out["pairs"] += o.value
    assert n_edges == len(out["edges"])  # each pair is owned by one task: no task repeats another's edge
    return out


def _row(gid: int, offsets) -> int:
    part, row = split_gid(np.asarray([gid]))
    return int(offsets[part[0]] + row[0])


def _components(n, pairs) -> np.ndarray:
    a, b = np.asarray(list(pairs), np.int64).reshape(-1, 2).T
    return connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)[1]


@pytest.fixture(scope="module")
def results(planted, folder):
    root, offsets = folder
    return {(v, e): _search(root, offsets, planted["centroids"], v, e) for v in (VectorTransport.SHUFFLE, VectorTransport.REREAD)
            for e in EdgeMode}


def test_shuffle_and_reread_give_identical_outputs(results):
    for edges in EdgeMode:
        assert results[(VectorTransport.SHUFFLE, edges)] == results[(VectorTransport.REREAD, edges)], edges


def test_all_edges_are_the_partitioned_pairs_and_counted_once(planted, results):
    got = results[(VectorTransport.SHUFFLE, EdgeMode.ALL)]
    i, j, _, _ = _pipeline_edges(planted["ids"], planted["x"], planted["centroids"], kernels.DEFAULT_MAX_SPILL)
    want = set(np.unique(_pair_keys(i, j)).tolist())
    keys = set(_pair_keys(*np.asarray(list(got["edges"]), np.int64).T).tolist())
    assert keys == want and np.isin(list(keys), planted["ref"]).all()
    assert got["pairs"] == len(got["edges"])  # a pair found from both partitions is counted once
    assert np.isin(planted["straddle_keys"], list(keys)).mean() >= 0.99  # spilled pairs are in


def test_spanning_edges_have_the_components_of_all_pairs(planted, results):
    n = len(planted["x"])
    every = results[(VectorTransport.SHUFFLE, EdgeMode.ALL)]
    span = results[(VectorTransport.SHUFFLE, EdgeMode.SPANNING)]
    assert set(span["edges"]) <= set(every["edges"]) and len(span["edges"]) < len(every["edges"]) / 3
    # a pair found from two partitions may differ in the last float32 bits there (tile layout): 1e-6
    assert all(abs(span["edges"][k] - every["edges"][k]) < 1e-6 for k in span["edges"])
    a, b = _components(n, every["edges"]), _components(n, span["edges"])
    assert len(set(zip(a.tolist(), b.tolist()))) == len(set(a.tolist())) == len(set(b.tolist()))
    assert all(len(set(b[g].tolist())) == 1 for g in planted["chains"])  # chains stay connected through their links
    assert span["pairs"] == every["pairs"] and span["max_cos"] == every["max_cos"]  # over ALL pairs
    assert sorted(set(span["roots"])) == sorted(set(every["roots"]))


@pytest.mark.parametrize("merge_bytes", [0, 40_000, 1 << 30])  # every block alone, some held together, all
def test_merged_pieces_search_as_the_block_pieces(planted, folder, results, merge_bytes):
    root, offsets = folder
    for vectors in VectorTransport.SHUFFLE, VectorTransport.REREAD:
        want = results[(vectors, EdgeMode.ALL)]  # block_rows 4096: one piece per part and partition
        got = _search(root, offsets, planted["centroids"], vectors, EdgeMode.ALL, block_rows=128,
                      merge_bytes=merge_bytes)
        assert got["pairs"] == want["pairs"] and set(got["edges"]) == set(want["edges"])
        assert sorted(set(got["roots"])) == sorted(set(want["roots"])) and got["max_cos"].keys() == want["max_cos"].keys()
        # the same pair in another tile layout may differ in the last float32 bits
        assert all(abs(got["edges"][e] - c) < 1e-6 for e, c in want["edges"].items())
        assert all(abs(got["max_cos"][n] - c) < 1e-6 for n, c in want["max_cos"].items())


def test_spill_concat_keeps_each_rows_lists():
    spills = [Spill(np.array([0, 2, 3], np.int64), np.array([4, 5, 6], np.int32)),
              Spill(np.array([0, 0], np.int64), np.zeros(0, np.int32)),
              Spill(np.array([0, 1], np.int32), np.array([8], np.int32))]
    merged = Spill.concat(spills)
    lists = [merged.parts[merged.indptr[r]:merged.indptr[r + 1]].tolist() for r in range(4)]
    assert lists == [[4, 5], [6], [], [8]] and merged.indptr.dtype == merged.parts.dtype == np.int32
    rows = np.array([3, 0])
    picked = Spill.of_rows(merged.indptr, merged.parts, rows)
    assert [picked.parts[picked.indptr[r]:picked.indptr[r + 1]].tolist() for r in range(2)] == [[8], [4, 5]]
    piece = Piece(Role.HOME, 0, np.array([1, 2, 7, 9]), spill=merged, vecs=np.ones((4, 3), np.float16))
    assert piece.nbytes == 4 * 8 + 5 * 4 + 4 * 4 + 4 * 3 * 2  # gids, indptr, the 4 visits, float16 rows


@pytest.mark.parametrize("edges", ["spanning", "all"])
def test_pipeline_groups_and_drop_keys_equal_between_transports(tmp_path, edges):
    emb = tmp_path / "emb"
    planted_folder(emb)
    tables = {}
    for vectors in ("shuffle", "reread"):
        out = str(tmp_path / vectors)
        summary = dedup.run(["--embeddings", str(emb), "--output", out, "--partitions", "6", "--max-spill", "3",
                             "--vectors", vectors, "--edges", edges])
        assert summary["parameters"]["resolved_vectors"] == vectors
        tables[vectors] = [pq.read_table(os.path.join(out, name)).sort_by("sample_id").to_pylist()
                           for name in ("groups", "drop_keys.parquet")] + [summary["increment"]["near_pairs"]]
        if edges == "all":
            assert summary["increment"]["near_pairs"] == summary["increment"]["near_edges_written"]
    assert tables["shuffle"] == tables["reread"]
    assert tables["shuffle"][-1] > 0


def test_auto_resolves_by_filesystem(tmp_path):
    local = VectorTransport.AUTO.resolve([str(tmp_path), "file:///data/emb"])
    assert local is VectorTransport.REREAD
    assert VectorTransport.AUTO.resolve([str(tmp_path), "s3://bucket/emb"]) is VectorTransport.SHUFFLE
    assert VectorTransport.AUTO.resolve(["gs://bucket/emb"]) is VectorTransport.SHUFFLE
    assert VectorTransport.SHUFFLE.resolve([str(tmp_path)]) is VectorTransport.SHUFFLE
    with pytest.raises(ValueError, match="expected one of: auto, shuffle, reread"):
        dedup.DedupConfig(embeddings="e", output="o", vectors="copy")
    with pytest.raises(ValueError, match="expected one of: spanning, all"):
        dedup.DedupConfig(embeddings="e", output="o", edges="tree")
    assert dataclasses.replace(dedup.DedupConfig(embeddings="e", output="o"), vectors="shuffle").vectors is \
        VectorTransport.SHUFFLE


def test_a_dense_group_writes_n_minus_one_edges_and_counts_every_pair(tmp_path):
    """600 near-copies of one placeholder plus 200 unrelated rows: spanning writes 599 edges, counts
    600 * 599 / 2 pairs, and groups every copy once; all writes every pair."""
    rng = np.random.default_rng(3)
    d, n = 32, 600
    base = rng.standard_normal(d)
    x = np.concatenate([base + 0.01 * rng.standard_normal((n, d)), rng.standard_normal((200, d))])
    f = layout.EmbeddingFolder(str(tmp_path / "emb"))
    layout.write_npy(f.img_emb("00000"), x.astype(np.float16))
    os.makedirs(os.path.dirname(f.metadata("00000")), exist_ok=True)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(len(x))]}), f.metadata("00000"))
    counts = {}
    for edges in ("spanning", "all"):
        out = str(tmp_path / edges)
        summary = dedup.run(["--embeddings", f.root, "--output", out, "--partitions", "2", "--edges", edges])
        written = pq.read_table(os.path.join(out, "edges")).num_rows
        counts[edges] = (written, summary["increment"]["near_pairs"], summary["increment"]["near_edges_written"])
        assert summary["group_size_histogram"] == {n: 1}
    assert counts["spanning"] == (n - 1, n * (n - 1) // 2, n - 1)
    assert counts["all"] == (n * (n - 1) // 2,) * 3
