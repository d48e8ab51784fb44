"""The mine stage's view of object taggers: build from a spec, calibrate, tag a part.

Wraps :mod:`models.mine.taggers.spec` for the pipeline:

* ``zero-shot``: the open_clip model that made the embeddings scores the
  vocabulary against the *stored* image embeddings (no image re-read). Its
  per-object thresholds are calibrated on a sample of the dataset
  (``fit_calibration``, written to ``tagger_calibration.json``); a vocabulary
  of O objects keeps at most ``top_k`` tags per image (default 3).
* ``onnx-classifier:MODEL.onnx,LABELS.txt``: an ImageNet-style classifier run
  over the images, re-read from the shards listed in the embedding folder's
  ``config.json``. Its labels get WordNet synsets from ``label_synsets`` (one
  WordNet id per non-background label) and, with a ``--vocab``, the synonyms
  of the vocabulary's categories with the same synset (LVIS).
* ``tags:PARQUET``: tags made elsewhere, joined to rows by sample id
  (:mod:`models.mine.taggers.given`).
"""
from __future__ import annotations

import numpy as np

from models.storage.imaging import ImageRejected, decode_image
from models.storage.shards import Sample, ShardRef, read_shard

ZERO_SHOT_Z = 4.0   # about 0.03% false tags per object under normal scores (LVIS: ~0.04 per image)
ZERO_SHOT_TOP_K = 3


class MineTagger:
    """A tagger plus what the pipeline needs: ``objects``, ``vocab``, calibration, per-part tagging."""

    def __init__(self, tagger, vocab=None):
        self.tagger = tagger
        self.vocab = list(vocab if vocab is not None else tagger.vocab)
        self.objects = list(tagger.objects)
        self.needs_images = bool(tagger.needs_images)
        self.needs_ids = bool(getattr(tagger, "needs_ids", False))  # tags given per sample id (--tags)

    def fit_calibration(self, sample: np.ndarray) -> dict:
        if self.needs_images or self.needs_ids:
            return {}
        return self.tagger.fit(np.asarray(sample, np.float32)).to_dict()

    def load_calibration(self, calibration: dict) -> None:
        if calibration and not (self.needs_images or self.needs_ids):
            self.tagger.set_calibration(calibration)

    def tag_embeddings(self, emb: np.ndarray):
        return self.tagger.tag_embeddings(emb)

    def tag_given(self, n_rows: int, given):
        """Tags of a part's rows from the joined ``--tags`` rows (see :meth:`models.mine.taggers.given.GivenTags.tag_rows`)."""
        return self.tagger.tag_rows(n_rows, given)

    def tag_shard(self, shards: dict, part: str, keys: list[str], batch: int = 32):
        """Re-read the part's shard and tag the images of ``keys`` (rows in ``keys`` order)."""
        if part not in shards:
            raise ValueError(f"no shard with id {part!r} in the embedding folder's config.json; cannot re-read its images")
        path, fmt = shards[part]
        row_of = {k: i for i, k in enumerate(keys)}
        rows, objs, scores, images, idx = [], [], [], [], []

        def flush():
            if images:
                r, o, s = self.tagger.tag_images(images)
                rows.append(np.asarray(idx, np.int64)[r])
                objs.append(o)
                scores.append(s)
                images.clear()
                idx.clear()

        for item in read_shard(ShardRef(path, fmt, part)):
            if not isinstance(item, Sample) or item.key not in row_of:
                continue
            try:
                images.append(decode_image(item.image, target_size=256).image)
            except ImageRejected:
                continue
            idx.append(row_of[item.key])
            if len(images) == batch:
                flush()
        flush()
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        r, o, s = np.concatenate(rows), np.concatenate(objs), np.concatenate(scores)
        order = np.argsort(r, kind="stable")
        return r[order], o[order], s[order]


def _synset_key(wn):
    from models.mine.semantic import entry_synsets

    def key(entry):
        found = entry_synsets(wn, entry)
        return found[0].offset() if found else None

    return key


def classifier_vocab(tagger, label_synsets: str | None, vocab_path: str | None) -> list:
    """The classifier's label entries with WordNet synsets and, with ``vocab_path``, the same-synset synonyms."""
    from models.mine.vocab import load_vocab, merge_synonyms, read_synset_ids, with_synsets

    vocab = list(tagger.vocab)
    if label_synsets:
        vocab = with_synsets(vocab, read_synset_ids(label_synsets))
    if vocab_path:
        from models.mine.semantic import load_wordnet, wordnet_available

        if wordnet_available():
            vocab = merge_synonyms(vocab, load_vocab(vocab_path), _synset_key(load_wordnet()))
    return vocab


def build_tagger(spec, vocab_path: str | None, model: str | None, z: float = ZERO_SHOT_Z,
                 top_k: int = ZERO_SHOT_TOP_K, label_synsets: str | None = None) -> MineTagger | None:
    """The tagger a spec names (:func:`models.mine.taggers.spec.parse_tagger_spec`), or None for ``none``.

    ``zero-shot`` needs ``vocab_path`` and the open_clip ``model`` spec; ``z`` and ``top_k`` are its decision
    rule (robust z-score threshold per object, tags kept per image). ``label_synsets``: WordNet ids of a
    classifier's labels. ``tags:PARQUET`` takes its objects from the tag file, and synonyms and synsets from
    ``vocab_path`` entries of the same name.
    """
    from models.mine.taggers.spec import TaggerKind, load_tagger, parse_tagger_spec
    from models.mine.taggers.zero_shot import ZeroShotConfig
    from models.mine.vocab import load_vocab

    parsed = parse_tagger_spec(spec)
    if parsed.kind is TaggerKind.NONE:
        return None
    if parsed.kind is TaggerKind.ZERO_SHOT:
        from models.embed.embedders import EmbedderConfig, load_embedder

        if not vocab_path:
            raise ValueError("zero-shot tagging needs a vocabulary file (--vocab)")
        embedder = load_embedder(EmbedderConfig(model=model, device="cpu"))
        return MineTagger(load_tagger(parsed, embedder=embedder, vocab=load_vocab(vocab_path),
                                      zero_shot=ZeroShotConfig(z=z, top_k=top_k)))
    tagger = load_tagger(parsed)
    if parsed.kind is TaggerKind.TAGS:
        return MineTagger(tagger, tagger.vocab_with(load_vocab(vocab_path)) if vocab_path else None)
    return MineTagger(tagger, classifier_vocab(tagger, label_synsets, vocab_path))
