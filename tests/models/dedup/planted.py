"""Planted data for the dedup kernel tests (20k x 64-d, seeded).

Clustered background with no near-duplicates, near-duplicate groups of 2..50
(cliques at t = 0.95), chains whose ends are below the threshold, and pairs
built to straddle the bisector of two neighbouring centroids.
"""
from __future__ import annotations

import math

import numpy as np

from models.dedup import kernels as dedup

T = 0.95
DIM = 64
N_BASE = 20_000
K = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pair_keys(i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Unordered pairs of ids < 2^31 as one int64 key each."""
    return np.minimum(i, j).astype(np.int64) << 32 | np.maximum(i, j).astype(np.int64)


def _planted_base(rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Background + groups + chains; returns (x, groups, chains) with row-index lists."""
    n_topics = N_BASE // 500
    centres = _unit(rng.standard_normal((n_topics, DIM)))
    x = _unit(centres[rng.integers(0, n_topics, N_BASE)] + rng.standard_normal((N_BASE, DIM)) * math.sqrt(1.04 / DIM))
    rows = rng.permutation(N_BASE)
    groups, chains, pos = [], [], 0
    while pos < N_BASE // 10:
        g = rows[pos : pos + int(rng.integers(2, 51))]
        pos += len(g)
        # |noise|^2 = 0.02: pairwise cosine ~0.98, far above T for every member pair.
        x[g] = _unit(x[g[0]] + rng.standard_normal((len(g), DIM)) * math.sqrt(0.02 / DIM))
        groups.append(g)
    phi = math.acos(0.96)  # consecutive links at cos 0.96, two steps apart at cos 0.843 < T
    for _ in range(40):
        g = rows[pos : pos + 5]
        pos += 5
        a = x[g[0]].astype(np.float64)
        u = rng.standard_normal(DIM)
        u -= (u @ a) * a
        u /= np.linalg.norm(u)
        steps = np.arange(5)[:, None] * phi
        x[g] = _unit(np.cos(steps) * a + np.sin(steps) * u)
        chains.append(g)
    return x, groups, chains


def _straddle_pairs(centroids: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """(2 n_pairs, d) rows: x_p, y_p on opposite sides of the bisector of neighbouring centroids.

    x = cos(a) b + sin(a) w, y = cos(a) b - sin(a) w with w = (c1 - c2)/|c1 - c2| and b a
    unit vector orthogonal to w near (c1 + c2)/|c1 + c2|, so cos(x, y) = cos(2a) in [T + 0.002, 0.99].
    """
    c = centroids.astype(np.float64)
    sims = c @ c.T
    np.fill_diagonal(sims, -np.inf)
    out = np.empty((2 * n_pairs, c.shape[1]))
    for p in range(n_pairs):
        i = int(rng.integers(len(c)))
        j = int(np.argsort(-sims[i])[rng.integers(0, 2)])  # nearest or second-nearest centroid
        w = c[i] - c[j]
        w /= np.linalg.norm(w)
        m = c[i] + c[j]
        m /= np.linalg.norm(m)
        z = rng.standard_normal(c.shape[1])
        z -= (z @ w) * w + (z @ m) * m
        b = m + 0.15 * z / np.linalg.norm(z)
        b -= (b @ w) * w
        b /= np.linalg.norm(b)
        a = math.acos(rng.uniform(T + 0.002, 0.99)) / 2
        out[2 * p] = math.cos(a) * b + math.sin(a) * w
        out[2 * p + 1] = math.cos(a) * b - math.sin(a) * w
    return _unit(out)


def _pipeline_edges(ids: np.ndarray, x: np.ndarray, centroids: np.ndarray, max_spill: int) -> tuple:
    """The pipeline, spelled out: assign + spill, partition_pairs per partition, union of edges."""
    home, (indptr, part) = dedup.assign_with_spill(x, centroids, T, max_spill)
    vis_row = np.repeat(np.arange(len(x)), np.diff(indptr))
    out = []
    for p in range(len(centroids)):
        h = np.flatnonzero(home == p)
        v = vis_row[part == p]
        out.append(dedup.partition_pairs(ids[h], x[h], ids[v], x[v], T))
    i, j, c = (np.concatenate(parts) for parts in zip(*out))
    return i, j, c, home


def make_planted() -> dict:
    rng = np.random.default_rng(20240601)
    base, groups, chains = _planted_base(rng)
    sample = base[rng.choice(N_BASE, size=5000, replace=False)]
    centroids = dedup.train_centroids(sample, K, seed=7)
    straddle = _straddle_pairs(centroids, 300, rng)
    x = np.concatenate([base, straddle])
    ids = np.arange(len(x), dtype=np.int64)
    ref_i, ref_j, _ = dedup.brute_force_pairs(ids, x, T)  # itself checked against float64 below
    straddle_keys = _pair_keys(np.arange(N_BASE, len(x), 2), np.arange(N_BASE + 1, len(x), 2))
    return {
        "x": x, "ids": ids, "centroids": centroids, "groups": groups, "chains": chains,
        "ref": np.unique(_pair_keys(ref_i, ref_j)), "straddle_keys": straddle_keys,
    }

