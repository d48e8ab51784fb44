"""SIDE as the score stage runs it (plain Python).

One unconditional run and one per conditioning prompt, each
:func:`models.score.side.run_side` (SIDE, arXiv:2410.02467 v7, Algorithm 1),
each with a lambda = 0 baseline at equal N_G that reuses the run's Part 1 (same x_T
and target clusters: a paired comparison). Generations are matched to the
training set in one of three spaces (:class:`MatchSpace`):

* ``target``: the training embeddings are points of the target's space
  (closed-form targets): cosine, bands calibrated on the training set's copies;
* ``pixels``: pixel-space image targets (no VAE, small images): normalised L2
  of the generations against the training images re-read from the shards,
  Carlini-style pixel bands (:func:`models.score.bands.pixel_l2_bands`);
* ``embedding``: latent targets: decoded and embedded with the training set's
  own embed model, cosine, bands calibrated on the training set's copies.

The unconditional run's matches are scored back onto items
(:func:`side_rows`): per flagged group (or prompt) and per reference image,
the fraction of the N_G generations whose best match is one of the item's
training images inside the closest band.
"""
from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field

import numpy as np

from models.score.checks import ScoreItem, ScoreRow
from models.score.conditioning import FixedCondition
from models.score.inputs import ScoreContext, image_embed_fn, in_target_space, is_pixel_space


class MatchSpace(enum.Enum):
    TARGET = "target"
    PIXELS = "pixels"
    EMBEDDING = "embedding"


@dataclass
class SideMatching:
    """How generations meet the training set: space, feature map, training matrix and bands."""

    space: MatchSpace
    embed_fn: object
    train_x: np.ndarray
    bands: object
    calibration: dict


def side_matching(ctx: ScoreContext, seed: int) -> SideMatching:
    """The matching of :class:`MatchSpace` that fits the context's target; ValueError when none does."""
    from models.score.bands import calibrated_cosine_bands, pixel_l2_bands

    train, target = ctx.train, ctx.target
    if train is None:
        raise ValueError("SIDE matches generations to the training set: --train has no embeddings")
    if in_target_space(target, train) or not is_pixel_space(target):
        embed_fn = None if in_target_space(target, train) else image_embed_fn(target, train.model)
        if embed_fn is None and not in_target_space(target, train):
            raise ValueError(f"SIDE: the training embeddings ({train.x.shape[1]}-d, model {train.model!r}) are not in "
                             f"the target's {target.dim}-d space and the target cannot decode its samples to images")
        bands, calibration = calibrated_cosine_bands(train.x, train.by_group, train.singletons, seed)
        space = MatchSpace.TARGET if embed_fn is None else MatchSpace.EMBEDDING
        return SideMatching(space, embed_fn, train.x, bands, calibration)
    x = ctx.points(train.keys)
    return SideMatching(MatchSpace.PIXELS, None, x, pixel_l2_bands(), {"pixels": "[-1, 1]", "rows": int(len(x))})


@dataclass
class SideOutcome:
    """What the SIDE runs produce.

    Attributes:
        extractions: rows of ``schemas.EXTRACTIONS`` of the lambda runs; baseline: those of the lambda = 0 runs.
        summary: the unconditional run's summary with ``baseline`` and ``conditional_runs``.
        grids: {run index: (16, H, W, C) uint8 generations} for image targets.
        match_idx: {"lambda" | "baseline": (N_G,) best training row of the unconditional runs};
        in_top_band: the same keys, (N_G,) bool: the match lies in the closest band.
    """

    extractions: list
    baseline: list
    summary: dict
    grids: dict = field(default_factory=dict)
    match_idx: dict = field(default_factory=dict)
    in_top_band: dict = field(default_factory=dict)
    evals: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def _rows(result, run: int, prompt, train, bands, group_of) -> list:
    return [{"generation_id": f"r{run:02d}g{i:06d}", "prompt": prompt, "matched_key": train.keys[j],
             "similarity": float(v), "band": bands.band_of(float(v)), "group_id": group_of.get(j)}
            for i, (j, v) in enumerate(zip(result.match_idx.tolist(), result.match_value.tolist()))]


def closest_band(bands) -> object:
    """The band of the most similar values (highest cosine, lowest distance)."""
    return max(bands.bands, key=lambda b: b.hi) if bands.higher_is_closer else min(bands.bands, key=lambda b: b.lo)


def run_side_stage(ctx: ScoreContext, side_cfg, prompts: list[str] = ()) -> SideOutcome:
    """SIDE for the context's target: one unconditional run, then one per prompt in ``prompts`` with the
    target fixed to that prompt's condition (prompts with no condition are skipped); each with its
    lambda = 0 baseline."""
    from models.score.side import run_side

    m = side_matching(ctx, side_cfg.seed)
    cfg = dataclasses.replace(side_cfg, bands=m.bands)
    base_cfg = dataclasses.replace(cfg, lambda_=0.0)
    target, train = ctx.target, ctx.train
    group_of = {j: g for g, rows in train.by_group.items() for j in rows}
    runs = [(None, target)] + [(q, FixedCondition(target, ctx.conditioner(q))) for q in prompts
                               if ctx.conditioner(q) is not None]
    top = closest_band(m.bands)
    out = SideOutcome([], [], {})
    summaries = []
    features = m.space is not MatchSpace.PIXELS
    for r, (prompt, model) in enumerate(runs):
        started = time.monotonic()
        result = run_side(model, m.embed_fn, m.train_x, cfg, train_is_features=features, dim=target.dim)
        base = run_side(model, m.embed_fn, m.train_x, base_cfg, train_is_features=features, dim=target.dim,
                        stage=result.stage)
        out.extractions += _rows(result, r, prompt, train, m.bands, group_of)
        out.baseline += _rows(base, r, prompt, train, m.bands, group_of)
        summaries.append(result.summary() | {
            "prompt": prompt, "seconds": round(time.monotonic() - started, 3), "match_space": m.space.value,
            "baseline": {"lambda": 0.0, "metrics": base.metrics, "metrics_top1": base.metrics_top1,
                         "percentile95": base.percentile95, "cost": base.cost.to_dict()}})
        if r == 0:
            for name, res in (("lambda", result), ("baseline", base)):
                out.match_idx[name] = res.match_idx
                out.in_top_band[name] = top.contains(res.match_value)
            # the lambda run pays Part 1 (synthetic samples); the baseline reuses it and pays only its extraction
            out.evals = {"lambda": result.cost.eps_evals + result.cost.classifier_grad_evals,
                         "baseline": base.cost.eps_evals_extraction}
            out.seconds = {"lambda": sum(result.cost.seconds.values()),
                           "baseline": base.cost.seconds["extraction"] + base.cost.seconds["matching"]}
        if hasattr(target, "decode_latents"):
            out.grids[r] = target.decode_latents(result.generations[:16])
    out.summary = summaries[0] | {"calibration": m.calibration, "conditional_runs": summaries[1:]}
    return out


def side_rows(outcome: SideOutcome, items: list[ScoreItem], train, n_g: int, seed: int) -> list[ScoreRow]:
    """Per item with training images: ``side`` / ``side-baseline`` = the fraction of the unconditional run's
    N_G generations whose best match is one of the item's images, inside the closest band.

    One SIDE run answers every item, so each row carries an equal share of the run's model
    evaluations and seconds (``cost_evals``, ``seconds``): the cost per group.
    """
    items = [i for i in items if i.keys]
    rows = []
    for name, check in (("lambda", "side"), ("baseline", "side-baseline")):
        idx, hit = outcome.match_idx[name], outcome.in_top_band[name]
        counts = np.bincount(idx[hit], minlength=len(train.keys))
        share = -(-outcome.evals[name] // max(1, len(items)))
        seconds = outcome.seconds[name] / max(1, len(items))
        for item in items:
            n = int(counts[train.rows_of(item.keys)].sum())
            rows.append(ScoreRow(item.role, item.prompt, check, n / n_g, 0.0, n_g, seed, share, seconds,
                                 tuple(item.group_ids)))
    return rows
