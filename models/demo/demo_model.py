"""The demo's target: a small text-conditional diffusion model trained on the demo's own shards.

So ``make demo`` shows the whole chain on one dataset: planted duplication ->
a trained model that memorizes it (measured with the Carlini et al. 2023
criterion, :mod:`models.score.memorized`) -> the score stage's checks.

The model (:data:`DEMO_MODEL`) is 8x8 RGB, (16, 32) UNet channels, captions
through the frozen all-MiniLM-L6-v2, 2000 steps. To fit the demo's five
minutes on two cores it trains on every planted row and the first
:data:`DEMO_BACKGROUND` ordinary rows (by key), ~180 images: the planted
groups are then 3-14% of its data, enough to be memorized in 2000 steps, and
the ordinary images are each 0.6%. Its folder is named by the fingerprint of
its training parameters and the trainer also checks the data fingerprint, so a
rerun reuses it and a change of either retrains.
"""
from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np

from models.score.training.config import TrainConfig

DEMO_MODEL = TrainConfig(resolution=8, channels=3, conditional=True, steps=2000, batch_size=64,
                         block_out_channels=(16, 32), seed=0)
"""Training parameters of the demo's target (the cache key, with the data fingerprint)."""
DEMO_BACKGROUND = 100
"""Ordinary (unplanted) rows the demo model trains on beside every planted row."""

PLANTED_PREFIXES = ("exact:", "near:", "word:", "object:")


class GroupMemorization(NamedTuple):
    """Measured memorization of one planted group: generations of its captions that copy its images."""

    truth: str
    prompts: int
    generations: int
    memorized: int  # generations memorizing an image of this planted group
    other: int  # generations memorizing some other training image


def train_demo_model(shards: str, cache_dir: str, truth_of_key: dict[str, str], seed: int = 0,
                     log_every: int = 500):
    """(TrainedModel, TrainingImages): train (or reuse) :data:`DEMO_MODEL` with ``seed`` on the demo's rows.

    Trains on every row whose planted truth (``truth_of_key``) is set and the first
    :data:`DEMO_BACKGROUND` others, in key order.
    """
    from models.score.training.data import TrainingImages, images_from_shards
    from models.score.training.trainer import train
    from models.storage import layout

    cfg = dataclasses.replace(DEMO_MODEL, seed=int(seed))
    everything = images_from_shards(shards, cfg.resolution, cfg.channels)
    order = sorted(range(len(everything.keys)), key=lambda i: everything.keys[i])
    planted = [i for i in order if truth_of_key.get(everything.keys[i], "").startswith(PLANTED_PREFIXES)]
    ordinary = [i for i in order if not truth_of_key.get(everything.keys[i])][:DEMO_BACKGROUND]
    rows = sorted(planted + ordinary)
    data = TrainingImages(everything.images[rows], [everything.captions[i] for i in rows],
                          [everything.keys[i] for i in rows])
    folder = os.path.join(cache_dir, "model-" + layout.fingerprint(cfg.to_json())[:12])
    return train(data, cfg, folder, log_every=log_every), data


def planted_memorization(target, data, truth_of_key: dict[str, str], prompts_per_group: int = 4,
                         per_prompt: int = 4, steps: int = 20, guidance_scale: float = 3.0,
                         seed: int = 0) -> list[GroupMemorization]:
    """Per planted group: generate from (up to) ``prompts_per_group`` of its captions and count copies.

    Args:
      target: the trained text-to-image target.
      data: its :class:`~models.score.training.data.TrainingImages`.
      truth_of_key: planted truth ("exact:placeholder", ...) of each training key; others are background.
      prompts_per_group, per_prompt, steps, guidance_scale, seed: DDIM sampling with CFG.

    Returns:
      one :class:`GroupMemorization` per planted truth, plus "background" (ordinary captions) last.
    """
    from models.score.memorized import match_generations

    truths = [truth_of_key.get(k, "") for k in data.keys]
    planted = sorted({t for t in truths if t.startswith(PLANTED_PREFIXES)})
    names = {t: i for i, t in enumerate(planted)}
    # a planted group's images share one id; every other training image is its own group
    groups = np.asarray([names[t] if t in names else len(names) + i for i, t in enumerate(truths)], np.int64)
    out = []
    for truth in planted + [""]:
        rows = [i for i, t in enumerate(truths) if t == truth]
        prompts = list(dict.fromkeys(data.captions[i] for i in rows))[:prompts_per_group]
        if not prompts:
            continue
        r = target.generate(prompts, per_prompt, steps=steps, guidance_scale=guidance_scale, generator=seed)
        m = match_generations(r.images[..., :data.channels], data.images, groups)
        # background: a generation "copies its own" image when it memorizes the prompt's own training row
        mine = rows if truth else [i for i in rows if data.captions[i] in prompts]
        own = np.isin(m.nearest, mine)
        out.append(GroupMemorization(truth or "background", len(prompts), len(m.memorized),
                                     int((m.memorized & own).sum()), int((m.memorized & ~own).sum())))
    return out
