"""Beam transforms of the mine stage: per-part keywords, object tags and co-occurrence counts.

Each embedding part is analysed once (:class:`AnalyzePartFn`): captions are
normalised and turned into keywords (spaCy), images are tagged with objects,
captions are checked for object mentions, and *counts* (never captions) leave
the worker, summed by Beam combiners:

``kw``    (keyword, rows with it)
``kwin``  (keyword, its rows inside duplicate groups)
``kwg``   ((keyword, group_id), (rows, example keys))   duplicate groups only
``grp``   (group_id, analysed rows in the group)        duplicate groups only
``cap``   ((group_id, caption), rows)                   duplicate groups only
``obj``   (object index, tagged rows)
``kwo``   ((keyword, object index), (tagged rows, mentioning rows))
``stats`` per-part totals

Object tags and caption rejects are written per part by the worker itself.
The combined counts are kept whole (:class:`WriteCounts` saves them under
``counts/``); the support filters and the top captions per group are applied
afterwards (:func:`table_inputs`), so an incremental run can merge them.

Incremental runs (``mine --previous``) merge instead of recounting: the
previous run's counts (:func:`read_counts`), the counts of the new parts, and
for the old rows whose group changed (dedup's ``changed/``) a correction
(:class:`ChangedRowsFn`). A row's contribution is a function of its keywords,
tags and mentions (never changed by dedup) and of (group_id, in a duplicate
group). So ``kw``, ``obj``, ``kwo`` and ``stats`` need no correction; ``kwin``
gets -keywords for a changed row that was in a group and +keywords if it is
in one now; for ``kwg``, ``grp`` and ``cap`` every entry of a previous group
that a changed row left is dropped ("retired") and the changed rows are
counted again in their new group. That is exact because an increment rewrites
*every* old row of a group that gained a row (its size changed), so a retired
group's previous entries came from changed rows only, and a grown group's
rows are exactly its changed old rows plus new rows.
"""
from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

import pyarrow as pa

from models.storage import run_chain
from models.storage import mine_chain
from models.storage import layout
from models.storage import schemas
from transforms.common import Held, sum_counters

NAMESPACE = "dupmine.mine"
EXAMPLES = 3
COUNT_SHARDS = 8  # files per saved count (counts/{name}/{name}-{shard}.parquet)
COUNT_NAMES = ("kw", "kwin", "kwg", "grp", "cap", "obj", "kwo")
COUNT_SCHEMAS = {
    "kw": pa.schema([("keyword", pa.string()), ("n", pa.int64())]),
    "kwin": pa.schema([("keyword", pa.string()), ("n", pa.int64())]),
    "kwg": pa.schema([("keyword", pa.string()), ("group_id", pa.string()), ("n", pa.int64()), ("examples", pa.list_(pa.string()))]),
    "grp": pa.schema([("group_id", pa.string()), ("n", pa.int64())]),
    "cap": pa.schema([("group_id", pa.string()), ("caption", pa.string()), ("n", pa.int64())]),
    "obj": pa.schema([("object", pa.int64()), ("n", pa.int64())]),
    "kwo": pa.schema([("keyword", pa.string()), ("object", pa.int64()), ("tagged", pa.int64()), ("mentioned", pa.int64())]),
}


@dataclass(frozen=True)
class MineParams:
    """What the transforms need (picklable)."""

    embeddings: str
    groups: str | None
    output: str
    parts: tuple[str, ...]
    keyword_config: object        # models.mine.keywords.KeywordConfig
    vocab_path: str | None
    tagger_spec: str              # "zero-shot" | "onnx-classifier:PATH,LABELS" | "none"
    model: str | None             # embedding model spec (zero-shot text tower)
    shard_paths: tuple[tuple[str, str, str], ...]  # (shard_id, path, format) for image re-reads
    seed: int
    calibration_rows: int
    tag_z: float = 4.0
    tag_top_k: int = 3
    group_runs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (part, runs) of a dedup chain (models.storage.run_chain.part_runs)
    changed: tuple[tuple[str, str, str], ...] = ()  # increments: (part, its embedding folder, dedup changed file)


def tagger_for(params: MineParams):
    """The object tagger the spec names, or None for ``none``."""
    if params.tagger_spec == "none":
        return None
    from models.mine.taggers.stage import build_tagger

    return build_tagger(params.tagger_spec, params.vocab_path, params.model, z=params.tag_z, top_k=params.tag_top_k)


def _load_tools(params: MineParams):
    """Keyword extractor, vocabulary matcher and tagger, built once per worker process."""
    from models.mine.keywords import KeywordExtractor, VocabMatcher

    extractor = KeywordExtractor(params.keyword_config)
    extractor.load()
    tagger = tagger_for(params)
    matcher = VocabMatcher(tagger.vocab, extractor) if tagger is not None else None
    return Held((extractor, matcher, tagger))


def _keys_captions(folder: layout.EmbeddingFolder, part: str) -> tuple[list[str], list]:
    meta = layout.read_parquet(folder.metadata(part))
    n = meta.num_rows
    keys = [str(k) for k in meta.column("key").to_pylist()] if "key" in meta.column_names else [f"{part}:{i}" for i in range(n)]
    captions = meta.column("caption").to_pylist() if "caption" in meta.column_names else [None] * n
    return keys, captions


def _part_table(params: MineParams, part: str):
    """Keys, captions and current (group_id, group_size) of one part's rows.

    Groups come from the dedup chain's state of the part when ``--groups`` has
    a manifest (so an incremental dedup output works), else from its
    ``groups/groups_{part}.parquet``; rows without a group row are singletons.
    """
    keys, captions = _keys_captions(layout.EmbeddingFolder(params.embeddings), part)
    group_id, group_size = list(keys), [1] * len(keys)
    runs = dict(params.group_runs).get(part)
    rows = None
    if runs:
        rows = run_chain.load_part_state(runs, part, ["key", "group_id", "group_size"]).to_pylist()
    elif params.groups:
        path = layout.join(params.groups, "groups", f"groups_{part}.parquet")
        if layout.exists(path):
            rows = layout.read_parquet(path, ["key", "group_id", "group_size"]).to_pylist()
    if rows:
        by_key = {r["key"]: r for r in rows}
        for i, k in enumerate(keys):
            if k in by_key:
                group_id[i], group_size[i] = by_key[k]["group_id"], by_key[k]["group_size"]
    return keys, captions, group_id, group_size


def _smallest(examples: list, key: str) -> list:
    """The ``EXAMPLES`` smallest distinct keys of ``examples`` + ``key`` (examples do not depend on part boundaries)."""
    return examples if key in examples else sorted(examples + [key])[:EXAMPLES]


def sample_for_calibration(part_index: int, params: MineParams) -> np.ndarray:
    """A seeded uniform sample of one part's image embeddings, for tagger calibration."""
    folder = layout.EmbeddingFolder(params.embeddings)
    emb = layout.read_npy(folder.img_emb(params.parts[part_index]))
    share = max(1, params.calibration_rows // max(1, len(params.parts)))
    rng = np.random.default_rng([params.seed, part_index])
    idx = np.sort(rng.choice(len(emb), min(share, len(emb)), replace=False)) if len(emb) else np.zeros(0, np.int64)
    return np.asarray(emb[idx], np.float32)


class AnalyzePartFn(beam.DoFn):
    """Part index (+ tagger calibration side input) -> tagged count outputs (see module doc)."""

    def __init__(self, params: MineParams):
        self.params = params
        self._shared = shared.Shared()
        self.rows = Metrics.counter(NAMESPACE, "rows")
        self.rejected = Metrics.counter(NAMESPACE, "captions_rejected")
        self.tags = Metrics.counter(NAMESPACE, "object_tags")

    def setup(self):
        params = self.params
        self._tools = self._shared.acquire(lambda: _load_tools(params), tag=layout.fingerprint(repr(params)))

    def _tags(self, tagger, calibration, part: str, keys: list[str]):
        if tagger is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        if calibration:
            tagger.load_calibration(calibration)
        if tagger.needs_images:
            return tagger.tag_shard(dict((sid, (path, fmt)) for sid, path, fmt in self.params.shard_paths), part, keys)
        emb = np.asarray(layout.read_npy(layout.EmbeddingFolder(self.params.embeddings).img_emb(part)), np.float32)
        return tagger.tag_embeddings(emb)

    def process(self, part_index: int, calibration):
        extractor, matcher, tagger = self._tools.value
        p = self.params
        part = p.parts[part_index]
        keys, captions, group_id, group_size = _part_table(p, part)
        keywords, reasons = extractor.extract_with_reasons(captions)
        rows, objs, scores = self._tags(tagger, calibration, part, keys)
        tag_rows = [{"key": keys[r], "object": tagger.objects[o], "score": float(s)} for r, o, s in zip(rows.tolist(), objs.tolist(), scores.tolist())]
        layout.write_parquet(layout.join(p.output, "object_tags", f"object_tags_{part}.parquet"), schemas.table(tag_rows, schemas.OBJECT_TAGS))
        self.tags.inc(len(tag_rows))
        tagged = defaultdict(list)
        for r, o in zip(rows.tolist(), objs.tolist()):
            tagged[r].append(o)
        mentioned = matcher.mentioned_batch(captions) if matcher is not None else [np.zeros(0, np.int64)] * len(keys)

        kw, kwin, grp, obj = Counter(), Counter(), Counter(), Counter()
        kwg: dict = {}
        cap, kwo = Counter(), defaultdict(lambda: [0, 0])
        rejects = []
        analysed = 0
        for i, (words, reason) in enumerate(zip(keywords, reasons)):
            if reason is not None:
                rejects.append({"key": keys[i], "shard": part, "url": None, "reason": f"caption: {reason}", "stage": "mine"})
                continue
            analysed += 1
            kw.update(words)
            in_group = group_size[i] > 1
            if in_group:
                g = group_id[i]
                grp[g] += 1
                kwin.update(words)
                cap[(g, " ".join(str(captions[i]).split()))] += 1
                for w in words:
                    entry = kwg.setdefault((w, g), [0, []])
                    entry[0] += 1
                    entry[1] = _smallest(entry[1], keys[i])
            row_objs = set(tagged.get(i, ()))
            obj.update(row_objs)
            said = set(mentioned[i].tolist())
            for w in words:
                for o in row_objs | said:
                    counts = kwo[(w, o)]
                    counts[0] += o in row_objs
                    counts[1] += o in said
        layout.write_parquet(layout.join(p.output, "rejects", f"rejects_{part}.parquet"), schemas.table(rejects, schemas.REJECTS))
        self.rows.inc(len(keys))
        self.rejected.inc(len(rejects))
        yield from kw.items()
        for tag, items in (("kwin", kwin.items()), ("grp", grp.items()), ("cap", cap.items()), ("obj", obj.items())):
            for item in items:
                yield pvalue.TaggedOutput(tag, item)
        for key, (n, examples) in kwg.items():
            yield pvalue.TaggedOutput("kwg", (key, (n, tuple(examples))))
        for key, counts in kwo.items():
            yield pvalue.TaggedOutput("kwo", (key, tuple(counts)))
        yield pvalue.TaggedOutput("stats", Counter({"rows": len(keys), "rows_analysed": analysed, "caption_rejects": len(rejects),
                                                     "object_tags": len(tag_rows)}))


class CountWithExamples(beam.CombineFn):
    """Sum counts and keep the smallest ``EXAMPLES`` example keys."""

    def create_accumulator(self):
        return 0, ()

    def add_input(self, acc, value):
        return acc[0] + value[0], tuple(sorted(set(acc[1]) | set(value[1])))[:EXAMPLES]

    def merge_accumulators(self, accs):
        n, ex = 0, set()
        for a in accs:
            n += a[0]
            ex |= set(a[1])
        return n, tuple(sorted(ex))[:EXAMPLES]

    def extract_output(self, acc):
        return acc


def sum_pairs(values) -> tuple:
    a = b = 0
    for x, y in values:
        a += x
        b += y
    return a, b


def top_captions(element, per_group: int = 5):
    """(group_id, [(caption, count)]) -> (group_id, most repeated captions, count descending)."""
    group, items = element
    return group, sorted(items, key=lambda x: (-x[1], x[0]))[:per_group]


class AnalyzeParts(beam.PTransform):
    """Part indices -> dict of combined, unfiltered count PCollections (see module doc) plus ``calibration``.

    ``calibration``: a frozen tagger calibration (an increment reuses its
    chain's, so new tags are comparable with old ones); None calibrates on
    a sample of these parts (zero-shot tagger only).
    """

    def __init__(self, params: MineParams, calibration: dict | None = None):
        super().__init__()
        self.params, self.calibration = params, calibration

    def expand(self, part_indices):
        p = self.params
        if self.calibration is not None:
            calibration = part_indices.pipeline | "FrozenCalibration" >> beam.Create([self.calibration])
        elif p.tagger_spec == "zero-shot":
            calibration = (
                part_indices
                | "SampleForCalibration" >> beam.Map(sample_for_calibration, p)
                | "GatherCalibrationSample" >> beam.CombineGlobally(lambda xs: np.concatenate([x for x in xs if len(x)] or [np.zeros((0, 1), np.float32)]))
                | "Calibrate" >> beam.Map(calibrate, p)
            )
        else:
            calibration = part_indices.pipeline | "NoCalibration" >> beam.Create([{}])
        out = part_indices | "AnalyzeEachPart" >> beam.ParDo(AnalyzePartFn(p), pvalue.AsSingleton(calibration)).with_outputs(
            "kwin", "kwg", "grp", "cap", "obj", "kwo", "stats", main="kw")
        return {"calibration": calibration} | combine_counts({name: [getattr(out, name)] for name in COUNT_NAMES + ("stats",)})


def combine_counts(sources: dict, prefix: str = "") -> dict:
    """{name: [PCollections of raw or partial counts]} -> {name: combined PCollection} (whole, unfiltered).

    Sums per key (``kwg`` keeps the smallest example keys, ``kwo`` sums both
    numbers); ``kwin`` and ``grp`` drop keys whose sum is 0 (an increment's
    corrections can cancel a previous count); ``stats`` becomes one dict.
    """
    combiners = {"kw": sum, "kwin": sum, "kwg": CountWithExamples(), "grp": sum, "cap": sum, "obj": sum, "kwo": sum_pairs}
    out = {}
    for name, pcolls in sources.items():
        label = f"{prefix}{name.capitalize()}"
        merged = pcolls[0] if len(pcolls) == 1 else tuple(pcolls) | f"Flatten{label}" >> beam.Flatten()
        if name == "stats":
            out[name] = merged | f"Sum{label}" >> beam.CombineGlobally(sum_counters)
            continue
        merged = merged | f"Sum{label}" >> beam.CombinePerKey(combiners[name])
        if name in ("kwin", "grp"):
            merged = merged | f"NonZero{label}" >> beam.Filter(lambda e: e[1] != 0)
        out[name] = merged
    return out


def table_inputs(counts: dict, min_support: int) -> dict:
    """Whole counts -> what :func:`pipelines.mine.write_tables` reads.

    ``kw`` keywords with ``n >= min_support``; ``kwg`` pairs with at least 2 rows; ``kwo`` pairs with
    ``max(tagged, mentioning) >= max(1, min_support // 2)``; ``cap`` as
    (group_id, its most repeated captions); the rest unchanged.
    """
    support = max(1, min_support // 2)
    out = dict(counts)
    # Only keywords with n >= min_support enter the tables: do not ship the long tail to the one writer.
    out["kw"] = counts["kw"] | "KeywordSupport" >> beam.Filter(lambda e: e[1] >= min_support)
    out["kwg"] = counts["kwg"] | "KeywordGroupSupport" >> beam.Filter(lambda e: e[1][0] >= 2)
    out["kwo"] = counts["kwo"] | "KeywordObjectSupport" >> beam.Filter(lambda e: max(e[1]) >= support)
    out["cap"] = (counts["cap"]
                  | "ByGroup" >> beam.Map(lambda e: (e[0][0], (e[0][1], e[1])))
                  | "GroupCaptions" >> beam.GroupByKey()
                  | "TopCaptions" >> beam.Map(top_captions))
    return out


# --------------------------------------------------------------------------- saved counts (increments)


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
        return {"keyword": key[0], "group_id": key[1], "n": int(value[0]), "examples": list(value[1])}
    if name == "cap":
        return {"group_id": key[0], "caption": key[1], "n": int(value)}
    if name == "kwo":
        return {"keyword": key[0], "object": int(key[1]), "tagged": int(value[0]), "mentioned": int(value[1])}
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
        return (row["keyword"], row["group_id"]), (row["n"], tuple(row["examples"]))
    if name == "cap":
        return (row["group_id"], row["caption"]), row["n"]
    if name == "kwo":
        return (row["keyword"], row["object"]), (row["tagged"], row["mentioned"])
    raise ValueError(f"unknown count {name!r}; expected one of {COUNT_NAMES}")


def _write_count_shard(element, name: str, output: str) -> str:
    shard, rows = element
    rows = sorted(rows, key=lambda r: tuple(str(v) for v in r.values()))
    path = layout.join(output, mine_chain.COUNTS_DIR, name, f"{name}-{shard:05d}.parquet")
    layout.write_parquet(path, schemas.table(rows, COUNT_SCHEMAS[name]))
    return path


class WriteCounts(beam.PTransform):
    """{name: combined counts} -> ``OUTPUT/counts/{name}/{name}-{shard}.parquet`` and ``counts/stats.json``.

    Rows go to one of :data:`COUNT_SHARDS` files by a hash of their key (no
    single worker holds a whole count). Returns a PCollection of the written
    paths (for ordering the steps that must come after).
    """

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, counts: dict):
        written = []
        for name in COUNT_NAMES:
            written.append(
                counts[name]
                | f"Encode{name.capitalize()}" >> beam.Map(
                    lambda e, n=name: (zlib.crc32(repr(e[0]).encode()) % COUNT_SHARDS, encode_count(n, e)))
                | f"Shard{name.capitalize()}" >> beam.GroupByKey()
                | f"Write{name.capitalize()}" >> beam.Map(_write_count_shard, name, self.output))
        stats_path = layout.join(self.output, mine_chain.COUNTS_DIR, "stats.json")
        written.append(counts["stats"] | "WriteStatsCounts" >> beam.Map(lambda s: (layout.write_json(stats_path, s), stats_path)[1]))
        return tuple(written) | "WrittenCounts" >> beam.Flatten()


def count_files(mine_dir: str, name: str) -> list[str]:
    """The saved Parquet files of count ``name`` under ``mine_dir/counts/`` (sorted; none for an empty count)."""
    fs, base = layout._fs(layout.join(mine_dir, mine_chain.COUNTS_DIR, name))
    if not fs.exists(base):
        return []
    return sorted(layout.join(layout.join(mine_dir, mine_chain.COUNTS_DIR, name), p.rsplit("/", 1)[-1])
                  for p in fs.ls(base, detail=False) if p.endswith(".parquet"))


def read_count_file(path: str, name: str):
    """One saved count file -> (key, value) elements."""
    for row in layout.read_parquet(path).to_pylist():
        yield decode_count(name, row)


def read_counts(pipeline, mine_dir: str, name: str):
    """PCollection of the (key, value) counts ``name`` saved by the mine run in ``mine_dir``."""
    return (pipeline | f"PreviousFiles{name.capitalize()}" >> beam.Create(count_files(mine_dir, name))
            | f"ReadPrevious{name.capitalize()}" >> beam.FlatMap(read_count_file, name))


def _load_extractor(params: MineParams):
    from models.mine.keywords import KeywordExtractor

    extractor = KeywordExtractor(params.keyword_config)
    extractor.load()
    return Held(extractor)


class ChangedRowsFn(beam.DoFn):
    """(part, embedding folder, dedup changed file) -> count corrections for the part's changed old rows.

    Outputs (see the module doc): ``kwin`` (+-1 per keyword, main), ``kwg``,
    ``grp``, ``cap`` for the rows' new groups, ``retired`` (previous group ids
    of rows that were in a duplicate group) and ``stats`` (``changed_rows``).
    Reads the part's metadata (keys, captions) and re-extracts the keywords
    of the changed rows only: O(part rows) read, O(changed rows) spaCy work.
    """

    def __init__(self, params: MineParams):
        self.params = params
        self._shared = shared.Shared()

    def setup(self):
        params = self.params
        self._extractor = self._shared.acquire(lambda: _load_extractor(params), tag="extractor-" + layout.fingerprint(repr(params)))

    def process(self, element):
        part, folder, path = element
        extractor = self._extractor.value
        changed = {r["key"]: r for r in layout.read_parquet(
            path, ["key", "group_id", "group_size", "previous_group_id", "previous_group_size"]).to_pylist()}
        for r in changed.values():
            if r["previous_group_size"] > 1:
                yield pvalue.TaggedOutput("retired", r["previous_group_id"])
        keys, captions = _keys_captions(layout.EmbeddingFolder(folder), part)
        rows = [i for i, k in enumerate(keys) if k in changed]
        missing = set(changed) - {keys[i] for i in rows}
        if missing:
            raise ValueError(f"{path} names keys {sorted(missing)[:5]} that {folder} part {part} does not have")
        keywords, reasons = extractor.extract_with_reasons([captions[i] for i in rows])
        kwin, grp, cap = Counter(), Counter(), Counter()
        kwg: dict = {}
        for i, words, reason in zip(rows, keywords, reasons):
            if reason is not None:
                continue
            r = changed[keys[i]]
            if r["previous_group_size"] > 1:
                kwin.subtract(words)
            if r["group_size"] > 1:
                g = r["group_id"]
                kwin.update(words)
                grp[g] += 1
                cap[(g, " ".join(str(captions[i]).split()))] += 1
                for w in words:
                    entry = kwg.setdefault((w, g), [0, []])
                    entry[0] += 1
                    entry[1] = _smallest(entry[1], keys[i])
        yield from ((w, n) for w, n in kwin.items() if n)
        for tag, items in (("grp", grp.items()), ("cap", cap.items())):
            for item in items:
                yield pvalue.TaggedOutput(tag, item)
        for key, (n, examples) in kwg.items():
            yield pvalue.TaggedOutput("kwg", (key, (n, tuple(examples))))
        yield pvalue.TaggedOutput("stats", Counter({"changed_rows": len(rows)}))


def calibrate(sample: np.ndarray, params: MineParams) -> dict:
    """Fit the zero-shot tagger's per-object thresholds on the gathered sample."""
    return tagger_for(params).fit_calibration(sample)
