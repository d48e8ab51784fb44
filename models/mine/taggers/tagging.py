"""Image object taggers for object-level memory triggers.

Plain Python (numpy, torch through the embedder, onnxruntime; no Apache Beam):
the pipeline wraps these objects in its DoFns.

An object-level trigger is a caption keyword w whose images keep showing an
object o that the caption never names ("astronaut" -> US flag). Counting those
needs, per image, the set of objects it shows. Two taggers produce that set
behind one interface (:class:`Tagger`):

* :class:`ZeroShotTagger` scores stored CLIP image embeddings against
  prompt-ensembled text embeddings of an object vocabulary (LVIS, COCO, ...)
  and decides with **per-object calibrated thresholds** (see below). It needs
  no images, only the ``(N, D)`` embeddings of the embed stage and the same
  embedder's text tower.
* :class:`OnnxClassifierTagger` runs an ImageNet-style ONNX classifier (the
  shared MobileNet v2, or any exported torchvision model) over decoded images
  and keeps the ``top_k`` labels with probability >= ``min_prob``.

Every tagger returns tags as three parallel arrays
``(rows int64 (T,), object_idx int64 (T,), score float32 (T,))``: ``rows``
indexes the input batch (ascending), ``object_idx`` indexes
:attr:`Tagger.objects`, and within a row tags come in decreasing score order
(ties: lower object index first). :func:`vocab_for_labels` turns classifier
labels into :class:`models.mine.keywords.VocabEntry` objects, so caption mentions of
a classifier's objects (with synonyms) can be checked with
:class:`models.mine.keywords.VocabMatcher`.

Zero-shot score and calibration
-------------------------------
The text side of object o is a CLIP prompt ensemble: every synonym of the
entry (name first, at most ``max_synonyms``) is put into every template
(``"a photo of a {o}."``, ...), each prompt embedding is L2-normalised, the
mean over all (synonym, template) prompts is taken and renormalised: ``t_o``.
The same ensemble over neutral words (``"object"``, ``"thing"``) gives
``t_generic``. The score is the margin over the generic prompt::

    s_o(x) = cos(x, t_o) - cos(x, t_generic) = x . (t_o - t_generic)   (x unit norm)

Subtracting ``t_generic`` removes the part every prompt shares ("a photo of
a ..."), which dominates raw image-text cosines and varies from image to image;
``s_o > 0`` reads "x matches o better than a generic object".

Raw scores are not comparable across objects: some prompts sit closer to all
images than others (the "hub" texts), so one global cosine threshold either
tags a hub object on every image or misses the weak objects. The decision is
therefore calibrated per object on a sample of the dataset itself::

    threshold_o = max(median_o + z * 1.4826 * MAD_o, min_margin)
    tagged(x, o)  <=>  s_o(x) >= threshold_o

(1.4826 * MAD is a robust standard deviation; median and MAD barely move when
a few percent of the sample truly shows o; the floor ``min_margin`` is
optional and off by default). Under a normal null each object is
falsely tagged on about ``P(Z >= z)`` of images (0.13% at z = 3), so a random
image collects about ``O * P(Z >= z)`` false tags: raise ``z`` for large
vocabularies (z = 4 for LVIS' 1,203 objects gives ~0.04 per image) or cap with
``top_k``. The tag score is the robust z-score
``(s_o - median_o) / (1.4826 * MAD_o)``, comparable across objects; ``top_k``
keeps the highest.

Calibration is mergeable for distributed use: :meth:`ZeroShotTagger.sketch`
turns any part of the sample into a :class:`ScoreSketch` (per-object
fixed-bin histograms of ``s_o``), sketches add exactly (:meth:`ScoreSketch.merge`,
a Beam ``CombineFn`` can sum them), and :meth:`ZeroShotTagger.calibrate` turns
the merged sketch into a :class:`ZeroShotCalibration`. :meth:`ZeroShotTagger.fit`
is ``calibrate(sketch(sample))``, so fitting shards and merging gives exactly
the same thresholds as fitting everything at once. The calibration round-trips
through :meth:`ZeroShotCalibration.to_dict` / ``from_dict`` (JSON-safe) so the
pipeline can write it next to its outputs and reuse it.

Tagger specs (``--tagger``): ``zero-shot`` or
``onnx-classifier:MODEL.onnx,LABELS.txt`` (see :func:`parse_tagger_spec`).
"""
from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from models.embed.embedders import Embedder, OnnxEmbedder, OnnxPreprocess, l2_normalise
from models.mine.keywords import VocabEntry, normalize_vocab_name

__all__ = [
    "DEFAULT_GENERIC_WORDS",
    "DEFAULT_TEMPLATES",
    "MOBILENET_PREPROCESS",
    "TAGGER_KINDS",
    "ClassifierConfig",
    "OnnxClassifierTagger",
    "ScoreSketch",
    "Tagger",
    "TaggerSpec",
    "ZeroShotCalibration",
    "ZeroShotConfig",
    "ZeroShotTagger",
    "load_tagger",
    "parse_tagger_spec",
    "read_labels",
    "select_tags",
    "vocab_for_labels",
]

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {o}.",
    "a picture of a {o}.",
    "a {o} in the scene.",
    "a close-up photo of a {o}.",
    "a photo of the {o}.",
    "a cropped photo of a {o}.",
    "an image containing a {o}.",
)
DEFAULT_GENERIC_WORDS: tuple[str, ...] = ("object", "thing")
# The shared MobileNet v1/v2 models: RGB squashed to 224x224, x = (uint8 - 128) / 128.
MOBILENET_PREPROCESS = OnnxPreprocess(size=224, resize="squash", offset=128.0, scale=128.0)
TAGGER_KINDS = ("zero-shot", "onnx-classifier")
MAD_TO_SIGMA = 1.4826
CALIBRATION_VERSION = 1
_CHUNK_ROWS = 4096
_BACKGROUND_NAMES = ("background", "__background__", "unused background")

_EMPTY_TAGS = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------


def select_tags(values: np.ndarray, keep: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn a per-(image, object) score matrix and a keep mask into tag arrays.

    Args:
        values: ``(N, O)`` scores, higher is better.
        keep: ``(N, O)`` bool, which pairs pass the tagger's rule.
        top_k: keep at most this many tags per row (highest ``values``), or
            ``None`` for all that pass.

    Returns:
        ``(rows int64, object_idx int64, score float32)``, each ``(T,)``,
        rows ascending, within a row by decreasing score, ties by lower object
        index. Memory: O(T) beyond the inputs.
    """
    rows, cols = np.nonzero(keep)
    if rows.size == 0:
        return _EMPTY_TAGS[0].copy(), _EMPTY_TAGS[1].copy(), _EMPTY_TAGS[2].copy()
    vals = np.asarray(values[rows, cols], dtype=np.float32)
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    if top_k is not None:
        first = np.searchsorted(rows, rows, side="left")
        within = np.arange(rows.size) - first < top_k
        rows, cols, vals = rows[within], cols[within], vals[within]
    return rows.astype(np.int64), cols.astype(np.int64), vals.astype(np.float32)


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")


class Tagger(ABC):
    """Interface of an image object tagger.

    Attributes:
        objects: the O object names; tag ``object_idx`` values index this list
            (names need not be unique; the index is the key).
        needs_images: ``True`` when only :meth:`tag_images` works (the tagger
            looks at pixels); ``False`` when :meth:`tag_embeddings` works on
            stored image embeddings.
    """

    objects: list[str]
    needs_images: bool

    def tag_embeddings(self, img_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tag ``(N, D)`` float32 L2-normalised image embeddings.

        Returns ``(rows int64, object_idx int64, score float32)`` (see :func:`select_tags`).

        Raises:
            TypeError: this tagger needs images (``needs_images`` is True).
        """
        raise TypeError(f"{type(self).__name__} tags decoded images, not embeddings (needs_images=True); use tag_images")

    def tag_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tag a list of RGB ``PIL.Image``; same return value as :meth:`tag_embeddings`."""
        raise TypeError(f"{type(self).__name__} cannot tag images")

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-safe description (kind, settings, what ``score`` means) to write next to outputs."""


# ---------------------------------------------------------------------------
# Zero-shot (CLIP) tagger
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ZeroShotConfig:
    """Settings of :class:`ZeroShotTagger`.

    Attributes:
        templates: prompt templates, each containing ``{o}`` once (the object word).
        generic_words: neutral words whose prompt ensemble is ``t_generic``.
        z: robust z of the per-object threshold (``median + z * 1.4826 * MAD``), > 0.
        min_margin: optional absolute floor on ``s_o`` for a tag (``None``,
            the default: none). ``0.0`` would also require the object to beat
            the generic prompt; that hurts when the whole dataset leans towards
            some prompts (hub texts), so calibration alone is the default.
        top_k: at most this many tags per image (highest robust z), or ``None``.
        max_synonyms: synonyms per object used in the ensemble (name first), >= 1.
        bins: histogram bins per object in a :class:`ScoreSketch`, >= 16.
        batch_size: text prompts per text-tower call and images per
            :meth:`ZeroShotTagger.tag_images` batch, >= 1.
    """

    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    generic_words: tuple[str, ...] = DEFAULT_GENERIC_WORDS
    z: float = 3.0
    min_margin: float | None = None
    top_k: int | None = None
    max_synonyms: int = 8
    bins: int = 2048
    batch_size: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        object.__setattr__(self, "generic_words", tuple(self.generic_words))
        if not self.templates:
            raise ValueError("templates must not be empty")
        for tpl in self.templates:
            if not isinstance(tpl, str) or tpl.count("{o}") != 1:
                raise ValueError(f"template {tpl!r} must be a str containing '{{o}}' exactly once, e.g. 'a photo of a {{o}}.'")
        if not self.generic_words or not all(isinstance(w, str) and w.strip() for w in self.generic_words):
            raise ValueError(f"generic_words must be non-empty strings, got {self.generic_words!r}")
        if not np.isfinite(self.z) or self.z <= 0:
            raise ValueError(f"z must be a finite number > 0, got {self.z!r}")
        if self.min_margin is not None and not np.isfinite(self.min_margin):
            raise ValueError(f"min_margin must be None or finite, got {self.min_margin!r}")
        _check_top_k(self.top_k)
        if not isinstance(self.max_synonyms, int) or self.max_synonyms < 1:
            raise ValueError(f"max_synonyms must be an int >= 1, got {self.max_synonyms!r}")
        if not isinstance(self.bins, int) or self.bins < 16:
            raise ValueError(f"bins must be an int >= 16, got {self.bins!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "templates": list(self.templates), "generic_words": list(self.generic_words), "z": self.z,
            "min_margin": self.min_margin, "top_k": self.top_k, "max_synonyms": self.max_synonyms,
            "bins": self.bins, "batch_size": self.batch_size,
        }


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


class ZeroShotTagger(Tagger):
    """CLIP zero-shot object tagger on image embeddings, per-object calibrated.

    See the module docstring for the score and the decision rule. Construction
    embeds every prompt once (``O * min(#synonyms, max_synonyms) * T + G * T``
    prompts, batched) and keeps ``text_embeddings`` (``t_o``, ``(O, D)``),
    ``generic_embedding`` (``(D,)``) and ``directions = t_o - t_generic``
    (``(O, D)``), all float32: ``8 * O * D`` bytes, 4.9 MB for LVIS with
    D = 512. Before tagging, call :meth:`fit` (or :meth:`calibrate` with a
    merged sketch, or :meth:`set_calibration` with a stored one).

    Pickling drops the embedder and keeps the text side and calibration, so a
    fitted tagger ships cheaply to workers that tag stored embeddings;
    :meth:`tag_images` needs the embedder and is unavailable on such a copy.

    Args:
        embedder: an embedder with a text tower (``has_text``), the same one
            that produced the image embeddings.
        vocab: the objects (:class:`VocabEntry`; name and synonyms are used).
        templates, generic_words, z, min_margin, top_k, max_synonyms, bins,
        batch_size: see :class:`ZeroShotConfig`.

    Raises:
        ValueError: empty vocabulary, an embedder without text tower, bad settings.
    """

    needs_images = False

    def __init__(
        self,
        embedder: Embedder,
        vocab: Sequence[VocabEntry],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        z: float = 3.0,
        min_margin: float | None = None,
        top_k: int | None = None,
        *,
        generic_words: Sequence[str] = DEFAULT_GENERIC_WORDS,
        max_synonyms: int = 8,
        bins: int = 2048,
        batch_size: int = 256,
    ) -> None:
        config = ZeroShotConfig(
            templates=tuple(templates), generic_words=tuple(generic_words), z=z, min_margin=min_margin, top_k=top_k,
            max_synonyms=max_synonyms, bins=bins, batch_size=batch_size,
        )
        self._init(embedder, vocab, config)

    @classmethod
    def from_config(cls, embedder: Embedder, vocab: Sequence[VocabEntry], config: ZeroShotConfig) -> "ZeroShotTagger":
        """Build from a :class:`ZeroShotConfig` (what the pipeline ships to workers)."""
        self = cls.__new__(cls)
        self._init(embedder, vocab, config)
        return self

    def _init(self, embedder: Embedder, vocab: Sequence[VocabEntry], config: ZeroShotConfig) -> None:
        if not getattr(embedder, "has_text", False):
            raise ValueError(f"zero-shot tagging needs an embedder with a text tower; {embedder.spec!r} has none (use openclip:...)")
        vocab = list(vocab)
        if not vocab:
            raise ValueError("vocab must contain at least one VocabEntry")
        for entry in vocab:
            if not isinstance(entry, VocabEntry):
                raise ValueError(f"vocab items must be VocabEntry, got {type(entry).__name__}")
        self.embedder: Embedder | None = embedder
        self.embedder_spec = embedder.spec
        self.vocab, self.config = vocab, config
        self.objects = [e.name for e in vocab]
        self.synonyms_used = [tuple(e.synonyms[: config.max_synonyms]) for e in vocab]
        self.text_embeddings = np.stack([self._ensemble(syns) for syns in self.synonyms_used])  # (O, D)
        self.generic_embedding = self._ensemble(config.generic_words)  # (D,)
        self.directions = (self.text_embeddings - self.generic_embedding[None, :]).astype(np.float32)
        norm = np.linalg.norm(self.directions.astype(np.float64), axis=1)
        self.radius = np.exp2(np.ceil(np.log2(np.maximum(norm, 2.0 ** -20))))
        self.fingerprint = hashlib.sha256(
            json.dumps([embedder.spec, list(config.templates), list(config.generic_words), [list(s) for s in self.synonyms_used]]).encode()
        ).hexdigest()[:16]
        self.calibration: ZeroShotCalibration | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["embedder"] = None
        return state

    def _ensemble(self, words: Sequence[str]) -> np.ndarray:
        """``(D,)`` float32 unit mean of the normalised embeddings of every (word, template) prompt."""
        prompts = [tpl.replace("{o}", w) for w in words for tpl in self.config.templates]
        bs = self.config.batch_size
        parts = [np.asarray(self.embedder.embed_texts(prompts[i : i + bs]), np.float32) for i in range(0, len(prompts), bs)]
        emb, ok = l2_normalise(np.concatenate(parts))
        if not ok.all():
            bad = [prompts[i] for i in np.flatnonzero(~ok)[:3]]
            raise ValueError(f"text tower gave zero or non-finite embeddings for prompts {bad}")
        mean = emb.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    # -- scores ----------------------------------------------------------------
    def _unit(self, img_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        img_emb = np.asarray(img_emb, dtype=np.float32)
        dim = self.directions.shape[1]
        if img_emb.ndim != 2 or img_emb.shape[1] != dim:
            raise ValueError(f"image embeddings must have shape (N, {dim}) for {self.embedder_spec}, got {img_emb.shape}")
        return l2_normalise(img_emb)

    def scores(self, img_emb: np.ndarray) -> np.ndarray:
        """``(N, O)`` float32 margins ``s_o(x) = cos(x, t_o) - cos(x, t_generic)``.

        Rows are L2-normalised first; zero or non-finite rows score 0.
        Memory: ``4 * N * O`` bytes (chunk large inputs; :meth:`tag_embeddings` does).
        """
        x, _ = self._unit(img_emb)
        return x @ self.directions.T

    def sketch(self, img_emb: np.ndarray) -> ScoreSketch:
        """A :class:`ScoreSketch` of ``(N, D)`` sample embeddings (zero/non-finite rows skipped).

        Compute on any part of the calibration sample; merge parts with ``+``.
        """
        out = self.empty_sketch()
        x, ok = self._unit(img_emb)
        x = x[ok]
        for i in range(0, x.shape[0], _CHUNK_ROWS):
            out.add(x[i : i + _CHUNK_ROWS] @ self.directions.T)
        return out

    def empty_sketch(self) -> ScoreSketch:
        """An empty sketch on this tagger's grid (a Beam CombineFn accumulator)."""
        return ScoreSketch.empty(self.radius, self.config.bins, self.fingerprint)

    def calibrate(self, sketch: ScoreSketch) -> ZeroShotCalibration:
        """Per-object thresholds from a (merged) sketch; sets and returns :attr:`calibration`.

        Raises:
            ValueError: the sketch has fewer than 2 images or another grid.
        """
        if (sketch.counts.shape != (len(self.objects), self.config.bins) or not np.array_equal(sketch.radius, self.radius)
                or sketch.fingerprint != self.fingerprint):
            raise ValueError(
                f"the sketch (fingerprint {sketch.fingerprint!r}) was not built on this tagger's grid "
                f"(fingerprint {self.fingerprint!r}; other embedder, prompts, vocabulary or bins)"
            )
        if sketch.n < 2:
            raise ValueError(f"calibration needs a sample of >= 2 images (>= 1000 recommended), got {sketch.n}")
        cfg = self.config
        median, mad = sketch.median_mad()
        threshold = median + cfg.z * MAD_TO_SIGMA * mad
        if cfg.min_margin is not None:
            threshold = np.maximum(threshold, cfg.min_margin)
        self.calibration = ZeroShotCalibration(
            objects=tuple(self.objects), median=median, mad=mad, threshold=threshold,
            tag_rate=sketch.fraction_at_least(threshold), n=sketch.n, z=cfg.z, min_margin=cfg.min_margin,
            fingerprint=self.fingerprint,
        )
        return self.calibration

    def fit(self, img_emb: np.ndarray) -> ZeroShotCalibration:
        """Calibrate on ``(N, D)`` embeddings of a uniform sample of the dataset.

        Equal to ``calibrate(sketch(img_emb))``. The sample should be the
        dataset itself (or a uniform sample of it, >= 1000 images): thresholds
        are relative to how every object scores on typical images.
        """
        return self.calibrate(self.sketch(img_emb))

    def set_calibration(self, calibration: ZeroShotCalibration | dict[str, Any]) -> None:
        """Use a stored calibration (object or :meth:`ZeroShotCalibration.to_dict` dict).

        Raises:
            ValueError: it was fitted for other objects or another embedder/prompt set.
        """
        if isinstance(calibration, dict):
            calibration = ZeroShotCalibration.from_dict(calibration)
        if list(calibration.objects) != self.objects:
            raise ValueError(f"calibration is for {len(calibration.objects)} other objects, not this tagger's {len(self.objects)}")
        if calibration.fingerprint != self.fingerprint:
            raise ValueError(
                f"calibration fingerprint {calibration.fingerprint} != tagger fingerprint {self.fingerprint} "
                "(different embedder, templates, generic words or synonyms)"
            )
        self.calibration = calibration

    def _require_calibration(self) -> ZeroShotCalibration:
        if self.calibration is None:
            raise RuntimeError("ZeroShotTagger is not calibrated: call fit(sample_embeddings), calibrate(sketch) or set_calibration(...)")
        return self.calibration

    def zscores(self, img_emb: np.ndarray) -> np.ndarray:
        """``(N, O)`` float32 robust z ``(s_o - median_o) / (1.4826 * MAD_o)`` (needs a calibration)."""
        cal = self._require_calibration()
        return ((self.scores(img_emb) - cal.median) / cal.sigma).astype(np.float32)

    # -- tagging ---------------------------------------------------------------
    def tag_embeddings(self, img_emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tag ``(N, D)`` float32 image embeddings: ``s_o(x) >= threshold_o``, top_k by robust z.

        Returns ``(rows int64, object_idx int64, score float32 robust z)``.
        Zero or non-finite rows get no tags. Works in chunks of 4096 rows:
        peak extra memory ``~3 * 4 * 4096 * O`` bytes (59 MB for LVIS).
        """
        cal = self._require_calibration()
        x, ok = self._unit(img_emb)
        thr = cal.threshold.astype(np.float32)
        median, sigma = cal.median.astype(np.float32), cal.sigma.astype(np.float32)
        out_r, out_c, out_s = [], [], []
        for i in range(0, x.shape[0], _CHUNK_ROWS):
            s = x[i : i + _CHUNK_ROWS] @ self.directions.T
            keep = (s >= thr) & ok[i : i + _CHUNK_ROWS, None]
            r, c, v = select_tags((s - median) / sigma, keep, self.config.top_k)
            out_r.append(r + i)
            out_c.append(c)
            out_s.append(v)
        if not out_r:
            return _EMPTY_TAGS[0].copy(), _EMPTY_TAGS[1].copy(), _EMPTY_TAGS[2].copy()
        return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_s)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(N, D)`` float32 normalised embeddings of RGB images with this tagger's embedder."""
        if self.embedder is None:
            raise RuntimeError("this ZeroShotTagger was unpickled without its embedder; it can only tag embeddings")
        bs = self.config.batch_size
        parts = []
        for i in range(0, len(images), bs):
            batch = np.stack([self.embedder.preprocess(im.convert("RGB")) for im in images[i : i + bs]])
            parts.append(l2_normalise(self.embedder.embed_images(batch))[0])
        return np.concatenate(parts) if parts else np.zeros((0, self.directions.shape[1]), np.float32)

    def tag_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Embed RGB images with the embedder, then :meth:`tag_embeddings`."""
        return self.tag_embeddings(self.embed_images(list(images)))

    def describe(self) -> dict[str, Any]:
        cal = self.calibration
        return {
            "kind": "zero-shot",
            "embedder": self.embedder_spec,
            "n_objects": len(self.objects),
            "config": self.config.to_dict(),
            "fingerprint": self.fingerprint,
            "rule": "s_o >= max(median_o + z * 1.4826 * MAD_o, min_margin), s_o = cos(x, t_o) - cos(x, t_generic)",
            "score": "robust z = (s_o - median_o) / (1.4826 * MAD_o)",
            "calibrated": cal is not None,
            "calibration_n": None if cal is None else cal.n,
            "mean_tags_per_image_on_sample": None if cal is None else float(cal.tag_rate.sum()),
        }


# ---------------------------------------------------------------------------
# ONNX image classifier tagger
# ---------------------------------------------------------------------------


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """One label per line (UTF-8); trailing blank lines ignored.

    Raises:
        ValueError: a blank line before the last label, or no labels.
    """
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"labels file {str(path)!r} has no labels")
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise ValueError(f"labels file {str(path)!r}: blank label on line(s) {blank[:5]}; one label per line expected")
    return lines


def vocab_for_labels(labels: Sequence[str], source: str = "labels") -> list[VocabEntry]:
    """Classifier labels -> one :class:`VocabEntry` per label, same order.

    ``"flagpole, flagstaff"``: the first comma-separated name is the entry
    name, all names are synonyms; names are normalised like vocabulary names
    (:func:`models.mine.keywords.normalize_vocab_name`: lowercase, ``_`` -> space,
    parenthesised qualifiers split off). ``category_id`` is the label's index
    and ``raw_name`` the label as written.

    Raises:
        ValueError: a label without any name.
    """
    entries = []
    for i, label in enumerate(labels):
        parts = [normalize_vocab_name(p) for p in str(label).split(",")]
        names = [name for name, _ in parts if name]
        if not names:
            raise ValueError(f"label {i} ({label!r}) has no name")
        qualifier = next((q for name, q in parts if name == names[0] and q), None)
        entries.append(VocabEntry(names[0], tuple(names), str(label), qualifier, i, source))
    return entries


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of :class:`OnnxClassifierTagger`.

    Attributes:
        min_prob: smallest class probability that is a tag, in [0, 1].
        top_k: at most this many tags per image, >= 1 (or ``None``: all >= min_prob).
        background_index: output column that is "no object" and never a tag;
            ``"auto"`` = 0 when the first label is ``background``, else none;
            ``None`` = every column is an object.
        output: ``"auto"`` (probe the model: outputs in [0, 1] with row sums
            <= 1.05 are probabilities, else logits), ``"probs"`` or ``"logits"``
            (softmax applied).
        batch_size: images per model call (models with a fixed batch of 1
            are run one image at a time), >= 1.
    """

    min_prob: float = 0.2
    top_k: int | None = 3
    background_index: int | str | None = "auto"
    output: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not (isinstance(self.min_prob, (int, float)) and 0.0 <= self.min_prob <= 1.0):
            raise ValueError(f"min_prob must be in [0, 1], got {self.min_prob!r}")
        _check_top_k(self.top_k)
        bg = self.background_index
        if not (bg is None or bg == "auto" or (isinstance(bg, int) and not isinstance(bg, bool) and bg >= 0)):
            raise ValueError(f"background_index must be 'auto', None or an int >= 0, got {bg!r}")
        if self.output not in ("auto", "probs", "logits"):
            raise ValueError(f"output {self.output!r}; expected auto, probs or logits")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _looks_like_probs(out: np.ndarray, tol: float = 0.05) -> bool:
    """Rows of non-negative values <= 1 summing to at most ``1 + tol`` (and > 0)."""
    if out.size == 0 or not np.isfinite(out).all():
        return False
    sums = out.sum(axis=1)
    return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6 and (sums > 0).all() and (sums <= 1 + tol).all())


class OnnxClassifierTagger(Tagger):
    """Tags = the ``top_k`` classes of an ONNX image classifier with probability >= ``min_prob``.

    The model takes one preprocessed image tensor (``OnnxPreprocess``: size,
    resize, normalisation, layout) and returns ``(B, C)`` class scores (any
    shape ``(B, ...)`` with C elements per image is flattened). Whether those
    are already probabilities is detected once at construction by running
    three fixed probe inputs (see :class:`ClassifierConfig` ``output``);
    otherwise a softmax is applied. The background column (ImageNet 1001-class
    models: index 0) is never a tag and is not among :attr:`objects`.

    Args:
        model_path: the ``.onnx`` file.
        labels_path: one label per line, C lines (:func:`read_labels`).
        preprocess: :class:`OnnxPreprocess`, a dict or JSON string; ``None``
            reads ``MODEL.onnx.json`` beside the model or uses the ImageNet
            default (:data:`MOBILENET_PREPROCESS` for the shared MobileNet).
        min_prob, top_k, background_index, output, batch_size: see :class:`ClassifierConfig`.
        device, threads: onnxruntime provider (``cpu``/``cuda``) and intra-op threads (0 = default).

    Attributes:
        objects: names of the non-background labels (first comma-separated name, normalised).
        vocab: their :class:`VocabEntry` objects (for caption-mention checks).
        class_index: ``(O,)`` int64 model output column of each object.
        outputs_probs: whether the model output is used as probabilities as is.

    Cost: one forward pass per image (shared MobileNet v2: ~30 ms per image
    including preprocessing on one busy CPU core); memory ``4 * batch_size * C``
    bytes of outputs plus the input batch.

    Raises:
        ModelUnavailable: the model file does not exist.
        ValueError: label count != output width, bad background index or settings.
    """

    needs_images = True

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        labels_path: str | os.PathLike[str],
        preprocess: OnnxPreprocess | dict | str | None = None,
        min_prob: float = 0.2,
        top_k: int | None = 3,
        background_index: int | str | None = "auto",
        *,
        output: str = "auto",
        batch_size: int = 32,
        device: str = "cpu",
        threads: int = 0,
    ) -> None:
        self.config = ClassifierConfig(min_prob=min_prob, top_k=top_k, background_index=background_index, output=output, batch_size=batch_size)
        model_path = str(model_path)
        pre = preprocess if isinstance(preprocess, OnnxPreprocess) else OnnxPreprocess.load(preprocess, model_path)
        self.model_path, self.labels_path = model_path, str(labels_path)
        self._net = OnnxEmbedder(model_path, pre, device=device, threads=threads)
        self.preprocess_config = pre
        labels = read_labels(labels_path)
        n_out = self._net.dim
        if len(labels) != n_out:
            raise ValueError(f"labels file {self.labels_path!r} has {len(labels)} labels but the model outputs {n_out} classes")
        bg = self.config.background_index
        if bg == "auto":
            bg = 0 if labels[0].strip().lower() in _BACKGROUND_NAMES else None
        if bg is not None and bg >= n_out:
            raise ValueError(f"background_index {bg} out of range for {n_out} classes (expected 0..{n_out - 1} or None)")
        self.background_index: int | None = bg
        all_vocab = vocab_for_labels(labels)
        self.class_index = np.array([i for i in range(n_out) if i != bg], dtype=np.int64)
        self.labels = [labels[i] for i in self.class_index]
        self.vocab = [all_vocab[i] for i in self.class_index]
        self.objects = [e.name for e in self.vocab]
        if self.config.output == "auto":
            self.outputs_probs = _looks_like_probs(self._net.embed_images(self._probe_batch()))
        else:
            self.outputs_probs = self.config.output == "probs"

    def _probe_batch(self) -> np.ndarray:
        """Three fixed inputs: a mid-gray image and two seeded noise images, preprocessed."""
        size = self.preprocess_config.size
        rng = np.random.default_rng(0)
        images = [Image.new("RGB", (size, size), (128, 128, 128))]
        images += [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(2)]
        return np.stack([self._net.preprocess(im) for im in images])

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One RGB image -> the model's float32 input (``(3, S, S)`` NCHW or ``(S, S, 3)`` NHWC)."""
        return self._net.preprocess(img if img.mode == "RGB" else img.convert("RGB"))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(B, ...)`` preprocessed float32 -> ``(B, C)`` float32 class probabilities (all columns)."""
        batch = np.asarray(batch, dtype=np.float32)
        bs = self.config.batch_size
        outs = [self._net.embed_images(batch[i : i + bs]) for i in range(0, len(batch), bs)]
        out = np.concatenate(outs) if outs else np.zeros((0, self._net.dim), np.float32)
        return out if self.outputs_probs else _softmax(out)

    def tag_preprocessed(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tag ``(B, ...)`` inputs from :meth:`preprocess` (for decoders that preprocess in workers).

        Returns ``(rows int64, object_idx int64, score float32 probability)``.
        """
        probs = self.probabilities(batch)[:, self.class_index]
        keep = (probs >= self.config.min_prob) & (probs > 0)
        return select_tags(probs, keep, self.config.top_k)

    def tag_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tag RGB images (other modes are converted); rows index ``images``."""
        if len(images) == 0:
            return _EMPTY_TAGS[0].copy(), _EMPTY_TAGS[1].copy(), _EMPTY_TAGS[2].copy()
        return self.tag_preprocessed(np.stack([self.preprocess(im) for im in images]))

    def describe(self) -> dict[str, Any]:
        pre = self.preprocess_config
        return {
            "kind": "onnx-classifier",
            "model": self.model_path,
            "labels": self.labels_path,
            "n_objects": len(self.objects),
            "background_index": self.background_index,
            "min_prob": self.config.min_prob,
            "top_k": self.config.top_k,
            "output": ("probs" if self.outputs_probs else "logits") + (" (detected)" if self.config.output == "auto" else ""),
            "preprocess": {"size": pre.size, "resize": pre.resize, "mean": list(pre.mean), "std": list(pre.std),
                           "offset": pre.offset, "scale": pre.scale, "layout": pre.layout},
            "fixed_batch": self._net.fixed_batch,
            "score": "class probability",
        }


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------

_SPEC_FORMS = "'zero-shot' or 'onnx-classifier:MODEL.onnx,LABELS.txt'"


@dataclass(frozen=True)
class TaggerSpec:
    """A parsed ``--tagger`` value (:func:`parse_tagger_spec`); ``str()`` gives it back."""

    kind: str
    model_path: str = ""
    labels_path: str = ""

    def __post_init__(self) -> None:
        if self.kind not in TAGGER_KINDS:
            raise ValueError(f"tagger kind {self.kind!r}; expected one of {TAGGER_KINDS}")
        if self.kind == "onnx-classifier" and not (self.model_path and self.labels_path):
            raise ValueError(f"onnx-classifier needs a model and a labels path; expected {_SPEC_FORMS}")

    def __str__(self) -> str:
        return self.kind if self.kind == "zero-shot" else f"{self.kind}:{self.model_path},{self.labels_path}"


def parse_tagger_spec(spec: str) -> TaggerSpec:
    """``"zero-shot"`` or ``"onnx-classifier:MODEL.onnx,LABELS.txt"`` -> :class:`TaggerSpec`.

    The labels path is everything after the last comma (it cannot contain one).

    Raises:
        ValueError: any other form (the message lists the allowed ones).
    """
    spec = str(spec).strip()
    if spec == "zero-shot":
        return TaggerSpec("zero-shot")
    kind, sep, rest = spec.partition(":")
    if kind == "onnx-classifier" and sep:
        model, comma, labels = rest.rpartition(",")
        if comma and model.strip() and labels.strip():
            return TaggerSpec("onnx-classifier", model.strip(), labels.strip())
    raise ValueError(f"tagger spec {spec!r} not understood; expected {_SPEC_FORMS}")


def load_tagger(
    spec: TaggerSpec | str,
    *,
    embedder: Embedder | None = None,
    vocab: Sequence[VocabEntry] | None = None,
    zero_shot: ZeroShotConfig | None = None,
    classifier: ClassifierConfig | None = None,
    preprocess: OnnxPreprocess | dict | str | None = None,
    device: str = "cpu",
    threads: int = 0,
) -> Tagger:
    """Build the tagger a spec names.

    ``zero-shot`` needs ``embedder`` (with text tower) and ``vocab``; the
    returned tagger still has to be calibrated. ``onnx-classifier`` uses
    ``classifier`` settings, ``preprocess`` and ``device``/``threads``.

    Raises:
        ValueError: a bad spec, or zero-shot without embedder or vocab.
    """
    if isinstance(spec, str):
        spec = parse_tagger_spec(spec)
    if spec.kind == "zero-shot":
        if embedder is None or vocab is None:
            raise ValueError("the zero-shot tagger needs embedder= (with a text tower) and vocab=")
        return ZeroShotTagger.from_config(embedder, vocab, zero_shot or ZeroShotConfig())
    cfg = classifier or ClassifierConfig()
    return OnnxClassifierTagger(
        spec.model_path, spec.labels_path, preprocess, min_prob=cfg.min_prob, top_k=cfg.top_k,
        background_index=cfg.background_index, output=cfg.output, batch_size=cfg.batch_size, device=device, threads=threads,
    )
