"""What a report reads (:class:`ReportInputs`) and how much it shows (:class:`ReportConfig`).

:class:`ReportConfig` is the one source of the report's defaults: ``dupmine
report``'s flags are built from its fields (``pipelines/report.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from models.storage import layout


@dataclass(frozen=True)
class ReportInputs:
    """The stage folders a report reads; any may be ``None`` (its sections say so).

    Attributes:
      embeddings: embed output (``img_emb/``, ``metadata/``, ``config.json`` with the shard list).
      dedup: dedup output (``groups/``, ``summary.json``, ``rejects/``, ``nn_similarity.json``).
      mine: mine output (``keyword_triggers.parquet``, ``object_triggers.parquet``,
        ``flagged_prompts.parquet``, ``object_tags/``, ``summary.json``).
      score: score output (``prompt_scores.parquet``, ``extractions.parquet``,
        ``side_summary.json``, ``grids/*.png``, ``generations/*.png``).
    """

    embeddings: str | None = None
    dedup: str | None = None
    mine: str | None = None
    score: str | None = None

    @classmethod
    def from_run_dir(cls, run: str) -> "ReportInputs":
        """The folders of a ``dupmine run`` output: ``run/embed``, ``run/dedup``, ``run/mine``, ``run/score``.

        ``run/embeddings`` (the ``dupmine demo`` layout) is accepted when
        ``run/embed`` is missing. Missing folders become ``None``.

        Raises:
          FileNotFoundError: ``run`` does not exist or holds none of the stage folders.
        """
        if not layout.exists(run):
            raise FileNotFoundError(f"run folder {run!r} does not exist")

        def first(*names: str) -> str | None:
            return next((layout.join(run, n) for n in names if layout.exists(layout.join(run, n))), None)

        inputs = cls(embeddings=first("embed", "embeddings"), dedup=first("dedup"), mine=first("mine"), score=first("score"))
        if not any(inputs.as_dict().values()):
            raise FileNotFoundError(f"run folder {run!r} holds none of embed/, dedup/, mine/, score/")
        return inputs

    def as_dict(self) -> dict[str, str | None]:
        """``{"embeddings": ..., "dedup": ..., "mine": ..., "score": ...}``."""
        return {"embeddings": self.embeddings, "dedup": self.dedup, "mine": self.mine, "score": self.score}


@dataclass(frozen=True)
class ReportConfig:
    """How much the report shows; every field a positive int.

    Attributes:
      max_groups: largest duplicate groups shown in the gallery; groups referenced by the
        shown triggers, prompts and extractions are shown as well, after them.
      max_members: images shown per group (and example images per object trigger,
        generations per flagged prompt and SIDE extractions per group).
      thumb_size: thumbnail bounding box in pixels.
      max_rows: rows shown per table (word triggers, object triggers, prompts, extractions, grids).

    Raises:
      ValueError: a field is not a positive integer (the message names it).
    """

    max_groups: int = 30
    max_members: int = 8
    thumb_size: int = 128
    max_rows: int = 50

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{f.name}={value!r} must be a positive integer")

    @staticmethod
    def help(name: str) -> str:
        """The one-line flag help of field ``name``."""
        return {"max_groups": "largest duplicate groups shown", "max_members": "images shown per group",
                "thumb_size": "thumbnail size in pixels", "max_rows": "rows shown per table"}[name]
