"""transforms.dedup.components: ConnectComponents on tiny inline inputs (TestPipeline + assert_that).

Expected labels are the closed form: scipy connected components of the graph
whose edges are the (gid, local_root) pairs, label = smallest gid of the
component. The residual-link count must equal the one-process run of the same
per-node functions (models.dedup.components.star_components) on the same links.
"""
from __future__ import annotations

from collections import Counter

import apache_beam as beam
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
from apache_beam.testing.util import assert_that, equal_to

from models.dedup import components
from transforms.dedup.components import RESIDUAL_STAT, ConnectComponents, old_group_roots


def _expected(inputs: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    pairs = [pair for pcoll in inputs for pair in pcoll]
    ids = np.unique(np.asarray(pairs, np.int64).ravel())
    a = np.searchsorted(ids, [p[0] for p in pairs])
    b = np.searchsorted(ids, [p[1] for p in pairs])
    graph = scipy.sparse.coo_matrix((np.ones(len(pairs)), (a, b)), shape=(ids.size, ids.size))
    _, lab = scipy.sparse.csgraph.connected_components(graph, directed=False)
    smallest = {int(c): int(ids[lab == c].min()) for c in np.unique(lab)}
    return sorted({(int(ids[i]), smallest[int(lab[i])]) for i in a.tolist()})


def _expected_residual(inputs: list[list[tuple[int, int]]], rounds: int) -> int:
    pairs = [pair for pcoll in inputs for pair in pcoll]
    la, lb = components.root_links(np.asarray([p[0] for p in pairs]), np.asarray([p[1] for p in pairs]))
    return components.star_components(la, lb, rounds).residual_links


def _run(beam_pipeline, inputs, rounds, residual=None):
    """ConnectComponents on ``inputs`` (one Create each) against the closed form and the residual count."""
    expected = _expected(inputs)
    want = _expected_residual(inputs, rounds) if residual is None else residual
    with beam_pipeline as p:
        pcolls = tuple(p | f"In{i}" >> beam.Create(pairs) for i, pairs in enumerate(inputs))
        out = pcolls | ConnectComponents(rounds=rounds, with_stats=True)
        assert_that(out["labels"], equal_to(expected), label="Labels")
        assert_that(out["stats"], equal_to([Counter({RESIDUAL_STAT: want})]), label="Stats")
    return want


def _partitions(groups: list[list[int]]) -> list[tuple[int, int]]:
    """Local components -> (gid, local root) pairs, root = smallest gid (as a partition's search emits them)."""
    return [(g, min(group)) for group in groups for g in group]


def test_chain_longer_than_2_to_the_rounds_runs_the_exact_finish(beam_pipeline):
    # 20 roots linked in order through shared nodes: a path of 20 > 2**2 roots
    chain = _partitions([[10 * i, 10 * i + 10] for i in range(20)])
    assert _run(beam_pipeline, [chain], rounds=2) > 0


def test_shuffled_chain_and_zero_rounds(beam_pipeline):
    rng = np.random.default_rng(0)
    ids = (rng.permutation(40) * 3 + 1).tolist()
    chain = _partitions([[ids[i], ids[i + 1]] for i in range(39)])
    assert _run(beam_pipeline, [chain], rounds=0) > 0  # everything residual: still exact


def test_star_clique_isolated_and_duplicated_links(beam_pipeline):
    star = _partitions([[500, x] for x in range(501, 520)])  # one node spilled into 19 partitions
    clique = _partitions([[a, b] for a in range(900, 906) for b in range(a + 1, 906)])
    isolated = [(7, 7), (8, 8)]
    duplicated = _partitions([[1000, 1001], [1001, 1002]]) * 3  # the same pairs three times
    assert _run(beam_pipeline, [star + clique + isolated, duplicated, duplicated],
                rounds=components.DEFAULT_STAR_ROUNDS) == 0


def test_partition_hash_and_previous_group_roots_together(beam_pipeline):
    """Three inputs as the incremental run wires them: partition roots, hash-group roots, previous groups."""
    partition = _partitions([[1, 4], [4, 9], [20, 21]])
    hashed = _partitions([[9, 30], [40, 41]])
    previous_groups = [("g-a", [21, 41, 50]), ("g-b", [60, 61])]
    previous = [pair for group in previous_groups for pair in old_group_roots(group)]
    expected = _expected([partition, hashed, previous])
    assert dict(expected)[50] == 20 and dict(expected)[30] == 1 and dict(expected)[61] == 60
    with beam_pipeline as p:
        prev = (p | "Prev" >> beam.Create([(g, m) for g, members in previous_groups for m in members])
                | "ByGroup" >> beam.GroupByKey() | "PrevRoots" >> beam.FlatMap(old_group_roots))
        labels = (p | "Part" >> beam.Create(partition), p | "Hash" >> beam.Create(hashed), prev) | ConnectComponents()
        assert_that(labels, equal_to(expected))


@pytest.mark.parametrize("seed", range(2))
def test_random_partitions_equal_scipy(beam_pipeline, seed):
    rng = np.random.default_rng(seed)
    n = 120
    gid = np.sort(rng.choice(10**9, n, replace=False)).astype(np.int64)
    inputs = []
    for _ in range(3):  # three sources, each a set of local components over random nodes
        groups = [gid[rng.choice(n, rng.integers(1, 5), replace=False)].tolist() for _ in range(25)]
        inputs.append(_partitions(groups))
    _run(beam_pipeline, inputs, rounds=3)


def test_empty_inputs(beam_pipeline):
    with beam_pipeline as p:
        out = (p | "A" >> beam.Create([]), p | "B" >> beam.Create([])) | ConnectComponents(with_stats=True)
        assert_that(out["labels"], equal_to([]), label="Labels")
        assert_that(out["stats"], equal_to([Counter()]), label="Stats")


def test_rounds_must_be_non_negative():
    with pytest.raises(ValueError, match="rounds must be >= 0"):
        beam.Create([(1, 1)]) | ConnectComponents(rounds=-1)
