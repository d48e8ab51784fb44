"""The score folder: every file ``dupmine score`` writes, by name.

::

    ROOT/
      prompt_scores.parquet     one row per (item, check): flagged prompts / groups and reference items
                                (schemas.PROMPT_SCORES)
      extractions.parquet       SIDE generations matched to the training set (schemas.EXTRACTIONS)
      extractions_baseline.parquet  the same for the lambda = 0 baseline runs (equal N_G, same x_T)
      side_summary.json         SIDE run(s): K, K', tau, lambda, N_G, bands, AMS/UMS, cost, lambda = 0 baseline
      grids/side_{r:02d}.png    generations of SIDE run r (image targets)
      _stage/                   scratch of the Beam run (removed with the rest on a rerun)
      summary.json              counts, thresholds, cost
      config.json               the resolved stage config
"""
from __future__ import annotations

from dataclasses import dataclass

from models.storage import layout

PROMPT_SCORES = "prompt_scores.parquet"
EXTRACTIONS = "extractions.parquet"
BASELINE_EXTRACTIONS = "extractions_baseline.parquet"
SIDE_SUMMARY = "side_summary.json"
GRIDS = "grids"
STAGE = "_stage"
SUMMARY = "summary.json"
CONFIG = "config.json"


@dataclass(frozen=True)
class ScoreFolder:
    """Paths inside a score folder (local path or fsspec URL)."""

    root: str

    OUTPUTS = (PROMPT_SCORES, EXTRACTIONS, BASELINE_EXTRACTIONS, SIDE_SUMMARY, GRIDS, STAGE, SUMMARY)
    """What a rerun clears before it writes (``config.json`` is rewritten in place)."""

    @property
    def prompt_scores(self) -> str:
        return layout.join(self.root, PROMPT_SCORES)

    @property
    def extractions(self) -> str:
        return layout.join(self.root, EXTRACTIONS)

    @property
    def baseline_extractions(self) -> str:
        return layout.join(self.root, BASELINE_EXTRACTIONS)

    @property
    def side_summary(self) -> str:
        return layout.join(self.root, SIDE_SUMMARY)

    def grid(self, run: int) -> str:
        """The PNG grid of SIDE run ``run`` (0 = unconditional)."""
        return layout.join(self.root, GRIDS, f"side_{run:02d}.png")

    @property
    def summary(self) -> str:
        return layout.join(self.root, SUMMARY)

    @property
    def config(self) -> str:
        return layout.join(self.root, CONFIG)

    def clear(self) -> None:
        """Remove the outputs of an earlier run (stale files must not mix in)."""
        layout.clear_outputs(self.root, list(self.OUTPUTS))
