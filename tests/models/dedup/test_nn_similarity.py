"""models.dedup.nn_similarity: the sampled nearest-neighbour histogram pieces, against direct computation."""
from __future__ import annotations

import numpy as np

from models.dedup import nn_similarity


def test_sample_is_deterministic_and_near_its_rate():
    gids = np.arange(200_000, dtype=np.int64) * 7919
    a = nn_similarity.sampled(gids, 0.05, seed=3)
    np.testing.assert_array_equal(a, nn_similarity.sampled(gids, 0.05, seed=3))
    assert abs(a.mean() - 0.05) < 0.003  # binomial sd 0.0005: 6 sd
    assert (nn_similarity.sampled(gids, 0.05, seed=4) != a).any()
    assert nn_similarity.sampled(gids, 1.0, seed=0).all()


def test_nearest_similarities_match_brute_force_across_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(300) + 1000
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(sims, -np.inf)
    q = np.array([0, 5, 299])
    got = nn_similarity.nearest_similarities(ids[q], x[q], ids, x, block=64)
    np.testing.assert_allclose(got, sims[q].max(axis=1), atol=1e-6)
    alone = nn_similarity.nearest_similarities(ids[:1], x[:1], ids[:1], x[:1])
    assert np.isneginf(alone).all()  # only itself: no neighbour, left out of the histogram
    assert nn_similarity.histogram(alone).sum() == 0


def test_histogram_and_record():
    counts = nn_similarity.histogram(np.array([-1.0, -0.995, 0.0, 0.951, 0.999, 1.0, 1.2]))
    edges = nn_similarity.BIN_EDGES
    assert counts.sum() == 7 and counts[0] == 2 and counts[-1] == 3  # 1.0 and the clipped 1.2 fall in the last bin
    assert counts[np.searchsorted(edges, 0.951, side="right") - 1] == 1
    rec = nn_similarity.record(counts, 0.95)
    assert rec["n_sampled"] == 7 and rec["threshold"] == 0.95 and rec["space"] == "cosine"
    assert len(rec["bin_edges"]) == len(rec["counts"]) + 1 == nn_similarity.BINS + 1
