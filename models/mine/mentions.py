"""Caption mentions of vocabulary objects: the string test (synonym n-grams on lemmas or surface forms).

Plain Python (no Apache Beam). :class:`VocabMatcher` decides which
:class:`models.mine.vocab.VocabEntry` objects a caption names;
:func:`mentions` is the one-off convenience. The semantic test that also
counts WordNet synonyms, hypernyms, hyponyms and wholes is
:mod:`models.mine.semantic`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from models.mine.keywords import KeywordConfig, KeywordExtractor
from models.mine.vocab import VocabEntry

if TYPE_CHECKING:  # pragma: no cover
    from spacy.tokens import Doc

__all__ = ["MENTION_TESTS", "VocabMatcher", "mention_test", "mentions"]

@lru_cache(maxsize=1)
def _default_extractor() -> KeywordExtractor:
    return KeywordExtractor(KeywordConfig())


@dataclass
class _Compiled:
    max_len: int
    seq_index: dict[tuple[str, ...], list[int]] = field(default_factory=dict)
    kw_index: dict[str, list[int]] = field(default_factory=dict)


class VocabMatcher:
    """Decide which vocabulary entries a caption mentions.

    A caption mentions an entry when any synonym occurs as a contiguous,
    whole-token sequence in the caption, compared either on lemmas ("flags"
    matches "flag") or on lowercase surface forms. Punctuation splits the
    caption into segments a synonym cannot span (an intra-word hyphen does
    not: "t-shirt" == "t shirt"). Stop words inside a synonym must match
    ("pitcher's mound").

    Keyword-list input (the output of :meth:`KeywordExtractor.extract_batch`)
    is approximate: only synonyms whose tokens are all kept keyword tokens and
    that are at most ``max_ngram`` long can be matched (e.g. "t-shirt" cannot:
    "t" is a single character). Prefer text input.

    Args:
        entries: the vocabulary (E entries); results use indices into it.
        extractor: supplies the spaCy pipeline and keyword rule (default:
            a shared blank-English extractor).
    """

    def __init__(self, entries: Sequence[VocabEntry], extractor: KeywordExtractor | None = None) -> None:
        self.entries = list(entries)
        self.extractor = extractor if extractor is not None else _default_extractor()
        self._compiled: _Compiled | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_compiled"] = None
        return state

    def _segments(self, doc: Doc) -> list[list[tuple[str, str]]]:
        """Segments of (lemma, surface) pairs, split at punctuation (not intra-word hyphens)."""
        segs: list[list[tuple[str, str]]] = []
        cur: list[tuple[str, str]] = []
        for i, tok in enumerate(doc):
            if tok.is_space:
                continue
            if tok.is_punct:
                if not KeywordExtractor._is_transparent(doc, i) and cur:
                    segs.append(cur)
                    cur = []
                continue
            cur.append((self.extractor.lemma_text(tok), tok.lower_))
        if cur:
            segs.append(cur)
        return segs

    def compile(self) -> None:
        """Tokenise and index all synonyms (done lazily on first use)."""
        if self._compiled is not None:
            return
        ex = self.extractor
        nlp = ex.load()
        owners: list[int] = []
        texts: list[str] = []
        for ei, entry in enumerate(self.entries):
            for syn in entry.synonyms:
                text, _ = ex.normalize(syn)
                if text is not None:
                    owners.append(ei)
                    texts.append(text)
        comp = _Compiled(max_len=1)
        for ei, doc in zip(owners, nlp.pipe(texts, batch_size=ex.config.batch_size)):
            segs = self._segments(doc)
            if len(segs) == 1:
                seg = segs[0]
                for key in {tuple(l for l, _ in seg), tuple(s for _, s in seg)}:
                    lst = comp.seq_index.setdefault(key, [])
                    if ei not in lst:
                        lst.append(ei)
                comp.max_len = max(comp.max_len, len(seg))
            runs = ex.runs(doc)
            n_tokens = sum(1 for i in range(len(doc)) if not KeywordExtractor._is_transparent(doc, i))
            if len(runs) == 1 and len(runs[0]) == n_tokens and n_tokens <= ex.config.max_ngram:
                lst = comp.kw_index.setdefault(" ".join(runs[0]), [])
                if ei not in lst:
                    lst.append(ei)
        self._compiled = comp

    def _from_doc(self, doc: Doc) -> np.ndarray:
        comp = self._compiled
        assert comp is not None
        hits: set[int] = set()
        for seg in self._segments(doc):
            lemmas = [l for l, _ in seg]
            surface = [s for _, s in seg]
            for n in range(1, min(comp.max_len, len(seg)) + 1):
                for i in range(len(seg) - n + 1):
                    for key in (tuple(lemmas[i : i + n]), tuple(surface[i : i + n])):
                        found = comp.seq_index.get(key)
                        if found:
                            hits.update(found)
        return np.array(sorted(hits), dtype=np.int64)

    def _from_keywords(self, keywords: Iterable[str]) -> np.ndarray:
        comp = self._compiled
        assert comp is not None
        hits: set[int] = set()
        for kw in keywords:
            found = comp.kw_index.get(kw)
            if found:
                hits.update(found)
        return np.array(sorted(hits), dtype=np.int64)

    def mentioned(self, caption_keywords_or_text: str | Sequence[str]) -> np.ndarray:
        """Indices (int64, sorted, shape (m,)) of entries mentioned by one caption.

        A ``str`` is treated as raw caption text (normalised here); a list/tuple
        of ``str`` as that caption's extracted keywords.
        """
        self.compile()
        if isinstance(caption_keywords_or_text, str):
            text, _ = self.extractor.normalize(caption_keywords_or_text)
            if text is None:
                return np.zeros(0, dtype=np.int64)
            return self._from_doc(self.extractor.nlp(text))
        return self._from_keywords(caption_keywords_or_text)

    def mentioned_batch(self, captions: Sequence[Any]) -> list[np.ndarray]:
        """:meth:`mentioned` for a batch of raw caption texts via ``nlp.pipe``.

        Returns a length-B list of int64 index arrays (empty for rejected captions).
        """
        self.compile()
        ex = self.extractor
        out = [np.zeros(0, dtype=np.int64) for _ in captions]
        texts: list[str] = []
        idx: list[int] = []
        for i, caption in enumerate(captions):
            text, _ = ex.normalize(caption)
            if text is not None:
                texts.append(text)
                idx.append(i)
        for i, doc in zip(idx, ex.nlp.pipe(texts, batch_size=ex.config.batch_size)):
            out[i] = self._from_doc(doc)
        return out

    def explain(self, keyword: str, entry: int) -> str:
        """Why captions with ``keyword`` were judged not to name object ``entry`` (what the string test looked for)."""
        e = self.entries[entry]
        return f"string test: no caption n-gram is '{e.name}' or one of its synonyms {list(e.synonyms)[:6]}"

    def mentions(self, caption_keywords_or_text: str | Sequence[str], entry: int | VocabEntry) -> bool:
        """Whether one caption (text or keyword list) mentions ``entry`` (index or entry)."""
        if isinstance(entry, VocabEntry):
            try:
                index = self.entries.index(entry)
            except ValueError:
                raise ValueError(f"entry {entry.name!r} is not in this matcher's vocabulary") from None
        else:
            index = int(entry)
            if not 0 <= index < len(self.entries):
                raise ValueError(f"entry index must be in 0..{len(self.entries) - 1}, got {entry!r}")
        return bool(np.isin(index, self.mentioned(caption_keywords_or_text)))


def mentions(
    caption_keywords_or_text: str | Sequence[str],
    entry: VocabEntry,
    extractor: KeywordExtractor | None = None,
) -> bool:
    """Whether a caption mentions ``entry`` or any of its synonyms.

    Convenience for single checks (it compiles a one-entry
    :class:`VocabMatcher` per call); use :class:`VocabMatcher` for bulk work.

    Args:
        caption_keywords_or_text: raw caption text (``str``) or that caption's
            keyword list from :meth:`KeywordExtractor.extract_batch`.
        entry: the vocabulary entry.
        extractor: pipeline to lemmatise with (default: shared blank English).
    """
    return VocabMatcher([entry], extractor).mentions(caption_keywords_or_text, 0)


MENTION_TESTS = ("semantic", "string")


def mention_test(entries: Sequence[VocabEntry], extractor: KeywordExtractor, mode: str, depth: int):
    """The caption-mention test ``--mention`` names, over ``entries``: an object with ``mentioned_batch`` and
    ``explain``.

    ``semantic``: :class:`models.mine.semantic.SemanticMatcher` where WordNet is installed, else (said in the
    summary by :func:`models.mine.semantic.describe_mention_test`) :class:`VocabMatcher`; ``string``:
    :class:`VocabMatcher`. Raises ValueError for any other mode (listing the accepted ones).
    """
    if mode not in MENTION_TESTS:
        raise ValueError(f"mention test {mode!r}; expected one of {MENTION_TESTS}")
    if mode == "semantic":
        from models.mine.semantic import SemanticMatcher, wordnet_available

        if wordnet_available():
            return SemanticMatcher(entries, extractor, depth)
    return VocabMatcher(entries, extractor)
