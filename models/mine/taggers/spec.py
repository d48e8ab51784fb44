"""Tagger specs: the one parser of ``--tagger`` values and the factory that builds a tagger from one.

Accepted forms (:data:`SPEC_FORMS`):

* ``zero-shot``: CLIP zero-shot tags from the stored image embeddings (needs
  an open_clip embedding model with a text tower and a vocabulary);
* ``onnx-classifier:MODEL.onnx,LABELS.txt``: an ImageNet-style ONNX
  classifier over the re-read images;
* ``tags:PARQUET``: tags made elsewhere (``dupmine mine --tags PARQUET``;
  :mod:`models.mine.taggers.given`);
* ``none``: no object tags (word triggers only).

:func:`default_tagger_for` chooses the default from an embedding folder's
``config.json`` before any work starts: zero-shot where the embedding model
has a text tower, else ``none``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Sequence

from models.embed.embedders import Embedder, OnnxPreprocess
from models.mine.taggers.base import Tagger
from models.mine.taggers.classifier import ClassifierConfig, OnnxClassifierTagger
from models.mine.taggers.zero_shot import ZeroShotConfig, ZeroShotTagger
from models.mine.vocab import VocabEntry

__all__ = ["SPEC_FORMS", "TaggerKind", "TaggerSpec", "default_tagger_for", "load_tagger", "parse_tagger_spec"]

SPEC_FORMS = "'zero-shot', 'onnx-classifier:MODEL.onnx,LABELS.txt', 'tags:PARQUET' or 'none'"
TEXT_TOWER_PREFIX = "openclip:"  # embedding model specs whose text tower can score a vocabulary


class TaggerKind(str, enum.Enum):
    """The closed set of tagger kinds (a ``str`` enum: ``TaggerKind.ZERO_SHOT == "zero-shot"``)."""

    ZERO_SHOT = "zero-shot"
    ONNX_CLASSIFIER = "onnx-classifier"
    TAGS = "tags"
    NONE = "none"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TaggerSpec:
    """A parsed ``--tagger`` value (:func:`parse_tagger_spec`); ``str()`` gives it back.

    Attributes:
        kind: :class:`TaggerKind` (a plain string of one is accepted).
        model_path, labels_path: the classifier's files (``onnx-classifier``).
        tags_path: the tag table (``tags``).
    """

    kind: TaggerKind
    model_path: str = ""
    labels_path: str = ""
    tags_path: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", TaggerKind(self.kind))
        except ValueError:
            raise ValueError(f"tagger kind {self.kind!r}; expected {SPEC_FORMS}") from None
        if self.kind is TaggerKind.ONNX_CLASSIFIER and not (self.model_path and self.labels_path):
            raise ValueError(f"onnx-classifier needs a model and a labels path; expected {SPEC_FORMS}")
        if self.kind is TaggerKind.TAGS and not self.tags_path:
            raise ValueError(f"tags needs a parquet path; expected {SPEC_FORMS}")

    def __str__(self) -> str:
        if self.kind is TaggerKind.ONNX_CLASSIFIER:
            return f"{self.kind}:{self.model_path},{self.labels_path}"
        if self.kind is TaggerKind.TAGS:
            return f"{self.kind}:{self.tags_path}"
        return str(self.kind)

    @property
    def needs_vocab(self) -> bool:
        """Whether this tagger needs a vocabulary file (zero-shot scores one; the others carry their labels)."""
        return self.kind is TaggerKind.ZERO_SHOT

    @property
    def tags_objects(self) -> bool:
        """False for ``none``."""
        return self.kind is not TaggerKind.NONE


def parse_tagger_spec(spec: str | TaggerSpec) -> TaggerSpec:
    """One of :data:`SPEC_FORMS` -> :class:`TaggerSpec`.

    The classifier's labels path is everything after the last comma (it
    cannot contain one).

    Raises:
        ValueError: any other form (the message lists every accepted one).
    """
    if isinstance(spec, TaggerSpec):
        return spec
    text = str(spec).strip()
    if text in (TaggerKind.ZERO_SHOT.value, TaggerKind.NONE.value):
        return TaggerSpec(TaggerKind(text))
    kind, sep, rest = text.partition(":")
    if kind == TaggerKind.ONNX_CLASSIFIER.value and sep:
        model, comma, labels = rest.rpartition(",")
        if comma and model.strip() and labels.strip():
            return TaggerSpec(TaggerKind.ONNX_CLASSIFIER, model.strip(), labels.strip())
    if kind == TaggerKind.TAGS.value and sep and rest.strip():
        return TaggerSpec(TaggerKind.TAGS, tags_path=rest.strip())
    raise ValueError(f"tagger spec {text!r} not understood; expected {SPEC_FORMS}")


def has_text_tower(model: str | None) -> bool:
    """Whether an embedding model spec (``config.json``'s ``model``) has a text tower for zero-shot tagging."""
    return bool(model) and str(model).startswith(TEXT_TOWER_PREFIX)


def default_tagger_for(embedding_config: dict | None) -> TaggerSpec:
    """The default tagger for an embedding folder, decided before any work starts.

    Args:
        embedding_config: the folder's ``config.json`` as written by ``dupmine
            embed`` (``{"config": {"model": ...}, ...}``), its inner ``config``
            dict, or None (a folder made elsewhere with no config).

    Returns:
        ``zero-shot`` when the model has a text tower (``openclip:...``), else
        ``none`` (no object tags): a ``pixel`` or ONNX image-only embedding
        cannot score a vocabulary.
    """
    cfg = embedding_config or {}
    model = (cfg.get("config") or {}).get("model") if "config" in cfg else cfg.get("model")
    return TaggerSpec(TaggerKind.ZERO_SHOT if has_text_tower(model) else TaggerKind.NONE)


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
    ``tags`` reads the tag table's object names.

    Raises:
        ValueError: a bad spec, ``none``, or zero-shot without embedder or vocab.
    """
    spec = parse_tagger_spec(spec)
    if spec.kind is TaggerKind.ZERO_SHOT:
        if embedder is None or vocab is None:
            raise ValueError("the zero-shot tagger needs embedder= (with a text tower) and vocab=")
        return ZeroShotTagger.from_config(embedder, vocab, zero_shot or ZeroShotConfig())
    if spec.kind is TaggerKind.TAGS:
        from models.mine.taggers.given import GivenTags

        return GivenTags.load(spec.tags_path)
    if spec.kind is TaggerKind.NONE:
        raise ValueError("tagger 'none' builds no tagger (check spec.tags_objects first)")
    cfg = classifier or ClassifierConfig()
    return OnnxClassifierTagger(
        spec.model_path, spec.labels_path, preprocess, min_prob=cfg.min_prob, top_k=cfg.top_k,
        background_index=cfg.background_index, output=cfg.output, batch_size=cfg.batch_size, device=device, threads=threads,
    )
