"""Run chains of incremental mine runs: which parts each run counted, from which folders, with what content.

A ``dupmine mine --previous PREV`` run saves its summed counts under
``counts/`` and a ``manifest.json`` naming the whole chain (oldest first), so
the next increment only counts new parts (and rows whose groups changed).

A part is identified by its source and content, never by its name alone:
(embedding folder URL, part name, :func:`models.storage.run_chain.part_identity`). img2dataset numbers
shards from 00000 in every download, so a second folder whose parts are named
like the first one's is new data.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from models.storage import layout
from models.storage.folders.mine import MineFolder
from models.storage.run_chain import MANIFEST, _normalized, normalize_path, part_identity, same_content

COUNTS_DIR = MineFolder.COUNTS


@dataclass(frozen=True)
class MineEntry:
    """One mine run of a chain: the parts it counted, from which embedding folder, with which dedup output.

    ``contents`` is parallel to ``parts``: each part's :func:`models.storage.run_chain.part_identity` (the
    identity dedup chains use too) when the run counted it (empty for
    manifests written before content identities existed; those parts are matched by folder and name).
    """

    run: str
    embeddings: str
    parts: tuple[str, ...]
    groups: str | None
    previous: str | None = None
    contents: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return {"run": self.run, "embeddings": self.embeddings, "parts": list(self.parts), "groups": self.groups,
                "previous": self.previous, "contents": list(self.contents)}

    @classmethod
    def from_json(cls, d: dict) -> "MineEntry":
        return cls(run=d["run"], embeddings=d["embeddings"], parts=tuple(d["parts"]), groups=d.get("groups"),
                   previous=d.get("previous"), contents=tuple(d.get("contents") or ()))


def uncounted_parts(chain: list[MineEntry], embeddings: str, parts: list[str]) -> list[str]:
    """The parts of ``embeddings`` that no run of ``chain`` counted (same folder, same name, same content).

    Raises:
      ValueError: the chain counted a part of this folder whose content has changed since (its counts would be
        wrong both ways; run mine from scratch).
    """
    source = normalize_path(embeddings)
    seen: dict[str, str | None] = {}
    for entry in chain:
        if normalize_path(entry.embeddings) != source:
            continue
        contents = entry.contents if len(entry.contents) == len(entry.parts) else (None,) * len(entry.parts)
        seen.update(zip(entry.parts, contents))
    new = []
    for part in parts:
        if part not in seen:
            new.append(part)
        elif not same_content(seen[part], current := part_identity(embeddings, part)):
            raise ValueError(f"part {part} of {embeddings} changed since the mine chain counted it (content "
                             f"{seen[part]} -> {current}); run mine from scratch")
    return new


def read_mine_chain(mine_dir: str) -> list[MineEntry]:
    """The chain of a mine output folder, oldest first.

    Raises:
      ValueError: no ``manifest.json`` or no saved ``counts/`` (a mine output
        made before incremental runs existed, or an unfinished one).
    """
    folder = MineFolder(mine_dir)
    if not layout.exists(folder.manifest) or not layout.exists(folder.count_stats):
        raise ValueError(f"{mine_dir!r} has no {MANIFEST} and {COUNTS_DIR}/: not a finished dupmine mine output (or "
                         f"one made before incremental runs existed; run mine on it again from scratch)")
    chain = [MineEntry.from_json(e) for e in layout.read_json(folder.manifest).get("chain", [])]
    if not chain:
        raise ValueError(f"{folder.manifest} lists no runs")
    return chain[:-1] + [replace(chain[-1], run=mine_dir)]


def write_mine_manifest(mine_dir: str, chain: list[MineEntry]) -> None:
    """Write a mine run's ``manifest.json`` (paths made absolute); its commit point."""
    chain = [_normalized(e, "run", "embeddings", "groups", "previous") for e in chain]
    layout.write_json(MineFolder(mine_dir).manifest, {"chain": [e.to_json() for e in chain]})
