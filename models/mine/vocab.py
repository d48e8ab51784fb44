"""Object vocabularies: LVIS, COCO, COCO panoptic, Open Images and plain lists -> :class:`VocabEntry`.

Plain Python (no Apache Beam). Files are read through fsspec, so a
vocabulary may live on an object store (``--vocab gs://bucket/lvis.json``).
LVIS categories carry their WordNet synset name (``synset``), which the
semantic mention test (:mod:`models.mine.semantic`) uses.
"""
from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Any, Iterable

import fsspec

from models.mine.captions import WS_RE

__all__ = ["VOCAB_FORMATS", "VocabEntry", "load_vocab", "merge_synonyms", "normalize_vocab_name", "parse_vocab_lines",
           "read_synset_ids", "with_synsets"]

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
    text = WS_RE.sub(" ", text).strip().lower()
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
        source: ``"lvis"``, ``"coco"``, ``"coco_panoptic"``, ``"openimages"``, ``"text"``
            or ``"labels"`` (classifier labels).
        synset: WordNet 3.0 synset of the category when the source names one
            (LVIS ``synset`` such as ``"flag.n.01"``; ImageNet labels get theirs
            from their WordNet ids), else None.
    """

    name: str
    synonyms: tuple[str, ...]
    raw_name: str = ""
    qualifier: str | None = None
    category_id: int | str | None = None
    source: str = "text"
    synset: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"VocabEntry.name must be non-empty, got {self.name!r}")
        syns = tuple(dict.fromkeys(s for s in (self.name, *self.synonyms) if s))
        object.__setattr__(self, "synonyms", syns)


def _entry(
    raw: str, raw_synonyms: Iterable[str], *, category_id: Any = None, source: str, raw_name: str | None = None,
    synset: str | None = None,
) -> VocabEntry | None:
    name, qualifier = normalize_vocab_name(raw)
    if not name:
        return None
    syns = [normalize_vocab_name(s)[0] for s in raw_synonyms]
    return VocabEntry(name, tuple(s for s in syns if s), raw if raw_name is None else raw_name, qualifier, category_id,
                      source, synset or None)


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


VOCAB_FORMATS = ("auto", "lvis", "coco", "coco_panoptic", "openimages", "text")


def _load_json_vocab(obj: Any, fmt: str, path: str) -> list[VocabEntry]:
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
        if fmt == "coco_panoptic":
            entries.append(_panoptic_entry(c["name"], c.get("id")))
        else:
            entries.append(_entry(c["name"], c.get("synonyms", []), category_id=c.get("id"), source=fmt,
                                  synset=c.get("synset")))
    return [e for e in entries if e is not None]


def _load_openimages_csv(text: str) -> list[VocabEntry]:
    entries: list[VocabEntry] = []
    for i, row in enumerate(csv.reader(io.StringIO(text, newline=""))):
        if len(row) < 2:
            continue
        mid, label = row[0].strip(), row[1].strip()
        if i == 0 and not mid.startswith("/m/"):
            continue  # header such as "label,class"
        entry = _entry(label, [], category_id=mid, source="openimages")
        if entry is not None:
            entries.append(entry)
    return entries


def load_vocab(path: str, format: str = "auto") -> list[VocabEntry]:
    """Load an object vocabulary from a local path or any fsspec URL (``gs://``, ``s3://``, ...).

    Supported (``format="auto"`` decides by extension and content):

    * ``lvis``: LVIS v1 categories JSON (``name``, ``synonyms``, ``id``, ``synset``, ...).
    * ``coco``: COCO categories JSON (list, or a full annotation file's ``categories``).
    * ``coco_panoptic``: COCO panoptic categories (``isthing``); stuff suffixes
      ``-merged``/``-other``/``-stuff`` are stripped and ``wall-brick`` also
      gets ``brick wall`` and ``wall`` as synonyms.
    * ``openimages``: Open Images class CSV (``/m/mid,Name``, optional header).
    * ``text``: one name per line, optional ``name: syn1, syn2`` (see :func:`parse_vocab_lines`).

    Args:
        path: file path or URL.
        format: one of ``auto, lvis, coco, coco_panoptic, openimages, text``.

    Returns:
        Entries in file order.

    Raises:
        ValueError: unknown ``format`` or unparseable content.
        FileNotFoundError: ``path`` does not exist.
    """
    if format not in VOCAB_FORMATS:
        raise ValueError(f"format must be one of {VOCAB_FORMATS}, got {format!r}")
    path = str(path)
    fs, stripped = fsspec.core.url_to_fs(path)
    if not fs.isfile(stripped):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    with fs.open(stripped, "rb") as fh:
        text = fh.read().decode("utf-8")
    suffix = stripped.rsplit("/", 1)[-1].rpartition(".")[2].lower()
    if format in ("lvis", "coco", "coco_panoptic") or (format == "auto" and suffix == "json"):
        return _load_json_vocab(json.loads(text), format, path)
    if format == "openimages" or (format == "auto" and suffix == "csv"):
        return _load_openimages_csv(text)
    return parse_vocab_lines(text.splitlines(), source="text")


def read_synset_ids(path: str) -> list[str]:
    """WordNet ids, one per line (``n01440764``), from a local path or fsspec URL; blank lines ignored."""
    with fsspec.open(str(path), "rt", encoding="utf-8") as fh:
        return [line.strip() for line in fh if line.strip()]


def with_synsets(entries: list[VocabEntry], synsets: list[str]) -> list[VocabEntry]:
    """``entries`` with ``synset`` set from a parallel list (classifier labels in model order).

    Raises:
      ValueError: the lists differ in length.
    """
    if len(synsets) != len(entries):
        raise ValueError(f"{len(synsets)} synset ids for {len(entries)} labels; expected one per (non-background) label")
    return [replace(e, synset=s) for e, s in zip(entries, synsets)]


def merge_synonyms(entries: list[VocabEntry], extra: list[VocabEntry], synset_key) -> list[VocabEntry]:
    """``entries`` with the synonyms of every ``extra`` entry that names the same WordNet synset added.

    ``synset_key(entry)`` gives a comparable id of an entry's declared synset (names and WordNet ids both
    resolve to a WordNet offset), or None. Used to give a classifier's ImageNet labels the LVIS synonyms of
    the same category. O(E + X).
    """
    by_key: dict = {}
    for x in extra:
        k = synset_key(x) if x.synset else None
        if k is not None:
            by_key.setdefault(k, []).append(x)
    out = []
    for e in entries:
        syns = list(e.synonyms)
        for x in by_key.get(synset_key(e) if e.synset else None, ()):
            syns.extend(s for s in x.synonyms if s not in syns)
        out.append(replace(e, synonyms=tuple(syns)))
    return out
