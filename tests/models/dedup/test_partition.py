"""models.dedup.partition: assignment with bounded spill (the margin rule, its tightness) and k-means.

Tolerances are stated at each assertion.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.dedup import kernels as dedup
from tests.models.dedup.planted import DIM, K, T, _pair_keys, _unit


# --------------------------------------------------------------------------- assign_with_spill


def test_assign_with_spill_matches_margin_rule(planted):
    rng = np.random.default_rng(3)
    x = planted["x"][rng.choice(len(planted["x"]), 3000, replace=False)]
    c = planted["centroids"]
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    scores = x64 @ c64.T
    radius = math.sqrt(1 - T * T)

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
    """Pairs placed exactly at the bound: y barely on c2's side, x at angle ~theta towards c1.

    x's margin is then sin(theta) up to ~3e-4, the largest any partner allows; with
    max_spill = k - 1 every such pair must be found, and its margin must sit at the bound.
    ``norm`` scales all rows to the edge of the accepted norm tolerance, where the angle
    of a pair with inner product T is larger than arccos(T).
    """
    rng = np.random.default_rng(8)
    d, n_pairs = 64, 400
    c = _unit(rng.standard_normal((2, d))).astype(np.float64)
    w = (c[0] - c[1]) / np.linalg.norm(c[0] - c[1])
    rows = []
    for _ in range(n_pairs):
        y = rng.standard_normal(d)
        y -= (y @ w) * w
        y = y / np.linalg.norm(y) - 1e-6 * w  # just on c2's side of the bisector
        y /= np.linalg.norm(y)
        v = w - (w @ y) * y
        v /= np.linalg.norm(v)
        ang = math.acos(T / norm**2 + rng.uniform(1e-6, 1e-4))
        rows += [math.cos(ang) * y + math.sin(ang) * v, y]
    x = (_unit(np.array(rows)) * np.float32(norm)).astype(np.float32)
    ids = np.arange(len(x), dtype=np.int64)
    centroids = _unit(c)
    ref = np.unique(_pair_keys(*dedup.brute_force_pairs(ids, x, T)[:2]))
    pairs = _pair_keys(ids[0::2], ids[1::2])
    assert np.isin(pairs, ref).mean() >= 0.95  # construction: pairs at cos just above T
    home, (indptr, part) = dedup.assign_with_spill(x, centroids, T, 1)
    crossing = np.flatnonzero(home[0::2] != home[1::2])
    assert crossing.size >= 0.95 * n_pairs  # ... and straddling the bisector
    for p in crossing:  # one-sided guarantee: x alone reaches y's home (y sits on the boundary)
        assert home[2 * p + 1] in part[indptr[2 * p] : indptr[2 * p + 1]]
    i, j, _ = dedup.search_partitioned(ids, x, centroids, T, max_spill=1)
    np.testing.assert_array_equal(np.unique(_pair_keys(i, j)), ref)
    x64 = x.astype(np.float64)
    margins = (x64[0::2] @ w) * np.linalg.norm(c[0] - c[1]) / np.linalg.norm(centroids[0] - centroids[1])
    assert margins.max() > math.sqrt(1 - T * T) - 1e-4  # the test reaches the bound
    if norm > 1:
        assert margins.max() > math.sqrt(1 - T * T) + 1e-4  # and passes the ideal bound


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


