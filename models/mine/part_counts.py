"""What one embedding part contributes to the mine stage's counts (plain Python, no Beam).

Counts leave a worker, never captions. Every count is a ``(key, value)``
element that Beam sums per key; keys and values are the named rows below.

=======  ==============================  ===================================  ==============
name     key                             value                                rows counted
=======  ==============================  ===================================  ==============
``kw``   bucket (int)                    :class:`KeywordBlock` (keywords, rows) all analysed
``kwin`` keyword                         its rows inside duplicate groups     grouped rows
``kwg``  :class:`KeywordGroup`           :class:`Examples` (rows, keys)       grouped rows
``grp``  group id (str)                  analysed rows in the group           grouped rows
``cap``  :class:`GroupCaption`           rows with that caption               grouped rows
``obj``  object index (int)              tagged rows                          all analysed
``kwo``  :class:`KeywordObject`          :class:`TagMention`                  all analysed
``woc``  :class:`KeywordObject`          :class:`TopCaptions` (its captions)  tagged, o unnamed
=======  ==============================  ===================================  ==============

``woc`` keeps, per (keyword, object), the :data:`TOP_CAPTIONS` most frequent
captions (near-duplicates merged by :func:`caption_key`) of the rows with the
keyword whose image is tagged with the object and whose caption does not name
it: the real captions an object trigger's prompts are taken from. Merging
keeps the top of the summed counts of each side's top list, a mergeable
top-k summary: exact for a caption that is in the top list of every part it
occurs in, and never over-counting.

A row's contribution depends only on its keywords, tags and mentions (which
dedup never changes) and on (group id, in a duplicate group), which is what
lets an increment correct the counts of rows whose group changed
(:func:`changed_row_counts`).
"""
from __future__ import annotations

import math
import re
import zlib
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["COUNT_NAMES", "count_shards", "EXAMPLES", "TOP_CAPTIONS", "CaptionSample", "Examples", "GroupCaption", "KeywordGroup",
           "KeywordBlock", "KeywordObject", "PartCounts", "TagMention", "caption_key", "caption_text", "changed_row_counts",
           "keyword_blocks", "keyword_bucket", "part_counts", "smallest_keys", "sum_blocks", "top_captions"]

COUNT_NAMES = ("kw", "kwin", "kwg", "grp", "cap", "obj", "kwo", "woc")
EXAMPLES = 3  # example keys kept per (keyword, group)
TOP_CAPTIONS = 5  # captions kept per (keyword, object) for object-trigger prompts
COUNT_SHARDS = 8  # the fewest hash buckets of the saved counts and kw blocks; runs that predate count_shards used 8
PARTS_PER_COUNT_SHARD = 100  # ~1M rows at img2dataset's 10,000 samples a shard: one bucket's keywords on one worker


def count_shards(n_parts: int) -> int:
    """Hash buckets of the keyword totals and saved counts (counts/{name}/{name}-{bucket}.parquet) for a run over
    ``n_parts`` parts: one per ~100 parts, at least :data:`COUNT_SHARDS` (LAION-400M's 41k parts: 410 workers
    sum the keyword totals, not 8). An increment keeps its chain's number (its kw blocks merge by bucket)."""
    return max(COUNT_SHARDS, math.ceil(n_parts / PARTS_PER_COUNT_SHARD))
_NEAR_DUP_RE = re.compile(r"[^\w]+|_+")
_DIGITS_RE = re.compile(r"\d+")


class KeywordGroup(NamedTuple):
    keyword: str
    group_id: str


class Examples(NamedTuple):
    """Rows of a (keyword, group) and the ``EXAMPLES`` smallest of their keys (independent of part boundaries)."""

    n: int
    keys: tuple[str, ...]


class GroupCaption(NamedTuple):
    group_id: str
    caption: str


class KeywordObject(NamedTuple):
    keyword: str
    object: int


class TagMention(NamedTuple):
    """Rows with the keyword whose image is tagged with the object / whose caption mentions it."""

    tagged: int
    mentioned: int


class CaptionSample(NamedTuple):
    """A caption as merged for prompts: near-duplicate key, the form shown, rows."""

    key: str
    caption: str
    n: int


def caption_key(caption) -> str:
    """Near-duplicate key of a caption: NFKC, lowercase, punctuation dropped, digit runs as ``#``, single spaces.

    "Astronaut on the Moon!" and "astronaut on the moon 2" share a key.
    """
    text = unicodedata.normalize("NFKC", str(caption)).lower()
    text = _DIGITS_RE.sub("#", _NEAR_DUP_RE.sub(" ", text))
    return " ".join(t for t in text.split() if t != "#") or text.strip()


def top_captions(samples, limit: int = TOP_CAPTIONS) -> tuple[CaptionSample, ...]:
    """Sum :class:`CaptionSample` counts by key (the most frequent display form wins) and keep the ``limit`` top."""
    n: Counter = Counter()
    shown: dict[str, tuple[int, str]] = {}
    for s in samples:
        n[s.key] += s.n
        best = shown.get(s.key)
        if best is None or (s.n, -len(s.caption)) > (best[0], -len(best[1])):
            shown[s.key] = (s.n, s.caption)
    ranked = sorted(n.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return tuple(CaptionSample(k, shown[k][1], c) for k, c in ranked)


class RowGroup(NamedTuple):
    group_id: str
    group_size: int


def smallest_keys(examples: tuple[str, ...], key: str) -> tuple[str, ...]:
    """The ``EXAMPLES`` smallest distinct keys of ``examples`` + ``key``."""
    return examples if key in examples else tuple(sorted((*examples, key))[:EXAMPLES])


def caption_text(caption) -> str:
    """A caption as counted in ``cap`` (whitespace collapsed, as written otherwise)."""
    return " ".join(str(caption).split())


@dataclass
class PartCounts:
    """Counters of one part (or of a part's changed rows); :meth:`elements` yields them by count name."""

    kw: Counter = field(default_factory=Counter)
    kwin: Counter = field(default_factory=Counter)
    kwg: dict = field(default_factory=dict)        # KeywordGroup -> Examples
    grp: Counter = field(default_factory=Counter)
    cap: Counter = field(default_factory=Counter)  # GroupCaption -> rows
    obj: Counter = field(default_factory=Counter)
    kwo: dict = field(default_factory=dict)        # KeywordObject -> TagMention
    woc: dict = field(default_factory=dict)        # KeywordObject -> tuple[CaptionSample, ...]

    def add_grouped(self, words: Sequence[str], group: str, key: str, caption) -> None:
        """Count a row that is in duplicate group ``group``."""
        self.grp[group] += 1
        self.kwin.update(words)
        self.cap[GroupCaption(group, caption_text(caption))] += 1
        for w in words:
            k = KeywordGroup(w, group)
            old = self.kwg.get(k, Examples(0, ()))
            self.kwg[k] = Examples(old.n + 1, smallest_keys(old.keys, key))

    def elements(self, name: str):
        """``(key, value)`` elements of count ``name`` (zero ``kwin`` corrections left out)."""
        items = getattr(self, name).items()
        return ((k, v) for k, v in items if v) if name == "kwin" else iter(items)


def part_counts(keys: Sequence[str], captions: Sequence, groups: Sequence[RowGroup], keywords: Sequence[list[str]],
                reasons: Sequence[str | None], tagged: dict[int, list[int]], mentioned: Sequence[np.ndarray]) -> PartCounts:
    """Counts of one part's rows (rows with a caption reject reason are not analysed).

    Args:
      keys, captions, groups, keywords, reasons: length-R per-row lists.
      tagged: row -> object indices its image is tagged with.
      mentioned: length-R int arrays of the objects each caption mentions.

    Cost: O(sum over rows of |keywords| * |tags + mentions|).
    """
    out = PartCounts()
    kwo = defaultdict(lambda: [0, 0])
    woc: dict = defaultdict(Counter)   # (w, o) -> caption key -> rows
    shown: dict[str, str] = {}          # caption key -> first caption seen with it
    for i, (words, reason) in enumerate(zip(keywords, reasons)):
        if reason is not None:
            continue
        out.kw.update(words)
        if groups[i].group_size > 1:
            out.add_grouped(words, groups[i].group_id, keys[i], captions[i])
        row_objs = set(tagged.get(i, ()))
        out.obj.update(row_objs)
        said = set(mentioned[i].tolist())
        for w in words:
            for o in row_objs | said:
                c = kwo[(w, o)]
                c[0] += o in row_objs
                c[1] += o in said
        unnamed = row_objs - said
        if unnamed:
            text = caption_text(captions[i])
            key = caption_key(text)
            shown.setdefault(key, text)
            for w in words:
                for o in unnamed:
                    woc[(w, o)][key] += 1
    out.kwo = {KeywordObject(w, o): TagMention(t, m) for (w, o), (t, m) in kwo.items()}
    out.woc = {KeywordObject(w, o): top_captions(CaptionSample(k, shown[k], n) for k, n in c.items())
               for (w, o), c in woc.items()}
    return out


class ChangedRow(NamedTuple):
    """A dedup ``changed/`` row: an old row whose group fields changed."""

    key: str
    group_id: str
    group_size: int
    previous_group_id: str
    previous_group_size: int


def changed_row_counts(rows: Sequence[ChangedRow], captions: Sequence, keywords: Sequence[list[str]],
                       reasons: Sequence[str | None]) -> PartCounts:
    """Corrections for old rows whose group changed: ``kwin`` -keywords when it was grouped, +keywords when it
    is grouped now; ``kwg``, ``grp``, ``cap`` for its new group (its previous group's entries are retired)."""
    out = PartCounts()
    for r, caption, words, reason in zip(rows, captions, keywords, reasons):
        if reason is not None:
            continue
        if r.previous_group_size > 1:
            out.kwin.subtract(words)
        if r.group_size > 1:
            out.add_grouped(words, r.group_id, r.key, caption)
    return out


class KeywordBlock(NamedTuple):
    """Keyword counts of one hash bucket as two parallel columns (the ``kw`` count travels in blocks, not rows).

    ``keywords`` (n,) str, ``n`` (n,) int64. A part emits one block per bucket; a bucket's blocks are summed
    with one Arrow group-by (:func:`sum_blocks`). Beam handles parts x buckets elements instead of one element
    per distinct keyword and part.
    """

    keywords: list
    n: np.ndarray


def keyword_bucket(keyword: str, buckets: int) -> int:
    """The bucket (and saved-count file) of a keyword: crc32 of its repr modulo ``buckets`` (stable everywhere)."""
    return zlib.crc32(repr(keyword).encode()) % buckets


def keyword_blocks(counts: Counter, buckets: int) -> list[tuple[int, KeywordBlock]]:
    """A keyword Counter split into ``(bucket, KeywordBlock)``, one per non-empty bucket."""
    words: list[list[str]] = [[] for _ in range(buckets)]
    ns: list[list[int]] = [[] for _ in range(buckets)]
    for w, n in counts.items():
        b = zlib.crc32(repr(w).encode()) % buckets
        words[b].append(w)
        ns[b].append(n)
    return [(b, KeywordBlock(words[b], np.asarray(ns[b], np.int64))) for b in range(buckets) if words[b]]


def sum_blocks(blocks) -> KeywordBlock:
    """Sum keyword blocks of one bucket; keywords sorted, zero sums dropped. O(total rows) with Arrow's group-by."""
    import pyarrow as pa

    parts = [pa.table({"keyword": pa.array(b.keywords, pa.string()), "n": pa.array(b.n, pa.int64())}) for b in blocks]
    if not parts:
        return KeywordBlock([], np.zeros(0, np.int64))
    summed = pa.concat_tables(parts).group_by("keyword").aggregate([("n", "sum")]).sort_by("keyword")
    n = summed.column("n_sum").to_numpy()
    keep = n != 0
    return KeywordBlock([w for w, k in zip(summed.column("keyword").to_pylist(), keep) if k], n[keep].astype(np.int64))
