"""Zero-shot (CLIP) object tagger on stored image embeddings, calibrated per object.

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

"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from models.embed.embedders import Embedder, l2_normalise
from models.mine.taggers.base import Tagger, Tags, check_top_k, empty_tags, select_tags
from models.mine.taggers.calibration import MAD_TO_SIGMA, ScoreSketch, ZeroShotCalibration
from models.mine.vocab import VocabEntry

__all__ = ["DEFAULT_GENERIC_WORDS", "DEFAULT_TEMPLATES", "ZeroShotConfig", "ZeroShotTagger"]


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
_CHUNK_ROWS = 4096


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
        check_top_k(self.top_k)
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
    def tag_embeddings(self, img_emb: np.ndarray) -> Tags:
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
            return empty_tags()
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

    def tag_images(self, images: Sequence[Image.Image]) -> Tags:
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

