"""Beam steps over the mine stage's counts: combine per key, save sharded, read back, correct changed rows.

Counts are ``(key, value)`` elements named in :mod:`models.mine.part_counts`.
They are summed per key by Beam combiners and saved whole
(``counts/{name}/{name}-{shard}.parquet``, rows spread over
``count_shards`` files by a hash of their key (one per ~100 parts, at least
8: :func:`models.mine.part_counts.count_shards`), so no worker holds a whole
count), which is what an incremental run merges.

Incremental runs (``mine --previous``) merge instead of recounting
(:class:`MergeWithPrevious`): the previous run's counts, the counts of the new
parts, and for the old rows whose group changed (dedup's ``changed/``) a
correction (:class:`ChangedRowsFn`). ``kw``, ``obj``, ``kwo`` and ``stats``
need no correction; ``kwin`` gets -keywords for a changed row that was in a
group and +keywords if it is in one now; for ``kwg``, ``grp`` and ``cap``
every entry of a previous group that a changed row left is dropped
("retired") and the changed rows are counted again in their new group. That
is exact because an increment rewrites *every* old row of a group that gained
a row (its size changed), so a retired group's previous entries came from
changed rows only, and a grown group's rows are exactly its changed old rows
plus new rows.
"""
from __future__ import annotations

import zlib
from collections import Counter

import apache_beam as beam
import pyarrow as pa
from apache_beam import pvalue
from apache_beam.utils import shared

from models.mine.part_counts import (
    COUNT_NAMES,
    COUNT_SHARDS,
    EXAMPLES,
    CaptionSample,
    ChangedRow,
    Examples,
    GroupCaption,
    KeywordGroup,
    KeywordObject,
    TagMention,
    KeywordBlock,
    changed_row_counts,
    sum_blocks,
    top_captions,
)
from models.mine.plan import MineParams
from models.storage import layout, schemas
from models.storage.folders.mine import MineFolder
from transforms.common import Held, sum_counters
from transforms.mine_analyze import read_part_rows

COUNT_SCHEMAS = {
    "kw": pa.schema([("keyword", pa.string()), ("n", pa.int64())]),
    "kwin": pa.schema([("keyword", pa.string()), ("n", pa.int64())]),
    "kwg": pa.schema([("keyword", pa.string()), ("group_id", pa.string()), ("n", pa.int64()), ("examples", pa.list_(pa.string()))]),
    "grp": pa.schema([("group_id", pa.string()), ("n", pa.int64())]),
    "cap": pa.schema([("group_id", pa.string()), ("caption", pa.string()), ("n", pa.int64())]),
    "obj": pa.schema([("object", pa.int64()), ("n", pa.int64())]),
    "kwo": pa.schema([("keyword", pa.string()), ("object", pa.int64()), ("tagged", pa.int64()), ("mentioned", pa.int64())]),
    "woc": pa.schema([("keyword", pa.string()), ("object", pa.int64()), ("caption_keys", pa.list_(pa.string())),
                      ("captions", pa.list_(pa.string())), ("counts", pa.list_(pa.int64()))]),
}
GROUP_OF = {"kwg": lambda e: e[0].group_id, "cap": lambda e: e[0].group_id, "grp": lambda e: e[0]}


class CountWithExamples(beam.CombineFn):
    """Sum :class:`Examples` counts and keep the smallest ``EXAMPLES`` example keys."""

    def create_accumulator(self):
        return Examples(0, ())

    def add_input(self, acc, value):
        return Examples(acc.n + value.n, tuple(sorted(set(acc.keys) | set(value.keys)))[:EXAMPLES])

    def merge_accumulators(self, accs):
        n, keys = 0, set()
        for a in accs:
            n += a.n
            keys |= set(a.keys)
        return Examples(n, tuple(sorted(keys))[:EXAMPLES])

    def extract_output(self, acc):
        return acc


def sum_tag_mentions(values) -> TagMention:
    tagged = mentioned = 0
    for v in values:
        tagged += v.tagged
        mentioned += v.mentioned
    return TagMention(tagged, mentioned)


def merge_top_captions(values) -> tuple[CaptionSample, ...]:
    """Merge top-caption lists (:func:`models.mine.part_counts.top_captions` of their union)."""
    return top_captions(s for v in values for s in v)


COMBINERS = {"kwin": sum, "kwg": CountWithExamples(), "grp": sum, "cap": sum, "obj": sum,
             "kwo": sum_tag_mentions, "woc": merge_top_captions}


class CombineCounts(beam.PTransform):
    """``{name: PCollection of raw or partial counts}`` -> ``{name: combined PCollection}`` (whole, unfiltered).

    Sums per key; ``kwin`` and ``grp`` drop keys whose sum is 0 (an
    increment's corrections can cancel a previous count); ``stats`` becomes one dict.
    """

    def expand(self, sources: dict):
        out = {}
        for name in COUNT_NAMES + ("stats",):
            label = name.capitalize()
            merged = sources[name]
            if name == "stats":
                out[name] = merged | f"Sum{label}" >> beam.CombineGlobally(sum_counters)
                continue
            if name == "kw":  # keyword blocks: one Arrow group-by per hash bucket
                out[name] = (merged | "GroupKeywordBlocks" >> beam.GroupByKey()
                             | "SumKeywordBlocks" >> beam.MapTuple(lambda b, blocks: (b, sum_blocks(blocks))))
                continue
            merged = merged | f"Sum{label}" >> beam.CombinePerKey(COMBINERS[name])
            if name in ("kwin", "grp"):
                merged = merged | f"NonZero{label}" >> beam.Filter(lambda e: e[1] != 0)
            out[name] = merged
        return out


# --------------------------------------------------------------------------- saved counts


def encode_count(name: str, element) -> dict:
    """(key, value) of count ``name`` -> one row of :data:`COUNT_SCHEMAS` [name]."""
    key, value = element
    if name in ("kw", "kwin"):
        return {"keyword": key, "n": int(value)}
    if name == "grp":
        return {"group_id": key, "n": int(value)}
    if name == "obj":
        return {"object": int(key), "n": int(value)}
    if name == "kwg":
        return {"keyword": key.keyword, "group_id": key.group_id, "n": int(value.n), "examples": list(value.keys)}
    if name == "cap":
        return {"group_id": key.group_id, "caption": key.caption, "n": int(value)}
    if name == "kwo":
        return {"keyword": key.keyword, "object": int(key.object), "tagged": int(value.tagged),
                "mentioned": int(value.mentioned)}
    if name == "woc":
        return {"keyword": key.keyword, "object": int(key.object), "caption_keys": [c.key for c in value],
                "captions": [c.caption for c in value], "counts": [int(c.n) for c in value]}
    raise ValueError(f"unknown count {name!r}; expected one of {COUNT_NAMES}")


def decode_count(name: str, row: dict):
    """Inverse of :func:`encode_count`."""
    if name in ("kw", "kwin"):
        return row["keyword"], row["n"]
    if name == "grp":
        return row["group_id"], row["n"]
    if name == "obj":
        return row["object"], row["n"]
    if name == "kwg":
        return KeywordGroup(row["keyword"], row["group_id"]), Examples(row["n"], tuple(row["examples"]))
    if name == "cap":
        return GroupCaption(row["group_id"], row["caption"]), row["n"]
    if name == "kwo":
        return KeywordObject(row["keyword"], row["object"]), TagMention(row["tagged"], row["mentioned"])
    if name == "woc":
        return KeywordObject(row["keyword"], row["object"]), tuple(
            CaptionSample(k, c, n) for k, c, n in zip(row["caption_keys"], row["captions"], row["counts"]))
    raise ValueError(f"unknown count {name!r}; expected one of {COUNT_NAMES}")


def count_shard(key, shards: int = COUNT_SHARDS) -> int:
    """The saved-count file of a key: a stable hash (crc32 of its repr) modulo ``shards`` (the run's count_shards)."""
    return zlib.crc32(repr(tuple(key) if isinstance(key, tuple) else key).encode()) % shards


def _write_count_shard(element, name: str, output: str) -> str:
    shard, rows = element
    rows = sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))
    path = MineFolder(output).count_shard(name, shard)
    layout.write_parquet(path, schemas.table(rows, COUNT_SCHEMAS[name]))
    return path


def _write_keyword_block(element, output: str) -> str:
    bucket, block = element
    path = MineFolder(output).count_shard("kw", bucket)
    layout.write_parquet(path, pa.table({"keyword": pa.array(block.keywords, pa.string()), "n": pa.array(block.n, pa.int64())},
                                        schema=COUNT_SCHEMAS["kw"]))
    return path


class WriteCounts(beam.PTransform):
    """``{name: combined counts}`` -> ``OUTPUT/counts/{name}/{name}-{shard}.parquet`` and ``counts/stats.json``.

    Returns a PCollection of the written paths (for ordering the steps that must come after).
    """

    def __init__(self, output: str, shards: int = COUNT_SHARDS):
        super().__init__()
        self.output = output
        self.shards = shards

    def expand(self, counts: dict):
        written = [counts["kw"] | "WriteKw" >> beam.Map(_write_keyword_block, self.output)]
        shards = self.shards
        for name in COUNT_NAMES[1:]:
            written.append(
                counts[name]
                | f"Encode{name.capitalize()}" >> beam.Map(lambda e, n=name: (count_shard(e[0], shards),
                                                                             encode_count(n, e)))
                | f"Shard{name.capitalize()}" >> beam.GroupByKey()
                | f"Write{name.capitalize()}" >> beam.Map(_write_count_shard, name, self.output))
        stats_path = MineFolder(self.output).count_stats
        written.append(counts["stats"] | "WriteStatsCounts" >> beam.Map(lambda s: (layout.write_json(stats_path, s), stats_path)[1]))
        return tuple(written) | "WrittenCounts" >> beam.Flatten()


def count_files(mine_dir: str, name: str) -> list[str]:
    """The saved Parquet files of count ``name`` under ``mine_dir/counts/`` (sorted; none for an empty count)."""
    base_url = MineFolder(mine_dir).count_dir(name)
    fs, base = layout._fs(base_url)
    if not fs.exists(base):
        return []
    return sorted(layout.join(base_url, p.rsplit("/", 1)[-1]) for p in fs.ls(base, detail=False) if p.endswith(".parquet"))


def read_count_file(path: str, name: str):
    """One saved count file -> (key, value) elements (``kw``: one (bucket, KeywordBlock), bucket from the name)."""
    table = layout.read_parquet(path)
    if name == "kw":
        bucket = int(path.rsplit("-", 1)[-1].split(".", 1)[0])
        yield bucket, KeywordBlock(table.column("keyword").to_pylist(), table.column("n").to_numpy().astype("int64"))
        return
    for row in table.to_pylist():
        yield decode_count(name, row)


class ReadCounts(beam.PTransform):
    """PBegin -> the (key, value) counts ``name`` saved by the mine run in ``mine_dir``."""

    def __init__(self, mine_dir: str, name: str):
        super().__init__()
        self.mine_dir, self.name = mine_dir, name

    def expand(self, pbegin):
        return (pbegin | "ListCountFiles" >> beam.Create(count_files(self.mine_dir, self.name))
                | "ReadCountFile" >> beam.FlatMap(read_count_file, self.name))


# --------------------------------------------------------------------------- increments


def _load_extractor(params: MineParams):
    from models.mine.keywords import KeywordExtractor

    extractor = KeywordExtractor(params.keyword_config)
    extractor.load()
    return Held(extractor)


class ChangedRowsFn(beam.DoFn):
    """:class:`models.mine.plan.ChangedPart` -> count corrections for the part's changed old rows.

    Outputs: ``kwin`` (+-1 per keyword, main), ``kwg``, ``grp``, ``cap`` for
    the rows' new groups, ``retired`` (previous group ids of rows that were in
    a duplicate group) and ``stats`` (``changed_rows``). Reads the part's
    metadata (keys, captions) and re-extracts the keywords of the changed rows
    only: O(part rows) read, O(changed rows) spaCy work.
    """

    def __init__(self, params: MineParams):
        self.params = params
        self._shared = shared.Shared()

    def setup(self):
        params = self.params
        self._extractor = self._shared.acquire(lambda: _load_extractor(params), tag="extractor-" + layout.fingerprint(repr(params)))

    def process(self, element):
        extractor = self._extractor.value
        changed = {r["key"]: ChangedRow(**r) for r in layout.read_parquet(element.changed, list(ChangedRow._fields)).to_pylist()}
        for r in changed.values():
            if r.previous_group_size > 1:
                yield pvalue.TaggedOutput("retired", r.previous_group_id)
        keys, _, captions = read_part_rows(element.embeddings, element.part)
        rows = [i for i, k in enumerate(keys) if k in changed]
        missing = set(changed) - {keys[i] for i in rows}
        if missing:
            raise ValueError(f"{element.changed} names keys {sorted(missing)[:5]} that {element.embeddings} part "
                             f"{element.part} does not have")
        keywords, reasons = extractor.extract_with_reasons([captions[i] for i in rows])
        counts = changed_row_counts([changed[keys[i]] for i in rows], [captions[i] for i in rows], keywords, reasons)
        yield from counts.elements("kwin")
        for name in ("grp", "cap", "kwg"):
            for item in counts.elements(name):
                yield pvalue.TaggedOutput(name, item)
        yield pvalue.TaggedOutput("stats", Counter({"changed_rows": len(rows)}))


class CombineFromScratch(beam.PTransform):
    """``{name: this run's raw counts}`` -> ``{name: combined counts}`` plus ``increment_stats`` (= ``stats``)."""

    def expand(self, analysed: dict):
        counts = {name: analysed[name] for name in COUNT_NAMES + ("stats",)} | "SumCounts" >> CombineCounts()
        return {**counts, "increment_stats": counts["stats"]}


class MergeWithPrevious(beam.PTransform):
    """``{name: this run's raw counts}`` -> ``{name: combined counts}`` over this run's counts, the previous
    run's (less the entries of retired groups) and the changed rows' corrections; plus ``increment_stats``
    (this run's new parts and changed rows only)."""

    def __init__(self, params: MineParams, previous: str, previous_stats: dict):
        super().__init__()
        self.params, self.previous, self.previous_stats = params, previous, previous_stats

    def expand(self, analysed: dict):
        p = analysed["stats"].pipeline
        changed = (p | "ListChanged" >> beam.Create(list(self.params.changed))
                   | "ChangedRows" >> beam.ParDo(ChangedRowsFn(self.params)).with_outputs(
                       "kwg", "grp", "cap", "retired", "stats", main="kwin"))
        retired = (changed.retired | "DistinctRetired" >> beam.Distinct()
                   | "RetiredAsDict" >> beam.Map(lambda g: (g, True)))
        sources = {name: [analysed[name]] for name in COUNT_NAMES + ("stats",)}
        for name in COUNT_NAMES:
            previous = p | f"Previous{name.capitalize()}" >> ReadCounts(self.previous, name)
            if name in GROUP_OF:  # entries of previous groups that changed rows left are recounted
                previous = previous | f"Unretired{name.capitalize()}" >> beam.Filter(
                    lambda e, gone, g=GROUP_OF[name]: g(e) not in gone, pvalue.AsDict(retired))
            sources[name].append(previous)
        for name in ("kwin", "kwg", "grp", "cap"):
            sources[name].append(changed[name])
        sources["stats"].append(p | "PreviousStats" >> beam.Create([self.previous_stats]))
        increment_stats = ((analysed["stats"], changed.stats) | "IncrementStatsParts" >> beam.Flatten()
                           | "IncrementStats" >> beam.CombineGlobally(sum_counters))
        flat = {name: tuple(pcolls) | f"Flatten{name.capitalize()}" >> beam.Flatten() for name, pcolls in sources.items()}
        return {**(flat | "SumMergedCounts" >> CombineCounts()), "increment_stats": increment_stats}
