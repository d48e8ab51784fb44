"""The mine stage's configuration: one frozen dataclass, the single source of every default.

``pipelines/mine.py`` builds its argparse flags from :class:`MineConfig`'s
fields (:func:`flag_specs`): the flag is ``--`` + the field name with ``-``
for ``_``, the default and type are the field's, the help text is the
field's ``metadata["help"]``. A test holds every field to the code that uses it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from models.mine.similarity import NAMING_THRESHOLD
from models.mine.taggers.spec import SPEC_FORMS, TaggerKind, parse_tagger_spec

__all__ = ["AUTO_TAGGER", "COUNT_OPTIONS", "FlagSpec", "MentionTest", "MineConfig", "flag_specs"]

AUTO_TAGGER = "auto"  # resolved from the embedding folder (models.mine.taggers.spec.default_tagger_for)
# Options that decide what a row contributes to the counts: an increment must use its chain's values.
COUNT_OPTIONS = ("tagger", "vocab", "spacy_model", "max_ngram", "tag_z", "tag_top_k", "mention", "wordnet_depth",
                 "label_synsets")


class MentionTest:
    """The closed set of caption-mention tests (``--mention``)."""

    SEMANTIC = "semantic"  # string match plus WordNet synonyms, hypernyms/hyponyms, wholes, compound heads
    STRING = "string"      # the vocabulary's names and synonyms as whole-token n-grams only
    ALL = (SEMANTIC, STRING)


def _opt(default: Any, help: str, *, flag_type: type | None = None, required: bool = False):
    return field(default=default, metadata={"help": help, "type": flag_type, "required": required})


@dataclass(frozen=True)
class MineConfig:
    """Resolved options of the mine stage (written to ``OUTPUT/config.json``)."""

    embeddings: str = _opt(None, "embedding folder (captions, image embeddings)", flag_type=str, required=True)
    output: str = _opt(None, "output folder (local or fsspec URL)", flag_type=str, required=True)
    groups: str | None = _opt(None, "dedup output folder (groups/); without it every row is a singleton", flag_type=str)
    vocab: str | None = _opt(None, "object vocabulary for zero-shot tags (default: LVIS from the shared data folder "
                                   "when present); local path or fsspec URL", flag_type=str)
    tagger: str = _opt(AUTO_TAGGER, f"{SPEC_FORMS}, or auto: zero-shot when the embedding model has a text tower, "
                                    f"else none")
    tags: str | None = _opt(None, "parquet of tags made elsewhere (sample_id, labels[, scores]); same as "
                                  "--tagger tags:PARQUET", flag_type=str)
    embedding_model: str | None = _opt(None, "the open_clip model that made the embeddings (openclip:ARCH/PRETRAINED), "
                                             "for folders without a dupmine config.json (LAION, clip-retrieval)",
                                       flag_type=str)
    mention: str = _opt(MentionTest.SEMANTIC, "caption mention test: semantic (string match or a WordNet synonym, "
                                              "hypernym/hyponym within --wordnet-depth, whole, compound head; the "
                                              "string test where WordNet is not installed) or string")
    wordnet_depth: int = _opt(3, "hypernym/hyponym steps within which a caption word counts as naming the object")
    naming_threshold: float = _opt(NAMING_THRESHOLD, "an object trigger whose keyword has all-MiniLM-L6-v2 cosine >= this with "
                                          "one of the object's names is not flagged (the keyword names it; "
                                          "calibrated, see models.mine.similarity); 1 turns the check off")
    label_synsets: str | None = _opt(None, "WordNet ids of an onnx-classifier's labels, one per non-background label "
                                           "in model order (default: the shared ImageNet list for 1000-class "
                                           "ImageNet classifiers)", flag_type=str)
    min_support: int = _opt(10, "rows a keyword (and its top group / object pair) needs")
    fdr: float = _opt(0.05, "Benjamini-Hochberg false discovery rate")
    min_concentration: float = _opt(0.5, "share of a keyword's rows in its top group")
    min_word_lift: float = _opt(10.0, "P(G|w)/P(G) for word triggers")
    min_p_object: float = _opt(0.3, "P(o|w) for object triggers")
    min_object_lift: float = _opt(5.0, "P(o|w)/P(o) for object triggers")
    min_absent: float = _opt(0.9, "share of w's captions that do not name o")
    spacy_model: str | None = _opt(None, "installed spaCy pipeline for noun chunks / entities (default: blank "
                                         "English + lookups)", flag_type=str)
    max_ngram: int = _opt(3, "longest keyword n-gram")
    max_prompts: int = _opt(200, "most flagged prompts written")
    calibration_rows: int = _opt(20000, "image embeddings sampled to calibrate zero-shot tags")
    tag_z: float = _opt(4.0, "zero-shot: robust z-score an object needs on an image")
    tag_top_k: int = _opt(3, "zero-shot: most tags kept per image")
    seed: int = _opt(0, "seed of the calibration sample")
    previous: str | None = _opt(None, "previous mine output: count only the parts it has not seen and the rows "
                                      "whose group changed (--groups must be the dedup increment on its --groups), "
                                      "merge its counts", flag_type=str)

    def __post_init__(self):
        if not self.embeddings or not self.output:
            raise ValueError("--embeddings and --output are required")
        if not 0 < self.fdr <= 1:
            raise ValueError(f"--fdr {self.fdr} must be in (0, 1]")
        for name in ("min_support", "max_ngram", "max_prompts", "calibration_rows", "tag_top_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.wordnet_depth < 0:
            raise ValueError(f"--wordnet-depth must be >= 0, got {self.wordnet_depth}")
        if self.mention not in MentionTest.ALL:
            raise ValueError(f"--mention {self.mention!r}; expected one of {MentionTest.ALL}")
        if self.tagger != AUTO_TAGGER:
            try:
                parse_tagger_spec(self.tagger)
            except ValueError as exc:
                raise ValueError(f"--tagger {self.tagger!r}; expected {SPEC_FORMS} or auto") from exc
        if self.tags and self.tagger not in (AUTO_TAGGER, f"tags:{self.tags}"):
            raise ValueError(f"--tags {self.tags} and --tagger {self.tagger} both choose the tagger; pass one")

    def resolved(self, embedding_config: dict | None, default_vocab: str | None) -> "MineConfig":
        """This config with ``tagger`` resolved (``--tags``, ``auto``) and the default vocabulary filled in.

        Raises:
          ValueError: zero-shot without a vocabulary.
        """
        from models.mine.taggers.spec import default_tagger_for

        tagger = self.tagger
        if self.tags:
            tagger = f"tags:{self.tags}"
        elif tagger == AUTO_TAGGER:
            declared = {"model": self.embedding_model} if self.embedding_model else embedding_config
            tagger = str(default_tagger_for(declared))
        spec = parse_tagger_spec(tagger)
        vocab = self.vocab or (default_vocab if spec.needs_vocab else None)
        if spec.needs_vocab and vocab is None:
            raise ValueError("--tagger zero-shot needs an object vocabulary: pass --vocab FILE (LVIS/COCO/Open Images "
                             "files or a plain list), or --tagger none")
        return dataclasses.replace(self, tagger=tagger, vocab=vocab)

    @property
    def tagger_kind(self) -> TaggerKind:
        return parse_tagger_spec(self.tagger).kind if self.tagger != AUTO_TAGGER else TaggerKind.ZERO_SHOT


class FlagSpec(NamedTuple):
    """One command-line flag built from a :class:`MineConfig` field."""

    name: str      # the field
    flag: str      # --field-name
    type: type
    default: Any
    required: bool
    help: str


def flag_specs() -> list[FlagSpec]:
    """The flags of ``dupmine mine``, one per :class:`MineConfig` field, in field order."""
    out = []
    for f in dataclasses.fields(MineConfig):
        kind = f.metadata.get("type") or type(f.default)
        out.append(FlagSpec(f.name, "--" + f.name.replace("_", "-"), kind, f.default, bool(f.metadata.get("required")),
                            f.metadata["help"]))
    return out
