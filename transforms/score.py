"""Beam transforms of the score stage.

``ScorePrompts``: (role, prompt, group_ids) records -> per-check statistics
(the target is loaded once per worker with ``Shared``) -> thresholds from the
reference prompts (a combine, used as a side input) -> decisions ->
``prompt_scores.parquet``. SIDE runs once per target (:func:`run_side_stage`).
"""
from __future__ import annotations

import time

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared

from models.storage import run_chain
from models.storage import layout
from models.storage import schemas
from transforms.common import Held
from models.score.checks import PromptConditioner, calibrate, load_target, plaplace_at_points, plaplace_check, wen_check

NAMESPACE = "dupmine.score"


def load_training_rows(train: str | None, groups: str | None):
    """The training set's embeddings, keys and duplicate groups (None without ``--train``).

    Returns ``{"x": (N, D) float64, "keys": [N], "by_group": {group_id: [rows]}, "model": spec}``.
    """
    if not train:
        return None
    folder = layout.EmbeddingFolder(train)
    parts = folder.parts()
    if not parts:
        return None
    x = np.concatenate([np.asarray(layout.read_npy(folder.img_emb(i)), np.float64) for i in parts])
    keys = [k for i in parts for k in layout.read_parquet(folder.metadata(i), ["key"]).column("key").to_pylist()]
    by_group: dict = {}
    if groups:
        row = {k: j for j, k in enumerate(keys)}
        for r in run_chain.load_groups(groups, ["key", "group_id", "group_size"]).to_pylist():
            if r["group_size"] > 1 and r["key"] in row:
                by_group.setdefault(r["group_id"], []).append(row[r["key"]])
    model = layout.read_json(folder.config).get("config", {}).get("model") if layout.exists(folder.config) else None
    return {"x": x, "keys": keys, "by_group": by_group, "model": model}


def in_target_space(target, train) -> bool:
    """True when the training embeddings are points of the target's own space (closed-form targets over embeddings).

    Image targets (anything with ``decode_latents``) never are, even when the dimensions happen to agree.
    """
    return train is not None and not hasattr(target, "decode_latents") and train["x"].shape[1] == target.dim


def image_embed_fn(target, model: str | None):
    """Generations -> the training set's embedding space: decode with the target, embed with the embed-stage model.

    Used when the target does not live in the embedding space (e.g. Stable
    Diffusion latents vs CLIP embeddings). Returns None when that is not possible.
    """
    if model is None or not hasattr(target, "decode_latents"):
        return None
    from PIL import Image

    from models.embed.embedders import EmbedderConfig, l2_normalise, load_embedder

    embedder = load_embedder(EmbedderConfig(model=model, device="cpu"))

    def embed(z: np.ndarray) -> np.ndarray:
        images = target.decode_latents(np.asarray(z, np.float32))
        batch = np.stack([embedder.preprocess(Image.fromarray(img)) for img in images])
        return l2_normalise(embedder.embed_images(batch))[0].astype(np.float64)

    return embed


class ScorePromptFn(beam.DoFn):
    """(role, prompt, group_ids) -> one row per check, without decision yet."""

    def __init__(self, cfg):
        self.cfg = cfg
        self._shared = shared.Shared()
        self.scored = Metrics.counter(NAMESPACE, "prompts_scored")
        self.evals = Metrics.counter(NAMESPACE, "model_evaluations")

    def setup(self):
        cfg = self.cfg

        def load():
            target = load_target(cfg.target, cfg.device)
            train = load_training_rows(cfg.train, cfg.groups)
            return Held((target, PromptConditioner(target, cfg.target), train if in_target_space(target, train) else None))

        self._loaded = self._shared.acquire(load, tag=cfg.target)

    def process(self, element):
        role, prompt, group_ids = element
        cfg = self.cfg
        target, conditioner, train = self._loaded.value
        cond = conditioner(prompt)
        results = []
        if "plaplace" in cfg.checks:
            results.append(plaplace_check(target, cond, prompt, cfg.score))
            rows = [j for g in group_ids for j in (train or {}).get("by_group", {}).get(g, [])]
            if rows:
                results.append(plaplace_at_points(target, cond, prompt, train["x"][rows], cfg.score))
        if "wen" in cfg.checks:
            results.append(wen_check(target, cond, conditioner.null, prompt, cfg.score))
        self.scored.inc()
        for r in results:
            self.evals.inc(r.cost_evals)
            yield {"role": role, "prompt": prompt, "check": r.check, "statistic": r.statistic, "spread": r.spread,
                   "n_samples": r.n_samples, "seed": cfg.score.seed, "cost_evals": r.cost_evals, "seconds": r.seconds}


def decide(rows: list, cfg) -> list:
    """Thresholds from the reference rows, decisions for every row (``statistic > threshold``)."""
    reference: dict = {}
    for r in rows:
        reference.setdefault(r["check"], [])
        if r["role"] == "reference":
            reference[r["check"]].append(r["statistic"])
    thresholds = calibrate(reference, cfg.score.fpr)
    out = []
    for r in sorted(rows, key=lambda r: (r["role"] != "flagged", r["check"], -r["statistic"], r["prompt"])):
        t = thresholds[r["check"]]
        out.append(r | {"threshold": t, "decision": bool(np.isfinite(t) and r["statistic"] > t)})
    return out


class ScorePrompts(beam.PTransform):
    """Prompt records -> ``prompt_scores.parquet`` in ``cfg.output``."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def expand(self, prompts):
        cfg = self.cfg
        path = layout.join(cfg.output, "prompt_scores.parquet")
        return (
            prompts
            | "SpreadPrompts" >> beam.Reshuffle()
            | "ScoreEachPrompt" >> beam.ParDo(ScorePromptFn(cfg))
            | "GatherScores" >> beam.combiners.ToList()
            | "CalibrateAndDecide" >> beam.Map(decide, cfg)
            | "WriteScores" >> beam.Map(lambda rows: layout.write_parquet(path, schemas.table(rows, schemas.PROMPT_SCORES)))
        )


class FixedCondition:
    """A target whose every ``eps`` call uses one prompt's condition (SIDE conditioned on a flagged prompt)."""

    def __init__(self, target, cond):
        self.target, self.cond = target, cond
        self.schedule, self.dim = target.schedule, target.dim

    def eps(self, x, t, cond=None):
        return self.target.eps(x, t, self.cond)


def save_grid(images: np.ndarray, path: str, columns: int = 4) -> None:
    """(N, H, W, 3) uint8 -> one PNG grid (at most 16 images)."""
    import io

    from PIL import Image

    images = images[:16]
    rows = -(-len(images) // columns)
    h, w = images.shape[1:3]
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(Image.fromarray(img), ((i % columns) * w, (i // columns) * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    layout.atomic_write_bytes(path, buf.getvalue())


def run_side_stage(cfg, prompts: list[str] = ()) -> dict:
    """SIDE for the target: extractions.parquet, side_summary.json and, for image targets, PNG grids.

    One unconditional run (METHODS 1.2, as for unconditional DPMs), then, for
    a conditional target, one run per prompt in ``prompts`` with the target
    fixed to that prompt's condition (the flagged prompts are the conditions).
    """
    from models.score.side import SideConfig, run_side

    target = load_target(cfg.target, cfg.device)
    conditioner = PromptConditioner(target, cfg.target)
    train = load_training_rows(cfg.train, cfg.groups)
    if train is None:
        raise ValueError(f"SIDE matches generations to the training set: --train {cfg.train} has no embeddings")
    embed_fn = None
    if not in_target_space(target, train):
        embed_fn = image_embed_fn(target, train["model"])
        if embed_fn is None:
            raise ValueError(f"SIDE: the training embeddings ({train['x'].shape[1]}-d, model {train['model']!r}) are not in "
                             f"the target's {target.dim}-d space and the target cannot decode its samples to images")
    side_cfg = SideConfig(n_syn=cfg.side_n_syn, k=cfg.side_k, tau=cfg.side_tau, lambda_=cfg.side_lambda,
                          n_g=cfg.side_n_g, steps=cfg.score.steps, seed=cfg.score.seed)
    group_of = {j: g for g, rows in train["by_group"].items() for j in rows}
    runs = [(None, target)] + [(q, FixedCondition(target, conditioner(q))) for q in prompts if conditioner(q) is not None]
    rows, summaries = [], []
    for r, (prompt, model) in enumerate(runs):
        started = time.monotonic()
        result = run_side(model, embed_fn, train["x"], side_cfg, train_is_features=True, dim=target.dim)
        rows += [{"generation_id": f"r{r:02d}g{i:06d}", "prompt": prompt, "matched_key": train["keys"][j],
                  "similarity": float(v), "band": side_cfg.bands.band_of(float(v)), "group_id": group_of.get(j)}
                 for i, (j, v) in enumerate(zip(result.match_idx.tolist(), result.match_value.tolist()))]
        summaries.append(result.summary() | {"prompt": prompt, "seconds": round(time.monotonic() - started, 3)})
        if hasattr(target, "decode_latents"):
            save_grid(target.decode_latents(result.generations[:16]), layout.join(cfg.output, "grids", f"side_{r:02d}.png"))
    layout.write_parquet(layout.join(cfg.output, "extractions.parquet"), schemas.table(rows, schemas.EXTRACTIONS))
    summary = summaries[0] | {"conditional_runs": summaries[1:]}
    layout.write_json(layout.join(cfg.output, "side_summary.json"), summary)
    return summary
