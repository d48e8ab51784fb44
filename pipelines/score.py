"""``dupmine score``: flagged prompts x a target diffusion model -> memorization scores and extractions.

    dupmine score --flagged mine/flagged_prompts.parquet --target diffusers:/models/sd15 --output score/
        [--checks plaplace,side,wen] [--train emb/] [--groups dedup/] [--reference FILE] [--seed S]
        [--device auto|cpu|cuda] [beam options]

Targets: ``diffusers:PATH`` (local text-to-image diffusers folder),
``diffusers-uncond:PATH`` (UNet2DModel + scheduler), ``gmm:FILE.npz`` and
``memorizer:FILE.npz`` (closed-form models with known answers; prompts map to
class labels through ``FILE.npz.prompts.json``). No weights are fetched.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field

from models.score.checks import CHECKS, Check, Role, ScoreConfig, ScoreItem
from pipelines.common import make_pipeline, setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.score")
_SCORE = ScoreConfig()


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class ScoreStageConfig:
    """Resolved options of the score stage: the one source of every default (argparse is built from it).

    Written to ``OUTPUT/config.json``. Field ``x_y`` is flag ``--x-y``.
    """

    flagged: str = field(metadata={"help": "flagged_prompts.parquet from dupmine mine (or any parquet with a prompt column)"})
    target: str = field(metadata={"help": "diffusers:PATH | diffusers-uncond:PATH | gmm:FILE | memorizer:FILE"})
    output: str = field(metadata={"help": "output folder (local or fsspec URL)"})
    checks: tuple = _opt(CHECKS, "comma-separated subset of " + ",".join(CHECKS))
    train: str | None = _opt(None, "embedding folder of the training set (SIDE matching, group images)")
    groups: str | None = _opt(None, "dedup folder (group ids of matched training images)")
    reference: str | None = _opt(None, "reference prompts for calibration (.txt, or parquet with prompt/caption); "
                                       "default: captions of singleton rows of --train")
    n_reference: int = _opt(20, "reference prompts used for calibration")
    max_prompts: int = _opt(50, "score at most this many flagged prompts (by rank)")
    device: str = _opt("auto", "torch device of diffusers targets", choices=("auto", "cpu", "cuda"))
    n_samples: int = _opt(_SCORE.n_samples, "generations per prompt (p-Laplace)")
    steps: int = _opt(_SCORE.steps, "DDIM steps")
    t_small: int = _opt(_SCORE.t_small, "timestep of the p-Laplace statistic, on a 1000-step schedule (scaled to "
                                        "the target's)")
    plaplace_aggregate: str = _opt(_SCORE.plaplace_aggregate, "an item's p-Laplace statistic over its samples or "
                                                              "images", choices=("max", "mean"))
    n_dirs: int = _opt(_SCORE.n_dirs, "noise directions per sample")
    wen_n: int = _opt(_SCORE.wen_n, "generations per prompt (Wen)")
    wen_until: int = _opt(_SCORE.wen_until, "Wen's magnitude is averaged over the DDIM steps at timesteps >= this "
                                            "(1000-step schedule)")
    jeon_n: int = _opt(_SCORE.jeon_n, "draws of x_T per prompt (Jeon)")
    guidance_scale: float = _opt(_SCORE.guidance_scale, "classifier-free guidance scale of the p-Laplace generations "
                                                        "(conditional targets)")
    fpr: float = _opt(_SCORE.fpr, "decision threshold = this upper quantile of reference items")
    seed: int = _opt(_SCORE.seed, "root seed of every random draw")
    side_k: int = _opt(20, "SIDE k-means clusters K")
    side_tau: float = _opt(0.5, "SIDE cohesion threshold tau")
    side_lambda: float = _opt(2.0, "SIDE guidance scale lambda")
    side_n_syn: int = _opt(200, "SIDE synthetic samples N_syn")
    side_n_g: int = _opt(200, "SIDE generations N_G")
    side_prompts: int = _opt(0, "conditional targets: also run SIDE conditioned on each of the top N flagged prompts")

    def __post_init__(self):
        from models.score.conditioning import parse_target_spec

        parse_target_spec(self.target)  # an unknown form is an error listing every accepted one
        object.__setattr__(self, "checks", tuple(c.value for c in Check.parse(self.checks)))
        for name in ("n_reference", "max_prompts", "side_k", "side_n_syn", "side_n_g"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"--device {self.device!r}; expected auto, cpu or cuda")
        if Check.SIDE in self.checks and not self.train:
            raise ValueError("--checks side matches generations to the training set: pass --train EMBEDDINGS_DIR")
        _ = self.score  # validates the per-item sizes

    @property
    def score(self) -> ScoreConfig:
        return ScoreConfig(n_samples=self.n_samples, steps=self.steps, t_small=self.t_small,
                           plaplace_aggregate=self.plaplace_aggregate, n_dirs=self.n_dirs, wen_n=self.wen_n,
                           wen_until=self.wen_until, jeon_n=self.jeon_n, guidance_scale=self.guidance_scale,
                           fpr=self.fpr, seed=self.seed)

    @property
    def side(self):
        from models.score.side import SideConfig

        return SideConfig(n_syn=self.side_n_syn, k=self.side_k, tau=self.side_tau, lambda_=self.side_lambda,
                          n_g=self.side_n_g, steps=self.steps, seed=self.seed)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`ScoreStageConfig` field, with the field's default, type and help."""
    for f in dataclasses.fields(ScoreStageConfig):
        flag = "--" + f.name.replace("_", "-")
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        kind = str if f.name == "checks" or default is None else type(default)
        if f.name == "checks":
            default = ",".join(default)
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        parser.add_argument(flag, required=required, default=default, type=kind, help=f.metadata["help"], **extra)


def config_from_args(args: argparse.Namespace) -> ScoreStageConfig:
    return ScoreStageConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ScoreStageConfig)})


def build(p, cfg: ScoreStageConfig, items: list[ScoreItem], side_prompts: list[str], handle) -> None:
    """Wire the stage: items -> ScoreItems, one request -> ExtractWithSide, all rows -> CalibrateAndWrite
    (the item and SIDE steps on ``handle``'s context)."""
    import apache_beam as beam

    from models.storage.folders.score import ScoreFolder
    from transforms.score import CalibrateAndWrite, ExtractWithSide, ScoreItems, SideRequest

    rows = p | "ListItems" >> beam.Create(items) | "ScoreItems" >> ScoreItems(cfg, handle)
    if Check.SIDE in cfg.checks:
        request = SideRequest(tuple(side_prompts), tuple(i for i in items if i.keys))
        side = p | "SideRequest" >> beam.Create([request]) | "ExtractWithSide" >> ExtractWithSide(cfg, handle)
        rows = (rows, side) | "AllRows" >> beam.Flatten()
    rows | "CalibrateAndWrite" >> CalibrateAndWrite(cfg.fpr, ScoreFolder(cfg.output).prompt_scores)


def skipped_checks(cfg: ScoreStageConfig, conditional: bool) -> dict:
    """{check: reason} for requested checks the target cannot take."""
    if conditional:
        return {}
    reason = "the target takes no prompt: the check compares conditional and null predictions"
    out = {c: reason for c in (Check.WEN.value, Check.JEON.value) if c in cfg.checks}
    if Check.PLAPLACE in cfg.checks:
        out["plaplace (generated samples)"] = "the target takes no prompt: scored per group at its training images"
    return out


def summarize(cfg: ScoreStageConfig, items: list[ScoreItem], seconds: float, skipped: dict) -> dict:
    """The stage summary from the files it wrote."""
    from models.storage import layout
    from models.storage.folders.score import ScoreFolder

    folder = ScoreFolder(cfg.output)
    scores = layout.read_parquet(folder.prompt_scores).to_pylist()
    summary = {
        "prompts_scored": sum(1 for i in items if i.role == Role.FLAGGED.value),
        "reference_prompts": sum(1 for i in items if i.role == Role.REFERENCE.value and not i.image_only),
        "reference_images": sum(1 for i in items if i.role == Role.REFERENCE.value and i.keys),
        "memorized": {c: sum(1 for s in scores if s["check"] == c and s["role"] == Role.FLAGGED.value and s["decision"])
                      for c in sorted({s["check"] for s in scores})},
        "thresholds": {s["check"]: s["threshold"] for s in scores},
        "cost_evals": int(sum(s["cost_evals"] for s in scores)),
        "seconds": round(seconds, 3),
        "skipped_checks": skipped,
        "no_reference_rows": sorted({s["check"] for s in scores if s["threshold"] != s["threshold"]}),
    }
    if Check.SIDE in cfg.checks:
        side = layout.read_json(folder.side_summary)
        summary["side"] = side["metrics"]
        summary["side_baseline"] = side["baseline"]["metrics"]
    return summary


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, load the target once (failing early), score, write outputs; return the summary."""
    from models.storage import layout
    from models.storage.folders.score import ScoreFolder
    from models.score.items import score_items
    from transforms.score import ContextHandle

    parser = stage_parser("dupmine score", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    started = time.monotonic()
    folder = ScoreFolder(cfg.output)
    folder.clear()
    p = make_pipeline(beam_args, test_pipeline)
    # The preflight load fails at start on a missing or incomplete model; the workers acquire the same handle
    # (in-process runners load the target once), held here until the run ends.
    handle = ContextHandle(cfg)
    loaded = handle.acquire()
    items, n_flagged = score_items(loaded.value, cfg.flagged, cfg.target, cfg.max_prompts, cfg.reference,
                                   cfg.n_reference, cfg.seed)
    side_prompts = [i.prompt for i in items[: min(cfg.side_prompts, n_flagged)]] if loaded.value.conditioner.conditional else []
    build(p, cfg, items, side_prompts, handle)
    layout.write_json(folder.config, {"stage": "score", "config": asdict(cfg), "beam_args": beam_args,
                                      "n_flagged": n_flagged, "n_reference": len(items) - n_flagged})
    log.info("score: %d flagged and %d reference item(s) against %s, checks %s", n_flagged, len(items) - n_flagged,
             cfg.target, ",".join(cfg.checks))
    p.run().wait_until_finish()
    skipped = skipped_checks(cfg, loaded.value.conditioner.conditional)
    summary = summarize(cfg, items, time.monotonic() - started, skipped)
    layout.write_json(folder.summary, summary)
    log.info("score done: memorized per check %s", summary["memorized"])
    del loaded
    return summary
