"""``dupmine run``: every stage, shards to report, each in its own subfolder.

    dupmine run --input SHARDS --output RUN/ [--config dupmine.yaml] [--set STAGE.KEY=VALUE ...]
        [--model SPEC] [--threshold T] [--tagger SPEC] [--vocab FILE] [--target SPEC] [--previous PREV_RUN]
        [--dry-run] [beam options]

Stages: ``embed -> dedup -> mine -> score (only with a target) -> report``,
written to ``RUN/embed``, ``RUN/dedup``, ``RUN/mine``, ``RUN/score``,
``RUN/report``. A stage is skipped when it completed before with the same
parameters and the same upstream results (the cache key is a fingerprint of
its resolved flags and its inputs' fingerprints, never the mere existence of
files); otherwise its folder is cleared and it runs again. ``embed`` keeps its
own per-shard markers, so new shards are embedded incrementally.

Configuration precedence: built-in defaults < ``--config`` YAML < shortcut
flags (``--model`` ...) < ``--set``. The resolved configuration is printed by
``--dry-run`` and saved as ``RUN/config.yaml``.

``--previous PREV_RUN`` makes dedup and mine increments of a previous run
(``--previous PREV_RUN/dedup`` and ``--previous PREV_RUN/mine``): only the
shards not in PREV_RUN's chain are deduplicated and counted.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import logging
import os
import shutil
import sys
import time

import yaml

from pipelines.common import setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.run")

STAGES = ("embed", "dedup", "mine", "score", "report")
DEFAULTS: dict = {
    "input": None,
    "output": None,
    "previous": None,
    "embed": {"model": "openclip:ViT-B-32/laion2b_s34b_b79k", "batch_size": 64, "device": "auto"},
    "dedup": {"threshold": 0.95},
    "mine": {"tagger": "zero-shot", "min_support": 10, "fdr": 0.05},
    "score": {"target": None, "checks": "plaplace,side,wen"},
    "report": {},
}
SHORTCUTS = {"model": "embed.model", "threshold": "dedup.threshold", "tagger": "mine.tagger", "vocab": "mine.vocab",
             "min_support": "mine.min_support", "target": "score.target", "device": "embed.device"}


def _parse_value(text):
    """Flag values are YAML scalars: ``0.9`` -> float, ``true`` -> bool, ``null`` -> None (flag left out).

    Anything YAML would read as a mapping or list (``a: b``) stays the raw string.
    """
    if not isinstance(text, str):
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) else value


def resolve_config(args: argparse.Namespace) -> dict:
    """Defaults < YAML file < shortcut flags < ``--set``; validates stage and key names."""
    cfg = copy.deepcopy(DEFAULTS)
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of stages, got {type(loaded).__name__}")
        _merge(cfg, loaded, args.config)
    overrides = [(dotted, _parse_value(getattr(args, flag))) for flag, dotted in SHORTCUTS.items() if getattr(args, flag) is not None]
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected STAGE.KEY=VALUE, e.g. dedup.threshold=0.9")
        dotted, value = item.split("=", 1)
        overrides.append((dotted, _parse_value(value)))
    for dotted, value in overrides:
        stage, _, key = dotted.partition(".")
        if stage not in STAGES or not key:
            raise ValueError(f"{dotted!r}: expected STAGE.KEY with STAGE one of {STAGES}")
        cfg[stage][key.replace("-", "_")] = value
    for key in ("input", "output"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
        if not cfg[key]:
            raise ValueError(f"--{key} is required (or set '{key}:' in the config file)")
    if getattr(args, "previous", None):
        cfg["previous"] = args.previous
    if cfg["previous"] and os.path.abspath(str(cfg["previous"])) == os.path.abspath(str(cfg["output"])):
        raise ValueError(f"--previous {cfg['previous']} is the --output folder; an incremental run writes to a new folder")
    return cfg


def _merge(cfg: dict, loaded: dict, source: str) -> None:
    for key, value in loaded.items():
        if key in ("input", "output", "previous"):
            cfg[key] = value
        elif key in STAGES:
            if not isinstance(value, dict):
                raise ValueError(f"{source}: '{key}' must be a mapping of flags, got {value!r}")
            cfg[key].update({k.replace("-", "_"): v for k, v in value.items()})
        else:
            raise ValueError(f"{source}: unknown key {key!r}; expected input, output, previous or one of {STAGES}")


def _flags(options: dict) -> list[str]:
    """{"batch_size": 64, "overwrite": True, "vocab": None} -> ["--batch-size", "64", "--overwrite"]."""
    argv = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def stage_argv(stage: str, cfg: dict) -> list[str] | None:
    """The stage's own flags (no Beam options), or None when the stage does not run."""
    run = cfg["output"]
    path = {s: os.path.join(run, s) for s in STAGES}
    opts = dict(cfg[stage])
    previous = cfg.get("previous")
    if stage == "embed":
        return ["--input", str(cfg["input"]), "--output", path["embed"], *_flags(opts)]
    if stage == "dedup":
        prev = ["--previous", os.path.join(previous, "dedup")] if previous else []
        return ["--embeddings", path["embed"], "--output", path["dedup"], *prev, *_flags(opts)]
    if stage == "mine":
        prev = ["--previous", os.path.join(previous, "mine")] if previous else []
        return ["--embeddings", path["embed"], "--groups", path["dedup"], "--output", path["mine"], *prev, *_flags(opts)]
    if stage == "score":
        if not opts.get("target"):
            return None
        return ["--flagged", os.path.join(path["mine"], "flagged_prompts.parquet"), "--train", path["embed"],
                "--groups", path["dedup"], "--output", path["score"], *_flags(opts)]
    return ["--run", run, "--output", path["report"], *_flags(opts)]


def _input_fingerprint(spec: str) -> list:
    from models.storage import layout
    from models.storage.shards import list_shards

    out = []
    for shard in list_shards(spec):
        fs, p = layout._fs(shard.path)
        info = fs.info(p)
        out.append([shard.path, info.get("size"), info.get("mtime") or info.get("updated")])
    return out


def _done_path(run: str, stage: str) -> str:
    return os.path.join(run, "_run", f"{stage}.json")


def run(argv: list[str] | None = None) -> dict:
    """Run (or skip) every stage; print and return the final summary."""
    from models.storage import layout

    parser = stage_parser("dupmine run", __doc__)
    parser.add_argument("--input", help="shards (as for dupmine embed)")
    parser.add_argument("--output", help="run folder")
    parser.add_argument("--config", help="YAML file: input, output and one mapping of flags per stage")
    parser.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", help="override one stage flag (repeatable)")
    for flag, dotted in SHORTCUTS.items():
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, help=f"shortcut for --set {dotted}=...")
    parser.add_argument("--previous", default=None,
                        help="previous run folder: dedup and mine add this run's new shards to its results "
                             "(--previous PREV/dedup, --previous PREV/mine)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    parser.add_argument("--only", default=None, help="comma-separated stages to consider (default: all)")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary table")
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = resolve_config(args)
    if args.dry_run:
        yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
        return cfg
    run_dir = cfg["output"]
    os.makedirs(run_dir, exist_ok=True)
    layout.atomic_write_bytes(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False).encode())
    only = set(args.only.split(",")) if args.only else set(STAGES)
    upstream, timings, results = _input_fingerprint(str(cfg["input"])), {}, {}
    for stage in STAGES:
        stage_args = stage_argv(stage, cfg)
        if stage_args is None or stage not in only:
            continue
        fingerprint = layout.fingerprint({"stage": stage, "argv": stage_args, "upstream": upstream})
        done = _done_path(run_dir, stage)
        if os.path.exists(done) and layout.read_json(done).get("fingerprint") == fingerprint:
            log.info("%s: unchanged since the last run, skipped", stage)
            results[stage] = layout.read_json(done).get("result")
            timings[stage] = "skipped"
            upstream = fingerprint
            continue
        out = os.path.join(run_dir, stage)
        if stage != "embed" and os.path.exists(out):
            shutil.rmtree(out)  # stale outputs of other parameters must not survive
        started = time.monotonic()
        result = importlib.import_module(f"pipelines.{stage}").run(stage_args + list(beam_args))
        timings[stage] = round(time.monotonic() - started, 1)
        results[stage] = result if isinstance(result, dict) else {"path": result}
        layout.write_json(done, {"fingerprint": fingerprint, "argv": stage_args, "result": results[stage]})
        upstream = fingerprint
    summary = final_summary(run_dir, results, timings)
    layout.write_json(os.path.join(run_dir, "summary.json"), summary)
    if not args.quiet:
        print(format_summary(summary))
    return summary


def _rejects_by_reason(run_dir: str) -> dict:
    from collections import Counter

    from models.storage import layout

    reasons: Counter = Counter()
    for stage in STAGES:
        path = os.path.join(run_dir, stage, "rejects")
        if os.path.isdir(path) and os.listdir(path):
            for r in layout.read_parquet(path, ["reason"]).column("reason").to_pylist():
                reasons[f"{stage}: {r.split(':', 1)[0]}"] += 1
    return dict(sorted(reasons.items()))


def final_summary(run_dir: str, results: dict, timings: dict) -> dict:
    embed, dedup, mine = (results.get(s) or {} for s in ("embed", "dedup", "mine"))
    return {
        "rows_in": embed.get("rows", 0) + embed.get("rejects", 0),
        "rows_embedded": embed.get("rows", 0),
        "rejects_by_reason": _rejects_by_reason(run_dir),
        "duplicate_groups": dedup.get("duplicate_groups"),
        "duplicate_fraction": dedup.get("duplicate_fraction"),
        "rows_to_drop": dedup.get("rows_dropped"),
        "word_triggers": mine.get("word_triggers"),
        "object_triggers": mine.get("object_triggers"),
        "flagged_prompts": mine.get("flagged_prompts"),
        "score": results.get("score"),
        "report": (results.get("report") or {}).get("path"),
        "seconds": timings,
    }


def format_summary(s: dict) -> str:
    def fmt(v):
        return "-" if v is None else str(v)

    fraction = s["duplicate_fraction"]
    rows = [("rows in", s["rows_in"]), ("rows embedded", s["rows_embedded"])]
    rows += [(f"  rejected, {k}", v) for k, v in s["rejects_by_reason"].items()]
    rows += [("duplicate groups", s["duplicate_groups"]),
             ("duplicate fraction", None if fraction is None else f"{100 * fraction:.2f}%"),
             ("rows to drop", s["rows_to_drop"]), ("word triggers", s["word_triggers"]),
             ("object triggers", s["object_triggers"]), ("flagged prompts", s["flagged_prompts"])]
    rows += [(f"seconds, {k}", v) for k, v in s["seconds"].items()]
    if s.get("report"):
        rows.append(("report", s["report"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "dupmine run summary", "-" * (width + 20)] + [f"{k:<{width}}  {fmt(v)}" for k, v in rows])
