"""``dupmine mine``: keywords x duplicate groups x object tags -> trigger tables and flagged prompts.

    dupmine mine --embeddings emb/ --groups dedup/ --output mine/ [--vocab FILE]
        [--tagger auto|zero-shot|onnx-classifier:MODEL.onnx,LABELS.txt|tags:PARQUET|none] [--tags PARQUET]
        [--embedding-model openclip:ARCH/PRETRAINED] [--min-support 10] [--fdr 0.05]
        [--spacy-model NAME] [--previous PREV_MINE] [beam options]

Every run saves its whole combined counts under ``OUTPUT/counts/``. With
``--previous PREV_MINE`` (and ``--groups`` the dedup increment built on
PREV_MINE's ``--groups``), only the parts of ``--embeddings`` that PREV_MINE
did not count are analysed, the old rows whose group changed are corrected,
and the tables are computed from the merged counts (see :mod:`transforms.mine`).
Every flag and default is a field of :class:`models.mine.config.MineConfig`.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from dataclasses import asdict

from models.mine.config import MineConfig, flag_specs
from pipelines.common import make_pipeline, setup_logging, shared_data_file, split_args, stage_parser

log = logging.getLogger("dupmine.mine")

SHARED_VOCAB = os.path.join("vocab", "lvis_v1_categories.json")
SHARED_IMAGENET_SYNSETS = os.path.join("vocab", "imagenet_lsvrc_2015_synsets.txt")
IMAGENET_CLASSES = 1000


def default_vocab() -> str | None:
    """LVIS (1,203 categories with synonyms) from the shared data folder, if present."""
    return shared_data_file(SHARED_VOCAB)


def default_label_synsets(cfg: MineConfig) -> str | None:
    """The shared ImageNet WordNet ids for a 1000-class (+ background) ImageNet classifier, else None."""
    from models.mine.taggers.classifier import BACKGROUND_NAMES, read_labels
    from models.mine.taggers.spec import TaggerKind, parse_tagger_spec

    spec = parse_tagger_spec(cfg.tagger)
    if cfg.label_synsets or spec.kind is not TaggerKind.ONNX_CLASSIFIER:
        return cfg.label_synsets
    labels = read_labels(spec.labels_path)
    has_background = labels[0].strip().lower() in BACKGROUND_NAMES
    return shared_data_file(SHARED_IMAGENET_SYNSETS) if len(labels) - has_background == IMAGENET_CLASSES else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`MineConfig` field (its default, type and help)."""
    for spec in flag_specs():
        parser.add_argument(spec.flag, dest=spec.name, type=spec.type, default=spec.default, required=spec.required,
                            help=spec.help)


def config_from_args(args: argparse.Namespace) -> MineConfig:
    return MineConfig(**{spec.name: getattr(args, spec.name) for spec in flag_specs()})


def tagger_note(requested: str, cfg: MineConfig, model: str | None) -> str:
    """One line for the summary on how the tagger was chosen."""
    from models.mine.config import AUTO_TAGGER

    if requested != AUTO_TAGGER:
        return f"object tags: {cfg.tagger} (as requested)"
    if cfg.tagger == "none":
        return (f"object tags: none: the embedding model {model!r} has no text tower for zero-shot tags; pass "
                f"--tagger onnx-classifier:MODEL.onnx,LABELS.txt, --tags PARQUET or --embedding-model openclip:...")
    return f"object tags: {cfg.tagger} (chosen for the embedding model {model!r})"


def build(p, params, settings, source):
    """Wire the stage: the one :class:`transforms.mine.Mine` transform."""
    from transforms.mine import Mine

    return p | "Mine" >> Mine(params, settings, source)


def prepare(cfg: MineConfig):
    """Resolve the config and check every input before any work starts.

    Returns ``(cfg resolved, params, table settings, count source)``.
    """
    from models.mine.object_triggers import ObjectTriggerConfig
    from models.mine.plan import embedding_config, plan_increment, plan_run
    from models.mine.semantic import describe_mention_test
    from models.mine.tables import PromptConfig
    from models.mine.word_triggers import WordTriggerConfig
    from transforms.mine import FromPrevious, FromScratch
    from transforms.mine_analyze import tagger_for
    from transforms.mine_tables import TableSettings

    requested = cfg.tagger
    cfg = cfg.resolved(embedding_config(cfg.embeddings), default_vocab())
    cfg = dataclasses.replace(cfg, label_synsets=default_label_synsets(cfg))
    increment = plan_increment(cfg) if cfg.previous else None
    params = plan_run(cfg, increment)
    tagger = tagger_for(params)  # fail early on a bad vocabulary, model or tag file
    objects = tuple(tagger.objects) if tagger is not None else ()
    settings = TableSettings(
        output=cfg.output,
        word=WordTriggerConfig(fdr=cfg.fdr, min_support=cfg.min_support, min_concentration=cfg.min_concentration,
                               min_lift=cfg.min_word_lift),
        object=ObjectTriggerConfig(fdr=cfg.fdr, min_support=cfg.min_support, min_p_object=cfg.min_p_object,
                                   min_lift=cfg.min_object_lift, min_absent=cfg.min_absent),
        prompts=PromptConfig(max_prompts=cfg.max_prompts), objects=objects, previous=cfg.previous,
        vocab=tuple(tagger.vocab) if tagger is not None else (), keyword_config=params.keyword_config,
        mention=cfg.mention, wordnet_depth=cfg.wordnet_depth, naming_threshold=cfg.naming_threshold,
        notes=(("tagger", cfg.tagger), ("tagger_note", tagger_note(requested, cfg, params.model)),
               ("mention_test", describe_mention_test(cfg.mention, cfg.wordnet_depth) if tagger is not None else None)))
    source = FromPrevious(cfg.previous, increment) if increment is not None else FromScratch()
    return cfg, params, settings, source


def run(argv: list[str] | None = None, test_pipeline=None) -> dict:
    """Parse flags, run the pipeline, write ``summary.json``; return the summary."""
    from models.storage import layout
    from models.storage.folders.mine import MineFolder

    parser = stage_parser("dupmine mine", __doc__)
    add_arguments(parser)
    args, beam_args = split_args(parser, argv)
    setup_logging()
    started = time.monotonic()
    cfg, params, settings, source = prepare(config_from_args(args))
    folder = MineFolder(cfg.output)
    layout.clear_outputs(cfg.output, list(MineFolder.OUTPUTS))
    layout.write_json(folder.config, {"stage": "mine", "config": asdict(cfg), "beam_args": beam_args,
                                      "embedding_model": params.model, "objects": len(settings.objects),
                                      "count_shards": params.count_shards})
    log.info("mine: %d %spart(s), tagger %s over %d objects%s", len(params.parts), "new " if cfg.previous else "",
             cfg.tagger, len(settings.objects), f", increment on {cfg.previous}" if cfg.previous else "")
    p = make_pipeline(beam_args, test_pipeline)
    build(p, params, settings, source)
    p.run().wait_until_finish()
    summary = layout.read_json(folder.stage_summary) | {"parameters": asdict(cfg),
                                                        "seconds": round(time.monotonic() - started, 3)}
    layout.write_json(folder.summary, summary)
    log.info("mine done: %d word triggers, %d object triggers, %d flagged prompts", summary["word_triggers"],
             summary["object_triggers"], summary["flagged_prompts"])
    return summary
