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
import importlib
import logging
import sys
import time

import fsspec
import yaml

from models.storage.folders.mine import FLAGGED_PROMPTS
from models.storage.ids import absolute_url
from pipelines.common import setup_logging, split_args, stage_parser

log = logging.getLogger("dupmine.run")

STAGES = ("embed", "dedup", "mine", "score", "report")
# The stage options a resolved configuration shows even when nobody set them. Their values are not declared
# here: they are read from each stage's own parser (the one source of every default).
SHOWN = {"embed": ("model", "batch_size", "device"), "dedup": ("threshold",), "mine": ("tagger", "min_support", "fdr"),
         "score": ("target", "checks"), "report": ()}
# Flags dupmine run wires itself (folders of the run and its chain); a config may not set them per stage.
WIRED = {"input", "output", "embeddings", "groups", "flagged", "train", "run", "previous", "dedup", "mine", "score"}
SHORTCUTS = {"model": "embed.model", "threshold": "dedup.threshold", "tagger": "mine.tagger", "vocab": "mine.vocab",
             "min_support": "mine.min_support", "target": "score.target", "device": "embed.device"}


def stage_parser_of(stage: str) -> argparse.ArgumentParser:
    """The stage command's own flag parser (``pipelines.<stage>.add_arguments``)."""
    module = importlib.import_module(f"pipelines.{stage}")
    if not hasattr(module, "add_arguments"):  # a stage that is not a Beam pipeline builds its parser whole
        return module.build_parser()
    parser = argparse.ArgumentParser(prog=f"dupmine {stage}", add_help=False)
    module.add_arguments(parser)
    return parser


def stage_keys(stage: str) -> list[str]:
    """The keys a config may set for ``stage``: its flags (dest names) less the ones run wires itself."""
    return sorted(a.dest for a in stage_parser_of(stage)._actions if a.dest not in WIRED and a.dest != "help")


def stage_defaults() -> dict:
    out = {}
    for stage in STAGES:
        parser = stage_parser_of(stage)
        out[stage] = {key: parser.get_default(key) for key in SHOWN[stage]}
    return out


def _check_key(stage: str, key: str, source: str) -> str:
    key = key.replace("-", "_")
    allowed = stage_keys(stage)
    if key not in allowed:
        raise ValueError(f"{source}: {stage} has no option {key!r}; allowed keys: {', '.join(allowed)}")
    return key


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
    cfg = {"input": None, "output": None, "previous": None, **stage_defaults()}
    if args.config:
        with fsspec.open(args.config, "r", encoding="utf-8") as f:
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
        cfg[stage][_check_key(stage, key, dotted)] = value
    for key in ("input", "output"):
        if getattr(args, key):
            cfg[key] = getattr(args, key)
        if not cfg[key]:
            raise ValueError(f"--{key} is required (or set '{key}:' in the config file)")
    if getattr(args, "previous", None):
        cfg["previous"] = args.previous
    if cfg["previous"] and absolute_url(str(cfg["previous"])) == absolute_url(str(cfg["output"])):
        raise ValueError(f"--previous {cfg['previous']} is the --output folder; an incremental run writes to a new folder")
    return cfg


def _merge(cfg: dict, loaded: dict, source: str) -> None:
    for key, value in loaded.items():
        if key in ("input", "output", "previous"):
            cfg[key] = value
        elif key in STAGES:
            if not isinstance(value, dict):
                raise ValueError(f"{source}: '{key}' must be a mapping of flags, got {value!r}")
            cfg[key].update({_check_key(key, k, f"{source}: {key}.{k}"): v for k, v in value.items()})
        else:
            raise ValueError(f"{source}: unknown key {key!r}; expected input, output, previous or one of {STAGES}")


def _negatable() -> set[str]:
    """Options whose flag has a ``--no-`` form (boolean config fields that default to true)."""
    import dataclasses

    from pipelines.dedup import DedupConfig

    return {f.name for f in dataclasses.fields(DedupConfig) if f.metadata.get("type") is bool}


def _flags(options: dict) -> list[str]:
    """{"batch_size": 64, "overwrite": True, "vocab": None} -> ["--batch-size", "64", "--overwrite"]; false
    options with a ``--no-`` form (``increment_index``) -> ``--no-increment-index``, other false ones are left out."""
    argv = []
    negatable = _negatable()
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is False and key in negatable:
            argv.append("--no-" + key.replace("_", "-"))
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def stage_argv(stage: str, cfg: dict) -> list[str] | None:
    """The stage's own flags (no Beam options), or None when the stage does not run."""
    from models.storage import layout

    run = cfg["output"]
    path = {s: layout.join(run, s) for s in STAGES}
    opts = dict(cfg[stage])
    previous = cfg.get("previous")
    if stage == "embed":
        return ["--input", str(cfg["input"]), "--output", path["embed"], *_flags(opts)]
    if stage == "dedup":
        prev = ["--previous", layout.join(previous, "dedup")] if previous else []
        return ["--embeddings", path["embed"], "--output", path["dedup"], *prev, *_flags(opts)]
    if stage == "mine":
        prev = ["--previous", layout.join(previous, "mine")] if previous else []
        return ["--embeddings", path["embed"], "--groups", path["dedup"], "--output", path["mine"], *prev, *_flags(opts)]
    if stage == "score":
        if not opts.get("target"):
            return None
        return ["--flagged", layout.join(path["mine"], FLAGGED_PROMPTS), "--train", path["embed"],
                "--groups", path["dedup"], "--output", path["score"], *_flags(opts)]
    return ["--run", run, "--output", path["report"], *_flags(opts)]


def check_config(cfg: dict, explicit: set[str], stages: list[str]) -> list[str]:
    """Check the whole configuration before any stage runs; return the notes to print.

    Every stage's flags are parsed by that stage's own parser (a bad value fails
    here, not after an hour of embedding), and the cross-stage choices are
    resolved: without a text tower (``--model pixel`` or ``onnx:``) zero-shot
    object tags are impossible, so an unset ``mine.tagger`` becomes ``none``
    (said in one line) and an explicit ``zero-shot`` is an error.

    Raises:
      ValueError: a flag its stage rejects, or a combination that cannot work.
    """
    from models.mine.config import AUTO_TAGGER
    from models.mine.taggers.spec import TaggerKind, default_tagger_for, has_text_tower

    notes = []
    model, tagger = cfg["embed"]["model"], cfg["mine"].get("tagger")
    if "mine" in stages and tagger in (AUTO_TAGGER, None) and "mine.tags" not in explicit:
        resolved = default_tagger_for({"model": model})
        cfg["mine"]["tagger"] = str(resolved.kind.value)
        if resolved.kind == TaggerKind.NONE:
            notes.append(f"mine: no object tags (embed.model {model} has no text tower for zero-shot tagging; set "
                         f"mine.tagger to onnx-classifier:MODEL.onnx,LABELS.txt or mine.tags to a tag file)")
    elif "mine" in stages and tagger == "zero-shot" and not has_text_tower(model):
        raise ValueError(f"mine.tagger zero-shot scores the vocabulary with the embedding model's text tower, and "
                         f"embed.model {model!r} has none; use an openclip: model, "
                         f"--tagger onnx-classifier:MODEL.onnx,LABELS.txt or --tagger none")
    for stage in stages:
        argv = stage_argv(stage, cfg)
        if argv is None:
            continue
        try:
            stage_parser_of(stage).parse_args(argv)
        except SystemExit as exc:  # argparse has printed the reason
            raise ValueError(f"{stage}: its flags {argv} are invalid (see the message above)") from exc
    return notes


def explicit_keys(args: argparse.Namespace) -> set[str]:
    """``STAGE.KEY`` names the user set (config file, shortcut flags or ``--set``), not defaults."""
    keys = {dotted for flag, dotted in SHORTCUTS.items() if getattr(args, flag, None) is not None}
    keys |= {item.split("=", 1)[0].replace("-", "_") for item in (getattr(args, "set", None) or []) if "=" in item}
    if getattr(args, "config", None):
        with fsspec.open(args.config, "r", encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        keys |= {f"{stage}.{k.replace('-', '_')}" for stage, opts in loaded.items() if isinstance(opts, dict)
                 for k in opts}
    return keys


def _input_fingerprint(spec: str) -> list:
    from models.storage import layout
    from models.storage.shards import list_shards

    out = []
    for shard in list_shards(spec):
        fs, p = layout.filesystem(shard.path)
        info = fs.info(p)
        out.append([shard.path, info.get("size"), info.get("mtime") or info.get("updated")])
    return out


def _done_path(run: str, stage: str) -> str:
    from models.storage import layout

    return layout.join(run, "_run", f"{stage}.json")


def run(argv: list[str] | None = None) -> dict:
    """Run (or skip) every stage; print and return the final summary."""
    from models.storage import layout

    parser = stage_parser("dupmine run", __doc__)
    parser.add_argument("--input", help="shards (as for dupmine embed)")
    parser.add_argument("--output", help="run folder (local or fsspec URL)")
    parser.add_argument("--config", help="YAML file: input, output and one mapping of flags per stage")
    parser.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", help="override one stage flag (repeatable)")
    for flag, dotted in SHORTCUTS.items():
        parser.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None, help=f"shortcut for --set {dotted}=...")
    parser.add_argument("--previous", default=None,
                        help="previous run folder: dedup and mine add this run's new shards to its results "
                             "(--previous PREV/dedup, --previous PREV/mine)")
    parser.add_argument("--dry-run", action="store_true", help="check and print the resolved configuration and exit")
    parser.add_argument("--only", default=None, help="comma-separated stages to consider (default: all)")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary table")
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = resolve_config(args)
    only = args.only.split(",") if args.only else list(STAGES)
    unknown = sorted(set(only) - set(STAGES))
    if unknown:
        raise ValueError(f"--only {args.only!r}: unknown stage(s) {unknown}; expected a subset of {', '.join(STAGES)}")
    stages = [s for s in STAGES if s in only]
    for note in check_config(cfg, explicit_keys(args), stages):
        log.info("%s", note)
    if args.dry_run:
        yaml.safe_dump(cfg, sys.stdout, sort_keys=False)
        return cfg
    run_dir = cfg["output"]
    layout.atomic_write_bytes(layout.join(run_dir, "config.yaml"), yaml.safe_dump(cfg, sort_keys=False).encode())
    upstream, timings, cached, results = _input_fingerprint(str(cfg["input"])), {}, [], {}
    for stage in stages:
        stage_args = stage_argv(stage, cfg)
        if stage_args is None:
            continue
        fingerprint = layout.fingerprint({"stage": stage, "argv": stage_args, "upstream": upstream})
        done = _done_path(run_dir, stage)
        previous = layout.read_json(done) if layout.exists(done) else None
        if previous and previous.get("fingerprint") == fingerprint:
            log.info("%s: unchanged since the last run, skipped", stage)
            results[stage] = previous.get("result")
            timings[stage] = previous.get("seconds")  # the time of the run that produced the result
            cached.append(stage)
            upstream = fingerprint
            continue
        if stage != "embed":
            layout.clear_outputs(run_dir, [stage])  # stale outputs of other parameters must not survive
        started = time.monotonic()
        result = importlib.import_module(f"pipelines.{stage}").run(stage_args + list(beam_args))
        timings[stage] = round(time.monotonic() - started, 1)
        results[stage] = result if isinstance(result, dict) else {"path": result}
        layout.write_json(done, {"fingerprint": fingerprint, "argv": stage_args, "result": results[stage],
                                 "seconds": timings[stage]})
        upstream = fingerprint
    summary = final_summary(run_dir, results, timings, cached)
    layout.write_json(layout.join(run_dir, "summary.json"), summary)
    if not args.quiet:
        print(format_summary(summary))
    return summary


def _rejects_by_reason(run_dir: str) -> dict:
    from collections import Counter

    from models.storage import layout

    reasons: Counter = Counter()
    for stage in STAGES:
        path = layout.join(run_dir, stage, "rejects")
        if layout.list_names(path):
            for r in layout.read_parquet(path, ["reason"]).column("reason").to_pylist():
                reasons[f"{stage}: {r.split(':', 1)[0]}"] += 1
    return dict(sorted(reasons.items()))


def final_summary(run_dir: str, results: dict, timings: dict, cached: list[str] = ()) -> dict:
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
        "cached": list(cached),
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
    cached = set(s.get("cached", ()))
    rows += [(f"seconds, {k}", f"{fmt(v)} (earlier run, unchanged)" if k in cached else v) for k, v in s["seconds"].items()]
    if s.get("report"):
        rows.append(("report", s["report"]))
    width = max(len(k) for k, _ in rows)
    return "\n".join(["", "dupmine run summary", "-" * (width + 20)] + [f"{k:<{width}}  {fmt(v)}" for k, v in rows])
