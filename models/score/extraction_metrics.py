"""Extraction metrics of SIDE (SIDE, arXiv:2410.02467 v7, Sec. 5 metrics): matching, bands, AMS and UMS.

Definitions (SIDE, arXiv:2410.02467 v7, Sec. 5), with D₁ the N_G generations, D₂ the training set and
γ a similarity measure:

* F(x_i) = 1[best_{x_j∈D₂} γ(x_i, x_j) ∈ band]  ("best" = max for a similarity,
  min for a distance);
* **AMS** = Σ_{x_i∈D₁} F(x_i) / N_G;
* φ(x_i) = {j : γ(x_i, x_j) ∈ band}, **UMS** = |∪_i φ(x_i)| / N_G. The
  denominator is N_G, never |D₂|, so only compare UMS at equal N_G.

Two UMS flavours are provided:

* **full** (the paper's definition): φ(x_i) holds *every* training item whose
  γ with x_i falls in the band; :func:`ams_ums_full` (blocked exact similarity
  matrix) and :func:`ams_ums_from_matrix` (a given table) compute it.
* **top-1** (cheap): φ₁(x_i) = {argbest_j γ(x_i, x_j)} if F(x_i) = 1 else ∅;
  :func:`ams_ums` computes it from the output of :func:`match_to_train` /
  :func:`match_to_train_l2`. AMS is the same in both flavours; top-1 UMS ≤ full
  UMS, and they differ when a generation has several training items in a band
  (near-duplicate training items) or has a training item in a band that is not
  its best match's band (e.g. best 0.55 ∈ mid and another item at 0.45 ∈ low:
  full UMS-low counts that item while AMS-low does not count the generation).

Measures and band convention (one design for both): a band is an interval on
the raw value of the measure, and a :class:`SimilarityBands` names its measure.

* ``"cosine"``: cosine similarity of L2-normalised embeddings (SSCD, CLIP or
  raw vectors); larger = more similar; defaults low = [0.4, 0.5),
  mid = [0.5, 0.6], high = (0.6, 1.0] (SIDE arXiv:2410.02467 v7, Fig. 4, on SSCD; the lower end 0.4 is our choice).
* ``"normalized_l2"``: Carlini's normalised L2 *distance* ‖a − b‖₂ / √d, with d
  the number of elements per item (pixels × channels, or vector length);
  smaller = more similar, so "best" is the minimum and an "exact" band reads
  e.g. [0, 0.1] (see :meth:`SimilarityBands.l2_exact`). Nothing is negated or
  inverted: intervals hold the distance itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import faiss
import numpy as np

__all__ = [
    "MEASURES",
    "Band",
    "DEFAULT_BANDS",
    "SimilarityBands",
    "match_to_train",
    "match_to_train_l2",
    "normalized_l2_distance",
    "ams_ums",
    "ams_ums_from_matrix",
    "ams_ums_full",
    "percentile_max_similarity",
]

MEASURES = ("cosine", "normalized_l2")
"""Supported measures γ: cosine similarity (higher = closer) and Carlini's
normalised L2 distance (lower = closer)."""

_NORM_TOL = 1e-4  # accepted | ||x|| - 1 | for "normalised" rows (as models.dedup.kernels)


# --------------------------------------------------------------------------- #
# Bands
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class Band:
    """One named interval of a measure's values.

    Args:
        name: non-empty band name (e.g. ``"low"``).
        lo, hi: finite interval ends, ``lo <= hi``.
        lo_closed, hi_closed: whether ``lo`` / ``hi`` belong to the band
            (``[lo, hi)`` is ``lo_closed=True, hi_closed=False``). A degenerate
            band ``lo == hi`` must be closed at both ends.
    """

    name: str
    lo: float
    hi: float
    lo_closed: bool = True
    hi_closed: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"band name must be a non-empty string, got {self.name!r}")
        for attr in ("lo", "hi"):
            val = getattr(self, attr)
            is_real = isinstance(val, (int, float, np.integer, np.floating)) and not isinstance(val, bool)
            if not is_real or not math.isfinite(val):
                raise ValueError(f"band {self.name!r}: {attr} must be a finite number, got {val!r}")
            object.__setattr__(self, attr, float(val))
        if self.lo > self.hi:
            raise ValueError(f"band {self.name!r}: lo={self.lo!r} exceeds hi={self.hi!r}")
        if self.lo == self.hi and not (self.lo_closed and self.hi_closed):
            raise ValueError(f"band {self.name!r}: lo == hi == {self.lo!r} needs both ends closed (else it is empty)")

    def contains(self, values: Union[float, np.ndarray]) -> np.ndarray:
        """Elementwise membership (bool array of the input's shape; NaN → False)."""
        v = np.asarray(values, dtype=np.float64)
        lo_ok = v >= self.lo if self.lo_closed else v > self.lo
        hi_ok = v <= self.hi if self.hi_closed else v < self.hi
        return lo_ok & hi_ok

    def to_dict(self) -> dict:
        """JSON-ready description, e.g. ``{"name": "low", "lo": 0.4, "hi": 0.5, "interval": "[0.4, 0.5)"}``."""
        text = f"{'[' if self.lo_closed else '('}{self.lo:g}, {self.hi:g}{']' if self.hi_closed else ')'}"
        return {"name": self.name, "lo": self.lo, "hi": self.hi,
                "lo_closed": bool(self.lo_closed), "hi_closed": bool(self.hi_closed), "interval": text}


DEFAULT_BANDS: tuple[Band, ...] = (
    Band("low", 0.4, 0.5, lo_closed=True, hi_closed=False),
    Band("mid", 0.5, 0.6, lo_closed=True, hi_closed=True),
    Band("high", 0.6, 1.0, lo_closed=False, hi_closed=True),
)
"""SSCD cosine bands of SIDE (arXiv:2410.02467 v7, Fig. 4; the low band's lower end is our choice): low [0.4, 0.5), mid [0.5, 0.6], high (0.6, 1.0]."""


@dataclass(frozen=True)
class SimilarityBands:
    """Disjoint named bands on one measure (SIDE arXiv:2410.02467 v7; see the module docstring).

    Args:
        bands: non-empty tuple of :class:`Band` with unique names and pairwise
            disjoint intervals (so every value has at most one band).
        measure: ``"cosine"`` (default; higher = more similar) or
            ``"normalized_l2"`` (a distance: lower = more similar; band ends
            must then be >= 0).
    """

    bands: tuple[Band, ...] = DEFAULT_BANDS
    measure: str = "cosine"

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")
        bands = tuple(self.bands) if isinstance(self.bands, (list, tuple)) else None
        if not bands or not all(isinstance(b, Band) for b in bands):
            raise ValueError(f"bands must be a non-empty tuple of Band, got {self.bands!r}")
        object.__setattr__(self, "bands", bands)
        names = [b.name for b in bands]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"band names must be unique; repeated {dup}")
        if self.measure == "normalized_l2":
            neg = [b.name for b in bands if b.lo < 0.0]
            if neg:
                raise ValueError(f"normalized_l2 is a distance (>= 0); bands {neg} have lo < 0")
        order = sorted(bands, key=lambda b: (b.lo, b.hi))
        for a, b in zip(order[:-1], order[1:]):
            if b.lo < a.hi or (b.lo == a.hi and a.hi_closed and b.lo_closed):
                raise ValueError(
                    f"bands {a.name!r} {a.to_dict()['interval']} and {b.name!r} "
                    f"{b.to_dict()['interval']} overlap"
                )

    @classmethod
    def l2_exact(cls, threshold: float = 0.1, name: str = "exact") -> "SimilarityBands":
        """One band ``[0, threshold]`` on the normalised L2 distance (exact copies
        and near copies of vector or pixel data)."""
        t = float(threshold)
        if not (math.isfinite(t) and t > 0.0):
            raise ValueError(f"threshold must be a finite number > 0, got {threshold!r}")
        return cls(bands=(Band(name, 0.0, t, True, True),), measure="normalized_l2")

    @property
    def names(self) -> tuple[str, ...]:
        """Band names in the given order."""
        return tuple(b.name for b in self.bands)

    @property
    def higher_is_closer(self) -> bool:
        """True for a similarity (cosine), False for a distance (normalised L2)."""
        return self.measure == "cosine"

    def band_of(self, values: Union[float, np.ndarray]) -> Union[Optional[str], np.ndarray]:
        """Band name of each value, or None outside every band.

        A scalar gives ``str | None``; an array gives an object array of the
        same shape holding names and None.
        """
        v = np.asarray(values, dtype=np.float64)
        out = np.full(v.shape, None, dtype=object)
        for b in self.bands:
            out[b.contains(v)] = b.name
        return out[()] if v.ndim == 0 else out

    def to_dict(self) -> dict:
        """JSON-ready description: ``{"measure": ..., "bands": [Band.to_dict(), ...]}``."""
        return {"measure": self.measure, "bands": [b.to_dict() for b in self.bands]}


# --------------------------------------------------------------------------- #
# Input checks
# --------------------------------------------------------------------------- #
def _rows(name: str, x, d: Optional[int] = None) -> np.ndarray:
    """(n, ...) real array → (n, m) float64 (trailing dims flattened)."""
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real array of shape (n, ...), got {arr.dtype} {arr.shape}")
    arr = arr.reshape(arr.shape[0], int(np.prod(arr.shape[1:]))).astype(np.float64, copy=False)
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero elements per row (shape {np.shape(x)})")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} has {arr.shape[1]} elements per row, expected {d}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _unit_rows(name: str, x, d: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, D) normalised embeddings, got shape {arr.shape}")
    arr = _rows(name, arr, d)
    if arr.shape[0]:
        dev = np.abs(np.linalg.norm(arr, axis=1) - 1.0)
        bad = int(np.argmax(dev))
        if dev[bad] > _NORM_TOL:
            raise ValueError(
                f"{name} rows must be L2-normalised (|norm - 1| <= {_NORM_TOL}); "
                f"row {bad} has norm {1.0 + dev[bad]:.6g}"
            )
    return arr


def _check_k(k: int, n_train: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_train:
        raise ValueError(f"k must be an integer in [1, {n_train}] (the training-set size), got {k!r}")
    return int(k)


def _check_block(block: int) -> int:
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    return int(block)


# --------------------------------------------------------------------------- #
# Matching
# --------------------------------------------------------------------------- #
def match_to_train(generations, train, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine matches of each generation in the training set.

    Args:
        generations: (G, D) L2-normalised embeddings (float32 preferred).
        train: (N, D) L2-normalised embeddings, N >= 1.
        k: matches per generation, 1 <= k <= N.

    Returns:
        ``(idx, sim)``: (G, k) int64 training indices, best first, and (G, k)
        float64 cosines. The ranking is faiss ``IndexFlatIP`` (exact float32
        inner products); the returned cosines are recomputed in float64 for the
        returned pairs and clipped to [−1, 1], so they equal the values
        :func:`ams_ums_full` sees (an exact copy gives 1.0, never 1 + 1e-7).
        Column 0 is what :func:`ams_ums` takes.
    """
    gen = _unit_rows("generations", generations)
    tr = _unit_rows("train", train, gen.shape[1])
    if tr.shape[0] == 0:
        raise ValueError("train must contain at least one row")
    k = _check_k(k, tr.shape[0])
    if gen.shape[0] == 0:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float64)
    index = faiss.IndexFlatIP(tr.shape[1])
    index.add(np.ascontiguousarray(tr, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(gen, dtype=np.float32), k)
    idx = idx.astype(np.int64)
    sim = np.einsum("gd,gkd->gk", gen, tr[idx])
    return idx, np.clip(sim, -1.0, 1.0)


def normalized_l2_distance(a, b) -> np.ndarray:
    """Pairwise Carlini normalised L2 distance ‖a_i − b_j‖₂ / √d (Carlini et al., arXiv:2301.13188; SIDE arXiv:2410.02467).

    Args:
        a: (G, ...) items (images or vectors; trailing dims are flattened to d).
        b: (N, ...) items with the same d.

    Returns:
        (G, N) float64 distances (>= 0; lower = more similar). Computed in
        float64 as √max(|a|² + |b|² − 2a·b, 0)/√d, so identical items give a
        rounding-level value (≤ ~1e-8·|a|/√d), not always exactly 0;
        :func:`match_to_train_l2` recomputes its returned pairs exactly.
    """
    x = _rows("a", a)
    y = _rows("b", b, x.shape[1])
    sq = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return np.sqrt(np.maximum(sq, 0.0) / x.shape[1])


def match_to_train_l2(generations, train, k: int = 1, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k matches by normalised L2 distance (pixel space or raw vectors).

    Args:
        generations: (G, ...) items; train: (N, ...) items, N >= 1, same size d.
        k: matches per generation, 1 <= k <= N.
        block: generations per distance block (memory O(block · N) float64).

    Returns:
        ``(idx, dist)``: (G, k) int64 training indices, nearest first, and (G, k)
        float64 normalised L2 distances ‖x − x_j‖₂/√d, recomputed directly from
        the differences for the returned pairs (an exact copy gives 0.0).
    """
    gen = _rows("generations", generations)
    tr = _rows("train", train, gen.shape[1])
    if tr.shape[0] == 0:
        raise ValueError("train must contain at least one row")
    k = _check_k(k, tr.shape[0])
    block = _check_block(block)
    G = gen.shape[0]
    idx = np.zeros((G, k), np.int64)
    for lo in range(0, G, block):
        dist = normalized_l2_distance(gen[lo : lo + block], tr)
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(dist, part, axis=1), axis=1, kind="stable")
        idx[lo : lo + block] = np.take_along_axis(part, order, axis=1)
    diff = gen[:, None, :] - tr[idx] if G else np.zeros((0, k, gen.shape[1]))
    dist = np.sqrt(np.einsum("gkd,gkd->gk", diff, diff) / gen.shape[1])
    return idx, dist


# --------------------------------------------------------------------------- #
# AMS / UMS
# --------------------------------------------------------------------------- #
def _denominator(n_g: Optional[int], G: int) -> int:
    if n_g is None:
        if G == 0:
            raise ValueError("no generations: pass n_g (the N_G denominator) explicitly")
        return G
    if isinstance(n_g, bool) or not isinstance(n_g, (int, np.integer)) or n_g < max(G, 1):
        raise ValueError(f"n_g must be an integer >= the number of generations ({G}) and >= 1, got {n_g!r}")
    return int(n_g)


def _check_bands(bands: SimilarityBands) -> SimilarityBands:
    if not isinstance(bands, SimilarityBands):
        raise ValueError(f"bands must be a SimilarityBands, got {bands!r}")
    return bands


def _result(bands: SimilarityBands, n_hits: dict, n_unique: dict, n_g: int) -> dict:
    return {
        b.name: {"ams": n_hits[b.name] / n_g, "ums": n_unique[b.name] / n_g,
                 "n_ams": int(n_hits[b.name]), "n_ums": int(n_unique[b.name])}
        for b in bands.bands
    }


def ams_ums(best_sim, best_idx, bands: SimilarityBands, n_g: Optional[int] = None) -> dict:
    """Top-1 AMS / UMS per band (SIDE arXiv:2410.02467 v7; see the module docstring).

    Args:
        best_sim: (G,) best value of the measure per generation (max cosine or
            min normalised L2; column 0 of the ``match_*`` outputs).
        best_idx: (G,) int training index of that best match.
        bands: the bands (their measure only documents how ``best_sim`` was made).
        n_g: the N_G denominator; default G. Must be >= G (e.g. generations
            that failed still count in N_G).

    Returns:
        ``{band: {"ams": n_ams/N_G, "ums": n_ums/N_G, "n_ams": int, "n_ums": int}}``
        with n_ams = #{i : best_sim_i ∈ band} and n_ums = #{distinct best_idx_i
        among those}: two generations matching the same training item count once.
    """
    bands = _check_bands(bands)
    sim = np.asarray(best_sim, dtype=np.float64)
    idx = np.asarray(best_idx)
    if sim.ndim != 1:
        raise ValueError(f"best_sim must be 1-D (G,), got shape {sim.shape}")
    if idx.shape != sim.shape or (idx.size and idx.dtype.kind not in "iu"):
        raise ValueError(f"best_idx must be an int array of shape {sim.shape}, got {idx.dtype} {idx.shape}")
    if idx.size and idx.min() < 0:
        raise ValueError(f"best_idx must be >= 0, got {int(idx.min())}")
    n = _denominator(n_g, sim.size)
    hits, uniq = {}, {}
    for b in bands.bands:
        m = b.contains(sim)
        hits[b.name] = int(m.sum())
        uniq[b.name] = int(np.unique(idx[m]).size)
    return _result(bands, hits, uniq, n)


class _FullAccumulator:
    """Streams blocks of the (G, N) measure table into per-band F counts and φ unions."""

    def __init__(self, bands: SimilarityBands, n_train: int) -> None:
        self.bands = bands
        self.hits = {b.name: 0 for b in bands.bands}
        self.union = {b.name: np.zeros(n_train, dtype=bool) for b in bands.bands}

    def add(self, table: np.ndarray) -> None:
        if table.shape[0] == 0:
            return
        best = table.max(axis=1) if self.bands.higher_is_closer else table.min(axis=1)
        for b in self.bands.bands:
            self.hits[b.name] += int(b.contains(best).sum())
            self.union[b.name] |= b.contains(table).any(axis=0)

    def result(self, n_g: int) -> dict:
        return _result(self.bands, self.hits, {k: int(v.sum()) for k, v in self.union.items()}, n_g)


def ams_ums_from_matrix(table, bands: SimilarityBands, n_g: Optional[int] = None) -> dict:
    """Full AMS / UMS (the paper's φ: every training item in the band) from a
    given (G, N) table of the measure γ(x_i, x_j) (Carlini et al., arXiv:2301.13188; SIDE arXiv:2410.02467).

    Args:
        table: (G, N) values of ``bands.measure`` (cosine: larger = closer, the
            row max is F's best; normalized_l2: the row min), N >= 1.
        bands, n_g: as in :func:`ams_ums`.

    Returns:
        The :func:`ams_ums` dict, with n_ums = |∪_i {j : table[i, j] ∈ band}|.
    """
    bands = _check_bands(bands)
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] == 0:
        raise ValueError(f"table must be 2-D (G, N) with N >= 1, got shape {t.shape}")
    if np.isnan(t).any():
        raise ValueError("table contains NaN")
    acc = _FullAccumulator(bands, t.shape[1])
    acc.add(t)
    return acc.result(_denominator(n_g, t.shape[0]))


def ams_ums_full(generations, train, bands: SimilarityBands, block: int = 1024, n_g: Optional[int] = None) -> dict:
    """Full AMS / UMS over the exact (G, N) measure table, built in row blocks.

    Args:
        generations: (G, D) / train: (N, D) L2-normalised embeddings when
            ``bands.measure == "cosine"`` (cosines in float64, clipped to
            [−1, 1], as :func:`match_to_train` returns them); (G, ...) / (N, ...)
            raw items when ``"normalized_l2"`` (:func:`normalized_l2_distance`).
        bands: the bands; their measure picks γ.
        block: generation rows per block (memory O(block · N) float64; time
            O(G · N · D)).
        n_g: the N_G denominator; default G.

    Returns:
        The :func:`ams_ums` dict with the paper's full φ.
    """
    bands = _check_bands(bands)
    block = _check_block(block)
    if bands.measure == "cosine":
        gen = _unit_rows("generations", generations)
        tr = _unit_rows("train", train, gen.shape[1])
    else:
        gen = _rows("generations", generations)
        tr = _rows("train", train, gen.shape[1])
    if tr.shape[0] == 0:
        raise ValueError("train must contain at least one row")
    n = _denominator(n_g, gen.shape[0])
    acc = _FullAccumulator(bands, tr.shape[0])
    for lo in range(0, gen.shape[0], block):
        g = gen[lo : lo + block]
        acc.add(np.clip(g @ tr.T, -1.0, 1.0) if bands.measure == "cosine" else normalized_l2_distance(g, tr))
    return acc.result(n)


def percentile_max_similarity(best_sim, q: float = 95.0) -> float:
    """q-th percentile (numpy "linear" rule) of the per-generation best value
    (Somepalli's 95th-percentile max-SSCD for cosine; Somepalli et al., arXiv:2212.03860).

    For the normalised L2 distance the same call gives the q-th percentile of
    the nearest-neighbour distance (lower = more copying); pick q accordingly.
    """
    v = np.asarray(best_sim, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"best_sim must be a non-empty 1-D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("best_sim contains non-finite values")
    qf = float(q)
    if not (0.0 <= qf <= 100.0):
        raise ValueError(f"q must lie in [0, 100], got {q!r}")
    return float(np.percentile(v, qf))
