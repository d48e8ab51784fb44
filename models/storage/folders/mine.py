"""The mine output folder: every file ``dupmine mine`` writes, by name.

Layout (``{part}`` is the embedding part suffix)::

    keyword_triggers.parquet               KEYWORD_TRIGGERS, ranked word-level triggers
    object_triggers.parquet                OBJECT_TRIGGERS, ranked (keyword, object) pairs
    flagged_prompts.parquet                FLAGGED_PROMPTS, the hand-off to scoring
    object_tags/object_tags_{part}.parquet OBJECT_TAGS, the tags of each analysed row
    rejects/rejects_{part}.parquet         REJECTS, captions that gave no keywords
    counts/{name}/{name}-{shard}.parquet   the whole combined counts (increments merge them)
    counts/stats.json                      summed per-part totals
    tagger_calibration.json                zero-shot per-object thresholds (frozen by increments)
    _stage/summary.json                    what the pipeline's last step wrote
    config.json, summary.json              resolved config; counts and timings
    manifest.json                          the run chain; written last (the commit point)

Other stages read these names from here, never as string literals
(:data:`FLAGGED_PROMPTS` is the score stage's input).
"""
from __future__ import annotations

from dataclasses import dataclass

from models.storage.folders import StageFolder

FLAGGED_PROMPTS = "flagged_prompts.parquet"
KEYWORD_TRIGGERS = "keyword_triggers.parquet"
OBJECT_TRIGGERS = "object_triggers.parquet"


@dataclass(frozen=True)
class MineFolder(StageFolder):
    """Paths inside one mine output folder (local path or object-store URL)."""

    KEYWORD_TRIGGERS = KEYWORD_TRIGGERS
    OBJECT_TRIGGERS = OBJECT_TRIGGERS
    FLAGGED_PROMPTS = FLAGGED_PROMPTS
    OBJECT_TAGS = "object_tags"
    REJECTS = "rejects"
    COUNTS = "counts"
    CALIBRATION = "tagger_calibration.json"
    STAGE = "_stage"
    MANIFEST = "manifest.json"
    SUMMARY = "summary.json"
    CONFIG = "config.json"

    # Cleared before a run; manifest.json first: it is the commit point an increment builds on.
    OUTPUTS = (MANIFEST, OBJECT_TAGS, REJECTS, STAGE, COUNTS, KEYWORD_TRIGGERS, OBJECT_TRIGGERS, FLAGGED_PROMPTS,
               CALIBRATION, SUMMARY)

    # per-part files
    def object_tags(self, part: str) -> str:
        return self._at(self.OBJECT_TAGS, f"object_tags_{part}.parquet")

    def rejects(self, part: str) -> str:
        return self._at(self.REJECTS, f"rejects_{part}.parquet")

    def count_dir(self, name: str) -> str:
        """Folder of saved count ``name`` (``kw``, ``kwg``, ...)."""
        return self._at(self.COUNTS, name)

    def count_shard(self, name: str, shard: int) -> str:
        return self._at(self.COUNTS, name, f"{name}-{shard:05d}.parquet")

    # folders and single files
    @property
    def object_tags_dir(self) -> str:
        return self._at(self.OBJECT_TAGS)

    @property
    def rejects_dir(self) -> str:
        return self._at(self.REJECTS)

    @property
    def counts_dir(self) -> str:
        return self._at(self.COUNTS)

    @property
    def count_stats(self) -> str:
        return self._at(self.COUNTS, "stats.json")

    @property
    def keyword_triggers(self) -> str:
        return self._at(self.KEYWORD_TRIGGERS)

    @property
    def object_triggers(self) -> str:
        return self._at(self.OBJECT_TRIGGERS)

    @property
    def flagged_prompts(self) -> str:
        return self._at(self.FLAGGED_PROMPTS)

    @property
    def calibration(self) -> str:
        return self._at(self.CALIBRATION)

    @property
    def stage_summary(self) -> str:
        return self._at(self.STAGE, "summary.json")

    @property
    def manifest(self) -> str:
        return self._at(self.MANIFEST)

    @property
    def summary(self) -> str:
        return self._at(self.SUMMARY)

    @property
    def config(self) -> str:
        return self._at(self.CONFIG)
