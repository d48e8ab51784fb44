"""The composite steps of transforms.dedup, each on a tiny inline embedding folder (TestPipeline + assert_that).

Folder: two parts of 6 rows, d = 8. Rows 0-1 of part 0 and row 0 of part 1 are
copies of one vector (cosine >= 0.999); row 2 of part 0 and row 1 of part 1
share a sha256 with unrelated vectors; row 5 of part 1 is NaN, row 4 is zero;
every other row is an orthogonal basis vector (no edges at t = 0.95).
Keys: row 3 of part 1 reuses part 0's key ``k03`` (another sample: kept);
row 5 of part 0 repeats row 4's key in the same part (the same sample id: rejected).
"""
from __future__ import annotations

import dataclasses
import os
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from models.dedup.plan import ChainRun, DedupParams, EdgeMode, VectorTransport
from models.storage import ids, layout
from models.storage.folders.dedup import DedupFolder
from transforms.dedup.centroids import TrainCentroids
from transforms.dedup.components import ConnectComponents
from transforms.dedup.label import LabelGroups
from transforms.dedup.read import ReadParts
from transforms.dedup.rows import GroupRow, Reject, gid_of
from transforms.dedup.search import AssignAndSearch
from transforms.dedup.strategy import FreshRun
from transforms.dedup.write import WriteParts

D = 8
T = 0.95


def _gid(part: int, row: int) -> int:
    return int(gid_of(part, np.asarray([row]))[0])


def _sid(params, part: str, key: str) -> str:
    return ids.sample_id(ids.absolute_url(params.folder(0).metadata(part)), key)


def _keys(p: int) -> list[str]:
    keys = [f"k{p}{r}" for r in range(6)]
    if p == 0:
        keys[5] = "k04"
    else:
        keys[3] = "k03"
    return keys


@pytest.fixture
def params(tmp_path):
    eye = np.eye(D)
    base = eye[0] + 0.01 * eye[7]
    base /= np.linalg.norm(base)
    parts = {
        "00000": np.stack([base, eye[0], eye[1], eye[2], eye[3], eye[4]]),
        "00001": np.stack([eye[0], eye[5], eye[6], eye[7], np.zeros(D), np.full(D, np.nan)]),
    }
    folder = layout.EmbeddingFolder(str(tmp_path / "emb"))
    for p, (name, x) in enumerate(parts.items()):
        layout.write_npy(folder.img_emb(name), x.astype(np.float16))
        sha = [f"h{p}{r}" for r in range(6)]
        if p == 0:
            sha[2] = "same"
        else:
            sha[1] = "same"
        os.makedirs(os.path.dirname(folder.metadata(name)), exist_ok=True)
        pq.write_table(pa.table({"key": _keys(p), "sha256": sha,
                                 "width": [100 + r for r in range(6)], "height": [10] * 6}), folder.metadata(name))
    return DedupParams(embeddings=folder.root, output=str(tmp_path / "out"), parts=tuple(parts), dim=D, threshold=T,
                       max_spill=1, sample_size=12, seed=0, niter=5, k=2, block_rows=4, n_rows=12)


def test_read_parts_blocks_and_rejects(beam_pipeline, params):
    with beam_pipeline as p:
        read = p | beam.Create([0, 1]) | ReadParts(params)
        rows = read["blocks"] | beam.FlatMap(lambda b: b.gids.tolist())
        assert_that(rows, equal_to([_gid(0, r) for r in range(5)] + [_gid(1, r) for r in range(4)]), label="Rows")
        hashed = read["hashes"] | beam.FlatMap(lambda e: e[1].rows())
        sha = {0: [f"h0{r}" for r in range(6)], 1: [f"h1{r}" for r in range(6)]}
        sha[0][2] = sha[1][1] = "same"  # the fixture's metadata; rejected rows have no hash row
        assert_that(hashed, equal_to([(f"sha256:{sha[p][r]}", _gid(p, r), _keys(p)[r])
                                      for p, n in ((0, 5), (1, 4)) for r in range(n)]), label="Hashes")
        assert_that(read["rejects"], equal_to([(0, Reject(5, "k04", "duplicate-sample-id: same sample id as row 4")),
                                               (1, Reject(4, "k14", "zero-embedding")),
                                               (1, Reject(5, "k15", "non-finite-embedding"))]), label="Rejects")


def test_train_centroids_gives_unit_centroids(beam_pipeline, params):
    with beam_pipeline as p:
        read = p | beam.Create([0, 1]) | ReadParts(params)
        centroids = read["blocks"] | TrainCentroids(params)
        shape_norms = centroids | beam.Map(lambda c: (c.shape, bool(np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-5))))
        assert_that(shape_norms, equal_to([((2, D), True)]))


def _search(beam_pipeline, params):
    centroids = np.eye(D, dtype=np.float32)[[0, 1]]  # fixed centroids: the result must not depend on them
    copies = [_gid(0, 0), _gid(0, 1), _gid(1, 0)]
    hashed = [_gid(0, 2), _gid(1, 1)]
    with beam_pipeline as p:
        read = p | beam.Create([0, 1]) | ReadParts(params)
        found = ({"blocks": read["blocks"], "hashes": read["hashes"], "centroids": p | "C" >> beam.Create([centroids])}
                 | AssignAndSearch(params, FreshRun(params).old_hashes))
        roots = ([(g, copies[0]) for g in copies] + [(g, hashed[0]) for g in hashed])
        assert_that(found["roots"] | beam.Distinct(), equal_to(roots), label="Roots")
        best = found["max_cos"] | beam.CombinePerKey(max) | beam.Map(lambda e: (e[0], round(e[1], 3)))
        assert_that(best, equal_to([(g, 1.0) for g in copies + hashed]), label="MaxCos")
        assert_that(found["near_pairs"], equal_to([3]), label="NearPairs")  # 3 pairs among the copies, counted once
        yield found
    edges = layout.read_parquet(params.out.edges_dir).to_pylist()  # edges_{part of b} files and exact ones
    yield sorted((e["key_a"], e["key_b"]) for e in edges if e["kind"] == "near")


@pytest.mark.parametrize("vectors", [VectorTransport.SHUFFLE, VectorTransport.REREAD])
def test_assign_and_search_finds_copies_and_hash_pairs(beam_pipeline, params, vectors):
    params = dataclasses.replace(params, vectors=vectors, edges=EdgeMode.ALL)
    steps = _search(beam_pipeline, params)
    found = next(steps)
    written = found["edges_written"] | beam.CombineGlobally(sum)
    assert_that(written, equal_to([3]), label="EdgesWritten")  # 3 pairs among the copies, each written once
    assert next(steps) == [("k00", "k01"), ("k00", "k10"), ("k01", "k10")]


def test_spanning_edges_are_a_forest_of_the_copies(beam_pipeline, params):
    params = dataclasses.replace(params, edges=EdgeMode.SPANNING)
    steps = _search(beam_pipeline, params)
    found = next(steps)
    written = found["edges_written"] | beam.CombineGlobally(sum)
    assert_that(written, equal_to([2]), label="EdgesWritten")  # 3 connected rows: 2 edges
    edges = next(steps)
    assert len(edges) == 2 and {k for e in edges for k in e} == {"k00", "k01", "k10"}


def test_shuffle_steps_read_only_the_blocks_own_part(params):
    """With --vectors shuffle the sample and assign steps read a block's own part only, and the search reads
    none: they run with every other part's files deleted, and the search with the whole folder deleted gives
    the reread search's output."""
    import shutil

    from transforms.dedup import read as read_mod
    from transforms.dedup.centroids import sample_rows
    from transforms.dedup.read import ReadPartFn
    from transforms.dedup.search import SearchPartitionFn, assign

    centroids = np.eye(D, dtype=np.float32)[[0, 1]]
    outputs = {}
    for vectors in (VectorTransport.REREAD, VectorTransport.SHUFFLE):
        pp = dataclasses.replace(params, vectors=vectors, edges=EdgeMode.ALL)
        outputs[vectors] = [list(_run(pp, centroids, part)) for part in (0, 1)]
    assert outputs[VectorTransport.REREAD] == outputs[VectorTransport.SHUFFLE]
    pp = dataclasses.replace(params, vectors=VectorTransport.SHUFFLE)
    blocks = [b for part in (0, 1) for b in ReadPartFn(pp).process(part) if hasattr(b, "gids")]
    folder = pp.folder(0)
    os.remove(folder.img_emb("00001"))
    read_mod._HEADERS.clear()
    own = [b for b in blocks if b.part == 0]
    assert all(len(sample_rows(b, 1.0, pp)) == len(b.gids) for b in own)  # part 0 only: no error
    pieces = [piece for b in own for piece in assign(b, centroids, pp)]
    assert pieces and all(piece.vecs is not None and piece.vecs.dtype == np.float16 for _, piece in pieces)
    shutil.rmtree(folder.root)
    read_mod._HEADERS.clear()
    by_partition = {}
    for part, piece in pieces:
        by_partition.setdefault(part, []).append(piece)
    for part, group in by_partition.items():
        list(SearchPartitionFn(pp).process((part, group), centroids))  # no part on disk: runs
    reread = dataclasses.replace(params, vectors=VectorTransport.REREAD)
    with pytest.raises(FileNotFoundError):  # the control: the reread search needs the parts
        list(SearchPartitionFn(reread).process((0, [dataclasses.replace(q, vecs=None) for q in by_partition[0]]),
                                               centroids))


def _run(params, centroids, partition: int):
    """The search DoFn's tagged outputs for one partition, from blocks read and assigned outside Beam."""
    from transforms.dedup.read import ReadPartFn
    from transforms.dedup.search import SearchPartitionFn, assign

    blocks = [b for part in (0, 1) for b in ReadPartFn(params).process(part) if hasattr(b, "gids")]
    pieces = [piece for b in blocks for part, piece in assign(b, centroids, params) if part == partition]
    def comparable(tag, value):  # edge batches hold arrays
        return (value[0], [None if x is None else x.tolist() for x in value[1]]) if tag == "edges" else value

    return [(o.tag, comparable(o.tag, o.value)) for o in SearchPartitionFn(params).process((partition, pieces), centroids)
            if o.tag != "nn_best"]


def test_connect_components_merges_through_shared_nodes(beam_pipeline):
    with beam_pipeline as p:
        a = p | "A" >> beam.Create([(1, 1), (2, 1), (5, 5), (6, 5)])
        b = p | "B" >> beam.Create([(2, 2), (5, 2), (9, 9), (10, 9)])
        labels = (a, b) | ConnectComponents()
        assert_that(labels, equal_to([(1, 1), (2, 1), (5, 1), (6, 1), (9, 9), (10, 9)]))


def test_label_groups_picks_largest_image_and_names_group_by_first_member(beam_pipeline, params):
    g00, g01, g10 = _gid(0, 0), _gid(0, 1), _gid(1, 0)
    with beam_pipeline as p:
        labels = p | "L" >> beam.Create([(g, g00) for g in (g00, g01, g10)])
        max_cos = p | "M" >> beam.Create([(g00, 0.99), (g01, 0.99), (g10, 0.98), (g00, 0.97)])
        groups = ({"labels": labels, "max_cos": max_cos, "previous": p | "P" >> beam.Create([]),
                   "meta": p | "Meta" >> beam.Create([])}
                  | LabelGroups(params, lambda labelled: labelled))
        # areas: k00 1000, k01 1010, k10 1000 -> k01 is the representative; k00's sample id names the group
        s00, s01, s10 = _sid(params, "00000", "k00"), _sid(params, "00000", "k01"), _sid(params, "00001", "k10")
        assert_that(groups["rows"], equal_to([
            (0, GroupRow(0, "k00", s00, s00, 3, False, "k01", 0.99, None, 1000)),
            (0, GroupRow(1, "k01", s01, s00, 3, True, "k01", 0.99, None, 1010)),
            (1, GroupRow(0, "k10", s10, s00, 3, False, "k01", 0.98, None, 1000)),
        ]), label="Rows")
        assert_that(groups["sizes"], equal_to([3]), label="Sizes")
        assert_that(groups["merges"], equal_to([]), label="Merges")


def test_write_parts_every_row_once(beam_pipeline, params):
    with beam_pipeline as p:
        s10, s00 = _sid(params, "00001", "k10"), _sid(params, "00000", "k00")
        rows = p | "R" >> beam.Create([(1, GroupRow(0, "k10", s10, s00, 2, False, "k00", 0.99, None))])
        rejects = p | "J" >> beam.Create([(1, Reject(4, "k14", "zero-embedding"))])
        stats = {"rows": rows, "rejects": rejects, "parts": p | "I" >> beam.Create([1])} | WriteParts(params)
        assert_that(stats, equal_to([Counter({"rows": 6, "grouped_rows": 5, "dropped": 1, "rejects": 1})]))
    groups = layout.read_parquet(params.out.groups("00001")).to_pylist()
    assert [g["key"] for g in groups] == ["k10", "k11", "k12", "k03", "k15"]
    assert [g["sample_id"] for g in groups] == [_sid(params, "00001", k) for k in ("k10", "k11", "k12", "k03", "k15")]
    assert groups[0]["group_id"] == s00 and groups[1]["group_size"] == 1 and groups[1]["group_id"] == groups[1]["sample_id"]
    drops = layout.read_parquet(params.out.drop_keys_part("00001")).to_pylist()
    assert [d["key"] for d in drops] == ["k10"] and drops[0]["reason"].startswith("near-duplicate of k00")
    assert drops[0]["sample_id"] == s10
    assert [r["key"] for r in layout.read_parquet(params.out.rejects("00001")).to_pylist()] == ["k14"]


def test_exact_groups_join_batches_of_one_shuffle_key(params):
    """Rows of one hash in several batches (blocks, old rows) form one star from the smallest gid; a group of
    old rows only is left alone; only edges to new rows are written, all in the key's one file."""
    from transforms.dedup.search import exact_groups
    from transforms.dedup.store import HashRows

    inc = dataclasses.replace(params, n_old=1, part_runs=((),), centroids_path="c.npy", chain=(ChainRun("run0", 1),))
    old0, old1 = (int(g) for g in gid_of(0, np.asarray([3, 4])))
    new0, new1, new2 = (int(g) for g in gid_of(1, np.asarray([0, 1, 2])))
    batches = [HashRows(["sha256:aa", "sha256:bb"], [new1, new0], ["n1", "n0"]),
               HashRows(["sha256:aa", "sha256:cc", "sha256:cc", "sha256:dd"], [old1, old0, old1, new2],
                        ["o1", "o0", "o1b", "n2"])]
    out = list(exact_groups((7, batches), inc))
    roots = sorted(o for o in out if not hasattr(o, "tag"))
    assert roots == sorted([(old1, old1), (new1, old1)])  # aa: {old1, new1}; cc is old only, bb and dd alone
    assert sorted(o.value for o in out if getattr(o, "tag", None) == "max_cos") == sorted([(old1, 1.0), (new1, 1.0)])
    rows = pq.read_table(inc.out.exact_edges("hash-00007")).to_pylist()
    assert rows == [{"key_a": "o1", "key_b": "n1", "cosine": 1.0, "kind": "exact"}]
    # The key's task writes its increment-index buckets: this run's new rows only, sorted by (hash, gid).
    out = list(exact_groups((0, batches), inc))
    assert [o.value for o in out if getattr(o, "tag", None) == "index_rows"] == [3]
    index = pq.read_table(DedupFolder(inc.output).index_bucket("hashes", 0)).to_pylist()
    assert index == [{"hash": "sha256:aa", "gid": new1, "key": "n1"}, {"hash": "sha256:bb", "gid": new0, "key": "n0"},
                     {"hash": "sha256:dd", "gid": new2, "key": "n2"}]


def test_group_table_writes_singletons_group_rows_and_skips_rejects():
    """A part's groups file by column: singletons from the part's ids, group rows over them, rejected rows left
    out, a group row without a cosine null (never NaN)."""
    from types import SimpleNamespace

    from models.storage import schemas
    from transforms.dedup.rows import GroupRow
    from transforms.dedup.write import group_table

    ids = SimpleNamespace(keys=[f"k{i}" for i in range(5)], sample_ids=[f"s{i}" for i in range(5)])
    dups = [GroupRow(1, "k1", "s1", "s1", 2, True, "k1", 0.97, None),
            GroupRow(3, "k3", "s3", "s1", 2, False, "k1", 0.97, None),
            GroupRow(4, "k4", "s4", "s4", 2, True, "k4", None, None)]
    table = group_table(ids, dups, [2], "00007")
    assert table.schema == schemas.DEDUP_GROUPS
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == ["k0", "k1", "k3", "k4"]
    assert rows[0] == {"key": "k0", "sample_id": "s0", "group_id": "s0", "group_size": 1, "is_representative": True,
                       "representative_key": "k0", "max_cosine": None, "part": "00007"}
    assert (rows[2]["group_id"], rows[2]["group_size"], rows[2]["is_representative"], rows[2]["representative_key"]) \
        == ("s1", 2, False, "k1")
    assert abs(rows[2]["max_cosine"] - 0.97) < 1e-6 and rows[3]["max_cosine"] is None
