"""What a mine run reads, resolved before any work starts: parts, groups, embedding model, shards, increment.

Plain Python over small JSON manifests (no Beam). :func:`plan_run` turns a
resolved :class:`models.mine.config.MineConfig` into :class:`MineParams`, the
picklable bundle every transform gets; :func:`plan_increment` checks that a
``--previous`` run and ``--groups`` fit together and lists what the
increment counts.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.mine.config import COUNT_OPTIONS, MineConfig
from models.mine.keywords import KeywordConfig
from models.mine.part_counts import COUNT_SHARDS, count_shards
from models.mine.taggers.spec import TaggerKind, has_text_tower
from models.storage import layout, mine_chain, run_chain
from models.storage.folders.mine import MineFolder

__all__ = ["Increment", "MineParams", "ShardPath", "ChangedPart", "embedding_config", "plan_increment", "plan_run"]


@dataclass(frozen=True)
class ShardPath:
    """Where the images of one embedding part's shard are (for taggers that re-read images)."""

    shard_id: str
    path: str
    format: str


@dataclass(frozen=True)
class ChangedPart:
    """An old part with rows whose group an incremental dedup changed."""

    part: str
    embeddings: str   # the embedding folder that holds the part
    changed: str      # dedup's changed/changed_{part}.parquet


@dataclass(frozen=True)
class MineParams:
    """What the transforms need (picklable, small)."""

    embeddings: str
    groups: str | None
    output: str
    parts: tuple[str, ...]
    keyword_config: KeywordConfig
    vocab_path: str | None
    tagger_spec: str              # models.mine.taggers.spec forms
    model: str | None             # embedding model spec (zero-shot text tower)
    shard_paths: tuple[ShardPath, ...]
    seed: int
    calibration_rows: int
    tag_z: float = 4.0
    tag_top_k: int = 3
    group_runs: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (part, runs) of a dedup chain (run_chain.part_runs)
    changed: tuple[ChangedPart, ...] = ()
    mention: str = "semantic"
    wordnet_depth: int = 3
    label_synsets: str | None = None  # WordNet ids of a classifier's labels
    count_shards: int = COUNT_SHARDS  # hash buckets of keyword totals and saved counts (part_counts.count_shards)

    @property
    def folder(self) -> MineFolder:
        return MineFolder(self.output)

    @property
    def tagger_kind(self) -> TaggerKind:
        from models.mine.taggers.spec import parse_tagger_spec

        return parse_tagger_spec(self.tagger_spec).kind


@dataclass(frozen=True)
class Increment:
    """What an incremental mine run builds on (resolved by :func:`plan_increment`)."""

    chain: tuple[mine_chain.MineEntry, ...]  # previous mine chain, oldest first
    new_parts: tuple[str, ...]
    changed: tuple[ChangedPart, ...]
    calibration: dict       # the chain's frozen tagger calibration ({} without one)
    stats: dict             # previous counts/stats.json
    count_shards: int = COUNT_SHARDS  # the chain's count buckets (its config.json; 8 before they were recorded)


def embedding_config(embeddings: str) -> dict | None:
    """The embedding folder's ``config.json`` (None for folders made elsewhere)."""
    folder = layout.EmbeddingFolder(embeddings)
    return layout.read_json(folder.config) if layout.exists(folder.config) else None


def plan_increment(cfg: MineConfig) -> Increment:
    """Check that ``cfg.previous`` and ``cfg.groups`` fit together and list what this increment counts.

    A part counts as already counted when the chain counted the same part of
    the same embedding folder with the same content
    (:func:`models.storage.mine_chain.part_identity`); a new folder whose
    parts are named like old ones is new data.

    Raises:
      ValueError: the previous run is not a finished mine output; an option in
        :data:`models.mine.config.COUNT_OPTIONS` differs from the previous run's; ``--groups`` is
        missing or is not the dedup increment built on the previous run's
        ``--groups``; ``--output`` is a run of the chain; dedup changed rows of
        a part the previous mine chain never counted; a counted part changed.
    """
    chain = mine_chain.read_mine_chain(cfg.previous)
    previous_cfg = layout.read_json(MineFolder(cfg.previous).config)["config"]
    differ = {name: (previous_cfg.get(name), getattr(cfg, name)) for name in COUNT_OPTIONS
              if previous_cfg.get(name) != getattr(cfg, name)}
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
    counted_names = {part for entry in chain for part in entry.parts}
    locations = run_chain.part_locations(dedup_chain)
    changed = []
    for part in dedup_chain[-1].changed_parts:
        if part not in counted_names:
            raise ValueError(f"dedup changed rows of part {part}, which the chain of {cfg.previous} never counted")
        changed.append(ChangedPart(part, locations[part].embeddings, layout.join(cfg.groups, "changed", f"changed_{part}.parquet")))
    new_parts = tuple(mine_chain.uncounted_parts(chain, cfg.embeddings, layout.EmbeddingFolder(cfg.embeddings).parts()))
    folder = MineFolder(cfg.previous)
    calibration = layout.read_json(folder.calibration) if layout.exists(folder.calibration) else {}
    stats = layout.read_json(folder.count_stats)
    shards = int(layout.read_json(folder.config).get("count_shards", COUNT_SHARDS))
    return Increment(tuple(chain), new_parts, tuple(changed), calibration, stats, shards)


def plan_run(cfg: MineConfig, increment: Increment | None = None) -> MineParams:
    """The transforms' parameters for a resolved config (``cfg.tagger`` is a spec, not ``auto``).

    Raises:
      ValueError: no complete parts; zero-shot on embeddings without a text
        tower; an image-reading tagger on a folder that lists no shards.
    """
    folder = layout.EmbeddingFolder(cfg.embeddings)
    parts = folder.parts() if increment is None else list(increment.new_parts)
    if not parts and increment is None:
        raise ValueError(f"{cfg.embeddings!r} has no complete embedding parts")
    group_runs = ()
    if cfg.groups and layout.exists(layout.join(cfg.groups, run_chain.MANIFEST)):
        group_runs = tuple(sorted(run_chain.part_runs(run_chain.read_chain(cfg.groups)).items()))
    emb_cfg = embedding_config(cfg.embeddings) or {}
    model = cfg.embedding_model or emb_cfg.get("config", {}).get("model")
    shards = tuple(ShardPath(s["shard_id"], s["path"], s["format"]) for s in emb_cfg.get("shards", []))
    kind = cfg.tagger_kind
    if kind is TaggerKind.ZERO_SHOT and not has_text_tower(model):
        raise ValueError(f"--tagger zero-shot needs embeddings made by an open_clip model (its text tower scores the "
                         f"vocabulary); {cfg.embeddings} was made by {model!r}. Declare the model of a folder made "
                         f"elsewhere with --embedding-model openclip:ARCH/PRETRAINED, or use --tagger "
                         f"onnx-classifier:..., tags:PARQUET or none")
    if kind is TaggerKind.ONNX_CLASSIFIER and not shards:
        raise ValueError(f"--tagger {cfg.tagger} re-reads the images, but {cfg.embeddings}/config.json lists no shards "
                         f"(not made by dupmine embed?)")
    return MineParams(
        embeddings=cfg.embeddings, groups=cfg.groups, output=cfg.output, parts=tuple(parts),
        keyword_config=KeywordConfig(spacy_model=cfg.spacy_model, max_ngram=cfg.max_ngram),
        vocab_path=cfg.vocab, tagger_spec=cfg.tagger, model=model, shard_paths=shards, seed=cfg.seed,
        calibration_rows=cfg.calibration_rows, tag_z=cfg.tag_z, tag_top_k=cfg.tag_top_k, group_runs=group_runs,
        changed=increment.changed if increment is not None else (), mention=cfg.mention,
        wordnet_depth=cfg.wordnet_depth, label_synsets=cfg.label_synsets,
        count_shards=increment.count_shards if increment is not None else count_shards(len(parts)),
    )
