"""The increment index (transforms.dedup.store): partition files, bucket indices and the lookups an increment makes."""
from __future__ import annotations

import dataclasses

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that, equal_to

from models.dedup import balance
from models.dedup.balance import TaskKey
from models.dedup.plan import ChainRun, DedupParams
from models.storage import layout, schemas
from models.storage.folders.dedup import DedupFolder
from transforms.common import sum_counters
from transforms.dedup import store
from transforms.dedup.balance import split_piece
from transforms.dedup.rows import GroupRow, Piece, PreviousGroup, Role, Spill, gid_of

D = 6


@pytest.fixture
def beam_pipeline_factory():
    """New TestPipelines on Beam's in-process FnApiRunner (a test here runs several pipelines)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    return lambda: TestPipeline(runner=FnApiRunner())


def _params(tmp_path, name="run", **kw) -> DedupParams:
    return DedupParams(embeddings=str(tmp_path / "emb"), output=str(tmp_path / name), parts=("a", "b", "c"), dim=D,
                       threshold=0.9, max_spill=2, sample_size=10, seed=0, niter=2, k=4, block_rows=64, n_rows=30,
                       **kw)


def _pieces(rng):
    homes = Piece(Role.HOME, 1, gid_of(1, np.arange(5)), spill=Spill(np.asarray([0, 2, 2, 3, 3, 3], np.int32),
                                                                     np.asarray([3, 7, 2], np.int32)),
                  vecs=rng.standard_normal((5, D)).astype(np.float16))
    visitors = Piece(Role.VISIT, 2, gid_of(2, np.asarray([4, 9])), homes=np.asarray([3, 8], np.int32),
                     vecs=rng.standard_normal((2, D)).astype(np.float16))
    return homes, visitors


def _same(a: Piece, b: Piece) -> bool:
    same = a.role == b.role and a.part == b.part and np.array_equal(a.gids, b.gids)
    same &= np.array_equal(a.vecs, b.vecs) and a.vecs.dtype == b.vecs.dtype
    if a.role is Role.HOME:
        return same and np.array_equal(a.spill.indptr, b.spill.indptr) and np.array_equal(a.spill.parts, b.spill.parts)
    return same and np.array_equal(a.homes, b.homes)


def test_partition_rows_round_trip_bit_exact():
    """Homes keep their visited partitions, visitors their home, vectors their stored bytes (float16)."""
    homes, visitors = _pieces(np.random.default_rng(0))
    table = store.encode_pieces([homes, visitors], 5)
    assert table.num_rows == 7 and table.schema.metadata[b"dtype"] == np.dtype(np.float16).str.encode()
    assert table.column("home").to_pylist() == [5] * 5 + [3, 8]
    back = store.decode_pieces(table, D)
    assert len(back) == 2 and _same(back[0], homes) and _same(back[1], visitors)
    only_homes = store.decode_pieces(table, D, visitors=False)
    assert len(only_homes) == 1 and _same(only_homes[0], homes)


def test_decode_splits_rows_by_part():
    rng = np.random.default_rng(1)
    mixed = Piece(Role.HOME, 0, np.concatenate([gid_of(0, np.arange(2)), gid_of(2, np.arange(3))]),
                  spill=Spill(np.arange(6, dtype=np.int32), np.arange(5, dtype=np.int32)),
                  vecs=rng.standard_normal((5, D)).astype(np.float32))
    back = store.decode_pieces(store.encode_pieces([mixed], 0), D)
    assert [(b.part, len(b.gids)) for b in back] == [(0, 2), (2, 3)]
    assert np.array_equal(np.concatenate([b.vecs for b in back]), mixed.vecs)
    assert np.array_equal(back[1].spill.parts, [2, 3, 4]) and np.array_equal(back[1].spill.indptr, [0, 1, 2, 3])


@pytest.mark.parametrize("homes,visitors,cap", [(40, 0, 100), (40, 25, 10), (40, 7, 10), (7, 40, 10)])
def test_each_new_row_is_stored_once_over_a_partitions_tasks(tmp_path, homes, visitors, cap):
    """Split or not, the tasks of a partition store every new home and visitor exactly once, in its own role."""
    params = _params(tmp_path)
    rng = np.random.default_rng(2)
    home = Piece(Role.HOME, 1, gid_of(1, np.arange(homes)),
                 spill=Spill(np.arange(homes + 1, dtype=np.int32), np.full(homes, 9, np.int32)),
                 vecs=rng.standard_normal((homes, D)).astype(np.float16))
    visit = Piece(Role.VISIT, 2, gid_of(2, np.arange(visitors)), homes=np.full(visitors, 9, np.int32),
                  vecs=rng.standard_normal((visitors, D)).astype(np.float16))
    split = balance.plan_split(homes, visitors, cap)
    tasks: dict = {}
    for piece in (home, visit):
        for key, p in split_piece((4, piece), {4: split} if split != balance.NOT_SPLIT else {}):
            tasks.setdefault(key, []).append(p)
    stored = [(int(g), b.role) for key, pieces in tasks.items()
              for b in store.stored_pieces(TaskKey(*key), pieces, params) for g in b.gids]
    assert sorted(stored) == sorted([(int(g), Role.HOME) for g in home.gids] + [(int(g), Role.VISIT) for g in visit.gids])


def test_old_pieces_are_never_stored_again(tmp_path):
    params = dataclasses.replace(_params(tmp_path), n_old=2, part_runs=((), ()), centroids_path="c.npy",
                                 chain=(ChainRun("x", 1),))
    homes, visitors = _pieces(np.random.default_rng(3))  # parts 1 (old) and 2 (new)
    kept = store.stored_pieces(TaskKey(0), [homes, visitors], params)
    assert [b.part for b in kept] == [2]


def test_buckets_are_deterministic_and_in_range():
    gids = gid_of(3, np.arange(10000))
    b = np.asarray([store.gid_bucket(g, 7) for g in gids.tolist()])
    assert b.min() >= 0 and b.max() < 7 and np.array_equal(b, [store.gid_bucket(g, 7) for g in gids.copy().tolist()])
    counts = np.bincount(b, minlength=7)
    assert counts.min() > 0.8 * 10000 / 7  # consecutive rows spread over the buckets
    assert store.text_bucket("abc", 5) == store.text_bucket("abc", 5) < 5


def test_hash_rows_keep_every_row_compactly_and_bucket_like_strings():
    """HashRows hold arrays: built from strings they give the same strings back (UTF-8 keys included), concat
    keeps order across widths, batches by bytes fall in the keys of their strings' index buckets, and a pickled batch of
    sha256 rows costs < 100 B a row (lists of str cost ~150 B pickled and ~250 B decoded)."""
    import pickle
    import hashlib

    n = 5000
    hashes = ["sha256:" + hashlib.sha256(str(i % 4000).encode()).hexdigest() for i in range(n)]
    keys = [f"{i:09d}" if i % 7 else f"caf\u00e9/{i}" for i in range(n)]
    gids = gid_of(2, np.arange(n)).tolist()
    rows = store.HashRows(hashes, gids, keys)
    assert rows.rows() == list(zip(hashes, gids, keys))
    assert len(pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)) / n < 100
    both = store.HashRows.concat([rows.take([3, 1]), store.HashRows(["md5:ab"], [7], ["k"])])
    assert both.rows() == [rows.rows()[3], rows.rows()[1], ("md5:ab", 7, "k")]
    assert len(store.HashRows.concat([])) == 0
    batches = store.hash_batches(rows.hashes, rows.gids, rows.keys, 40)  # keys: index buckets // 16
    assert sorted(r for _, b in batches for r in b.rows()) == sorted(rows.rows())
    assert [key for key, _ in batches] == [0, 1, 2]
    for key, b in batches:
        assert {store.text_bucket(h, 40) // store.HASH_SHUFFLE_INDEX_BUCKETS for h in b.hash_strings()} == {key}
    with pytest.raises(ValueError, match="differ in length"):
        store.HashRows(["a"], [1, 2], ["k"])


def _group_row(part, row, group_id, size, rep, area=100, key=None, max_cos=0.97):
    key = key or f"k{part}{row}"
    return part, GroupRow(row, key, f"s::{key}", group_id, size, rep, "krep", max_cos, None, area)


def test_written_index_answers_lookups_and_the_newest_run_wins(tmp_path, beam_pipeline_factory):
    """Run 0 groups {a0, a1} and {a2, b0}; run 1 (an increment) rewrites the first group with a new member c0.

    A lookup of a1 gets run 1's state (3 members, c0 included); a lookup of b0 run 0's; an unknown row none.
    Hashes: the bucket of a new hash gives the old rows with that hash only."""
    run0 = _params(tmp_path, "run0", index_buckets=3)
    run1 = _params(tmp_path, "run1", index_buckets=2)
    g0, g1 = "s::k00", "s::k02"
    rows0 = [_group_row(0, 0, g0, 2, True), _group_row(0, 1, g0, 2, False),
             _group_row(0, 2, g1, 2, True, area=7), _group_row(1, 0, g1, 2, False)]
    rows1 = [_group_row(0, 0, g0, 3, False), _group_row(0, 1, g0, 3, False), _group_row(2, 0, g0, 3, True, area=999)]
    hashes0 = [(0, store.HashRows(["sha:x"], [int(gid_of(0, [0])[0])], ["k00"])),
               (0, store.HashRows(["sha:y"], [int(gid_of(1, [0])[0])], ["k10"]))]
    for params, rows, hashes in ((run0, rows0, hashes0), (run1, rows1, [])):
        with beam_pipeline_factory() as p:
            hash_rows = (p | "H" >> beam.Create(hashes) | store.GroupHashes(params)
                         | beam.Map(lambda e, q: store.write_hash_index(q, e[0], store.HashRows.concat(e[1])), params))
            stats = ({"hash_rows": hash_rows, "rows": p | "R" >> beam.Create(rows)}
                     | store.WriteIndex(params) | beam.CombineGlobally(sum_counters))
            n_hashed = sum(len(b.hashes) for _, b in hashes)
            assert_that(stats | beam.Map(dict), equal_to([{"index_hashes_rows": n_hashed, "index_rows_rows": len(rows),
                                                            "index_groups_rows": len(rows)}]))
        for kind in DedupFolder.INDEX_KINDS:  # every bucket is written, empty ones too
            for b in range(params.index_buckets):
                assert layout.exists(DedupFolder(params.output).index_bucket(kind, b))
    inc = dataclasses.replace(_params(tmp_path, "run2"), n_old=3, part_runs=((), (), ()), centroids_path="c.npy",
                              chain=(ChainRun(run0.output, 3), ChainRun(run1.output, 2)))
    a1, b0, c0, a2 = (int(gid_of(p, [r])[0]) for p, r in ((0, 1), (1, 0), (2, 0), (0, 2)))
    with beam_pipeline_factory() as p:
        found = p | beam.Create([a1, a1, b0, int(gid_of(1, [5])[0])]) | store.LookupPreviousGroups(inc)
        state = found["state"] | "S" >> beam.Map(lambda e: (e[0], e[1].group_id, e[1].group_size, e[1].is_representative))
        assert_that(state, equal_to([(int(gid_of(0, [0])[0]), g0, 3, False), (a1, g0, 3, False), (c0, g0, 3, True),
                                     (a2, g1, 2, True), (b0, g1, 2, False)]), label="State")
        meta = found["meta"] | "M" >> beam.Map(lambda e: (e[0], e[1].area))
        assert_that(meta | "C0" >> beam.Filter(lambda e: e[0] in (c0, a2)), equal_to([(c0, 999), (a2, 7)]), label="Meta")
        new = store.HashRows(["sha:y", "sha:z", "sha:y"], [99, 98, 97], ["new", "n2", "n3"])
        old = (p | "New" >> beam.Create([(0, new)]) | store.LookupOldHashes(inc)
               | "Rows" >> beam.FlatMap(lambda e: [(e[0],) + r for r in e[1].rows()]))
        assert_that(old, equal_to([(0, "sha:y", b0, "k10")]), label="Hashes")  # once, though two new rows ask


def test_a_missing_bucket_is_an_error_not_an_empty_lookup(tmp_path, beam_pipeline_factory):
    inc = dataclasses.replace(_params(tmp_path, "run2"), n_old=3, part_runs=((), (), ()), centroids_path="c.npy",
                              chain=(ChainRun(str(tmp_path / "gone"), 1),))
    with pytest.raises(Exception, match="must stay where they were written"):
        with beam_pipeline_factory() as p:
            _ = p | beam.Create([1]) | store.LookupPreviousGroups(inc)


def test_previous_group_rows_carry_every_field():
    rows = [{"group_id": "g", "gid": 5, "key": "k", "sample_id": "s", "area": 12, "group_size": 2,
             "is_representative": True, "representative_key": "k", "max_cosine": 0.5}]
    out = list(store.group_members(("g", (0, rows))))
    assert out[0] == (5, PreviousGroup("g", 2, True, "k", 0.5))
    assert out[1].value == (5, store.MemberMeta("k", "s", 12))
    assert schemas.GROUP_INDEX.names[:2] == ["group_id", "gid"]
