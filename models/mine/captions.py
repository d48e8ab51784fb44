"""Caption normalisation: one LAION-style caption in, clean text or a reject reason out.

Plain Python (no Apache Beam). :func:`normalize_caption` /
:func:`normalize_caption_with_reason` clean one caption (HTML entities and
tags, Unicode NFKC, URLs, image file names, whitespace, case, length cap) or
reject it with a reason string. Keyword extraction
(:mod:`models.mine.keywords`) and the mention test (:mod:`models.mine.mentions`)
both start here, so captions and vocabulary names are cleaned the same way.
"""
from __future__ import annotations

import html
import math
import re
import unicodedata
from typing import Any

__all__ = [
    "DEFAULT_MAX_CHARS",
    "REJECT_EMPTY",
    "REJECT_EMPTY_AFTER_NORMALISATION",
    "REJECT_NO_KEYWORDS",
    "WS_RE",
    "normalize_caption",
    "normalize_caption_with_reason",
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
WS_RE = re.compile(r"\s+")


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
    text = WS_RE.sub(" ", text).strip()
    if lowercase:
        text = text.lower()
    if not text:
        return None, REJECT_EMPTY_AFTER_NORMALISATION
    return _truncate_at_word(text, max_chars), None


def normalize_caption(text: Any, *, max_chars: int = DEFAULT_MAX_CHARS, lowercase: bool = True) -> str | None:
    """Normalise one caption (see :func:`normalize_caption_with_reason`); ``None`` if rejected."""
    return normalize_caption_with_reason(text, max_chars=max_chars, lowercase=lowercase)[0]

