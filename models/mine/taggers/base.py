"""The tagger interface and the tag arrays every tagger returns.

An object-level trigger is a caption keyword w whose images keep showing an
object o that the caption never names ("astronaut" -> US flag). Counting those
needs, per image, the set of objects it shows. Taggers produce that set
behind one interface (:class:`Tagger`):

* :class:`models.mine.taggers.zero_shot.ZeroShotTagger` scores stored CLIP
  image embeddings against prompt-ensembled text embeddings of an object
  vocabulary, with per-object calibrated thresholds;
* :class:`models.mine.taggers.classifier.OnnxClassifierTagger` runs an
  ImageNet-style ONNX classifier over decoded images;
* :mod:`models.mine.taggers.given` reads tags made elsewhere (``--tags``).

Every tagger returns tags as three parallel arrays
``(rows int64 (T,), object_idx int64 (T,), score float32 (T,))``: ``rows``
indexes the input batch (ascending), ``object_idx`` indexes
:attr:`Tagger.objects`, and within a row tags come in decreasing score order
(ties: lower object index first). Which spec builds which tagger:
:mod:`models.mine.taggers.spec`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Sequence

import numpy as np
from PIL import Image

__all__ = ["Tags", "Tagger", "check_top_k", "empty_tags", "select_tags"]


class Tags(NamedTuple):
    """Tags of a batch: ``rows`` (T,) int64 ascending, ``objects`` (T,) int64, ``scores`` (T,) float32."""

    rows: np.ndarray
    objects: np.ndarray
    scores: np.ndarray


def empty_tags() -> Tags:
    """No tags (fresh arrays)."""
    return Tags(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def select_tags(values: np.ndarray, keep: np.ndarray, top_k: int | None) -> Tags:
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
        return empty_tags()
    vals = np.asarray(values[rows, cols], dtype=np.float32)
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    if top_k is not None:
        first = np.searchsorted(rows, rows, side="left")
        within = np.arange(rows.size) - first < top_k
        rows, cols, vals = rows[within], cols[within], vals[within]
    return Tags(rows.astype(np.int64), cols.astype(np.int64), vals.astype(np.float32))


def check_top_k(top_k: int | None) -> None:
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

    def tag_embeddings(self, img_emb: np.ndarray) -> Tags:
        """Tag ``(N, D)`` float32 L2-normalised image embeddings.

        Returns ``(rows int64, object_idx int64, score float32)`` (see :func:`select_tags`).

        Raises:
            TypeError: this tagger needs images (``needs_images`` is True).
        """
        raise TypeError(f"{type(self).__name__} tags decoded images, not embeddings (needs_images=True); use tag_images")

    def tag_images(self, images: Sequence[Image.Image]) -> Tags:
        """Tag a list of RGB ``PIL.Image``; same return value as :meth:`tag_embeddings`."""
        raise TypeError(f"{type(self).__name__} cannot tag images")

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-safe description (kind, settings, what ``score`` means) to write next to outputs."""

