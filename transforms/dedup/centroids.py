"""Partition centroids: trained on a sample of the rows (fresh runs) or frozen from the previous run."""
from __future__ import annotations

import math

import apache_beam as beam
import numpy as np

from models.dedup import partition
from models.dedup.plan import DedupParams
from models.storage import layout
from transforms.dedup.read import block_rows
from transforms.dedup.rows import Block, unit_float32


def sample_rows(block: Block, fraction: float, params: DedupParams) -> np.ndarray:
    """A deterministic Bernoulli sample of a block's vectors for k-means training, (m, D) float16.

    Reads only the block's own part (:func:`transforms.dedup.read.block_rows`)."""
    rng = np.random.default_rng([params.seed, block.part, int(block.gids[0] & 0xFFFFFFFF)])
    # float16 halves the gathered sample (the embeddings are stored as float16 anyway); train() renormalises.
    return unit_float32(block_rows(params, block, rng.random(len(block.gids)) < fraction)).astype(np.float16)


class ConcatArrays(beam.CombineFn):
    """Concatenate (n_i, D) arrays; the result is the k-means training sample."""

    def create_accumulator(self):
        return []

    def add_input(self, acc, x):
        if len(x):
            acc.append(x)
        return acc

    def merge_accumulators(self, accs):
        return [x for acc in accs for x in acc]

    def extract_output(self, acc):
        return np.concatenate(acc) if acc else np.zeros((0, 0), np.float32)


def train(sample: np.ndarray, params: DedupParams) -> "np.ndarray | partition.TwoLevel":
    """k-means centroids from the gathered sample (k clamped to the sample size).

    (K, D) float32 when ``K <= params.max_direct_k``, else a
    :class:`~models.dedup.partition.TwoLevel` of ``round(sqrt(K))`` coarse cells.
    The sample is at most ``params.sample_size <= params.max_train_rows`` rows.
    """
    if len(sample) > params.sample_size:
        sample = sample[np.random.default_rng(params.seed).choice(len(sample), params.sample_size, replace=False)]
    if len(sample) == 0:
        return np.zeros((1, params.dim), np.float32)
    sample = np.asarray(sample, np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    k = min(params.k, len(sample))
    if k > params.max_direct_k:
        return partition.train_two_level(sample, k, max(1, round(math.sqrt(k))), seed=params.seed,
                                         niter=params.niter, nprobe=params.nprobe)
    return partition.train_centroids(sample, k, seed=params.seed, niter=params.niter)


def load_centroids(path: str) -> np.ndarray:
    """The frozen (K, D) float32 centroids of the previous run."""
    return np.asarray(layout.read_npy(path, mmap=False), np.float32)


def write_centroids(centroids: "np.ndarray | partition.TwoLevel", params: DedupParams) -> int:
    """``OUTPUT/centroids.npy``, the (K, D) partition (fine) centroids the next increment freezes; returns K."""
    if isinstance(centroids, partition.TwoLevel):
        centroids = centroids.fine
    layout.write_npy(params.out.centroids, np.asarray(centroids, np.float32))
    return int(centroids.shape[0])


class TrainCentroids(beam.PTransform):
    """Blocks -> the partition centroids: spherical k-means on a ~1.2x oversampled, trimmed sample.

    Each block contributes a Bernoulli share of ``sample_size / n_rows`` (x 1.2)
    of its rows, so the gathered sample is ~1.2 ``sample_size`` rows (float16),
    bounded by ``max_train_rows`` whatever N, never the dataset. Output: one
    (K, D) float32 array, or a :class:`~models.dedup.partition.TwoLevel` above
    ``max_direct_k`` (see :func:`train`).
    """

    def __init__(self, params: DedupParams):
        super().__init__()
        self.params = params

    def expand(self, blocks):
        p = self.params
        fraction = min(1.0, 1.2 * p.sample_size / max(1, p.n_rows))  # a little over the target, trimmed in train()
        return (
            blocks
            | "SampleForCentroids" >> beam.Map(sample_rows, fraction, p)
            | "GatherSample" >> beam.CombineGlobally(ConcatArrays())
            | "TrainCentroids" >> beam.Map(train, p)
        )


class FrozenCentroids(beam.PTransform):
    """(ignored input) -> the previous run's (K, D) float32 centroids."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def expand(self, pbegin):
        return (pbegin.pipeline | "CentroidsPath" >> beam.Create([self.path])
                | "LoadFrozenCentroids" >> beam.Map(load_centroids))
