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

from models import layout, schemas
from models.scoring import PromptConditioner, calibrate, load_target, plaplace_at_points, plaplace_check, wen_check

NAMESPACE = "dupmine.score"


class _Loaded:
    def __init__(self, target, conditioner, train):
        self.target, self.conditioner, self.train = target, conditioner, train


def load_training_rows(train: str | None, groups: str | None, dim: int):
    """Group id -> training embedding rows, when the training embeddings live in the target's space.

    Returns None when there is no ``--train`` folder or its dimension differs
    from the target's (then images would have to be encoded by the target:
    e.g. a Stable Diffusion VAE; that check is skipped).
    """
    if not train:
        return None
    folder = layout.EmbeddingFolder(train)
    parts = folder.parts()
    if not parts:
        return None
    x = np.concatenate([np.asarray(layout.read_npy(folder.img_emb(i)), np.float64) for i in parts])
    if x.shape[1] != dim:
        return None
    keys = [k for i in parts for k in layout.read_parquet(folder.metadata(i), ["key"]).column("key").to_pylist()]
    by_group: dict = {}
    if groups:
        row = {k: j for j, k in enumerate(keys)}
        for r in layout.read_parquet(layout.join(groups, "groups"), ["key", "group_id", "group_size"]).to_pylist():
            if r["group_size"] > 1 and r["key"] in row:
                by_group.setdefault(r["group_id"], []).append(row[r["key"]])
    return {"x": x, "keys": keys, "by_group": by_group}


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
            return _Loaded(target, PromptConditioner(target, cfg.target), load_training_rows(cfg.train, cfg.groups, target.dim))

        self._loaded = self._shared.acquire(load, tag=cfg.target)

    def process(self, element):
        role, prompt, group_ids = element
        cfg, loaded = self.cfg, self._loaded
        target, cond = loaded.target, loaded.conditioner(prompt)
        results = []
        if "plaplace" in cfg.checks:
            results.append(plaplace_check(target, cond, prompt, cfg.score))
            rows = [j for g in group_ids for j in (loaded.train or {}).get("by_group", {}).get(g, [])]
            if rows:
                results.append(plaplace_at_points(target, cond, prompt, loaded.train["x"][rows], cfg.score))
        if "wen" in cfg.checks:
            results.append(wen_check(target, cond, loaded.conditioner.null, prompt, cfg.score))
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


def run_side_stage(cfg) -> dict:
    """SIDE once for the target: extractions.parquet and side_summary.json (METHODS 1.2-1.4)."""
    from models.side import SideConfig, run_side

    target = load_target(cfg.target, cfg.device)
    train = load_training_rows(cfg.train, cfg.groups, target.dim)
    if train is None:
        raise ValueError(f"SIDE needs the training set in the target's space: --train {cfg.train} has no embeddings of "
                         f"dimension {target.dim}")
    started = time.monotonic()
    side_cfg = SideConfig(n_syn=cfg.side_n_syn, k=cfg.side_k, tau=cfg.side_tau, lambda_=cfg.side_lambda,
                          n_g=cfg.side_n_g, steps=cfg.score.steps, seed=cfg.score.seed)
    result = run_side(target, None, train["x"], side_cfg, train_is_features=True)
    group_of = {j: g for g, rows in train["by_group"].items() for j in rows}
    bands = side_cfg.bands
    rows = [{"generation_id": f"g{i:06d}", "prompt": None, "matched_key": train["keys"][j], "similarity": float(v),
             "band": bands.band_of(float(v)), "group_id": group_of.get(j)}
            for i, (j, v) in enumerate(zip(result.match_idx.tolist(), result.match_value.tolist()))]
    layout.write_parquet(layout.join(cfg.output, "extractions.parquet"), schemas.table(rows, schemas.EXTRACTIONS))
    summary = result.summary() | {"seconds": round(time.monotonic() - started, 3)}
    layout.write_json(layout.join(cfg.output, "side_summary.json"), summary)
    return summary
