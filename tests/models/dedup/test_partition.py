"""models.dedup.partition: assignment with bounded spill (the margin rule, its tightness) and k-means.

Tolerances are stated at each assertion.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.dedup import kernels as dedup
from models.dedup import partition
from tests.models.dedup.planted import DIM, K, T, _pair_keys, _unit


# --------------------------------------------------------------------------- assign_with_spill


def test_assign_with_spill_matches_margin_rule(planted):
    rng = np.random.default_rng(3)
    x = planted["x"][rng.choice(len(planted["x"]), 3000, replace=False)]
    c = planted["centroids"]
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    scores = x64 @ c64.T
    radius = math.sqrt((1 - T) / 2)  # sin(theta / 2), the two-sided bound

    home, (indptr, part) = dedup.assign_with_spill(x, c, T, K - 1, block=1000)
    assert home.dtype == np.int64 and indptr.dtype == np.int64 and part.dtype == np.int64
    assert indptr.shape == (len(x) + 1,) and indptr[-1] == part.size
    # home is the max inner product (float32 ties within 1e-5 allowed)
    assert np.all(scores[np.arange(len(x)), home] >= scores.max(axis=1) - 1e-5)
    for r in range(len(x)):
        h = home[r]
        dist = np.linalg.norm(c64[h] - c64, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = (scores[r, h] - scores[r]) / dist
        margin[h] = np.inf
        spilled = part[indptr[r] : indptr[r + 1]]
        assert h not in spilled
        must = np.flatnonzero(margin <= radius - 1e-6)
        assert set(must) <= set(spilled)  # uncapped: every partition within the bound
        assert np.all(margin[spilled] <= radius + 1e-3)  # and only those (float slack 1e-3)
        assert np.all(np.diff(margin[spilled]) >= -1e-6)  # increasing margin order

    capped_home, (cip, cpart) = dedup.assign_with_spill(x, c, T, 3)
    np.testing.assert_array_equal(capped_home, home)
    assert np.diff(cip).max() <= 3
    for r in range(0, len(x), 50):  # the capped list is the head of the uncapped list
        full = part[indptr[r] : indptr[r + 1]]
        np.testing.assert_array_equal(cpart[cip[r] : cip[r + 1]], full[: cip[r + 1] - cip[r]])


@pytest.mark.parametrize("norm", [1.0, 1.0 + 9e-5])
def test_spill_bound_is_tight_and_exact_at_the_boundary(norm):
    """Pairs straddling the bisector of two centroids, split between its sides at every ratio.

    x sits at angle f * phi on c1's side and y at (1 - f) * phi on c2's side, in one
    plane with the bisector's normal, phi the pair's angle (cos phi just above T):
    their margins are sin(f phi) and sin((1 - f) phi). Half the pairs have f ~ 1/2,
    where *both* margins sit at the two-sided bound sin(theta / 2) up to ~3e-4, the
    tightest case: each pair must still meet (one row spilled into the other's
    partition), and with max_spill = k - 1 the partitioned search must equal brute
    force. ``norm`` scales all rows to the edge of the accepted norm tolerance, where
    the angle of a pair with inner product T is larger than arccos(T).
    """
    rng = np.random.default_rng(8)
    d, n_pairs = 64, 400
    c = _unit(rng.standard_normal((2, d))).astype(np.float64)
    w = (c[0] - c[1]) / np.linalg.norm(c[0] - c[1])
    rows, split = [], np.concatenate([rng.uniform(0.5 - 1e-3, 0.5 + 1e-3, n_pairs // 2),
                                      rng.uniform(0.02, 0.98, n_pairs - n_pairs // 2)])
    for f in split:
        u = rng.standard_normal(d)
        u -= (u @ w) * w
        u /= np.linalg.norm(u)
        phi = math.acos(T / norm**2 + rng.uniform(1e-6, 1e-4))
        rows += [math.cos(f * phi) * u + math.sin(f * phi) * w, math.cos((1 - f) * phi) * u - math.sin((1 - f) * phi) * w]
    x = (_unit(np.array(rows)) * np.float32(norm)).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    centroids = _unit(c)
    ref = np.unique(_pair_keys(*dedup.brute_force_pairs(ids, x, T)[:2]))
    pairs = _pair_keys(ids[0::2], ids[1::2])
    assert np.isin(pairs, ref).mean() >= 0.95  # construction: pairs at cos just above T
    home, (indptr, part) = dedup.assign_with_spill(x, centroids, T, 1)
    crossing = np.flatnonzero(home[0::2] != home[1::2])
    assert crossing.size >= 0.95 * n_pairs  # ... and straddling the bisector
    for p in crossing:  # two-sided guarantee: one of the two rows reaches the other's home
        assert home[2 * p + 1] in part[indptr[2 * p] : indptr[2 * p + 1]] or \
            home[2 * p] in part[indptr[2 * p + 1] : indptr[2 * p + 2]]
    i, j, _ = dedup.search_partitioned(ids, x, centroids, T, max_spill=1)
    np.testing.assert_array_equal(np.unique(_pair_keys(i, j)), ref)
    x64 = x.astype(np.float64)
    scale = np.linalg.norm(c[0] - c[1]) / np.linalg.norm(centroids[0] - centroids[1])
    margins = np.minimum(x64[0::2] @ w, -(x64[1::2] @ w)) * scale  # the smaller margin of each pair
    assert margins.max() > math.sqrt((1 - T) / 2) - 1e-4  # the test reaches the bound
    if norm > 1:
        assert margins.max() > math.sqrt((1 - T) / 2) + 1e-5  # and passes the ideal bound
    spilled = np.diff(indptr) > 0
    # a row deep on its side (margin sin(0.7 phi) = 0.22 > the bound 0.158) is not spilled, its partner is
    assert not spilled[0::2][split > 0.7].any() and not spilled[1::2][split < 0.3].any()
    assert spilled[1::2][split > 0.7].all() and spilled[0::2][split < 0.3].all()


def test_assign_with_spill_coincident_centroids():
    rng = np.random.default_rng(9)
    c = _unit(rng.standard_normal((6, 16)))
    c = np.concatenate([c, c[:1]])  # centroid 6 duplicates centroid 0
    x = _unit(c[0] + 0.05 * rng.standard_normal((200, 16)))
    home, (indptr, part) = dedup.assign_with_spill(x, c, T, 2)
    for r in range(len(x)):
        twin = {0: 6, 6: 0}.get(int(home[r]))
        if twin is not None:
            assert twin in part[indptr[r] : indptr[r + 1]]  # margin 0 to the twin: always spilled


def test_centroid_distances_are_kept_and_equal_the_direct_ones(planted):
    """Cached distances are bit-identical to the direct computation, within and past the pair cap, and a
    shared cache gives the same assignment as none; a cache of other centroids is refused."""
    c = planted["centroids"]
    rng = np.random.default_rng(5)
    h, j = rng.integers(0, len(c), (2, 400)), rng.integers(0, len(c), (2, 400))
    want = [partition._centroid_distances(c.astype(np.float64), a, b) for a, b in zip(h, j)]
    for cap in (1 << 20, 50):  # everything kept; past the cap new pairs are computed, not kept
        cache = partition.CentroidDistances(c, max_pairs=cap)
        for _ in range(2):
            got = [cache(a, b) for a, b in zip(h, j)]
            assert all(np.array_equal(g, w) for g, w in zip(got, want))
        assert len(cache._keys) <= cap and np.all(np.diff(cache._keys) > 0)
    two_d = cache(h.reshape(2, 20, 20)[0], j.reshape(2, 20, 20)[0])
    assert two_d.shape == (20, 20) and np.array_equal(two_d.ravel(), want[0])
    x = planted["x"][:4000]
    shared = partition.CentroidDistances(c)
    first = partition.assign_with_spill(x[:2000], c, T, 4, distances=shared)
    again = partition.assign_with_spill(x[:2000], c, T, 4, distances=shared)  # every pair now cached
    alone = partition.assign_with_spill(x[:2000], c, T, 4)
    for a, b in ((first, alone), (again, alone)):
        assert np.array_equal(a[0], b[0]) and all(np.array_equal(u, v) for u, v in zip(a[1], b[1]))
    with pytest.raises(ValueError, match="other centroids"):
        partition.assign_with_spill(x[:10], c[::-1].copy(), T, 4, distances=shared)


def test_assign_with_spill_errors():
    c = _unit(np.eye(4, dtype=np.float32))
    x = c[:2]
    with pytest.raises(ValueError, match="threshold"):
        dedup.assign_with_spill(x, c, 0.0, 2)
    with pytest.raises(ValueError, match="threshold"):
        dedup.assign_with_spill(x, c, 1.5, 2)
    with pytest.raises(ValueError, match="max_spill"):
        dedup.assign_with_spill(x, c, T, -1)
    with pytest.raises(ValueError, match="row 1 has norm 2"):
        dedup.assign_with_spill(np.stack([x[0], 2 * x[1]]), c, T, 2)
    with pytest.raises(ValueError, match="dimension 3"):
        dedup.assign_with_spill(x[:, :3], c, T, 2)


# --------------------------------------------------------------------------- k-means


def test_train_centroids_deterministic_and_clamped(planted):
    sample = planted["x"][:4000]
    a = dedup.train_centroids(sample, 16, seed=3, niter=5)
    b = dedup.train_centroids(sample, 16, seed=3, niter=5)
    c = dedup.train_centroids(sample, 16, seed=4, niter=5)
    assert a.shape == (16, DIM) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    assert dedup.train_centroids(sample[:10], 100, seed=0).shape == (10, DIM)
    with pytest.raises(ValueError, match="k must be"):
        dedup.train_centroids(sample, 0, seed=0)




# --------------------------------------------------------------------------- bounded k-means


def test_training_sample_is_capped_for_large_n(monkeypatch):
    """At 400M rows K = 200k, so 256 K would be 51M rows (~79 GB at 768-d float32); the plan caps it."""
    import dataclasses

    from models.dedup import plan
    from pipelines.dedup import DedupConfig

    monkeypatch.setattr(plan, "inspect_parts", lambda _: (["0"], 768, 400_000_000))
    params = plan.fresh_plan(DedupConfig(embeddings="e", output="o"))
    assert params.k == 200_000 and params.sample_size == partition.DEFAULT_MAX_TRAIN_ROWS == 262_144
    assert params.k > params.max_direct_k  # trained as two levels
    small = plan.fresh_plan(DedupConfig(embeddings="e", output="o", partitions=4, sample_fraction=1.0))
    assert small.sample_size == partition.DEFAULT_MAX_TRAIN_ROWS  # an explicit fraction is capped too
    monkeypatch.setattr(plan, "inspect_parts", lambda _: (["0"], 768, 10_000))
    assert plan.fresh_plan(DedupConfig(embeddings="e", output="o")).sample_size == 1280  # below the cap: unchanged
    with pytest.raises(ValueError, match="max_train_rows"):
        dataclasses.replace(params, max_train_rows=0)


def test_train_uses_at_most_the_capped_sample(planted, monkeypatch):
    """The gathered sample (~1.2x oversampled) is trimmed to sample_size <= max_train_rows rows before k-means."""
    from models.dedup.plan import DedupParams
    from transforms.dedup import centroids as steps

    seen = []
    real = partition.train_centroids
    monkeypatch.setattr(partition, "train_centroids", lambda x, k, **kw: seen.append(len(x)) or real(x, k, **kw))
    params = DedupParams(embeddings="e", output="o", parts=("0",), dim=DIM, threshold=T, max_spill=4,
                         sample_size=500, seed=1, niter=3, k=8, block_rows=1000, n_rows=20_000, max_train_rows=500)
    c = steps.train(planted["x"][:3000].astype(np.float16), params)
    assert seen == [500] and c.shape == (8, DIM)
    seen.clear()
    two = steps.train(planted["x"][:3000].astype(np.float16), DedupParams(**{**params.__dict__, "max_direct_k": 4}))
    assert isinstance(two, partition.TwoLevel) and two.k == 8 and two.coarse.shape == (3, DIM)
    assert seen[0] == 500 and sum(seen[1:]) == 500  # coarse on the sample, fine cells partition it


def _two_level(planted, nprobe):
    sample = planted["x"][np.random.default_rng(5).choice(len(planted["x"]), 8000, replace=False)]
    return partition.train_two_level(sample, 96, 10, seed=2, niter=8, nprobe=nprobe)


def test_two_level_home_is_the_nearest_fine_centroid_when_it_is_probed(planted):
    """Tolerance: scores tie within 1e-5 (float32 GEMM vs float64 reference)."""
    q = _two_level(planted, nprobe=2)
    assert q.k == 96 and q.coarse.shape == (10, DIM) and q.offsets[-1] == 96
    x = planted["x"]
    home, (indptr, part) = partition.assign_with_spill(x, q, T, 4, block=5000)
    scores = x.astype(np.float64) @ q.fine.astype(np.float64).T
    nearest = scores.argmax(axis=1)
    probed = np.argsort(-(x.astype(np.float64) @ q.coarse.astype(np.float64).T), axis=1)[:, :2]
    cell = np.searchsorted(q.offsets, np.argsort(q.members)[nearest], side="right") - 1
    inside = (probed == cell[:, None]).any(axis=1)
    assert inside.mean() > 0.9  # the measure covers most rows
    best = scores[np.arange(len(x)), home]
    assert np.all(best[inside] >= scores.max(axis=1)[inside] - 1e-5)
    # outside: the best fine centroid of the probed cells
    cell_of = np.empty(q.k, np.int64)
    cell_of[q.members] = np.repeat(np.arange(10), np.diff(q.offsets))
    allowed = (cell_of[None, :] == probed[:, :1]) | (cell_of[None, :] == probed[:, 1:2])
    assert np.all(best >= np.where(allowed, scores, -np.inf).max(axis=1) - 1e-5)
    assert np.diff(indptr).max() <= 4 and not np.any(part == np.repeat(home, np.diff(indptr)))


def test_two_level_probing_every_cell_equals_flat_assignment(planted):
    """nprobe = K1: the same candidates as the flat search, so the same homes and spill lists.

    Tolerance: rows whose margins tie within float32 rounding may order differently; at most 0.1%.
    """
    q = _two_level(planted, nprobe=10)
    x = planted["x"]
    a_home, (a_ip, a_part) = partition.assign_with_spill(x, q, T, 4)
    b_home, (b_ip, b_part) = partition.assign_with_spill(x, q.fine, T, 4)
    assert (a_home != b_home).mean() <= 1e-3
    same = [np.array_equal(a_part[a_ip[r]:a_ip[r + 1]], b_part[b_ip[r]:b_ip[r + 1]]) for r in range(len(x))]
    assert 1 - np.mean(same) <= 1e-3


def test_two_level_refinement_raises_the_sample_objective(planted):
    """Each global Lloyd step (rows assigned through the probing) never lowers the summed cosine of the sample
    to its home, and on the planted set it raises it; the cells' lists are kept."""
    sample = planted["x"][np.random.default_rng(5).choice(len(planted["x"]), 8000, replace=False)]

    def objective(q):
        home = q.search(sample, 1)[1][:, 0]
        return float(np.einsum("ij,ij->i", sample.astype(np.float64), q.fine[home].astype(np.float64)).sum())

    q = partition.train_two_level(sample, 96, 10, seed=2, niter=8, nprobe=2, refine=0)
    values = [objective(q)]
    for _ in range(3):
        q = partition._lloyd_step(q, sample)
        values.append(objective(q))
    assert all(b >= a - 1e-3 for a, b in zip(values, values[1:]))  # float32 scores: 1e-3 over 8000 rows
    assert values[-1] > values[0] + 1.0
    np.testing.assert_allclose(np.linalg.norm(q.fine, axis=1), 1.0, atol=1e-6)
    refined = partition.train_two_level(sample, 96, 10, seed=2, niter=8, nprobe=2, refine=3)
    listed = partition._recell(q)  # refine=r is r of these steps, then each centroid in its nearest cell
    np.testing.assert_allclose(refined.fine, listed.fine, atol=1e-6)
    np.testing.assert_array_equal(refined.offsets, listed.offsets)
    cell = np.searchsorted(listed.offsets, np.arange(listed.k), side="right") - 1
    np.testing.assert_array_equal(cell, np.argmax(listed.fine @ listed.coarse.T, axis=1))
    np.testing.assert_allclose(np.sort(listed.fine, axis=0), np.sort(q.fine, axis=0))


def test_allocate_shares_fine_centroids_by_rows():
    alloc = partition._allocate(10, np.array([100, 0, 1, 899]))
    assert alloc.tolist() == [1, 0, 1, 8]
    assert partition._allocate(3, np.array([1, 1, 1])).tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="members"):
        partition.TwoLevel(np.eye(2, 4, dtype=np.float32), np.eye(3, 4, dtype=np.float32),
                           np.array([0, 0, 1]), np.array([0, 1, 3]))


def test_pipeline_groups_unchanged_with_tiny_caps(tmp_path, monkeypatch):
    """dedup end to end with a 300-row training sample and two-level partitions: groups equal brute force."""
    import dataclasses

    from models.dedup import plan
    from pipelines import dedup
    from tests.pipelines.test_dedup_pipeline import components_from_output, expected_components, planted_folder

    emb, out = str(tmp_path / "emb"), str(tmp_path / "dd")
    truth = planted_folder(tmp_path / "emb")
    real = plan.plan_run

    def capped(cfg):
        run = real(cfg)
        return run._replace(params=dataclasses.replace(run.params, max_train_rows=300, max_direct_k=3, nprobe=2,
                                                       sample_size=min(run.params.sample_size, 300)))

    monkeypatch.setattr(plan, "plan_run", capped)
    summary = dedup.run(["--embeddings", emb, "--output", out, "--partitions", "9", "--max-spill", "8"])
    got, _ = components_from_output(out, truth)
    assert got == expected_components(truth)
    assert summary["parameters"]["resolved_sample_size"] == 300 and summary["parameters"]["resolved_partitions"] == 9
    assert np.load(tmp_path / "dd" / "centroids.npy").shape[0] == 9
