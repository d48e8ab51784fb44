"""Beam steps of the mine stage that read embedding parts: calibrate the tagger, analyse each part.

Each embedding part is analysed once (:class:`AnalyzePartFn`): captions are
normalised and turned into keywords (spaCy), images are tagged with objects,
captions are checked for object mentions, and *counts* (never captions) leave
the worker (:mod:`models.mine.part_counts` names them). Object tags and
caption rejects are written per part by the worker itself.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from functools import lru_cache
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from models.mine.part_counts import COUNT_NAMES, RowGroup, keyword_blocks, part_counts
from models.mine.plan import MineParams
from models.storage import layout, run_chain, schemas
from models.storage.folders.dedup import DedupFolder
from transforms.common import Held

NAMESPACE = "dupmine.mine"
COUNT_OUTPUTS = COUNT_NAMES[1:] + ("stats",)  # tagged outputs of AnalyzePartFn; "kw" is the main one


class PartInput(NamedTuple):
    """One part to analyse: its index in ``params.parts`` and, with ``--tags``, its joined given tags."""

    index: int
    given: tuple | None = None  # models.mine.taggers.given.GivenTag rows


class PartRows(NamedTuple):
    """One part's rows as the mine stage reads them (metadata order)."""

    keys: list[str]
    sample_ids: list[str]
    captions: list


def tagger_for(params: MineParams):
    """The object tagger the spec names (:class:`models.mine.taggers.stage.MineTagger`), or None for ``none``."""
    from models.mine.taggers.stage import build_tagger

    return build_tagger(params.tagger_spec, params.vocab_path, params.model, z=params.tag_z, top_k=params.tag_top_k,
                        label_synsets=params.label_synsets)


def _load_tools(params: MineParams):
    """Keyword extractor, mention test and tagger, built once per worker process."""
    from models.mine.keywords import KeywordExtractor
    from models.mine.mentions import mention_test

    extractor = KeywordExtractor(params.keyword_config)
    extractor.load()
    tagger = tagger_for(params)
    matcher = mention_test(tagger.vocab, extractor, params.mention, params.wordnet_depth) if tagger is not None else None
    return Held((extractor, matcher, tagger))


def read_part_rows(embeddings: str, part: str) -> PartRows:
    """Plain keys, sample ids (:meth:`models.storage.folders.embed.EmbeddingFolder.part_ids`) and raw captions
    of one part's rows."""
    folder = layout.EmbeddingFolder(embeddings)
    meta = layout.read_parquet(folder.metadata(part))
    row_ids = folder.part_ids(part, meta)
    captions = meta.column("caption").to_pylist() if "caption" in meta.column_names else [None] * meta.num_rows
    return PartRows(row_ids.keys, row_ids.sample_ids, captions)


def part_groups(params: MineParams, part: str, keys: list[str]) -> list[RowGroup]:
    """Current (group_id, group_size) of one part's rows; rows without a group row are singletons.

    Groups come from the dedup chain's state of the part when ``--groups`` has
    a manifest (so an incremental dedup output works), else from its
    ``groups/groups_{part}.parquet``.
    """
    runs = dict(params.group_runs).get(part)
    rows = None
    if runs:
        rows = run_chain.load_part_state(runs, part, ["key", "group_id", "group_size"]).to_pylist()
    elif params.groups:
        path = DedupFolder(params.groups).groups(part)
        if layout.exists(path):
            rows = layout.read_parquet(path, ["key", "group_id", "group_size"]).to_pylist()
    by_key = {r["key"]: RowGroup(r["group_id"], r["group_size"]) for r in rows or ()}
    return [by_key.get(k, RowGroup(k, 1)) for k in keys]


def sample_for_calibration(part_index: int, params: MineParams) -> np.ndarray:
    """A seeded uniform sample of one part's image embeddings, (n, D) float32, for tagger calibration."""
    emb = layout.read_npy(layout.EmbeddingFolder(params.embeddings).img_emb(params.parts[part_index]))
    share = max(1, params.calibration_rows // max(1, len(params.parts)))
    rng = np.random.default_rng([params.seed, part_index])
    idx = np.sort(rng.choice(len(emb), min(share, len(emb)), replace=False)) if len(emb) else np.zeros(0, np.int64)
    return np.asarray(emb[idx], np.float32)


def calibrate(sample: np.ndarray, params: MineParams) -> dict:
    """Fit the zero-shot tagger's per-object thresholds on the gathered sample."""
    return tagger_for(params).fit_calibration(sample)


def _concat_samples(samples) -> np.ndarray:
    return np.concatenate([x for x in samples if len(x)] or [np.zeros((0, 1), np.float32)])


class AnalyzePartFn(beam.DoFn):
    """:class:`PartInput` (+ tagger calibration side input) -> count elements by name (see
    :mod:`models.mine.part_counts`; ``kw`` as one keyword block per hash bucket)."""

    def __init__(self, params: MineParams):
        self.params = params
        self._shared = shared.Shared()
        self.rows = Metrics.counter(NAMESPACE, "rows")
        self.rejected = Metrics.counter(NAMESPACE, "captions_rejected")
        self.tags = Metrics.counter(NAMESPACE, "object_tags")

    def setup(self):
        params = self.params
        self._tools = self._shared.acquire(lambda: _load_tools(params), tag=layout.fingerprint(repr(params)))

    def _tags(self, tagger, calibration, part: str, keys: list[str], given):
        if tagger is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        if calibration:
            tagger.load_calibration(calibration)
        if tagger.needs_images:
            shards = {s.shard_id: (s.path, s.format) for s in self.params.shard_paths}
            return tagger.tag_shard(shards, part, keys)
        if tagger.needs_ids:
            return tagger.tag_given(len(keys), given or ())
        emb = np.asarray(layout.read_npy(layout.EmbeddingFolder(self.params.embeddings).img_emb(part)), np.float32)
        return tagger.tag_embeddings(emb)

    def process(self, element: PartInput, calibration):
        extractor, matcher, tagger = self._tools.value
        p = self.params
        part = p.parts[element.index]
        keys, sample_ids, captions = read_part_rows(p.embeddings, part)
        groups = part_groups(p, part, keys)
        keywords, reasons = extractor.extract_with_reasons(captions)
        rows, objs, scores = self._tags(tagger, calibration, part, keys, element.given)
        tag_rows = [{"key": keys[r], "object": tagger.objects[o], "score": float(s), "sample_id": sample_ids[r]}
                    for r, o, s in zip(rows.tolist(), objs.tolist(), scores.tolist())]
        layout.write_parquet(p.folder.object_tags(part), schemas.table(tag_rows, schemas.OBJECT_TAGS))
        self.tags.inc(len(tag_rows))
        tagged = defaultdict(list)
        for r, o in zip(rows.tolist(), objs.tolist()):
            tagged[r].append(o)
        mentioned = matcher.mentioned_batch(captions) if matcher is not None else [np.zeros(0, np.int64)] * len(keys)
        counts = part_counts(keys, captions, groups, keywords, reasons, tagged, mentioned)
        rejects = [{"key": keys[i], "shard": part, "url": None, "reason": f"caption: {reason}", "stage": "mine"}
                   for i, reason in enumerate(reasons) if reason is not None]
        layout.write_parquet(p.folder.rejects(part), schemas.table(rejects, schemas.REJECTS))
        self.rows.inc(len(keys))
        self.rejected.inc(len(rejects))
        yield from keyword_blocks(counts.kw, p.count_shards)
        for name in COUNT_NAMES[1:]:
            for item in counts.elements(name):
                yield pvalue.TaggedOutput(name, item)
        yield pvalue.TaggedOutput("stats", Counter({"rows": len(keys), "rows_analysed": len(keys) - len(rejects),
                                                     "caption_rejects": len(rejects), "object_tags": len(tag_rows)}))


class Calibrate(beam.PTransform):
    """Part indices -> one tagger calibration dict: sample, gather the (small) sample, fit.

    Only the zero-shot tagger is calibrated; the others get ``{}``. ``frozen``
    (an increment's chain calibration) is used as given, so new tags are
    comparable with old ones.
    """

    def __init__(self, params: MineParams, frozen: dict | None = None):
        super().__init__()
        self.params, self.frozen = params, frozen

    def expand(self, part_indices):
        from models.mine.taggers.spec import TaggerKind

        if self.frozen is not None:
            return part_indices.pipeline | "FrozenCalibration" >> beam.Create([self.frozen])
        if self.params.tagger_kind is not TaggerKind.ZERO_SHOT:
            return part_indices.pipeline | "NoCalibration" >> beam.Create([{}])
        return (part_indices
                | "SampleForCalibration" >> beam.Map(sample_for_calibration, self.params)
                | "GatherCalibrationSample" >> beam.CombineGlobally(_concat_samples)
                | "FitCalibration" >> beam.Map(calibrate, self.params))


def _part_sample_ids(part_index: int, params: MineParams):
    """(sample_id, (part index, row)) for every row of one part."""
    for row, sid in enumerate(read_part_rows(params.embeddings, params.parts[part_index]).sample_ids):
        yield sid, (part_index, row)


def _joined_rows(element, tagger_path: str):
    """CoGroupByKey result per sample id -> (part index, GivenTag) for each of its rows; unmatched tags dropped
    (counted)."""
    from models.mine.taggers.given import GivenTag

    _, grouped = element
    rows, tags = list(grouped["rows"]), list(grouped["tags"])
    if not rows:
        Metrics.counter(NAMESPACE, "given_tags_unmatched").inc(len(tags))
        return
    given = _given_tagger(tagger_path)
    objects, scores = [], []
    for t in tags:
        o, s = given.joined((None, t))
        objects.extend(o)
        scores.extend(s)
    for part_index, row in rows:
        yield part_index, GivenTag(row, tuple(objects), tuple(scores))


@lru_cache(maxsize=4)
def _given_tagger(path: str):
    """The label index of a tag table, once per worker process."""
    from models.mine.taggers.given import GivenTags

    return GivenTags.load(path)


class JoinGivenTags(beam.PTransform):
    """Part indices -> :class:`PartInput` with each part's ``--tags`` rows, joined by sample id.

    Shuffles one (sample_id, part, row) element per embedding row and one element per tagged sample; a worker
    then holds one part's tags only.
    """

    def __init__(self, params: MineParams):
        super().__init__()
        self.params = params

    def expand(self, part_indices):
        from models.mine.taggers.given import read_tag_file, tag_files

        params = self.params
        path = params.tagger_spec.partition(":")[2]
        rows = part_indices | "PartSampleIds" >> beam.FlatMap(_part_sample_ids, params)
        tags = (part_indices.pipeline | "ListTagFiles" >> beam.Create(tag_files(path))
                | "ReadTagFiles" >> beam.FlatMap(read_tag_file))
        per_row = ({"rows": rows, "tags": tags} | "JoinBySampleId" >> beam.CoGroupByKey()
                   | "TagsPerRow" >> beam.FlatMap(_joined_rows, path))
        return ({"part": part_indices | "KeyParts" >> beam.Map(lambda i: (i, None)), "given": per_row}
                | "GroupByPart" >> beam.CoGroupByKey()
                | "PartInputs" >> beam.MapTuple(lambda i, g: PartInput(i, tuple(sorted(g["given"])))))


class AnalyzeParts(beam.PTransform):
    """Part indices -> ``{name: raw per-part counts}`` for every count name and ``stats``, plus ``calibration``."""

    def __init__(self, params: MineParams, frozen_calibration: dict | None = None):
        super().__init__()
        self.params, self.frozen = params, frozen_calibration

    def expand(self, part_indices):
        from models.mine.taggers.spec import TaggerKind

        calibration = part_indices | "Calibrate" >> Calibrate(self.params, self.frozen)
        if self.params.tagger_kind is TaggerKind.TAGS:
            inputs = part_indices | "JoinGivenTags" >> JoinGivenTags(self.params)
        else:
            inputs = part_indices | "PartInputs" >> beam.Map(PartInput)
        out = inputs | "AnalyzeEachPart" >> beam.ParDo(
            AnalyzePartFn(self.params), pvalue.AsSingleton(calibration)).with_outputs(*COUNT_OUTPUTS, main="kw")
        return {"calibration": calibration, **{name: out[name] for name in COUNT_NAMES + ("stats",)}}
