"""The distribution of nearest-neighbour similarities, from a sample: where copies separate from the rest.

Each search task takes its sampled new rows (a deterministic hash of the
global id below the sampling rate), homes and visitors, and finds each one's
most similar other row among the task's rows; a row's maximum over its tasks
(its home partition and every partition it visits; a keyed max) goes into a
fixed-bin histogram (a combiner over ``BINS`` integers, never a gather of
rows). The nearest neighbour is thus exact for every neighbour above the
threshold (of a pair homed apart, one row visits the other's home: the spill
bound in :mod:`models.dedup.partition`) and a lower bound below it.

Output (``nn_similarity.json``, plotted by the report with the threshold
marked)::

    {"bin_edges": [-1.0, -0.99, ..., 1.0], "counts": [...], "threshold": t,
     "n_sampled": n, "space": "cosine"}
"""
from __future__ import annotations

import numpy as np

BINS = 200
BIN_EDGES = np.linspace(-1.0, 1.0, BINS + 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def sampled(gids: np.ndarray, rate: float, seed: int) -> np.ndarray:
    """(n,) bool: the rows of a Bernoulli(``rate``) sample decided by a hash of (gid, seed), so any worker agrees."""
    if rate >= 1.0:
        return np.ones(len(gids), bool)
    with np.errstate(over="ignore"):
        h = (np.asarray(gids, np.int64).astype(np.uint64) + np.uint64(seed)) * _GOLDEN
    return (h >> np.uint64(40)).astype(np.float64) < rate * float(1 << 24)


def nearest_similarities(q_ids: np.ndarray, q: np.ndarray, ids: np.ndarray, x: np.ndarray,
                         block: int = 8192) -> np.ndarray:
    """(s,) float32 largest cosine of each query row of ``q`` (s, d) to a row of ``x`` (m, d) with another id.

    Rows are L2-normalised float32; ``-inf`` where ``x`` has no other row
    (combine several ``x`` with ``np.maximum``). Cost: s m d multiply-adds,
    O(s block) scratch (s is the sampled fraction of one partition).
    """
    best = np.full(len(q_ids), -np.inf, np.float32)
    q_ids = np.asarray(q_ids)
    for start in range(0, len(ids), block):
        sims = q @ x[start:start + block].T
        sims[q_ids[:, None] == np.asarray(ids[start:start + block])[None, :]] = -np.inf
        np.maximum(best, sims.max(axis=1, initial=-np.inf), out=best)
    return best


def histogram(values: np.ndarray) -> np.ndarray:
    """(BINS,) int64 counts of the finite ``values``, clipped to [-1, 1], over :data:`BIN_EDGES`."""
    values = np.asarray(values)
    return np.histogram(np.clip(values[np.isfinite(values)], -1.0, 1.0), bins=BIN_EDGES)[0].astype(np.int64)


def record(counts: np.ndarray, threshold: float) -> dict:
    """The ``nn_similarity.json`` object for summed ``counts``."""
    counts = np.asarray(counts, np.int64)
    return {"bin_edges": [round(float(e), 6) for e in BIN_EDGES], "counts": counts.tolist(),
            "threshold": float(threshold), "n_sampled": int(counts.sum()), "space": "cosine"}
