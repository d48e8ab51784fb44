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
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from models import layout, schemas

NAMESPACE = "dupmine.mine"
EXAMPLES = 3


@dataclass(frozen=True)
class MineParams:
    """What the transforms need (picklable)."""

    embeddings: str
    groups: str | None
    output: str
    parts: tuple[str, ...]
    keyword_config: object        # models.keywords.KeywordConfig
    vocab_path: str | None
    tagger_spec: str              # "zero-shot" | "onnx-classifier:PATH,LABELS" | "none"
    model: str | None             # embedding model spec (zero-shot text tower)
    shard_paths: tuple[tuple[str, str, str], ...]  # (shard_id, path, format) for image re-reads
    seed: int
    calibration_rows: int
    tag_z: float = 4.0
    tag_top_k: int = 3


class _Holder:
    def __init__(self, value):
        self.value = value


def tagger_for(params: MineParams):
    """The object tagger the spec names, or None for ``none``."""
    if params.tagger_spec == "none":
        return None
    from models.mine_taggers import build_tagger

    return build_tagger(params.tagger_spec, params.vocab_path, params.model, z=params.tag_z, top_k=params.tag_top_k)


def _load_tools(params: MineParams):
    """Keyword extractor, vocabulary matcher and tagger, built once per worker process."""
    from models.keywords import KeywordExtractor, VocabMatcher

    extractor = KeywordExtractor(params.keyword_config)
    extractor.load()
    tagger = tagger_for(params)
    matcher = VocabMatcher(tagger.vocab, extractor) if tagger is not None else None
    return _Holder((extractor, matcher, tagger))


def _part_table(params: MineParams, part: str):
    folder = layout.EmbeddingFolder(params.embeddings)
    meta = layout.read_parquet(folder.metadata(part))
    n = meta.num_rows
    keys = [str(k) for k in meta.column("key").to_pylist()] if "key" in meta.column_names else [f"{part}:{i}" for i in range(n)]
    captions = meta.column("caption").to_pylist() if "caption" in meta.column_names else [None] * n
    group_id, group_size = list(keys), [1] * n
    if params.groups:
        path = layout.join(params.groups, "groups", f"groups_{part}.parquet")
        if layout.exists(path):
            rows = {r["key"]: r for r in layout.read_parquet(path, ["key", "group_id", "group_size"]).to_pylist()}
            for i, k in enumerate(keys):
                if k in rows:
                    group_id[i], group_size[i] = rows[k]["group_id"], rows[k]["group_size"]
    return keys, captions, group_id, group_size


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
                    if len(entry[1]) < EXAMPLES:
                        entry[1].append(keys[i])
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


def sum_counters(parts) -> dict:
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def top_captions(element, per_group: int = 5):
    """(group_id, [(caption, count)]) -> (group_id, most repeated captions, count descending)."""
    group, items = element
    return group, sorted(items, key=lambda x: (-x[1], x[0]))[:per_group]


class AnalyzeParts(beam.PTransform):
    """Part indices -> dict of combined count PCollections (see module doc)."""

    def __init__(self, params: MineParams, min_support: int):
        super().__init__()
        self.params, self.min_support = params, min_support

    def expand(self, part_indices):
        p, support = self.params, self.min_support
        if p.tagger_spec == "zero-shot":
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
        return {
            "calibration": calibration,
            "kw": out.kw | "SumKeyword" >> beam.CombinePerKey(sum),
            "kwin": out.kwin | "SumKeywordInGroups" >> beam.CombinePerKey(sum),
            "kwg": (out.kwg | "SumKeywordGroup" >> beam.CombinePerKey(CountWithExamples())
                    | "KeywordGroupSupport" >> beam.Filter(lambda e: e[1][0] >= 2)),
            "grp": out.grp | "SumGroupRows" >> beam.CombinePerKey(sum),
            "cap": (out.cap | "SumCaptions" >> beam.CombinePerKey(sum)
                    | "ByGroup" >> beam.Map(lambda e: (e[0][0], (e[0][1], e[1])))
                    | "GroupCaptions" >> beam.GroupByKey()
                    | "TopCaptions" >> beam.Map(top_captions)),
            "obj": out.obj | "SumObject" >> beam.CombinePerKey(sum),
            "kwo": (out.kwo | "SumKeywordObject" >> beam.CombinePerKey(sum_pairs)
                    | "KeywordObjectSupport" >> beam.Filter(lambda e: max(e[1]) >= max(1, support // 2))),
            "stats": out.stats | "SumStats" >> beam.CombineGlobally(sum_counters),
        }


def calibrate(sample: np.ndarray, params: MineParams) -> dict:
    """Fit the zero-shot tagger's per-object thresholds on the gathered sample."""
    return tagger_for(params).fit_calibration(sample)
