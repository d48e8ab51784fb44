"""What one embedding part contributes to the mine stage's counts (plain Python, no Beam).

Counts leave a worker, never captions. Every count is a ``(key, value)``
element that Beam sums per key; keys and values are the named rows below.

=======  ==============================  ===================================  ==============
name     key                             value                                rows counted
=======  ==============================  ===================================  ==============
``kw``   keyword (str)                   rows with it (int)                   all analysed
``kwin`` keyword                         its rows inside duplicate groups     grouped rows
``kwg``  :class:`KeywordGroup`           :class:`Examples` (rows, keys)       grouped rows
``grp``  group id (str)                  analysed rows in the group           grouped rows
``cap``  :class:`GroupCaption`           rows with that caption               grouped rows
``obj``  object index (int)              tagged rows                          all analysed
``kwo``  :class:`KeywordObject`          :class:`TagMention`                  all analysed
=======  ==============================  ===================================  ==============

A row's contribution depends only on its keywords, tags and mentions (which
dedup never changes) and on (group id, in a duplicate group), which is what
lets an increment correct the counts of rows whose group changed
(:func:`changed_row_counts`).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["COUNT_NAMES", "EXAMPLES", "Examples", "GroupCaption", "KeywordGroup", "KeywordObject", "PartCounts",
           "TagMention", "caption_text", "changed_row_counts", "part_counts", "smallest_keys"]

COUNT_NAMES = ("kw", "kwin", "kwg", "grp", "cap", "obj", "kwo")
EXAMPLES = 3  # example keys kept per (keyword, group)


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
    out.kwo = {KeywordObject(w, o): TagMention(t, m) for (w, o), (t, m) in kwo.items()}
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
