"""Tags made elsewhere (``dupmine mine --tags PARQUET``): a detector run, a published tag set.

The tag table is one Parquet file or a folder of them (local or fsspec URL),
in either of two shapes:

* wide: ``sample_id`` (string), ``labels`` (list<string>), optional ``scores`` (list<float>);
* long: ``sample_id`` (string), ``label`` (string), optional ``score`` (float), one row per tag.

``sample_id`` is the sample identity of :mod:`models.storage.ids`
(``<absolute shard URL>::<key>``, the embed metadata's ``sample_id`` column).
Tags are joined to the embedding rows by it in the pipeline
(:class:`transforms.mine_analyze.JoinGivenTags`), so no worker holds more than
one part's tags. A label that is a WordNet synset name (``flag.n.01``)
declares its synset; other labels are names, matched to ``--vocab`` entries
of the same name for synonyms and synsets.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.mine.taggers.base import Tags, empty_tags
from models.mine.vocab import VocabEntry, normalize_vocab_name
from models.storage import layout

__all__ = ["GivenTag", "GivenTags", "TAG_FORMS", "tag_files"]

TAG_FORMS = ("sample_id + labels (list<string>) [+ scores (list<float>)], or sample_id + label (string) "
             "[+ score (float)]")
_SYNSET_RE = re.compile(r"^[\w'\-.]+\.[nvasr]\.\d{2}$")


class GivenTag(NamedTuple):
    """One row's given tags after the join: its row in the part, label indices, scores (NaN when none)."""

    row: int
    objects: tuple[int, ...]
    scores: tuple[float, ...]


def tag_files(path: str) -> list[str]:
    """The Parquet files of a tag table: ``path`` itself, or the ``*.parquet`` files below a folder (sorted)."""
    fs, stripped = layout._fs(path)
    if not fs.exists(stripped):
        raise FileNotFoundError(f"--tags {path} does not exist")
    if fs.isdir(stripped):
        found = sorted(p for p in fs.find(stripped) if p.endswith(".parquet"))
        if not found:
            raise ValueError(f"--tags {path} is a folder without .parquet files")
        return [fs.unstrip_protocol(p) for p in found]
    return [path]


def _shape(schema: pa.Schema, path: str) -> str:
    names = set(schema.names)
    if "sample_id" in names and "labels" in names:
        return "wide"
    if "sample_id" in names and "label" in names:
        return "long"
    raise ValueError(f"--tags {path}: columns {schema.names}; expected {TAG_FORMS}")


def read_tag_file(path: str) -> Iterator[tuple[str, tuple[tuple[str, ...], tuple[float, ...]]]]:
    """``(sample_id, (labels, scores))`` per tagged sample of one file (long files: one element per tag row)."""
    fs, stripped = layout._fs(path)
    with fs.open(stripped, "rb") as fh:
        f = pq.ParquetFile(fh)
        shape = _shape(f.schema_arrow, path)
        for batch in f.iter_batches(batch_size=65536):
            cols = batch.to_pydict()
            if shape == "wide":
                scores = cols.get("scores") or [None] * batch.num_rows
                for sid, labels, sc in zip(cols["sample_id"], cols["labels"], scores):
                    labels = tuple(str(x) for x in labels or ())
                    yield str(sid), (labels, tuple(float(x) for x in sc) if sc else (float("nan"),) * len(labels))
            else:
                scores = cols.get("score") or [None] * batch.num_rows
                for sid, label, sc in zip(cols["sample_id"], cols["label"], scores):
                    yield str(sid), ((str(label),), (float("nan") if sc is None else float(sc),))


def _label_entry(label: str, index: int) -> VocabEntry:
    if _SYNSET_RE.match(label):
        return VocabEntry(label.split(".")[0].replace("_", " ").lower(), (), label, None, index, "tags", label)
    name, qualifier = normalize_vocab_name(label)
    return VocabEntry(name or label, (), label, qualifier, index, "tags")


class GivenTags:
    """The tagger behind ``--tags``: objects are the labels the table uses, sorted.

    Building it scans the label columns once (streaming, memory O(distinct labels)); tags themselves are only
    read by the pipeline's join.
    """

    needs_images = False
    needs_ids = True

    def __init__(self, path: str, labels: Sequence[str]):
        self.path = path
        self.labels = list(labels)
        self.vocab = [_label_entry(label, i) for i, label in enumerate(self.labels)]
        self.objects = [e.name for e in self.vocab]
        self.index = {label: i for i, label in enumerate(self.labels)}

    @classmethod
    def load(cls, path: str) -> "GivenTags":
        labels: set[str] = set()
        for file in tag_files(path):
            fs, stripped = layout._fs(file)
            with fs.open(stripped, "rb") as fh:
                f = pq.ParquetFile(fh)
                column = "labels" if _shape(f.schema_arrow, file) == "wide" else "label"
                for batch in f.iter_batches(batch_size=65536, columns=[column]):
                    col = batch.column(0)
                    values = col.flatten() if pa.types.is_list(col.type) else col
                    labels.update(str(v) for v in pc.unique(values).to_pylist() if v is not None)
        if not labels:
            raise ValueError(f"--tags {path} holds no labels")
        return cls(path, sorted(labels))

    def vocab_with(self, entries: Sequence[VocabEntry]) -> list[VocabEntry]:
        """Label entries with the synonyms and synset of the ``entries`` (a ``--vocab``) of the same name."""
        by_name: dict[str, VocabEntry] = {}
        for e in entries:
            for name in (e.name, e.raw_name.lower()):
                by_name.setdefault(name, e)
        out = []
        for own in self.vocab:
            match = by_name.get(own.name) or by_name.get(own.raw_name.lower())
            out.append(own if match is None else VocabEntry(own.name, tuple(match.synonyms), own.raw_name, own.qualifier,
                                                             own.category_id, "tags", own.synset or match.synset))
        return out

    def joined(self, element: tuple[str, tuple[tuple[str, ...], tuple[float, ...]]]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Labels of one read tag element as object indices (scores kept parallel)."""
        labels, scores = element[1]
        return tuple(self.index[label] for label in labels), tuple(scores)

    def tag_rows(self, n_rows: int, given: Sequence[GivenTag]) -> Tags:
        """A part's tags from its joined rows: one tag per (row, object), highest score kept, rows ascending.

        Raises:
          ValueError: a row index outside ``0..n_rows-1``.
        """
        best: dict[tuple[int, int], float] = {}
        for g in given:
            if not 0 <= g.row < n_rows:
                raise ValueError(f"given tag row {g.row} outside the part's {n_rows} rows")
            for o, s in zip(g.objects, g.scores):
                old = best.get((g.row, o))
                best[(g.row, o)] = s if old is None or (s > old) else old
        if not best:
            return empty_tags()
        items = sorted(best.items(), key=lambda kv: (kv[0][0], -np.nan_to_num(kv[1], nan=-np.inf), kv[0][1]))
        return Tags(np.array([r for (r, _), _ in items], np.int64), np.array([o for (_, o), _ in items], np.int64),
                    np.array([s for _, s in items], np.float32))

    def describe(self) -> dict[str, Any]:
        return {"kind": "tags", "path": self.path, "n_objects": len(self.objects), "score": "as given (NaN if none)"}
