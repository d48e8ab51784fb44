"""Keyword extraction: captions -> per-caption sets of lemmatised n-grams (spaCy).

Plain Python (no Apache Beam): the pipeline wraps these objects in its DoFns.

:class:`KeywordExtractor` turns captions (normalised by
:mod:`models.mine.captions`) into a per-caption *set* of lemmatised keywords
(uni-, bi- and trigrams) with spaCy. The default is ``spacy.blank("en")`` plus
the lookup lemmatizer from ``spacy-lookups-data``, which works offline and
needs no trained pipeline.

Keyword rule (documented contract, relied on by the trigger statistics)
-----------------------------------------------------------------------
After normalisation and tokenisation every token is either

* *kept*: its lemma is lowercase, has at least ``min_token_len`` characters,
  contains at least one letter (any script), and neither the token nor its
  lemma is a spaCy stop word;
* *transparent*: whitespace tokens and an intra-word hyphen (``-`` glued to
  both neighbours, as in ``spider-man``). They neither produce keywords nor
  break a run;
* *dropped*: everything else: stop words, punctuation, numbers and other
  tokens without a letter (``1889``, ``3.5``), symbols, emoji and single
  characters.

A dropped token **breaks the run**. Keywords are all n-grams
(1 <= n <= ``max_ngram``) of lemmas over each *maximal run of consecutive kept
tokens*. So "the starry night by van gogh" gives ``starry``, ``night``,
``starry night``, ``van``, ``gogh``, ``van gogh`` but never ``night van``
(the stop word "by" separates the runs), and "spider-man" gives ``spider``,
``man`` and ``spider man``. Each keyword appears once per caption (set
semantics); the order is stable: all unigrams in text order, then bigrams,
then trigrams, then (trained pipelines only) named entities and noun chunks.

Known lookup-lemmatizer quirks: it is context free, so "painting" (verb or
noun) becomes ``paint`` while "paintings" becomes ``painting``; "data" becomes
``datum`` and "media" ``medium``. Captions and vocabulary synonyms go through
the same lemmatizer, so matching stays consistent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from models.mine.captions import (
    DEFAULT_MAX_CHARS,
    REJECT_NO_KEYWORDS,
    WS_RE,
    normalize_caption_with_reason,
)

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language
    from spacy.tokens import Doc, Token

__all__ = ["KeywordConfig", "KeywordExtractor"]

_MAX_NGRAM_ALLOWED = 5


@dataclass(frozen=True)
class KeywordConfig:
    """Settings of :class:`KeywordExtractor`.

    Attributes:
        spacy_model: ``None`` -> ``spacy.blank("en")`` + lookup lemmatizer
            (offline). Otherwise the name of an installed trained pipeline
            (``"en_core_web_sm"``) or a path to a saved pipeline directory; its
            named entities and noun chunks are added as extra keywords.
        max_ngram: longest n-gram, 1..5 (default 3).
        min_token_len: minimum characters of a kept lemma (default 2: drops
            single characters).
        batch_size: ``nlp.pipe`` batch size, >= 1.
        max_chars: caption length cap after normalisation.
        lowercase_input: lowercase captions before spaCy. ``None`` (default)
            means True for the blank pipeline (the lookup table is keyed by
            lowercase forms) and False for trained pipelines (NER needs case).
            Keywords are always lowercase.
        max_span_tokens: longest entity / noun chunk kept as a keyword (tokens).
        n_process: ``nlp.pipe`` processes (1 = in-process; keep 1 inside Beam).
    """

    spacy_model: str | None = None
    max_ngram: int = 3
    min_token_len: int = 2
    batch_size: int = 512
    max_chars: int = DEFAULT_MAX_CHARS
    lowercase_input: bool | None = None
    max_span_tokens: int = 6
    n_process: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.max_ngram, int) or not 1 <= self.max_ngram <= _MAX_NGRAM_ALLOWED:
            raise ValueError(f"max_ngram must be an int in 1..{_MAX_NGRAM_ALLOWED}, got {self.max_ngram!r}")
        if not isinstance(self.min_token_len, int) or self.min_token_len < 1:
            raise ValueError(f"min_token_len must be an int >= 1, got {self.min_token_len!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not isinstance(self.max_chars, int) or self.max_chars < 1:
            raise ValueError(f"max_chars must be an int >= 1, got {self.max_chars!r}")
        if not isinstance(self.max_span_tokens, int) or self.max_span_tokens < 1:
            raise ValueError(f"max_span_tokens must be an int >= 1, got {self.max_span_tokens!r}")
        if not isinstance(self.n_process, int) or self.n_process < 1:
            raise ValueError(f"n_process must be an int >= 1, got {self.n_process!r}")
        if self.spacy_model is not None and (not isinstance(self.spacy_model, str) or not self.spacy_model.strip()):
            raise ValueError(f"spacy_model must be None or a non-empty pipeline name/path, got {self.spacy_model!r}")

    @property
    def lowercase(self) -> bool:
        """Effective ``lowercase_input`` (resolves ``None``)."""
        if self.lowercase_input is None:
            return self.spacy_model is None
        return self.lowercase_input


def _has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


class KeywordExtractor:
    """Lemmatised keyword sets per caption (see the module docstring for the rule).

    Load once (:meth:`load`, or lazily on first use); the loaded spaCy pipeline
    is not pickled (``__getstate__`` drops it), so an instance can be shipped
    to Beam workers and reloads there.

    Example::

        ex = KeywordExtractor(KeywordConfig())
        ex.extract_batch(["Astronauts riding horses on the Moon"])
        # [['astronaut', 'ride', 'horse', 'moon', 'astronaut ride', ...]]
    """

    def __init__(self, config: KeywordConfig | None = None) -> None:
        self.config = config if config is not None else KeywordConfig()
        self._nlp: Language | None = None
        self._stop_words: frozenset[str] = frozenset()
        self._context_free_lemmas = True
        self._lookup_table: Any = None
        # orth id -> kept lemma (str) or None (dropped); valid for every token
        # with that text when lemmas are context free (lookup mode), otherwise
        # only the lexical part of the decision is cached.
        self._lex_cache: dict[int, str | None] = {}

    # -- loading -----------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_nlp"] = None
        state["_lookup_table"] = None
        state["_lex_cache"] = {}
        return state

    @property
    def is_loaded(self) -> bool:
        """Whether :meth:`load` has run."""
        return self._nlp is not None

    @property
    def nlp(self) -> Language:
        """The spaCy pipeline (loads on first access)."""
        return self.load()

    def load(self) -> Language:
        """Build (once) and return the spaCy pipeline.

        Raises:
            ImportError: spaCy, ``spacy-lookups-data`` (blank pipeline) or the
                named trained pipeline is not installed; the message names the
                package to install.
        """
        if self._nlp is not None:
            return self._nlp
        try:
            import spacy
        except ImportError as exc:  # pragma: no cover - spaCy is a hard dependency
            raise ImportError("KeywordExtractor needs spaCy: pip install spacy spacy-lookups-data") from exc
        name = self.config.spacy_model
        if name is None:
            nlp = spacy.blank("en")
            nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
            try:
                nlp.initialize()
            except (ValueError, ImportError, OSError) as exc:
                raise ImportError(
                    "the lookup lemmatizer needs the lemma tables of spacy-lookups-data: "
                    "pip install spacy-lookups-data"
                ) from exc
            self._context_free_lemmas = True
        else:
            if not (spacy.util.is_package(name) or Path(name).expanduser().is_dir()):
                raise ImportError(
                    f"spaCy pipeline {name!r} is not installed: install it with "
                    f"`pip install {name}` or `python -m spacy download {name}`, pass a path to a saved "
                    "pipeline directory, or use spacy_model=None for the offline blank('en') + lookup lemmatizer"
                )
            nlp = spacy.load(Path(name).expanduser() if Path(name).expanduser().is_dir() else name)
            if "lemmatizer" not in nlp.pipe_names:
                lemmatizer = nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
                try:
                    lemmatizer.initialize()
                except (ValueError, ImportError, OSError) as exc:
                    raise ImportError(
                        f"pipeline {name!r} has no lemmatizer and the lookup tables are missing: "
                        "pip install spacy-lookups-data"
                    ) from exc
            lem = nlp.get_pipe("lemmatizer")
            self._context_free_lemmas = getattr(lem, "mode", "lookup") == "lookup"
        if self._context_free_lemmas:
            lem = nlp.get_pipe("lemmatizer")
            lookups = getattr(lem, "lookups", None)
            if lookups is not None and lookups.has_table("lemma_lookup"):
                self._lookup_table = lookups.get_table("lemma_lookup")
        self._stop_words = frozenset(nlp.Defaults.stop_words)
        self._lex_cache = {}
        self._nlp = nlp
        return nlp

    # -- per-token decisions -----------------------------------------------
    def _lexically_dropped(self, tok: Token) -> bool:
        text = tok.lower_
        return (
            tok.is_stop
            or tok.is_punct
            or len(text) < self.config.min_token_len
            or not _has_letter(text)
        )

    def lemma_text(self, tok: Token) -> str:
        """Lowercase lemma of ``tok``.

        In lookup mode the table is consulted with the lowercased form first
        (the tables are keyed by lowercase words, so "Paintings" in a
        case-preserving pipeline still becomes "painting"); otherwise the
        pipeline's own ``token.lemma_``.
        """
        if self._lookup_table is not None:
            lower = tok.lower_
            lemma = self._lookup_table.get(lower)
            if lemma is not None:
                return str(lemma).lower()
        return (tok.lemma_ or tok.text).lower()

    def _lemma_of(self, tok: Token) -> str | None:
        lemma = self.lemma_text(tok)
        if len(lemma) < self.config.min_token_len or lemma in self._stop_words or not _has_letter(lemma):
            return None
        return lemma

    def kept_lemma(self, tok: Token) -> str | None:
        """The token's keyword lemma, or ``None`` if the token is dropped."""
        key = tok.orth
        if self._context_free_lemmas:
            try:
                return self._lex_cache[key]
            except KeyError:
                value = None if self._lexically_dropped(tok) else self._lemma_of(tok)
                self._lex_cache[key] = value
                return value
        cached = self._lex_cache.get(key, "")
        if cached is None:
            return None
        if cached == "":
            if self._lexically_dropped(tok):
                self._lex_cache[key] = None
                return None
            self._lex_cache[key] = "?"  # lexically fine; lemma depends on context
        return self._lemma_of(tok)

    @staticmethod
    def _is_transparent(doc: Doc, i: int) -> bool:
        tok = doc[i]
        if tok.is_space:
            return True
        return (
            tok.text == "-"
            and 0 < i < len(doc) - 1
            and not tok.whitespace_
            and not doc[i - 1].whitespace_
        )

    def runs(self, doc: Doc) -> list[list[str]]:
        """Maximal runs of consecutive kept lemmas in ``doc`` (see module docstring)."""
        out: list[list[str]] = []
        run: list[str] = []
        for i, tok in enumerate(doc):
            lemma = self.kept_lemma(tok)
            if lemma is not None:
                run.append(lemma)
            elif not self._is_transparent(doc, i):
                if run:
                    out.append(run)
                    run = []
        if run:
            out.append(run)
        return out

    def _span_keyword(self, span: Any) -> str | None:
        toks = [t for t in span if not t.is_space]
        while toks and (toks[0].is_stop or toks[0].is_punct):
            toks.pop(0)
        while toks and (toks[-1].is_stop or toks[-1].is_punct):
            toks.pop()
        if not toks or len(toks) > self.config.max_span_tokens:
            return None
        text = " ".join(self.lemma_text(t) for t in toks if not t.is_punct or t.text == "&")
        text = WS_RE.sub(" ", text).strip()
        if len(text) < self.config.min_token_len or not _has_letter(text):
            return None
        return text

    def keywords_from_doc(self, doc: Doc) -> list[str]:
        """Keyword list (set semantics, stable order) for one processed ``Doc``."""
        runs = self.runs(doc)
        found: dict[str, None] = {}
        for n in range(1, self.config.max_ngram + 1):
            for run in runs:
                for i in range(len(run) - n + 1):
                    found[" ".join(run[i : i + n]) if n > 1 else run[i]] = None
        if self.config.spacy_model is not None:
            spans: list[Any] = list(doc.ents)
            if doc.has_annotation("DEP"):
                spans.extend(doc.noun_chunks)
            for span in spans:
                kw = self._span_keyword(span)
                if kw is not None:
                    found[kw] = None
        return list(found)

    # -- batch API -----------------------------------------------------------
    def normalize(self, caption: Any) -> tuple[str | None, str | None]:
        """:func:`normalize_caption_with_reason` with this extractor's settings."""
        return normalize_caption_with_reason(
            caption, max_chars=self.config.max_chars, lowercase=self.config.lowercase
        )

    def extract_with_reasons(self, captions: Sequence[Any]) -> tuple[list[list[str]], list[str | None]]:
        """Keywords and rejection reasons for a batch of raw captions.

        Args:
            captions: length-B sequence of raw captions (``str``; ``None``/NaN allowed).

        Returns:
            ``(keywords, reasons)``, both length B. ``reasons[i]`` is ``None``
            when ``keywords[i]`` is non-empty; otherwise one of
            :data:`REJECT_EMPTY`, :data:`REJECT_EMPTY_AFTER_NORMALISATION`,
            ``"not a string: <type>"`` or :data:`REJECT_NO_KEYWORDS`.
        """
        nlp = self.load()
        keywords: list[list[str]] = [[] for _ in captions]
        reasons: list[str | None] = [None] * len(captions)
        texts: list[str] = []
        idx: list[int] = []
        for i, caption in enumerate(captions):
            text, reason = self.normalize(caption)
            if text is None:
                reasons[i] = reason
            else:
                texts.append(text)
                idx.append(i)
        docs = nlp.pipe(texts, batch_size=self.config.batch_size, n_process=self.config.n_process)
        for i, doc in zip(idx, docs):
            kws = self.keywords_from_doc(doc)
            keywords[i] = kws
            if not kws:
                reasons[i] = REJECT_NO_KEYWORDS
        return keywords, reasons

    def extract_batch(self, captions: Sequence[Any]) -> list[list[str]]:
        """Keyword lists for a batch of raw captions (``[]`` for rejected ones).

        Args:
            captions: length-B sequence of raw captions.

        Returns:
            Length-B list; entry i is caption i's keywords (lowercase lemmas,
            n-grams space-joined, each once, stable order).
        """
        return self.extract_with_reasons(captions)[0]

    def extract(self, caption: Any) -> list[str]:
        """Keywords of a single caption (convenience wrapper of :meth:`extract_batch`)."""
        return self.extract_batch([caption])[0]

