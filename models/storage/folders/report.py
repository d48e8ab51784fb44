"""The report folder: every file ``dupmine report`` writes, by name.

::

    ROOT/
      index.html                        the page (inline CSS, no JavaScript, no external URL)
      thumbs/{sha256(key)[:32]}.jpg     thumbnails re-read from the shards (only the keys shown)
      plots/{name}.png                  matplotlib plots (Agg canvas)
      score/grids/{sha256(name)}.png    copies of the score stage's sample grids
      score/generations/{sha256(id)}.png copies of the generated images that are shown
      _chain_state/groups.parquet       an incremental dedup run chain's merged group rows (read back once)

File names derived from untrusted text (keys, generation ids, grid names,
check names) are hashes, so a key like ``../../x`` names a file inside the
report and nothing else. Relative paths (what the page links to) come from
the static methods; absolute ones from :meth:`ReportFolder.path`.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from models.storage import layout

INDEX = "index.html"
THUMBS = "thumbs"
PLOTS = "plots"
SCORE_GRIDS = "score/grids"
SCORE_GENERATIONS = "score/generations"
CHAIN_STATE = "_chain_state"


def digest(text: str, n: int = 32) -> str:
    """The first ``n`` hex digits of sha256(``text``): file names and anchors derived from untrusted text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


@dataclass(frozen=True)
class ReportFolder:
    """Paths inside a report folder (local path or fsspec URL)."""

    root: str

    GROUP_SIZES_PLOT = f"{PLOTS}/group_sizes.png"
    KEYWORD_PLOT = f"{PLOTS}/keyword_lift_support.png"
    NN_SIMILARITY_PLOT = f"{PLOTS}/nn_similarity.png"

    def path(self, rel: str) -> str:
        """The absolute path of a report-relative path (one of the static methods' results)."""
        return layout.join(self.root, rel)

    @property
    def index(self) -> str:
        return layout.join(self.root, INDEX)

    @property
    def chain_state(self) -> str:
        """Folder holding ``groups.parquet``: the group rows of a whole incremental dedup run chain."""
        return layout.join(self.root, CHAIN_STATE)

    @property
    def chain_state_groups(self) -> str:
        return layout.join(self.chain_state, "groups.parquet")

    @staticmethod
    def thumb(key: str) -> str:
        """Relative path of a key's thumbnail (hashed, never the key)."""
        return f"{THUMBS}/{digest(key)}.jpg"

    @staticmethod
    def score_plot(check: str) -> str:
        """Relative path of a score check's histogram: a readable prefix of the check name plus its hash."""
        return f"{PLOTS}/score_{re.sub(r'[^A-Za-z0-9_-]', '_', check)[:40]}_{digest(check, 8)}.png"

    @staticmethod
    def score_grid(name: str) -> str:
        """Relative path of a copied sample grid (``name`` is the source file's stem)."""
        return f"{SCORE_GRIDS}/{digest(name)}.png"

    @staticmethod
    def generation(generation_id: str) -> str:
        """Relative path of a copied generated image."""
        return f"{SCORE_GENERATIONS}/{digest(generation_id)}.png"
