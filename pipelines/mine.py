"""``dupmine mine``: keywords x duplicate groups x object tags -> trigger tables and flagged prompts.

    dupmine mine --embeddings emb/ --groups dedup/ --output mine/ [--vocab FILE]
        [--tagger zero-shot|onnx-classifier:MODEL.onnx,LABELS.txt|none] [--min-support 10] [--fdr 0.05]
        [--spacy-model NAME] [--previous PREV_MINE] [beam options]

Every run saves its whole combined counts under ``OUTPUT/counts/``. With
``--previous PREV_MINE`` (and ``--groups`` the dedup increment built on
PREV_MINE's ``--groups``), only the parts of ``--embeddings`` that PREV_MINE
did not count are analysed, the old rows whose group changed are corrected,
and the tables are computed from the merged counts (see :mod:`transforms.mine`).
"""
from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import asdict, dataclass

from pipelines.common import make_pipeline, positive_int, setup_logging, shared_data_file, split_args, stage_parser

log = logging.getLogger("dupmine.mine")

# Cleared before a run; manifest.json first: it is the commit point an increment builds on.
OUTPUTS = ["manifest.json", "object_tags", "rejects", "_stage", "counts", "keyword_triggers.parquet",
           "object_triggers.parquet", "flagged_prompts.parquet", "tagger_calibration.json", "summary.json"]
# Options that decide what a row contributes to the counts: an increment must use its chain's values.
COUNT_OPTIONS = ("tagger", "vocab", "spacy_model", "max_ngram", "tag_z", "tag_top_k")
SHARED_VOCAB = os.path.join("vocab", "lvis_v1_categories.json")


def default_vocab() -> str | None:
    """LVIS (1,203 categories with synonyms) from the shared data folder, if present."""
    return shared_data_file(SHARED_VOCAB)


@dataclass(frozen=True)
class MineConfig:
    """Resolved options of the mine stage (written to ``OUTPUT/config.json``)."""

    embeddings: str
    groups: str | None
    output: str
    vocab: str | None = None
    tagger: str = "zero-shot"
    min_support: int = 10
    fdr: float = 0.05
    min_concentration: float = 0.5
    min_word_lift: float = 10.0
    min_p_object: float = 0.3
    min_object_lift: float = 5.0
    min_absent: float = 0.9
    spacy_model: str | None = None
    max_ngram: int = 3
    max_prompts: int = 200
    calibration_rows: int = 20000
    tag_z: float = 4.0
    tag_top_k: int = 3
    seed: int = 0
    previous: str | None = None   # previous mine output: merge its counts instead of recounting

    def __post_init__(self):
        if not 0 < self.fdr <= 1:
            raise ValueError(f"--fdr {self.fdr} must be in (0, 1]")
        if self.tagger not in ("zero-shot", "none") and not self.tagger.startswith("onnx-classifier:"):
            raise ValueError(f"--tagger {self.tagger!r}; expected zero-shot, onnx-classifier:MODEL.onnx,LABELS.txt or none")
        if self.tagger != "none" and self.vocab is None and not self.tagger.startswith("onnx-classifier:"):
            raise ValueError("--tagger zero-shot needs an object vocabulary: pass --vocab FILE (LVIS/COCO/Open Images "
                             "files or a plain list), or --tagger none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embeddings", required=True, help="embedding folder (captions, image embeddings)")
    parser.add_argument("--groups", default=None, help="dedup output folder (groups/); without it every row is a singleton")
    parser.add_argument("--output", required=True)
    parser.add_argument("--vocab", default=None, help="object vocabulary (default: LVIS from the shared data folder when present)")
    parser.add_argument("--tagger", default="zero-shot", help="zero-shot | onnx-classifier:MODEL.onnx,LABELS.txt | none")
    parser.add_argument("--min-support", type=positive_int, default=10, help="rows a keyword (and its top group / object pair) needs")
    parser.add_argument("--fdr", type=float, default=0.05, help="Benjamini-Hochberg false discovery rate")
    parser.add_argument("--min-concentration", type=float, default=0.5, help="share of a keyword's rows in its top group")
    parser.add_argument("--min-word-lift", type=float, default=10.0, help="P(G|w)/P(G) for word triggers")
    parser.add_argument("--min-p-object", type=float, default=0.3, help="P(o|w) for object triggers")
    parser.add_argument("--min-object-lift", type=float, default=5.0, help="P(o|w)/P(o) for object triggers")
    parser.add_argument("--min-absent", type=float, default=0.9, help="share of w's captions that do not name o")
    parser.add_argument("--spacy-model", default=None, help="installed spaCy pipeline for noun chunks / entities (default: blank English + lookups)")
    parser.add_argument("--max-ngram", type=positive_int, default=3)
    parser.add_argument("--max-prompts", type=positive_int, default=200)
    parser.add_argument("--calibration-rows", type=positive_int, default=20000, help="image embeddings sampled to calibrate zero-shot tags")
    parser.add_argument("--tag-z", type=float, default=4.0, help="zero-shot: robust z-score an object needs on an image")
    parser.add_argument("--tag-top-k", type=positive_int, default=3, help="zero-shot: most tags kept per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--previous", default=None,
                        help="previous mine output: count only the parts it has not seen and the rows whose group "
                             "changed (--groups must be the dedup increment on its --groups), merge its counts")


def config_from_args(args: argparse.Namespace) -> MineConfig:
    vocab = args.vocab or (default_vocab() if args.tagger == "zero-shot" else None)
    return MineConfig(
        embeddings=args.embeddings, groups=args.groups, output=args.output, vocab=vocab, tagger=args.tagger,
        min_support=args.min_support, fdr=args.fdr, min_concentration=args.min_concentration,
        min_word_lift=args.min_word_lift, min_p_object=args.min_p_object, min_object_lift=args.min_object_lift,
        min_absent=args.min_absent, spacy_model=args.spacy_model, max_ngram=args.max_ngram,
        max_prompts=args.max_prompts, calibration_rows=args.calibration_rows, tag_z=args.tag_z,
        tag_top_k=args.tag_top_k, seed=args.seed, previous=args.previous,
    )


@dataclass(frozen=True)
class Increment:
    """What an incremental mine run builds on (resolved by :func:`plan_increment`)."""

    chain: tuple            # previous mine chain (models.storage.mine_chain.MineEntry), oldest first
    new_parts: tuple[str, ...]
    changed: tuple[tuple[str, str, str], ...]  # (part, embedding folder, dedup changed file)
    calibration: dict       # the chain's frozen tagger calibration ({} without one)
    stats: dict             # previous counts/stats.json


def plan_increment(cfg: MineConfig) -> Increment:
    """Check that ``cfg.previous`` and ``cfg.groups`` fit together and list what this increment counts.

    Raises:
      ValueError: the previous run is not a finished mine output; an option in
        :data:`COUNT_OPTIONS` differs from the previous run's; ``--groups`` is
        missing or is not the dedup increment built on the previous run's
        ``--groups``; ``--output`` is a run of the chain; dedup changed rows of
        a part the previous mine chain never counted.
    """
    from models.storage import run_chain
    from models.storage import mine_chain
    from models.storage import layout

    chain = mine_chain.read_mine_chain(cfg.previous)
    previous_cfg = layout.read_json(layout.join(cfg.previous, "config.json"))["config"]
    differ = {name: (previous_cfg.get(name), getattr(cfg, name)) for name in COUNT_OPTIONS if previous_cfg.get(name) != getattr(cfg, name)}
    if differ:
        detail = ", ".join(f"--{k.replace('_', '-')} {new!r} (previous {old!r})" for k, (old, new) in sorted(differ.items()))
        raise ValueError(f"{detail}: an increment must count rows as --previous {cfg.previous} did")
    if run_chain.normalize_path(cfg.output) in {run_chain.normalize_path(e.run) for e in chain}:
        raise ValueError(f"--output {cfg.output} is a run of the --previous chain; write the increment to a new folder")
    if not cfg.groups:
        raise ValueError("--previous needs --groups: the dedup increment built on the previous mine run's --groups")
    dedup_chain = run_chain.read_chain(cfg.groups)
    before = chain[-1].groups
    if before is None or len(dedup_chain) < 2 or \
            run_chain.normalize_path(dedup_chain[-2].run) != run_chain.normalize_path(before):
        raise ValueError(f"--groups {cfg.groups} must be the dedup increment built on {before} (the --groups of "
                         f"--previous {cfg.previous}); its chain is {[e.run for e in dedup_chain]}")
    counted = {part for entry in chain for part in entry.parts}
    locations = run_chain.part_locations(dedup_chain)
    changed = []
    for part in dedup_chain[-1].changed_parts:
        if part not in counted:
            raise ValueError(f"dedup changed rows of part {part}, which the chain of {cfg.previous} never counted")
        changed.append((part, locations[part].embeddings, layout.join(cfg.groups, "changed", f"changed_{part}.parquet")))
    new_parts = tuple(p for p in layout.EmbeddingFolder(cfg.embeddings).parts() if p not in counted)
    calibration_path = layout.join(cfg.previous, "tagger_calibration.json")
    calibration = layout.read_json(calibration_path) if layout.exists(calibration_path) else {}
    stats = layout.read_json(layout.join(cfg.previous, mine_chain.COUNTS_DIR, "stats.json"))
    return Increment(tuple(chain), new_parts, tuple(changed), calibration, stats)


def params_for(cfg: MineConfig, increment: Increment | None = None):
    from models.storage import run_chain
    from models.storage import layout
    from models.mine.keywords import KeywordConfig
    from transforms.mine import MineParams

    folder = layout.EmbeddingFolder(cfg.embeddings)
    parts = folder.parts() if increment is None else list(increment.new_parts)
    if not parts and increment is None:
        raise ValueError(f"{cfg.embeddings!r} has no complete embedding parts")
    group_runs = ()
    if cfg.groups and layout.exists(layout.join(cfg.groups, run_chain.MANIFEST)):
        group_runs = tuple(sorted(run_chain.part_runs(run_chain.read_chain(cfg.groups)).items()))
    model, shards = None, ()
    if layout.exists(folder.config):
        emb_cfg = layout.read_json(folder.config)
        model = emb_cfg.get("config", {}).get("model")
        shards = tuple((s["shard_id"], s["path"], s["format"]) for s in emb_cfg.get("shards", []))
    if cfg.tagger == "zero-shot" and not (model or "").startswith("openclip:"):
        raise ValueError(f"--tagger zero-shot needs embeddings made by an open_clip model (its text tower scores the "
                         f"vocabulary); {cfg.embeddings} was made by {model!r}. Use --tagger onnx-classifier:... or none")
    if cfg.tagger.startswith("onnx-classifier:") and not shards:
        raise ValueError(f"--tagger {cfg.tagger} re-reads the images, but {cfg.embeddings}/config.json lists no shards "
                         f"(not made by dupmine embed?)")
    return MineParams(
        embeddings=cfg.embeddings, groups=cfg.groups, output=cfg.output, parts=tuple(parts),
        keyword_config=KeywordConfig(spacy_model=cfg.spacy_model, max_ngram=cfg.max_ngram),
        vocab_path=cfg.vocab, tagger_spec=cfg.tagger, model=model, shard_paths=shards, seed=cfg.seed,
        calibration_rows=cfg.calibration_rows, tag_z=cfg.tag_z, tag_top_k=cfg.tag_top_k, group_runs=group_runs,
        changed=increment.changed if increment is not None else (),
    )


def write_tables(_, counts: dict, cfg: MineConfig, objects: list[str], parts: tuple = (), chain: tuple = (),
                 increment: dict | None = None) -> dict:
    """Driver-free final step (runs on one worker over the small combined counts).

    Writes the tables, ``_stage/summary.json`` and last ``manifest.json``
    (``chain`` plus this run, which counted ``parts``): the commit point the
    next increment builds on.
    """
    from models.storage import run_chain
    from models.storage import mine_chain
    from models.storage import layout
    from models.mine.tables import PromptConfig, flagged_prompts, object_table, word_table
    from models.mine.statistics import ObjectTriggerConfig, WordTriggerConfig

    stats = counts["stats"]
    n_total = int(stats.get("rows_analysed", 0))
    kw, kwin, grp, obj = (dict(counts[k]) for k in ("kw", "kwin", "grp", "obj"))
    word_cfg = WordTriggerConfig(fdr=cfg.fdr, min_support=cfg.min_support, min_concentration=cfg.min_concentration, min_lift=cfg.min_word_lift)
    obj_cfg = ObjectTriggerConfig(fdr=cfg.fdr, min_support=cfg.min_support, min_p_object=cfg.min_p_object,
                                  min_lift=cfg.min_object_lift, min_absent=cfg.min_absent)
    kwg, kwo = sorted(counts["kwg"]), sorted(counts["kwo"])  # side inputs come in any order; ties must not
    words = word_table(kw, kwin, kwg, grp, n_total, word_cfg)
    objs = object_table(kw, obj, kwo, objects, n_total, obj_cfg)
    prompts = flagged_prompts(words, objs, dict(counts["cap"]), grp, PromptConfig(max_prompts=cfg.max_prompts))
    layout.write_parquet(layout.join(cfg.output, "keyword_triggers.parquet"), words)
    layout.write_parquet(layout.join(cfg.output, "object_triggers.parquet"), objs)
    layout.write_parquet(layout.join(cfg.output, "flagged_prompts.parquet"), prompts)
    summary = {
        "rows": int(stats.get("rows", 0)), "rows_analysed": n_total, "caption_rejects": int(stats.get("caption_rejects", 0)),
        "object_tags": int(stats.get("object_tags", 0)), "keywords_tested": words.num_rows,
        "word_triggers": int(sum(words.column("flagged").to_pylist())), "object_pairs_tested": objs.num_rows,
        "object_triggers": int(sum(objs.column("flagged").to_pylist())), "flagged_prompts": prompts.num_rows,
        "duplicate_groups_with_captions": len(grp),
        "increment": {"parts": len(parts), "rows": int((stats if increment is None else increment).get("rows", 0)),
                      "changed_rows": int((increment or {}).get("changed_rows", 0))},
        "previous": cfg.previous,
    }
    layout.write_json(layout.join(cfg.output, "_stage", "summary.json"), summary)
    entry = mine_chain.MineEntry(run=run_chain.normalize_path(cfg.output), embeddings=run_chain.normalize_path(cfg.embeddings),
                                 parts=tuple(parts), groups=run_chain.normalize_path(cfg.groups) if cfg.groups else None,
                                 previous=run_chain.normalize_path(cfg.previous) if cfg.previous else None)
    mine_chain.write_mine_manifest(cfg.output, [mine_chain.MineEntry.from_json(e) for e in chain] + [entry])
    return summary


def build(p, params, cfg: MineConfig, objects: list[str], increment: Increment | None = None):
    """Wire the stage: analyse (and for an increment merge), save counts, write tables and manifest."""
    import apache_beam as beam
    from apache_beam import pvalue

    from transforms.mine import COUNT_NAMES, AnalyzeParts, ChangedRowsFn, WriteCounts, combine_counts, read_counts, table_inputs

    analysed = (p | "ListParts" >> beam.Create(list(range(len(params.parts))))
                | "AnalyzeParts" >> AnalyzeParts(params, increment.calibration if increment is not None else None))
    calibration = analysed.pop("calibration")
    calibration | "WriteCalibration" >> beam.Map(lambda c: _write_json_if(c, cfg.output))
    if increment is None:
        counts, inc_stats = analysed, analysed["stats"]
    else:
        changed = (p | "ListChanged" >> beam.Create(list(params.changed))
                   | "ChangedRows" >> beam.ParDo(ChangedRowsFn(params)).with_outputs("kwg", "grp", "cap", "retired", "stats", main="kwin"))
        retired = (changed.retired | "DistinctRetired" >> beam.Distinct()
                   | "RetiredAsDict" >> beam.Map(lambda g: (g, True)))
        sources = {name: [analysed[name]] for name in COUNT_NAMES + ("stats",)}
        for name in COUNT_NAMES:
            previous = read_counts(p, cfg.previous, name)
            if name in ("kwg", "grp", "cap"):  # entries of previous groups that changed rows left are recounted
                group_of = (lambda e: e[0][1]) if name == "kwg" else (lambda e: e[0][0]) if name == "cap" else (lambda e: e[0])
                previous = previous | f"Unretired{name.capitalize()}" >> beam.Filter(
                    lambda e, gone, g=group_of: g(e) not in gone, pvalue.AsDict(retired))
            sources[name].append(previous)
        for name in ("kwin", "kwg", "grp", "cap"):
            sources[name].append(getattr(changed, name))
        sources["stats"].append(p | "PreviousStats" >> beam.Create([increment.stats]))
        counts = combine_counts(sources, prefix="Merged")
        inc_stats = ((analysed["stats"], changed.stats) | "IncrementStatsParts" >> beam.Flatten()
                     | "IncrementStats" >> beam.CombineGlobally(_sum_dicts))
    written = counts | "SaveCounts" >> WriteCounts(cfg.output)
    tables = table_inputs(counts, cfg.min_support)
    side = {k: (pvalue.AsSingleton(v) if k == "stats" else pvalue.AsList(v)) for k, v in tables.items()}
    side["increment"] = pvalue.AsSingleton(inc_stats)
    side["_written"] = pvalue.AsList(written)  # tables and manifest after every count file
    chain = tuple(e.to_json() for e in increment.chain) if increment is not None else ()
    return (p | "One" >> beam.Create([None])
            | "WriteTables" >> beam.Map(
                lambda x, increment, _written, **kw: write_tables(x, kw, cfg, objects, params.parts, chain, increment), **side))


def _sum_dicts(dicts) -> dict:
    from collections import Counter

    total: Counter = Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def _write_json_if(calibration: dict, output: str) -> None:
    from models.storage import layout

    if calibration:
        layout.write_json(layout.join(output, "tagger_calibration.json"), calibration)


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, run the pipeline, write ``summary.json``; return the summary."""
    from models.storage import layout
    from transforms.mine import tagger_for

    parser = stage_parser("dupmine mine", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    cfg = config_from_args(args)
    started = time.monotonic()
    increment = plan_increment(cfg) if cfg.previous else None
    params = params_for(cfg, increment)
    layout.clear_outputs(cfg.output, OUTPUTS)
    tagger = tagger_for(params)  # fail early on a bad vocabulary or model
    objects = list(tagger.objects) if tagger is not None else []
    layout.write_json(layout.join(cfg.output, "config.json"), {"stage": "mine", "config": asdict(cfg), "beam_args": beam_args,
                                                               "embedding_model": params.model, "objects": len(objects)})
    if increment is None:
        log.info("mine: %d part(s), tagger %s over %d objects", len(params.parts), cfg.tagger, len(objects))
    else:
        log.info("mine increment on %s: %d new part(s), changed rows in %d old part(s), tagger %s over %d objects",
                 cfg.previous, len(params.parts), len(params.changed), cfg.tagger, len(objects))
    p = make_pipeline(beam_args, test_pipeline)
    build(p, params, cfg, objects, increment)
    p.run().wait_until_finish()
    summary = layout.read_json(layout.join(cfg.output, "_stage", "summary.json")) | {
        "parameters": asdict(cfg), "seconds": round(time.monotonic() - started, 3)}
    layout.write_json(layout.join(cfg.output, "summary.json"), summary)
    log.info("mine done: %d word triggers, %d object triggers, %d flagged prompts", summary["word_triggers"],
             summary["object_triggers"], summary["flagged_prompts"])
    return summary
