"""Mergeable calibration of the zero-shot tagger: per-object score histograms and robust thresholds.

:class:`ScoreSketch` holds fixed-bin histograms of the zero-shot margins
``s_o`` (they add exactly across workers); :class:`ZeroShotCalibration` is
the per-object median / MAD / threshold fitted from a merged sketch (see
:mod:`models.mine.taggers.zero_shot` for the rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CALIBRATION_VERSION", "MAD_TO_SIGMA", "ScoreSketch", "ZeroShotCalibration"]

MAD_TO_SIGMA = 1.4826
CALIBRATION_VERSION = 1


class ScoreSketch:
    """Mergeable per-object histograms of zero-shot scores ``s_o``.

    Object o's scores are binned on the fixed grid ``[-r_o, r_o]`` with
    ``bins`` equal bins, where ``r_o`` is ``||t_o - t_generic||`` rounded up to
    a power of two: ``|s_o(x)| <= ||t_o - t_generic||`` for every unit ``x``, so
    no score falls outside (non-unit inputs are clipped into the edge bins),
    and the rounding makes the grid identical on every worker even when text
    embeddings differ in the last float bits. Sketches over disjoint parts of a
    sample add exactly (:meth:`merge`); quantiles read from them are accurate
    to one bin (``2 r_o / bins``).

    Attributes:
        radius: ``(O,)`` float64 ``r_o``.
        counts: ``(O, bins)`` int64 counts. Memory: ``8 * O * bins`` bytes
            (LVIS, 2048 bins: 19.7 MB).
        n: number of images added.
        fingerprint: the producing tagger's fingerprint; only sketches with
            equal fingerprints merge or calibrate that tagger.
    """

    def __init__(self, radius: np.ndarray, counts: np.ndarray, n: int = 0, fingerprint: str = "") -> None:
        radius = np.asarray(radius, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.int64)
        if radius.ndim != 1 or counts.ndim != 2 or counts.shape[0] != radius.shape[0]:
            raise ValueError(f"ScoreSketch: radius (O,) and counts (O, bins) expected, got {radius.shape} and {counts.shape}")
        if not (radius > 0).all():
            raise ValueError("ScoreSketch: radius must be > 0")
        self.radius, self.counts, self.n, self.fingerprint = radius, counts, int(n), str(fingerprint)

    @classmethod
    def empty(cls, radius: np.ndarray, bins: int, fingerprint: str = "") -> "ScoreSketch":
        """A sketch with no images for objects with grid radii ``radius`` (O,)."""
        radius = np.asarray(radius, dtype=np.float64)
        return cls(radius, np.zeros((radius.shape[0], bins), np.int64), 0, fingerprint)

    @property
    def bins(self) -> int:
        return int(self.counts.shape[1])

    @property
    def width(self) -> np.ndarray:
        """``(O,)`` float64 bin width per object."""
        return 2.0 * self.radius / self.bins

    def add(self, scores: np.ndarray) -> "ScoreSketch":
        """Add ``(n, O)`` scores in place (rows = images); returns ``self``.

        Peak extra memory ``16 * n * O`` bytes; add large samples in chunks.
        """
        scores = np.asarray(scores, dtype=np.float64)
        n_obj, bins = self.counts.shape
        if scores.ndim != 2 or scores.shape[1] != n_obj:
            raise ValueError(f"scores must have shape (n, {n_obj}), got {scores.shape}")
        if scores.shape[0] == 0:
            return self
        idx = np.floor((scores + self.radius) / self.width).astype(np.int64)
        np.clip(idx, 0, bins - 1, out=idx)
        idx += np.arange(n_obj, dtype=np.int64) * bins
        self.counts += np.bincount(idx.ravel(), minlength=n_obj * bins).reshape(n_obj, bins)
        self.n += scores.shape[0]
        return self

    def merge(self, other: "ScoreSketch") -> "ScoreSketch":
        """A new sketch holding both samples; grids and fingerprints must match."""
        if (self.counts.shape != other.counts.shape or not np.array_equal(self.radius, other.radius)
                or self.fingerprint != other.fingerprint):
            raise ValueError(
                f"cannot merge sketches with different grids or fingerprints: {self.counts.shape} "
                f"{self.fingerprint!r} vs {other.counts.shape} {other.fingerprint!r} "
                "(built by taggers with different embedders, prompts, vocabularies or bins?)"
            )
        return ScoreSketch(self.radius.copy(), self.counts + other.counts, self.n + other.n, self.fingerprint)

    __add__ = merge

    def quantile(self, q: float) -> np.ndarray:
        """``(O,)`` float64 q-quantile of each object's scores, linear inside a bin."""
        cum = np.cumsum(self.counts, axis=1)
        target = q * self.n
        j = np.argmax(cum >= target, axis=1)
        rows = np.arange(self.counts.shape[0])
        before = np.where(j > 0, cum[rows, np.maximum(j - 1, 0)], 0)
        in_bin = self.counts[rows, j]
        frac = np.where(in_bin > 0, (target - before) / np.maximum(in_bin, 1), 0.5)
        return -self.radius + (j + np.clip(frac, 0.0, 1.0)) * self.width

    def median_mad(self) -> tuple[np.ndarray, np.ndarray]:
        """``(median (O,), MAD (O,))`` float64; MAD is floored at one bin width.

        The MAD treats every score as its bin centre (error <= half a bin).
        Peak memory ~``40 * O * bins`` bytes (~100 MB for LVIS at 2048 bins).
        """
        if self.n == 0:
            raise ValueError("the sketch is empty (no images added)")
        median = self.quantile(0.5)
        width = self.width
        centres = -self.radius[:, None] + (np.arange(self.bins) + 0.5)[None, :] * width[:, None]
        dev = np.abs(centres - median[:, None])
        order = np.argsort(dev, axis=1, kind="stable")
        cum = np.cumsum(np.take_along_axis(self.counts, order, axis=1), axis=1)
        j = np.argmax(cum >= 0.5 * self.n, axis=1)
        mad = np.take_along_axis(dev, order, axis=1)[np.arange(self.counts.shape[0]), j]
        return median, np.maximum(mad, width)

    def fraction_at_least(self, threshold: np.ndarray) -> np.ndarray:
        """``(O,)`` fraction of added scores >= ``threshold`` (O,) (linear inside a bin)."""
        if self.n == 0:
            return np.zeros(self.counts.shape[0])
        pos = (np.asarray(threshold, np.float64) + self.radius) / self.width
        j = np.clip(np.floor(pos).astype(np.int64), 0, self.bins - 1)
        frac_above = np.clip(1.0 - (pos - j), 0.0, 1.0)
        tail = np.cumsum(self.counts[:, ::-1], axis=1)[:, ::-1]  # tail[:, b] = counts[:, b:].sum()
        rows = np.arange(self.counts.shape[0])
        above = np.where(j + 1 < self.bins, tail[rows, np.minimum(j + 1, self.bins - 1)], 0)
        above = above + self.counts[rows, j] * frac_above
        above = np.where(pos < 0, self.n, np.where(pos >= self.bins, 0, above))
        return above / self.n

    def __getstate__(self) -> dict[str, Any]:
        return {"radius": self.radius, "counts": self.counts, "n": self.n, "fingerprint": self.fingerprint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.radius, self.counts, self.n = state["radius"], state["counts"], state["n"]
        self.fingerprint = state["fingerprint"]


@dataclass(frozen=True, eq=False)
class ZeroShotCalibration:
    """Per-object thresholds of a :class:`ZeroShotTagger`, fitted on a sample.

    Attributes:
        objects: the O object names (must match the tagger's).
        median, mad: ``(O,)`` float64 robust location and spread of ``s_o`` on the sample.
        threshold: ``(O,)`` float64 ``max(median + z * 1.4826 * mad, min_margin)``.
        tag_rate: ``(O,)`` float64 fraction of the sample at or above the
            threshold (bin-resolution estimate): how often o would be tagged.
        n: sample size.
        z, min_margin: the rule used.
        fingerprint: hash of the embedder spec, templates, generic words and
            synonyms; a calibration only applies to a tagger with the same one.
    """

    objects: tuple[str, ...]
    median: np.ndarray
    mad: np.ndarray
    threshold: np.ndarray
    tag_rate: np.ndarray
    n: int
    z: float
    min_margin: float | None
    fingerprint: str

    _ARRAYS = ("median", "mad", "threshold", "tag_rate")

    def __post_init__(self) -> None:
        n_obj = len(self.objects)
        for name in self._ARRAYS:
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != (n_obj,):
                raise ValueError(f"calibration {name} must have shape ({n_obj},), got {arr.shape}")
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def sigma(self) -> np.ndarray:
        """``(O,)`` robust standard deviation ``1.4826 * mad``."""
        return MAD_TO_SIGMA * self.mad

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (floats round-trip exactly through ``json``)."""
        out: dict[str, Any] = {"version": CALIBRATION_VERSION, "objects": list(self.objects)}
        out.update({name: [float(v) for v in getattr(self, name)] for name in self._ARRAYS})
        out.update({"n": self.n, "z": float(self.z), "min_margin": self.min_margin, "fingerprint": self.fingerprint})
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ZeroShotCalibration":
        """Inverse of :meth:`to_dict`; ValueError on a missing key or another version."""
        needed = {"version", "objects", "n", "z", "min_margin", "fingerprint", *cls._ARRAYS}
        missing = needed - set(d)
        if missing:
            raise ValueError(f"calibration dict lacks keys {sorted(missing)}; expected {sorted(needed)}")
        if d["version"] != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {d['version']!r} unsupported; expected {CALIBRATION_VERSION}")
        return cls(
            objects=tuple(d["objects"]), n=int(d["n"]), z=float(d["z"]),
            min_margin=None if d["min_margin"] is None else float(d["min_margin"]), fingerprint=str(d["fingerprint"]),
            **{name: np.asarray(d[name], dtype=np.float64) for name in cls._ARRAYS},
        )

