"""``dupmine score``: flagged prompts x a target diffusion model -> memorization scores and extractions.

    dupmine score --flagged mine/flagged_prompts.parquet --target diffusers:/models/sd15 --output score/
        [--checks plaplace,side,wen] [--train emb/] [--groups dedup/] [--reference FILE] [--seed S]
        [--device auto|cpu|cuda] [beam options]

Targets: ``diffusers:PATH`` (local Stable-Diffusion-style folder),
``diffusers-uncond:PATH`` (UNet2DModel + scheduler), ``gmm:FILE.npz`` and
``memorizer:FILE.npz`` (closed-form models with known answers; prompts map to
class labels through ``FILE.npz.prompts.json``). No weights are fetched.
"""
from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from models.score.checks import CHECKS, ScoreConfig
from pipelines.common import make_pipeline, positive_int, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.score")
OUTPUTS = ["prompt_scores.parquet", "extractions.parquet", "side_summary.json", "grids", "_stage", "summary.json"]


@dataclass(frozen=True)
class ScoreStageConfig:
    """Resolved options of the score stage (written to ``OUTPUT/config.json``)."""

    flagged: str
    target: str
    output: str
    checks: tuple[str, ...] = CHECKS
    train: str | None = None
    groups: str | None = None
    reference: str | None = None
    n_reference: int = 20
    max_prompts: int = 50
    device: str = "auto"
    score: ScoreConfig = ScoreConfig()
    side_k: int = 20
    side_tau: float = 0.5
    side_lambda: float = 2.0
    side_n_syn: int = 200
    side_n_g: int = 200
    side_prompts: int = 0

    def __post_init__(self):
        bad = [c for c in self.checks if c not in CHECKS]
        if bad:
            raise ValueError(f"--checks {bad} unknown; allowed {list(CHECKS)}")
        if "side" in self.checks and not self.train:
            raise ValueError("--checks side matches generations to the training set: pass --train EMBEDDINGS_DIR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flagged", required=True, help="flagged_prompts.parquet from dupmine mine (or any parquet with a prompt column)")
    parser.add_argument("--target", required=True, help="diffusers:PATH | diffusers-uncond:PATH | gmm:FILE | memorizer:FILE")
    parser.add_argument("--output", required=True)
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated subset of plaplace,side,wen")
    parser.add_argument("--train", default=None, help="embedding folder of the training set (SIDE matching, group images)")
    parser.add_argument("--groups", default=None, help="dedup folder (group ids of matched training images)")
    parser.add_argument("--reference", default=None, help="reference prompts for calibration (.txt, or parquet with prompt/caption); "
                        "default: captions of singleton rows of --train")
    parser.add_argument("--n-reference", type=positive_int, default=20)
    parser.add_argument("--max-prompts", type=positive_int, default=50, help="score at most this many flagged prompts (by rank)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--n-samples", type=positive_int, default=8, help="generations per prompt (p-Laplace)")
    parser.add_argument("--steps", type=positive_int, default=50, help="DDIM steps")
    parser.add_argument("--t-small", type=int, default=10, help="timestep of the p-Laplace statistic")
    parser.add_argument("--n-dirs", type=positive_int, default=64, help="noise directions per sample")
    parser.add_argument("--wen-n", type=positive_int, default=4)
    parser.add_argument("--fpr", type=float, default=0.05, help="decision threshold = this upper quantile of reference prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--side-k", type=positive_int, default=20)
    parser.add_argument("--side-tau", type=float, default=0.5)
    parser.add_argument("--side-lambda", type=float, default=2.0)
    parser.add_argument("--side-n-syn", type=positive_int, default=200)
    parser.add_argument("--side-n-g", type=positive_int, default=200)
    parser.add_argument("--side-prompts", type=int, default=0,
                        help="conditional targets: also run SIDE conditioned on each of the top N flagged prompts")


def config_from_args(args: argparse.Namespace) -> ScoreStageConfig:
    score = ScoreConfig(n_samples=args.n_samples, steps=args.steps, t_small=args.t_small, n_dirs=args.n_dirs,
                        wen_n=args.wen_n, fpr=args.fpr, seed=args.seed)
    return ScoreStageConfig(
        flagged=args.flagged, target=args.target, output=args.output,
        checks=tuple(c for c in args.checks.split(",") if c), train=args.train, groups=args.groups,
        reference=args.reference, n_reference=args.n_reference, max_prompts=args.max_prompts, device=args.device,
        score=score, side_k=args.side_k, side_tau=args.side_tau, side_lambda=args.side_lambda,
        side_n_syn=args.side_n_syn, side_n_g=args.side_n_g, side_prompts=args.side_prompts,
    )


def load_prompts(cfg: ScoreStageConfig) -> tuple[list[dict], list[str]]:
    """Flagged prompts (rank order, capped) and reference prompts for calibration."""
    from models.storage import layout

    table = layout.read_parquet(cfg.flagged)
    rows = table.to_pylist()
    if rows and "rank" in rows[0]:
        rows.sort(key=lambda r: r["rank"])
    flagged = [{"prompt": r["prompt"], "group_ids": list(r.get("group_ids") or [])} for r in rows if r.get("prompt")][: cfg.max_prompts]
    if cfg.reference:
        if cfg.reference.endswith(".txt"):
            with open(cfg.reference, encoding="utf-8") as f:
                reference = [line.strip() for line in f if line.strip()]
        else:
            t = layout.read_parquet(cfg.reference)
            reference = [str(x) for x in t.column("prompt" if "prompt" in t.column_names else "caption").to_pylist() if x]
    else:
        reference = default_reference(cfg, {r["prompt"] for r in flagged})
    return flagged, reference[: cfg.n_reference]


def default_reference(cfg: ScoreStageConfig, exclude: set) -> list[str]:
    """Captions of rows that are not in a duplicate group (seeded sample), when ``--train``/``--groups`` are given."""
    from models.storage import run_chain
    from models.storage import layout

    if not cfg.train:
        return []
    meta = layout.read_parquet(layout.join(cfg.train, "metadata"), ["key", "caption"]).to_pylist()
    single = None
    if cfg.groups:
        single = {r["key"] for r in run_chain.load_groups(cfg.groups, ["key", "group_size"]).to_pylist()
                  if r["group_size"] == 1}
    captions = sorted({m["caption"] for m in meta if m["caption"] and m["caption"] not in exclude
                       and (single is None or m["key"] in single)})
    rng = np.random.default_rng(cfg.score.seed)
    return [captions[i] for i in rng.permutation(len(captions))[: cfg.n_reference]]


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, score, write outputs; return the summary."""
    import apache_beam as beam

    from models.storage import layout
    from models.score.checks import load_target
    from transforms.score import ScorePrompts, run_side_stage

    parser = stage_parser("dupmine score", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    started = time.monotonic()
    layout.clear_outputs(cfg.output, OUTPUTS)
    load_target(cfg.target, cfg.device)  # fail at start on a missing or incomplete model
    flagged, reference = load_prompts(cfg)
    layout.write_json(layout.join(cfg.output, "config.json"), {"stage": "score", "config": asdict(cfg), "beam_args": beam_args,
                                                               "n_flagged": len(flagged), "n_reference": len(reference)})
    log.info("score: %d flagged and %d reference prompt(s) against %s, checks %s", len(flagged), len(reference),
             cfg.target, ",".join(cfg.checks))
    p = make_pipeline(beam_args, test_pipeline)
    prompts = [("flagged", r["prompt"], tuple(r["group_ids"])) for r in flagged] + [("reference", q, ()) for q in reference]
    p | "ListPrompts" >> beam.Create(prompts) | "ScorePrompts" >> ScorePrompts(cfg)
    if "side" in cfg.checks:
        side_prompts = [r["prompt"] for r in flagged[: cfg.side_prompts]]
        p | "One" >> beam.Create([None]) | "RunSide" >> beam.Map(lambda _: run_side_stage(cfg, side_prompts))
    p.run().wait_until_finish()
    scores = layout.read_parquet(layout.join(cfg.output, "prompt_scores.parquet")).to_pylist()
    summary = {
        "prompts_scored": len(flagged), "reference_prompts": len(reference),
        "memorized": {c: sum(1 for s in scores if s["check"] == c and s["role"] == "flagged" and s["decision"])
                      for c in sorted({s["check"] for s in scores})},
        "thresholds": {s["check"]: s["threshold"] for s in scores},
        "cost_evals": int(sum(s["cost_evals"] for s in scores)),
        "seconds": round(time.monotonic() - started, 3),
    }
    if "side" in cfg.checks:
        summary["side"] = layout.read_json(layout.join(cfg.output, "side_summary.json"))["metrics"]
    layout.write_json(layout.join(cfg.output, "summary.json"), summary)
    log.info("score done: memorized per check %s", summary["memorized"])
    return summary
