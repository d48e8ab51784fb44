"""Run chains of incremental mine runs: which parts each run counted, from which folders.

A ``dupmine mine --previous PREV`` run saves its summed counts under
``counts/`` and a ``manifest.json`` naming the whole chain (oldest first), so
the next increment only counts new parts (and rows whose groups changed).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from models.storage import layout
from models.storage.run_chain import MANIFEST, _normalized

COUNTS_DIR = "counts"


@dataclass(frozen=True)
class MineEntry:
    """One mine run of a chain: the parts it counted, from which embedding folder, with which dedup output."""

    run: str
    embeddings: str
    parts: tuple[str, ...]
    groups: str | None
    previous: str | None = None

    def to_json(self) -> dict:
        return {"run": self.run, "embeddings": self.embeddings, "parts": list(self.parts), "groups": self.groups,
                "previous": self.previous}

    @classmethod
    def from_json(cls, d: dict) -> "MineEntry":
        return cls(run=d["run"], embeddings=d["embeddings"], parts=tuple(d["parts"]), groups=d.get("groups"),
                   previous=d.get("previous"))


def read_mine_chain(mine_dir: str) -> list[MineEntry]:
    """The chain of a mine output folder, oldest first.

    Raises:
      ValueError: no ``manifest.json`` or no saved ``counts/`` (a mine output
        made before incremental runs existed, or an unfinished one).
    """
    path = layout.join(mine_dir, MANIFEST)
    if not layout.exists(path) or not layout.exists(layout.join(mine_dir, COUNTS_DIR, "stats.json")):
        raise ValueError(f"{mine_dir!r} has no {MANIFEST} and {COUNTS_DIR}/: not a finished dupmine mine output (or "
                         f"one made before incremental runs existed; run mine on it again from scratch)")
    chain = [MineEntry.from_json(e) for e in layout.read_json(path).get("chain", [])]
    if not chain:
        raise ValueError(f"{path} lists no runs")
    return chain[:-1] + [replace(chain[-1], run=mine_dir)]


def write_mine_manifest(mine_dir: str, chain: list[MineEntry]) -> None:
    """Write a mine run's ``manifest.json`` (paths made absolute); its commit point."""
    chain = [_normalized(e, "run", "embeddings", "groups", "previous") for e in chain]
    layout.write_json(layout.join(mine_dir, MANIFEST), {"chain": [e.to_json() for e in chain]})
