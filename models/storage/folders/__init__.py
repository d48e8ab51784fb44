"""One class per stage output folder, naming its files (embed, dedup, mine, score, report).

Each stage module here owns its folder class: ``folders.dedup.DedupFolder`` and so on.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.storage import layout


@dataclass(frozen=True)
class StageFolder:
    """A stage output folder: ``root`` (local path or object-store URL) and the paths under it."""

    root: str

    def _at(self, *parts: str) -> str:
        return layout.join(self.root, *parts)
