"""The items the score stage scores: flagged prompts or groups, and the reference items that calibrate them."""
from __future__ import annotations

from models.score.checks import Role, ScoreItem
from models.score.inputs import load_flagged, read_reference_file


def score_items(ctx, flagged_path: str, target: str, max_prompts: int, reference: str | None, n_reference: int,
                seed: int) -> tuple[list[ScoreItem], int]:
    """The items to score (flagged first) and the number of flagged ones.

    Conditional targets: one item per flagged prompt (checked at its groups'
    training images too); reference prompts from ``--reference``, else captions
    of ordinary training rows (each checked at its own image); with a
    ``--reference`` file, ordinary training images are added as image-only
    reference items. Targets no prompt conditions: one item per flagged
    duplicate group and ordinary training images as the reference.

    Raises:
        ValueError: no flagged prompt; no reference items (with how to give them); an unconditional target
        without ``--train``/``--groups`` or flagged prompts that name no group.
    """
    flagged = load_flagged(flagged_path, max_prompts)
    if not flagged:
        raise ValueError(f"--flagged {flagged_path} holds no prompt: nothing to score (mine flagged nothing, "
                         "or the file has no non-empty 'prompt' column)")
    train = ctx.train
    ordinary = train.sample_singletons(n_reference, seed, {f.prompt for f in flagged}) if train else []
    if ctx.conditioner.conditional:
        def keys(groups):
            return tuple(k for g in groups for k in train.group_keys(g)) if train else ()

        items = [ScoreItem(Role.FLAGGED.value, f.prompt, f.group_ids, keys(f.group_ids)) for f in flagged]
        if reference:
            items += [ScoreItem(Role.REFERENCE.value, q) for q in read_reference_file(reference)[: n_reference]]
            items += [ScoreItem(Role.REFERENCE.value, c, (), (k,), image_only=True) for k, c in ordinary]
        else:
            items += [ScoreItem(Role.REFERENCE.value, c, (), (k,)) for k, c in ordinary if c]
    else:
        if train is None or not train.grouped:
            raise ValueError(f"{target} takes no prompt: its memorization is scored per duplicate group, at the "
                             "group's training images and by SIDE extractions; pass --train EMB and --groups DEDUP")
        groups = list(dict.fromkeys(g for f in flagged for g in f.group_ids if train.group_keys(g)))
        if not groups:
            raise ValueError(f"{target} takes no prompt and no flagged prompt names a duplicate group of --groups: "
                             "nothing to score per group")
        first = {}
        for f in flagged:
            for g in f.group_ids:
                first.setdefault(g, f.prompt)
        items = [ScoreItem(Role.FLAGGED.value, first[g], (g,), train.group_keys(g)) for g in groups]
        items += [ScoreItem(Role.REFERENCE.value, c, (), (k,)) for k, c in ordinary]
    n_flagged = sum(1 for i in items if i.role == Role.FLAGGED.value)
    if n_flagged == len(items):
        raise ValueError("no reference items to calibrate the thresholds on: pass --reference FILE (ordinary "
                         "prompts) or --train EMB (ordinary training rows are the reference)")
    return items, n_flagged
