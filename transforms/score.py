"""Beam transforms of the score stage.

``ScoreItems``: :class:`~models.score.checks.ScoreItem` records -> per-check
:class:`~models.score.checks.ScoreRow` (the target loaded once per worker
with ``Shared``). ``ExtractWithSide``: one :class:`SideRequest` -> SIDE runs
(each with its lambda = 0 baseline) -> ``extractions*.parquet``,
``side_summary.json``, grids, and per-item ``side`` rows.
``CalibrateAndWrite``: all rows -> thresholds from the reference items ->
decisions -> ``prompt_scores.parquet``. The item and SIDE steps share one
loaded :class:`~models.score.inputs.ScoreContext` per worker process.
"""
from __future__ import annotations

from typing import NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from models.score.checks import (
    Check,
    ScoreItem,
    ScoreRow,
    decide,
    jeon_check,
    plaplace_at_points,
    plaplace_check,
    wen_check,
)
from models.score.inputs import load_context
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
    """ScoreItem -> one :class:`ScoreRow` per check that applies to it.

    Conditional targets: ``plaplace`` (CFG generations), ``wen`` and ``jeon`` per
    prompt. Every target: ``plaplace-train`` at the item's training images
    (at most ``n_samples`` of them) where the target can place them in its space.
    """

    def __init__(self, cfg, handle: ContextHandle):
        self.cfg, self.handle = cfg, handle
        self.scored = Metrics.counter(NAMESPACE, "items_scored")
        self.evals = Metrics.counter(NAMESPACE, "model_evaluations")
        self.no_images = Metrics.counter(NAMESPACE, "items_without_training_images_in_target_space")

    def setup(self):
        self._ctx = self.handle.acquire()

    def process(self, item: ScoreItem):
        cfg, ctx = self.cfg, self._ctx.value
        score = cfg.score
        conditional = ctx.conditioner.conditional
        cond = ctx.conditioner(item.prompt) if conditional else None
        null = ctx.conditioner.null
        results = []
        if conditional and not item.image_only:
            if Check.PLAPLACE in cfg.checks:
                results.append(plaplace_check(ctx.target, cond, item.prompt, score, null))
            if Check.WEN in cfg.checks:
                results.append(wen_check(ctx.target, cond, null, item.prompt, score))
            if Check.JEON in cfg.checks:
                results.append(jeon_check(ctx.target, cond, null, item.prompt, score))
        if Check.PLAPLACE in cfg.checks and item.keys:
            x0 = ctx.points(item.keys[: score.n_samples])
            if x0 is None:
                self.no_images.inc()
            else:
                results.append(plaplace_at_points(ctx.target, cond, item.prompt, x0, score))
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


class SideRequest(NamedTuple):
    """What SIDE runs on: the prompts to condition extra runs on, and the items to score its matches onto."""

    prompts: tuple
    items: tuple


class RunSideFn(beam.DoFn):
    """A :class:`SideRequest` -> SIDE runs -> the stage's SIDE files; yields per-item ``side`` ScoreRows."""

    def __init__(self, cfg, handle: ContextHandle):
        self.cfg, self.handle = cfg, handle

    def setup(self):
        self._ctx = self.handle.acquire()

    def process(self, request: SideRequest):
        from models.score.images import grid_png
        from models.score.side_runs import run_side_stage, side_rows

        ctx, side = self._ctx.value, self.cfg.side
        folder = ScoreFolder(self.cfg.output)
        outcome = run_side_stage(ctx, side, list(request.prompts))
        for r, images in outcome.grids.items():
            layout.atomic_write_bytes(folder.grid(r), grid_png(images))
        layout.write_parquet(folder.extractions, schemas.table(outcome.extractions, schemas.EXTRACTIONS))
        layout.write_parquet(folder.baseline_extractions, schemas.table(outcome.baseline, schemas.EXTRACTIONS))
        layout.write_json(folder.side_summary, outcome.summary)
        yield from side_rows(outcome, list(request.items), ctx.train, side.n_g, side.seed)


class ExtractWithSide(beam.PTransform):
    """One :class:`SideRequest` -> SIDE on the target -> its files; yields per-item ``side`` ScoreRows."""

    def __init__(self, cfg, handle: ContextHandle):
        super().__init__()
        self.fn = RunSideFn(cfg, handle)

    def expand(self, requests):
        return requests | "RunSideOnce" >> beam.ParDo(self.fn)
