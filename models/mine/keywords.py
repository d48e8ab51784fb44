"""Caption normalisation, keyword extraction and object-vocabulary matching.

Plain Python (no Apache Beam): the pipeline wraps these objects in its DoFns.

Three pieces:

* :func:`normalize_caption` / :func:`normalize_caption_with_reason` clean one
  LAION-style caption (HTML entities and tags, Unicode NFKC, URLs, image file
  names, whitespace, case, length cap) or reject it with a reason string.
* :class:`KeywordExtractor` turns captions into a per-caption *set* of
  lemmatised keywords (uni-, bi- and trigrams) with spaCy. The default is
  ``spacy.blank("en")`` plus the lookup lemmatizer from ``spacy-lookups-data``,
  which works offline and needs no trained pipeline.
* :func:`load_vocab`, :class:`VocabEntry`, :class:`VocabMatcher` and
  :func:`mentions` load object vocabularies (LVIS, COCO, COCO panoptic, Open
  Images, user lists) and decide whether a caption mentions an object.

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

import csv
import html
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from spacy.language import Language
    from spacy.tokens import Doc, Token

__all__ = [
    "DEFAULT_MAX_CHARS",
    "REJECT_EMPTY",
    "REJECT_EMPTY_AFTER_NORMALISATION",
    "REJECT_NO_KEYWORDS",
    "KeywordConfig",
    "KeywordExtractor",
    "VocabEntry",
    "VocabMatcher",
    "load_vocab",
    "mentions",
    "normalize_caption",
    "normalize_caption_with_reason",
    "normalize_vocab_name",
    "parse_vocab_lines",
]

DEFAULT_MAX_CHARS = 2000
RAW_CAP_FACTOR = 8
REJECT_EMPTY = "empty caption"
REJECT_EMPTY_AFTER_NORMALISATION = "empty after normalisation"
REJECT_NO_KEYWORDS = "no keywords"

# ---------------------------------------------------------------------------
# Caption normalisation
# ---------------------------------------------------------------------------

# HTML comments and things that look like tags: "<b>", "</a>", "<br/>",
# "<img src=...>". A "<" must be followed by a letter (or "/" and a letter),
# so "<3" and "a < b" survive.
_TAG_RE = re.compile(r"<!--.*?-->|<\s*/?\s*[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?\s*>", re.S)
_URL_RE = re.compile(r"(?:\b(?:https?|ftp)://|\bwww\.)\S+", re.I)
# Bare domains with a common TLD (TLDs that are also English words such as
# "in", "it", "us", "co", "me" are deliberately not listed). Candidates are
# dotted tokens (no ambiguity, so linear time); the callback keeps those whose
# last label is not a listed TLD ("u.s.", "e.g." survive).
_DOTTED_RE = re.compile(r"(?<![\w.\-])[\w\-]+(?:\.[\w\-]+)+(?:/\S*)?")
_TLDS = frozenset(
    "com net org edu gov info biz io uk de fr jp ru cn nl pl br au ca es ch se no dk fi cz hu ro gr pt tv".split()
)


def _drop_domain(match: re.Match[str]) -> str:
    host = match.group(0).split("/", 1)[0]
    return " " if host.rsplit(".", 1)[-1].lower() in _TLDS else match.group(0)


_FILE_EXT = (
    r"(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|heif|avif|ico|psd|raw|cr2|nef|dng|pdf|eps|"
    r"mp4|mov|avi|mkv|webm|mp3|wav|zip|rar|html?|php|aspx?)"
)
# "IMG_1234.jpg", "my-photo.v2.PNG" and bare ".png" / ".jpeg" suffixes.
# The look-behind pins the match start to a token boundary, keeping the regex
# linear on very long unbroken strings.
_FILENAME_RE = re.compile(r"(?<![\w.\-])[\w\-.]*\w\." + _FILE_EXT + r"\b|(?<!\w)\." + _FILE_EXT + r"\b", re.I)
# Camera file stems without an extension: "IMG_1234", "DSC01234", "PXL_2021...".
_CAMERA_STEM_RE = re.compile(r"\b(?:img|dsc[nf]?|dcim|pxl|mvimg|vid)[_-]?\d{3,}\w*|\bwp_\d{6,}\w*", re.I)
# C0/C1 control characters become spaces; zero-width/bidi format characters vanish.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_FORMAT_RE = re.compile(r"[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_WS_RE = re.compile(r"\s+")


def _is_missing(text: Any) -> bool:
    """True for None and float NaN (what pandas/pyarrow give for a null caption)."""
    return text is None or (isinstance(text, float) and math.isnan(text))


def _truncate_at_word(text: str, max_chars: int) -> str:
    """Cut ``text`` to at most ``max_chars`` characters, at a space if possible.

    The cut goes at the last space at or before ``max_chars`` when that space
    lies in the second half of the window; otherwise (one enormous "word", e.g.
    unsegmented CJK text) it is a hard cut at ``max_chars``.
    """
    if len(text) <= max_chars:
        return text
    if text[max_chars] == " ":
        return text[:max_chars].rstrip()
    cut = text.rfind(" ", 0, max_chars + 1)
    if cut >= max_chars // 2:
        return text[:cut].rstrip()
    return text[:max_chars].rstrip()


def normalize_caption_with_reason(
    text: Any, *, max_chars: int = DEFAULT_MAX_CHARS, lowercase: bool = True
) -> tuple[str | None, str | None]:
    """Normalise one caption; return ``(normalised_text, None)`` or ``(None, reason)``.

    Steps, in order:

    1. ``None``/NaN/empty/whitespace-only -> rejected with :data:`REJECT_EMPTY`;
       ``bytes`` are decoded as UTF-8 (invalid bytes replaced); any other
       non-string type is rejected with ``"not a string: <type>"``.
    2. HTML entities unescaped up to twice (``&amp;amp;`` -> ``&``), so
       double-escaped LAION captions come out clean.
    3. Unicode NFKC (full-width forms, ligatures, compatibility characters);
       control characters become spaces and zero-width/bidi marks are removed.
    4. HTML tags and comments removed (replaced by a space).
    5. URLs (``http(s)://``, ``ftp://``, ``www.``, bare domains with common
       TLDs), file names with media/document extensions (``IMG_1234.jpg``),
       bare extensions (``.png``) and camera file stems (``DSC01234``) removed.
    6. Whitespace collapsed to single spaces and stripped; lowercased (``str.lower``)
       unless ``lowercase=False``.
    7. Empty at this point -> :data:`REJECT_EMPTY_AFTER_NORMALISATION`.
    8. Longer than ``max_chars`` -> truncated at a word boundary (see
       :func:`_truncate_at_word`); truncation is not a rejection. (Before
       step 2 the raw text is also cut to ``RAW_CAP_FACTOR * max_chars``
       = 16,000 characters by default, which bounds the cleaning cost.)

    Non-Latin scripts (CJK, Cyrillic, Arabic, ...) and emoji are kept.

    Args:
        text: the raw caption (normally ``str``; ``None``/NaN allowed).
        max_chars: length cap after normalisation, >= 1.
        lowercase: lowercase the result (keep ``False`` for trained pipelines
            whose NER/parser rely on case).

    Raises:
        ValueError: ``max_chars`` < 1.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars!r}")
    if _is_missing(text):
        return None, REJECT_EMPTY
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return None, f"not a string: {type(text).__name__}"
    if not text.strip():
        return None, REJECT_EMPTY
    # Bound the regex work on pathological inputs: the raw text is cut to
    # RAW_CAP_FACTOR * max_chars characters before cleaning (cleaning mostly
    # shrinks text; the final word-boundary cap below is the documented one).
    if len(text) > RAW_CAP_FACTOR * max_chars:
        text = text[: RAW_CAP_FACTOR * max_chars]
    for _ in range(2):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL_RE.sub(" ", text)
    text = _FORMAT_RE.sub("", text)
    text = _TAG_RE.sub(" ", text)
    text = _URL_RE.sub(" ", text)
    text = _FILENAME_RE.sub(" ", text)
    text = _CAMERA_STEM_RE.sub(" ", text)
    text = _DOTTED_RE.sub(_drop_domain, text)
    text = _WS_RE.sub(" ", text).strip()
    if lowercase:
        text = text.lower()
    if not text:
        return None, REJECT_EMPTY_AFTER_NORMALISATION
    return _truncate_at_word(text, max_chars), None


def normalize_caption(text: Any, *, max_chars: int = DEFAULT_MAX_CHARS, lowercase: bool = True) -> str | None:
    """Normalise one caption (see :func:`normalize_caption_with_reason`); ``None`` if rejected."""
    return normalize_caption_with_reason(text, max_chars=max_chars, lowercase=lowercase)[0]


# ---------------------------------------------------------------------------
# Keyword extraction
# ---------------------------------------------------------------------------

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
        text = _WS_RE.sub(" ", text).strip()
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


# ---------------------------------------------------------------------------
# Object vocabularies
# ---------------------------------------------------------------------------

_PAREN_RE = re.compile(r"\(([^()]*)\)")
_PANOPTIC_SUFFIX_RE = re.compile(r"(?:-(?:merged|other|stuff))+$")


def normalize_vocab_name(raw: str) -> tuple[str, str | None]:
    """Normalise one vocabulary name; return ``(name, qualifier)``.

    ``"flag_pole"`` -> ``("flag pole", None)``; ``"bow_(weapon)"`` ->
    ``("bow", "weapon")``; ``"Human eye"`` -> ``("human eye", None)``.
    Underscores become spaces, parenthesised disambiguation is split off,
    NFKC + lowercase + collapsed whitespace. Hyphens and apostrophes are kept
    (the tokenizer handles them identically in captions).
    """
    text = unicodedata.normalize("NFKC", str(raw)).replace("_", " ")
    qualifiers = [q.strip() for q in _PAREN_RE.findall(text) if q.strip()]
    text = _PAREN_RE.sub(" ", text)
    text = _WS_RE.sub(" ", text).strip().lower()
    qualifier = "; ".join(q.lower() for q in qualifiers) or None
    return text, qualifier


@dataclass(frozen=True)
class VocabEntry:
    """One object category.

    Attributes:
        name: normalised canonical name (lowercase, spaces, no parenthesised
            qualifier). Not unique across a vocabulary (LVIS has two "bow"s);
            use the list index, ``raw_name`` or ``category_id`` as a key.
        synonyms: normalised surface forms to look for in captions; the first
            is ``name``. Deduplicated, order preserved.
        raw_name: the name as written in the source file.
        qualifier: LVIS disambiguation, e.g. ``"weapon"`` for ``bow_(weapon)``.
        category_id: id from the source file (int for LVIS/COCO, the ``/m/...``
            MID for Open Images, None for plain lists).
        source: ``"lvis"``, ``"coco"``, ``"coco_panoptic"``, ``"openimages"`` or ``"text"``.
    """

    name: str
    synonyms: tuple[str, ...]
    raw_name: str = ""
    qualifier: str | None = None
    category_id: int | str | None = None
    source: str = "text"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"VocabEntry.name must be non-empty, got {self.name!r}")
        syns = tuple(dict.fromkeys(s for s in (self.name, *self.synonyms) if s))
        object.__setattr__(self, "synonyms", syns)


def _entry(
    raw: str, raw_synonyms: Iterable[str], *, category_id: Any = None, source: str, raw_name: str | None = None
) -> VocabEntry | None:
    name, qualifier = normalize_vocab_name(raw)
    if not name:
        return None
    syns = [normalize_vocab_name(s)[0] for s in raw_synonyms]
    return VocabEntry(name, tuple(s for s in syns if s), raw if raw_name is None else raw_name, qualifier, category_id, source)


def _panoptic_entry(raw: str, category_id: Any) -> VocabEntry | None:
    """COCO panoptic stuff names: ``wall-other-merged`` -> wall; ``floor-wood`` -> floor wood / wood floor / floor."""
    base = _PANOPTIC_SUFFIX_RE.sub("", raw.strip())
    parts = [p for p in base.split("-") if p]
    if len(parts) == 2:
        syns = [" ".join(reversed(parts)), parts[0]]
        return _entry(" ".join(parts), syns, category_id=category_id, source="coco_panoptic", raw_name=raw)
    return _entry(base, [], category_id=category_id, source="coco_panoptic", raw_name=raw)


def parse_vocab_lines(lines: Iterable[str], source: str = "text") -> list[VocabEntry]:
    """Parse a plain-text vocabulary: one ``name`` or ``name: syn1, syn2`` per line.

    Blank lines and lines starting with ``#`` are skipped; names are
    normalised with :func:`normalize_vocab_name` (so LVIS-style ``flag_pole``
    works too).
    """
    entries: list[VocabEntry] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if ":" in line:
            raw, syn_part = line.split(":", 1)
            syns = [s.strip() for s in syn_part.split(",") if s.strip()]
        else:
            raw, syns = line, []
        entry = _entry(raw.strip(), syns, source=source)
        if entry is not None:
            entries.append(entry)
    return entries


_VOCAB_FORMATS = ("auto", "lvis", "coco", "coco_panoptic", "openimages", "text")


def _load_json_vocab(obj: Any, fmt: str, path: Path) -> list[VocabEntry]:
    if isinstance(obj, dict) and "categories" in obj:
        obj = obj["categories"]
    if not isinstance(obj, list) or not all(isinstance(c, dict) and "name" in c for c in obj):
        raise ValueError(f"{path}: expected a JSON list of category objects with a 'name' (or a dict with 'categories')")
    if fmt == "auto":
        if any("synonyms" in c for c in obj):
            fmt = "lvis"
        elif any("isthing" in c for c in obj):
            fmt = "coco_panoptic"
        else:
            fmt = "coco"
    entries: list[VocabEntry | None] = []
    for c in obj:
        if fmt == "lvis":
            entries.append(_entry(c["name"], c.get("synonyms", []), category_id=c.get("id"), source="lvis"))
        elif fmt == "coco_panoptic":
            entries.append(_panoptic_entry(c["name"], c.get("id")))
        else:
            entries.append(_entry(c["name"], c.get("synonyms", []), category_id=c.get("id"), source=fmt))
    return [e for e in entries if e is not None]


def _load_openimages_csv(path: Path) -> list[VocabEntry]:
    entries: list[VocabEntry] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if len(row) < 2:
                continue
            mid, label = row[0].strip(), row[1].strip()
            if i == 0 and not mid.startswith("/m/"):
                continue  # header such as "label,class"
            entry = _entry(label, [], category_id=mid, source="openimages")
            if entry is not None:
                entries.append(entry)
    return entries


def load_vocab(path: str | Path, format: str = "auto") -> list[VocabEntry]:
    """Load an object vocabulary.

    Supported (``format="auto"`` decides by extension and content):

    * ``lvis``: LVIS v1 categories JSON (``name``, ``synonyms``, ``id``, ...).
    * ``coco``: COCO categories JSON (list, or a full annotation file's ``categories``).
    * ``coco_panoptic``: COCO panoptic categories (``isthing``); stuff suffixes
      ``-merged``/``-other``/``-stuff`` are stripped and ``wall-brick`` also
      gets ``brick wall`` and ``wall`` as synonyms.
    * ``openimages``: Open Images class CSV (``/m/mid,Name``, optional header).
    * ``text``: one name per line, optional ``name: syn1, syn2`` (see :func:`parse_vocab_lines`).

    Args:
        path: file path.
        format: one of ``auto, lvis, coco, coco_panoptic, openimages, text``.

    Returns:
        Entries in file order.

    Raises:
        ValueError: unknown ``format`` or unparseable content.
        FileNotFoundError: ``path`` does not exist.
    """
    if format not in _VOCAB_FORMATS:
        raise ValueError(f"format must be one of {_VOCAB_FORMATS}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    suffix = path.suffix.lower()
    if format in ("lvis", "coco", "coco_panoptic") or (format == "auto" and suffix == ".json"):
        with path.open(encoding="utf-8") as fh:
            obj = json.load(fh)
        return _load_json_vocab(obj, format, path)
    if format == "openimages" or (format == "auto" and suffix == ".csv"):
        return _load_openimages_csv(path)
    with path.open(encoding="utf-8") as fh:
        return parse_vocab_lines(fh, source="text")


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
