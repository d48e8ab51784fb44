"""BalancePartitions: pieces of an oversized partition re-keyed into block-pair tasks; small ones untouched."""
import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from models.dedup import balance
from models.dedup.balance import TaskKey
from transforms.dedup.balance import BalancePartitions, select_rows
from transforms.dedup.rows import Piece, Role


def _pieces():
    hot = np.arange(0, 50, dtype=np.int64)        # partition 0: 50 homes over two blocks, cap 20 -> 3 chunks
    return [(0, Piece(Role.HOME, 0, hot[:30])), (0, Piece(Role.HOME, 1, hot[30:])),
            (0, Piece(Role.VISIT, 1, np.asarray([100, 101], np.int64), np.asarray([4, 4], np.int32))),
            (4, Piece(Role.HOME, 1, np.asarray([100, 101], np.int64)))]


def _flatten(elements):
    """-> {TaskKey: {"home": sorted gids, "visit": sorted gids}}."""
    out: dict = {}
    for key, piece in elements:
        out.setdefault(TaskKey(*key), {"home": [], "visit": []})[piece.role.value] += piece.gids.tolist()
    return {k: {r: sorted(v) for r, v in d.items()} for k, d in out.items()}


def _expected():
    split = balance.plan_split(50, 2, 20)
    hot = np.arange(0, 50, dtype=np.int64)
    chunks = balance.chunk_of(hot, split.home_chunks)
    out: dict = {TaskKey(4, 0, 0): {"home": [100, 101], "visit": []}}
    for a in range(split.home_chunks):
        for place in balance.home_placements(0, a, split):
            d = out.setdefault(place.key, {"home": [], "visit": []})
            d["home" if place.as_home else "visit"] += hot[chunks == a].tolist()
    for key in balance.visitor_placements(0, 0, split):
        out.setdefault(key, {"home": [], "visit": []})["visit"] += [100, 101]
    return {k: {r: sorted(v) for r, v in d.items()} for k, d in out.items()}


def test_hot_partition_becomes_block_pair_tasks():
    with TestPipeline() as p:
        out = (p | beam.Create(_pieces()) | BalancePartitions(cap=20))["tasks"] | beam.combiners.ToList()

        def check(lists):
            got = _flatten(lists[0])
            assert got == _expected()
            assert len([k for k in got if k.partition == 0]) == balance.task_pairs(balance.Split(3, 1))
        assert_that(out, check)


def test_select_rows_presents_homes_as_visitors_of_their_partition():
    piece = Piece(Role.HOME, 2, np.asarray([7, 8, 9], np.int64))
    v = select_rows(piece, np.asarray([0, 2]), Role.VISIT, 5)
    assert v.role is Role.VISIT and v.gids.tolist() == [7, 9] and v.homes.tolist() == [5, 5] and v.part == 2
