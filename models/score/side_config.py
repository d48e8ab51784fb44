"""SIDE configuration, validators, thread scoping and seeds (Chen et al., SIDE v7, arXiv:2410.02467).

Shared by :mod:`models.score.side_cluster` (Part 1 steps 3-5),
:mod:`models.score.side_classifier` (step 6 and the guidance of Part 2) and
:mod:`models.score.side` (orchestration).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, Optional

import faiss
import numpy as np
import torch

from models.score.extraction_metrics import SimilarityBands

# SideConfig fields that determine Part 1; a reused SideStage must agree on them.
STAGE_FIELDS = (
    "n_syn", "k", "tau", "drop_rejected", "steps", "hidden", "time_dim", "train_steps",
    "batch_size", "lr", "weight_decay", "kmeans_niter", "kmeans_n_init", "seed",
)


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #
def pos_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")
    return int(v)


def finite(name: str, v, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {v!r}")
    f = float(v)
    if not math.isfinite(f) or f < lo or f > hi or (lo_open and f == lo):
        rng = f"{'(' if lo_open else '['}{lo}, {hi}]"
        raise ValueError(f"{name} must be finite and in {rng}, got {v!r}")
    return f


@dataclass(frozen=True)
class SideConfig:
    """All SIDE sizes and hyperparameters (SIDE arXiv:2410.02467 v7 Sec. 5.2; 'our choice' where marked).

    Attributes:
        n_syn: synthetic samples N_syn drawn from the target (Part 1 step 1).
        k: k-means clusters K (paper: 100); clamped to n_syn by k-means.
        tau: cohesion threshold τ in [−1, 1] (paper: 0.5).
        drop_rejected: False (paper, as written): samples of rejected clusters
            are relabelled to the nearest kept centroid; True (our option): they are
            left out of classifier training.
        lambda_: guidance scale λ ≥ 0 [our choice: the paper's optimum is unreported (App. C);
            we sweep {0, 1, 2, 5, 10, 20}; 2 is the UMS peak
            of the perfect-memorizer toy in tests/models/score/test_side.py].
        n_g: number of generations N_G (the AMS / UMS denominator).
        steps: DDIM steps, for synthetic sampling and for extraction.
        hidden: classifier MLP widths (>= 1 layer); time_dim: even sinusoidal
            embedding size.
        train_steps, batch_size, lr, weight_decay: AdamW classifier training
            (paper: lr 1e-4, batch 64; toys converge faster with ~1e-3).
        kmeans_niter: Lloyd iterations of the spherical k-means.
        kmeans_n_init: k-means restarts, best objective kept
            (:func:`build_surrogate_condition`).
        sample_batch: rows per DDIM call (bounds memory; results do not depend
            on it because x_T and labels are drawn up front).
        threads: torch intra-op and faiss OpenMP thread counts while SIDE
            clusters, trains, guides and matches (set for the duration of those calls,
            then restored; process-wide settings, so not for concurrent use
            from several Python threads); None leaves both unchanged. Default
            1: the toy-sized calls are dominated by OpenMP barriers, and faiss
            and torch ship separate OpenMP runtimes that spin against each
            other on a small shared machine (measured on 2 loaded cores: a
            classifier step 45 ms at 2 threads vs 1.7 ms at 1; five 500-point
            k-means runs 3.1 s vs 0.02 s).
        bands: :class:`~models.score.extraction_metrics.SimilarityBands` for AMS / UMS;
            their measure picks the matching space (cosine on features, or
            normalised L2 on raw data).
        seed: root seed of every random draw.
    """

    n_syn: int = 2000
    k: int = 100
    tau: float = 0.5
    drop_rejected: bool = False
    lambda_: float = 2.0
    n_g: int = 1000
    steps: int = 50
    hidden: tuple[int, ...] = (256, 256)
    time_dim: int = 64
    train_steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-2
    kmeans_niter: int = 20
    kmeans_n_init: int = 5
    sample_batch: int = 1024
    threads: Optional[int] = 1
    bands: SimilarityBands = field(default_factory=SimilarityBands)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_syn", "k", "n_g", "steps", "train_steps", "batch_size", "kmeans_niter", "kmeans_n_init",
                     "sample_batch"):
            pos_int(name, getattr(self, name))
        pos_int("seed", self.seed, minimum=0)
        if self.threads is not None:
            pos_int("threads", self.threads)
        finite("tau", self.tau, -1.0, 1.0)
        finite("lambda_", self.lambda_, 0.0)
        finite("lr", self.lr, 0.0, lo_open=True)
        finite("weight_decay", self.weight_decay, 0.0)
        if not isinstance(self.drop_rejected, bool):
            raise ValueError(f"drop_rejected must be a bool, got {self.drop_rejected!r}")
        hidden = tuple(self.hidden) if isinstance(self.hidden, (list, tuple)) else ()
        if not hidden:
            raise ValueError(f"hidden must be a non-empty sequence of positive ints, got {self.hidden!r}")
        object.__setattr__(self, "hidden", tuple(pos_int("hidden width", h) for h in hidden))
        if pos_int("time_dim", self.time_dim, minimum=2) % 2:
            raise ValueError(f"time_dim must be even, got {self.time_dim!r}")
        if not isinstance(self.bands, SimilarityBands):
            raise ValueError(f"bands must be a SimilarityBands, got {self.bands!r}")


@contextlib.contextmanager
def threads_scope(n: Optional[int]) -> Iterator[None]:
    """Set torch's intra-op and faiss' OpenMP thread counts (process-wide) to
    ``n`` inside the block, restoring them after; None = unchanged."""
    if n is None:
        yield
        return
    n = pos_int("threads", n)
    prev_torch, prev_faiss = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev_torch)
        faiss.omp_set_num_threads(prev_faiss)


def seeds(seed: int) -> list[np.random.SeedSequence]:
    """[synthetic noise, k-means, classifier, extraction] child seed sequences."""
    return np.random.SeedSequence(int(seed)).spawn(4)

