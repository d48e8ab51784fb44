"""Beam transforms of the score stage.

``ScorePrompts``: :class:`~models.score.checks.ScoreItem` records ->
``ScoreItems`` (per-check :class:`~models.score.checks.ScoreRow`, the target
loaded once per worker with ``Shared``) -> ``CalibrateAndWrite`` (thresholds
from the reference items, decisions, ``prompt_scores.parquet``).
``ExtractWithSide``: one request -> SIDE runs -> ``extractions.parquet``,
``side_summary.json`` and grids. Both share one loaded
:class:`~models.score.inputs.ScoreContext` per worker process.
"""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from models.score.checks import Check, ScoreItem, ScoreRow, decide, plaplace_at_points, plaplace_check, wen_check
from models.score.inputs import in_target_space, load_context
from models.storage import layout, schemas
from models.storage.folders.score import ScoreFolder
from transforms.common import Held

NAMESPACE = "dupmine.score"


class ContextHandle:
    """The worker's shared :class:`~models.score.inputs.ScoreContext` (loaded on first use in a process).

    One handle serves every DoFn of the stage and the driver's preflight, so
    an in-process runner loads the target once.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self._shared = shared.Shared()

    def acquire(self) -> Held:
        cfg = self.cfg
        tag = layout.fingerprint([cfg.target, cfg.device, cfg.train, cfg.groups])
        return self._shared.acquire(lambda: Held(load_context(cfg.target, cfg.device, cfg.train, cfg.groups)), tag=tag)


class ScoreItemFn(beam.DoFn):
    """ScoreItem -> one :class:`ScoreRow` per check that applies to it."""

    def __init__(self, cfg, handle: ContextHandle):
        self.cfg, self.handle = cfg, handle
        self.scored = Metrics.counter(NAMESPACE, "items_scored")
        self.evals = Metrics.counter(NAMESPACE, "model_evaluations")

    def setup(self):
        self._ctx = self.handle.acquire()

    def process(self, item: ScoreItem):
        cfg, ctx = self.cfg, self._ctx.value
        score = cfg.score
        cond = ctx.conditioner(item.prompt)
        results = []
        if Check.PLAPLACE in cfg.checks:
            results.append(plaplace_check(ctx.target, cond, item.prompt, score))
            train = ctx.train if in_target_space(ctx.target, ctx.train) else None
            rows = [j for g in item.group_ids for j in (train.by_group.get(g, []) if train else [])]
            if rows:
                results.append(plaplace_at_points(ctx.target, cond, item.prompt, train.x[rows], score))
        if Check.WEN in cfg.checks:
            results.append(wen_check(ctx.target, cond, ctx.conditioner.null, item.prompt, score))
        self.scored.inc()
        for r in results:
            self.evals.inc(r.cost_evals)
            yield ScoreRow.of(item, r, score.seed)


class ScoreItems(beam.PTransform):
    """ScoreItems -> ScoreRows (spread over workers first: each item costs many model evaluations)."""

    def __init__(self, cfg, handle: ContextHandle):
        super().__init__()
        self.fn = ScoreItemFn(cfg, handle)

    def expand(self, items):
        return items | "SpreadItems" >> beam.Reshuffle() | "ScoreEachItem" >> beam.ParDo(self.fn)


def write_scores(rows: list[dict], path: str) -> int:
    layout.write_parquet(path, schemas.table(rows, schemas.PROMPT_SCORES))
    return len(rows)


class CalibrateAndWrite(beam.PTransform):
    """ScoreRows -> thresholds from the reference rows -> decisions -> ``prompt_scores.parquet``.

    Gathers every row on one worker: one row per (item, check), a few hundred bytes each.
    """

    def __init__(self, fpr: float, path: str):
        super().__init__()
        self.fpr, self.path = fpr, path

    def expand(self, rows):
        return (
            rows
            | "GatherRows" >> beam.combiners.ToList()
            | "Decide" >> beam.Map(decide, self.fpr)
            | "WriteScores" >> beam.Map(write_scores, self.path)
        )


class ScorePrompts(beam.PTransform):
    """ScoreItems -> ``prompt_scores.parquet`` in ``cfg.output``; yields the number of rows written."""

    def __init__(self, cfg, handle: ContextHandle):
        super().__init__()
        self.cfg, self.handle = cfg, handle

    def expand(self, items):
        return (
            items
            | "ScoreItems" >> ScoreItems(self.cfg, self.handle)
            | "CalibrateAndWrite" >> CalibrateAndWrite(self.cfg.score.fpr, ScoreFolder(self.cfg.output).prompt_scores)
        )


class RunSideFn(beam.DoFn):
    """A list of conditioning prompts -> SIDE runs -> the stage's SIDE files; yields the summary."""

    def __init__(self, cfg, handle: ContextHandle):
        self.cfg, self.handle = cfg, handle

    def setup(self):
        self._ctx = self.handle.acquire()

    def process(self, prompts):
        from models.score.images import grid_png
        from models.score.side_runs import run_side_stage

        folder = ScoreFolder(self.cfg.output)
        outcome = run_side_stage(self._ctx.value, self.cfg.side, list(prompts))
        for r, images in outcome.grids.items():
            layout.atomic_write_bytes(folder.grid(r), grid_png(images))
        layout.write_parquet(folder.extractions, schemas.table(outcome.extractions, schemas.EXTRACTIONS))
        layout.write_json(folder.side_summary, outcome.summary)
        yield outcome.summary


class ExtractWithSide(beam.PTransform):
    """One request (the conditioning prompts) -> SIDE on the target -> its files; yields the summary."""

    def __init__(self, cfg, handle: ContextHandle):
        super().__init__()
        self.fn = RunSideFn(cfg, handle)

    def expand(self, requests):
        return requests | "RunSideOnce" >> beam.ParDo(self.fn)
