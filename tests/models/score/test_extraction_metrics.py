"""Tests for models.score.extraction_metrics: AMS / UMS, bands and matching (SIDE arXiv:2410.02467 v7 metrics)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.score.extraction_metrics import (
    DEFAULT_BANDS,
    Band,
    SimilarityBands,
    ams_ums,
    ams_ums_from_matrix,
    ams_ums_full,
    match_to_train,
    match_to_train_l2,
    normalized_l2_distance,
    percentile_max_similarity,
)


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _counts(res: dict) -> dict:
    return {k: (v["n_ams"], v["n_ums"]) for k, v in res.items()}


# --------------------------------------------------------------------------- #
# Bands
# --------------------------------------------------------------------------- #
def test_default_band_edges():
    """low = [0.4, 0.5), mid = [0.5, 0.6], high = (0.6, 1.0]."""
    b = SimilarityBands()
    assert b.bands == DEFAULT_BANDS and b.measure == "cosine" and b.higher_is_closer
    cases = {0.399999: None, 0.4: "low", 0.45: "low", 0.499999: "low", 0.5: "mid", 0.6: "mid",
             0.600001: "high", 1.0: "high", 1.000001: None, -0.7: None}
    for v, name in cases.items():
        assert b.band_of(v) == name, v
    vec = b.band_of(np.array([[0.4, 0.5], [0.6, 0.61]]))
    assert vec.shape == (2, 2) and vec.tolist() == [["low", "mid"], ["mid", "high"]]
    assert b.band_of(np.array([np.nan]))[0] is None
    assert json.loads(json.dumps(b.to_dict()))["bands"][0]["interval"] == "[0.4, 0.5)"


def test_l2_exact_bands():
    b = SimilarityBands.l2_exact(0.1)
    assert b.measure == "normalized_l2" and not b.higher_is_closer and b.names == ("exact",)
    assert b.band_of(0.0) == "exact" and b.band_of(0.1) == "exact" and b.band_of(0.1000001) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"bands": (Band("a", 0.0, 0.5), Band("b", 0.5, 0.9))}, "overlap"),  # both closed at 0.5
        ({"bands": (Band("a", 0.0, 0.5), Band("a", 0.6, 0.9))}, "unique"),
        ({"bands": ()}, "non-empty"),
        ({"measure": "sscd"}, "sscd"),
        ({"bands": (Band("n", -0.1, 0.2),), "measure": "normalized_l2"}, "lo < 0"),
    ],
)
def test_bands_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimilarityBands(**kwargs)


def test_band_validation_and_touching_edges():
    with pytest.raises(ValueError, match="exceeds"):
        Band("x", 0.6, 0.5)
    with pytest.raises(ValueError, match="closed"):
        Band("x", 0.5, 0.5, hi_closed=False)
    with pytest.raises(ValueError, match="finite"):
        Band("x", float("nan"), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        SimilarityBands.l2_exact(0.0)
    # half-open touching bands are disjoint
    SimilarityBands((Band("a", 0.0, 0.5, hi_closed=False), Band("b", 0.5, 0.9)))


# --------------------------------------------------------------------------- #
# AMS / UMS on hand-built tables
# --------------------------------------------------------------------------- #
def test_ams_ums_top1_known_answer():
    """Two generations hitting the same training item count once in UMS; N_G denominator."""
    best = np.array([0.45, 0.55, 0.55, 0.70, 0.30, 0.65])
    idx = np.array([0, 1, 1, 2, 3, 2])
    res = ams_ums(best, idx, SimilarityBands())
    assert _counts(res) == {"low": (1, 1), "mid": (2, 1), "high": (2, 1)}
    assert res["mid"]["ams"] == pytest.approx(2 / 6) and res["mid"]["ums"] == pytest.approx(1 / 6)
    assert res["high"]["ums"] == pytest.approx(1 / 6)
    # explicit N_G (e.g. generations that produced no output still count)
    res12 = ams_ums(best, idx, SimilarityBands(), n_g=12)
    assert res12["mid"]["ams"] == pytest.approx(2 / 12) and res12["mid"]["ums"] == pytest.approx(1 / 12)


def test_ums_denominator_is_n_g_not_train_size():
    """10 generations, all copies of 2 training items: UMS = 2/10, not 2/2 (the N_G denominator of SIDE)."""
    table = np.array([[0.95, 0.1]] * 6 + [[0.1, 0.92]] * 4)
    bands = SimilarityBands()
    for res in (ams_ums_from_matrix(table, bands), ams_ums(table.max(1), table.argmax(1), bands)):
        assert res["high"]["ams"] == pytest.approx(1.0)
        assert res["high"]["ums"] == pytest.approx(0.2)
        assert res["low"]["ams"] == 0.0 and res["low"]["ums"] == 0.0


def test_full_vs_top1_on_built_table():
    """Full φ counts every training item in the band, top-1 only the best match.

    row 0: best 0.58 (item 3, mid); item 0 at 0.55 is also mid; item 1 at 0.45 is low.
    row 1: best 0.95 (item 2, high); item 3 at 0.62 is also high.
    row 2: best 0.39: no band.
    """
    table = np.array([
        [0.55, 0.45, 0.10, 0.58],
        [0.20, 0.30, 0.95, 0.62],
        [0.10, 0.10, 0.10, 0.39],
    ])
    bands = SimilarityBands()
    full = ams_ums_from_matrix(table, bands)
    top1 = ams_ums(table.max(1), table.argmax(1), bands)
    assert _counts(full) == {"low": (0, 1), "mid": (1, 2), "high": (1, 2)}
    assert _counts(top1) == {"low": (0, 0), "mid": (1, 1), "high": (1, 1)}
    assert full["low"]["ums"] == pytest.approx(1 / 3) and full["low"]["ams"] == 0.0
    for name in bands.names:  # AMS identical in both flavours, top-1 UMS <= full UMS
        assert full[name]["ams"] == top1[name]["ams"] and top1[name]["ums"] <= full[name]["ums"]


def test_full_on_distance_table_uses_row_min():
    """For a distance measure F uses the minimum per row; bands hold the distance itself."""
    bands = SimilarityBands((Band("exact", 0.0, 0.1), Band("near", 0.1, 0.3, lo_closed=False)), "normalized_l2")
    dist = np.array([
        [0.00, 0.25, 0.90],  # best 0.0 exact (item 0); item 1 near
        [0.05, 0.90, 0.90],  # best exact, item 0 again
        [0.90, 0.90, 0.20],  # best 0.2 near (item 2)
        [0.50, 0.60, 0.70],  # nothing
    ])
    full = ams_ums_from_matrix(dist, bands)
    assert _counts(full) == {"exact": (2, 1), "near": (1, 2)}
    top1 = ams_ums(dist.min(1), dist.argmin(1), bands)
    assert _counts(top1) == {"exact": (2, 1), "near": (1, 1)}
    assert full["exact"]["ums"] == pytest.approx(1 / 4)


def test_ams_ums_validation():
    bands = SimilarityBands()
    with pytest.raises(ValueError, match="n_g"):
        ams_ums(np.array([0.5, 0.7]), np.array([0, 1]), bands, n_g=1)
    with pytest.raises(ValueError, match="n_g"):
        ams_ums(np.zeros(0), np.zeros(0, np.int64), bands)
    with pytest.raises(ValueError, match="best_idx"):
        ams_ums(np.array([0.5]), np.array([0.0]), bands)
    with pytest.raises(ValueError, match="bands"):
        ams_ums(np.array([0.5]), np.array([0]), {"low": (0.4, 0.5)})
    empty = ams_ums(np.zeros(0), np.zeros(0, np.int64), bands, n_g=5)
    assert all(v["ams"] == 0.0 and v["ums"] == 0.0 for v in empty.values())


# --------------------------------------------------------------------------- #
# Matching
# --------------------------------------------------------------------------- #
def test_match_to_train_equals_numpy_argmax():
    rng = np.random.default_rng(0)
    gen, train = _unit(rng, 300, 32), _unit(rng, 500, 32)
    idx, sim = match_to_train(gen, train)
    ref = gen.astype(np.float64) @ train.astype(np.float64).T
    np.testing.assert_array_equal(idx[:, 0], ref.argmax(1))
    np.testing.assert_allclose(sim[:, 0], ref.max(1), atol=1e-12)
    idx3, sim3 = match_to_train(gen, train, k=3)
    np.testing.assert_array_equal(idx3, np.argsort(-ref, axis=1)[:, :3])
    assert np.all(np.diff(sim3, axis=1) <= 0)


def test_match_exact_copy_gives_cosine_one_and_high_band():
    rng = np.random.default_rng(1)
    train = _unit(rng, 50, 64)
    idx, sim = match_to_train(train[[3, 7, 7]], train)
    assert idx[:, 0].tolist() == [3, 7, 7]
    assert np.all(sim[:, 0] <= 1.0) and np.allclose(sim[:, 0], 1.0, atol=1e-6)
    res = ams_ums(sim[:, 0], idx[:, 0], SimilarityBands())
    assert _counts(res)["high"] == (3, 2)


def test_match_validation():
    rng = np.random.default_rng(2)
    train = _unit(rng, 5, 8)
    with pytest.raises(ValueError, match="normalised"):
        match_to_train(2.0 * train, train)
    with pytest.raises(ValueError, match="k must"):
        match_to_train(train, train, k=6)
    with pytest.raises(ValueError, match="expected 4"):
        match_to_train(_unit(rng, 3, 4), train)
    idx, sim = match_to_train(np.zeros((0, 8), np.float32), train)
    assert idx.shape == (0, 1) and sim.shape == (0, 1)


def test_normalized_l2_known_values_and_matching():
    a = np.zeros((1, 4))
    b = np.array([[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(normalized_l2_distance(a, b), [[2.0, 0.5]])  # ||.||/sqrt(4)
    rng = np.random.default_rng(3)
    train = rng.standard_normal((40, 3, 4, 4))  # small "images", d = 48
    gen = np.concatenate([train[[5, 9]], rng.standard_normal((30, 3, 4, 4))])
    idx, dist = match_to_train_l2(gen, train, k=2, block=7)
    ref = np.sqrt(((gen.reshape(32, 1, -1) - train.reshape(1, 40, -1)) ** 2).mean(-1))
    np.testing.assert_array_equal(idx, np.argsort(ref, axis=1)[:, :2])
    np.testing.assert_allclose(dist, np.sort(ref, axis=1)[:, :2], atol=1e-12)
    assert dist[0, 0] == 0.0 and dist[1, 0] == 0.0 and idx[:2, 0].tolist() == [5, 9]


def test_full_equals_matrix_and_top1_ams_on_random_data():
    """Blocked ams_ums_full == one-table ams_ums_from_matrix; F agrees with top-1."""
    rng = np.random.default_rng(4)
    train = _unit(rng, 60, 6)
    gen = (train[rng.integers(0, 60, 80)] + 0.4 * rng.standard_normal((80, 6))).astype(np.float32)
    gen /= np.linalg.norm(gen, axis=1, keepdims=True)
    bands = SimilarityBands()
    table = np.clip(gen.astype(np.float64) @ train.astype(np.float64).T, -1, 1)
    ref = ams_ums_from_matrix(table, bands)
    for block in (1, 7, 1000):
        assert ams_ums_full(gen, train, bands, block=block) == ref
    idx, sim = match_to_train(gen, train)
    top1 = ams_ums(sim[:, 0], idx[:, 0], bands)
    assert all(top1[n]["n_ams"] == ref[n]["n_ams"] for n in bands.names)
    assert sum(ref[n]["n_ams"] for n in bands.names) > 10  # the example exercises the bands

    raw_train = rng.standard_normal((30, 5))
    raw_gen = raw_train[rng.integers(0, 30, 25)] + 0.1 * rng.standard_normal((25, 5))
    l2 = SimilarityBands((Band("exact", 0.0, 0.08), Band("near", 0.08, 0.2, lo_closed=False)), "normalized_l2")
    full = ams_ums_full(raw_gen, raw_train, l2, block=4)
    assert full == ams_ums_from_matrix(normalized_l2_distance(raw_gen, raw_train), l2)
    li, ld = match_to_train_l2(raw_gen, raw_train)
    assert all(ams_ums(ld[:, 0], li[:, 0], l2)[n]["n_ams"] == full[n]["n_ams"] for n in l2.names)


def test_percentile_max_similarity():
    v = np.linspace(0.0, 1.0, 101)
    assert percentile_max_similarity(v) == pytest.approx(0.95)
    assert percentile_max_similarity(v, q=50) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="q must"):
        percentile_max_similarity(v, q=101)
    with pytest.raises(ValueError, match="non-empty"):
        percentile_max_similarity(np.zeros(0))
