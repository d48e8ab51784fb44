"""SIDE as the score stage runs it: one unconditional run and one per conditioning prompt (plain Python).

Each run is :func:`models.score.side.run_side` (SIDE, arXiv:2410.02467 v7,
Algorithm 1) on the stage's target; its generations are matched to the
training set (``--train``): directly when the training embeddings live in the
target's space (closed-form targets), else decoded and embedded with the
training set's own embed model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from models.score.conditioning import FixedCondition
from models.score.inputs import ScoreContext, image_embed_fn, in_target_space


@dataclass
class SideOutcome:
    """What the SIDE runs produce.

    Attributes:
        extractions: rows of ``schemas.EXTRACTIONS`` (one per generation and run).
        summary: the unconditional run's summary with ``conditional_runs`` (one summary per prompt).
        grids: {run index: (16, H, W, C) uint8 generations} for image targets.
    """

    extractions: list
    summary: dict
    grids: dict = field(default_factory=dict)


def side_embed_fn(ctx: ScoreContext):
    """The feature map SIDE matches with (None: the target's own space); ValueError when there is none."""
    train, target = ctx.train, ctx.target
    if train is None:
        raise ValueError("SIDE matches generations to the training set: --train has no embeddings")
    if in_target_space(target, train):
        return None
    embed_fn = image_embed_fn(target, train.model)
    if embed_fn is None:
        raise ValueError(f"SIDE: the training embeddings ({train.x.shape[1]}-d, model {train.model!r}) are not in "
                         f"the target's {target.dim}-d space and the target cannot decode its samples to images")
    return embed_fn


def run_side_stage(ctx: ScoreContext, side_cfg, prompts: list[str] = ()) -> SideOutcome:
    """SIDE for the context's target: one unconditional run, then one per prompt in ``prompts``
    with the target fixed to that prompt's condition (prompts with no condition are skipped)."""
    from models.score.side import run_side

    embed_fn = side_embed_fn(ctx)
    target, train = ctx.target, ctx.train
    group_of = {j: g for g, rows in train.by_group.items() for j in rows}
    runs = [(None, target)] + [(q, FixedCondition(target, ctx.conditioner(q))) for q in prompts
                               if ctx.conditioner(q) is not None]
    rows, summaries, grids = [], [], {}
    for r, (prompt, model) in enumerate(runs):
        started = time.monotonic()
        result = run_side(model, embed_fn, train.x, side_cfg, train_is_features=True, dim=target.dim)
        rows += [{"generation_id": f"r{r:02d}g{i:06d}", "prompt": prompt, "matched_key": train.keys[j],
                  "similarity": float(v), "band": side_cfg.bands.band_of(float(v)), "group_id": group_of.get(j)}
                 for i, (j, v) in enumerate(zip(result.match_idx.tolist(), result.match_value.tolist()))]
        summaries.append(result.summary() | {"prompt": prompt, "seconds": round(time.monotonic() - started, 3)})
        if hasattr(target, "decode_latents"):
            grids[r] = target.decode_latents(result.generations[:16])
    return SideOutcome(rows, summaries[0] | {"conditional_runs": summaries[1:]}, grids)
