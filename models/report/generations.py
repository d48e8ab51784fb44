"""SIDE generations for the page: per flagged prompt and per duplicate group, and their images.

The score stage writes one ``extractions.parquet`` row per generation
(schemas.EXTRACTIONS: its prompt, its nearest training row and that row's
group) and, for image targets, ``grids/side_{r:02d}.png``: the first
:data:`GRID_LIMIT` generations of SIDE run ``r`` in rows of
:data:`GRID_COLUMNS` (generation ids ``r{r:02d}g{i:06d}``). A generation's
image is ``generations/<generation_id>.png`` when the score folder has one,
else its tile cut from its run's grid when the grid's geometry checks out, else
none (the page says "generated image not saved").
"""
from __future__ import annotations

import io
import re
from collections import Counter, defaultdict
from typing import NamedTuple

from models.report.reading import files_with_suffix, read_bytes
from models.report.rows import Extraction, ScoreImage
from models.report.thumbnails import PNG_SIGNATURE, copy_png
from models.storage import layout
from models.storage.folders import score as score_folder
from models.storage.folders.report import ReportFolder

GENERATIONS = "generations"   # per-generation PNGs the report uses when a score folder has them
GRID_COLUMNS = 4     # the score stage's grid layout (models/score images: grid_png columns)
GRID_LIMIT = 16      # generations per grid (the first 16 of a run)
_GENERATION_ID = re.compile(r"r(\d+)g(\d+)")
_GRID_NAME = re.compile(r"side_(\d+)")


class GenerationId(NamedTuple):
    run: int     # SIDE run (0 = unconditional, then one per prompt)
    index: int   # generation inside the run


def parse_generation_id(generation_id: str) -> GenerationId | None:
    """``r01g000003`` -> ``GenerationId(1, 3)``; ``None`` for ids in any other form."""
    m = _GENERATION_ID.fullmatch(generation_id)
    return GenerationId(int(m.group(1)), int(m.group(2))) if m else None


def grid_run(name: str) -> int | None:
    """The SIDE run of a grid file stem (``side_01`` -> 1), ``None`` for other names."""
    m = _GRID_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


class PromptGenerations(NamedTuple):
    """A flagged prompt's SIDE generations: the best matches shown beside their training images."""

    prompt: str
    total: int                  # generations of the prompt
    in_band: int                # of which matched within a similarity band (band not null)
    shown: list[Extraction]     # most similar first, at most max_members
    grid: ScoreImage | None     # the grid of the prompt's SIDE run, when copied


class GroupGenerations(NamedTuple):
    """SIDE generations whose nearest training row is in one duplicate group."""

    total: int
    shown: list[Extraction]     # most similar first, at most max_members


def _best(rows: list[Extraction], limit: int) -> list[Extraction]:
    return sorted(rows, key=lambda r: (-(r.similarity if r.similarity is not None else float("-inf")), str(r.generation_id)))[:limit]


def by_prompt(extractions: list[Extraction], prompts: list[str], grids: list[ScoreImage],
              limit: int) -> list[PromptGenerations]:
    """Per prompt of ``prompts`` (in order) that has generations: counts, the best ``limit`` and its run's grid."""
    rows: dict[str, list[Extraction]] = defaultdict(list)
    for r in extractions:
        if r.prompt is not None:
            rows[r.prompt].append(r)
    grid_of = {grid_run(g.name): g for g in grids if grid_run(g.name) is not None}
    out = []
    for prompt in dict.fromkeys(prompts):
        mine = rows.get(prompt)
        if not mine:
            continue
        runs = Counter(i.run for i in (parse_generation_id(str(r.generation_id)) for r in mine) if i is not None)
        grid = grid_of.get(runs.most_common(1)[0][0]) if len(runs) == 1 else None
        out.append(PromptGenerations(prompt, len(mine), sum(r.band is not None for r in mine), _best(mine, limit), grid))
    return out


def by_group(extractions: list[Extraction], group_ids: set[str], limit: int) -> dict[str, GroupGenerations]:
    """``{group_id: GroupGenerations}`` for the groups of ``group_ids`` that SIDE generations matched."""
    rows: dict[str, list[Extraction]] = defaultdict(list)
    for r in extractions:
        if r.group_id in group_ids:
            rows[r.group_id].append(r)
    return {g: GroupGenerations(len(rs), _best(rs, limit)) for g, rs in rows.items()}


def grid_tile(grid_png: bytes, index: int, run_size: int) -> bytes | None:
    """PNG bytes of generation ``index`` cut from its run's grid; ``None`` when the geometry does not check out.

    The grid holds ``n = min(run_size, GRID_LIMIT)`` images in ``ceil(n / GRID_COLUMNS)``
    rows of ``GRID_COLUMNS`` tiles of one size, so its width must divide by the
    columns and its height by the rows.
    """
    from PIL import Image

    n = min(run_size, GRID_LIMIT)
    if not 0 <= index < n or not grid_png.startswith(PNG_SIGNATURE):
        return None
    rows = -(-n // GRID_COLUMNS)
    with Image.open(io.BytesIO(grid_png)) as grid:
        width, height = grid.size
        if width % GRID_COLUMNS or height % rows:
            return None
        w, h = width // GRID_COLUMNS, height // rows
        col, row = index % GRID_COLUMNS, index // GRID_COLUMNS
        tile = grid.convert("RGB").crop((col * w, row * h, (col + 1) * w, (row + 1) * h))
    buf = io.BytesIO()
    tile.save(buf, format="PNG")
    return buf.getvalue()


def generation_images(score: str, generation_ids: list[str], run_sizes: Counter, report: ReportFolder) -> dict[str, str]:
    """``{generation_id: relative path}``: ``generations/<id>.png`` copied when present, else cut from the run's grid.

    Files are matched by listing ``generations/`` and ``grids/``, never by
    joining an id into a path. ``run_sizes``: generations per SIDE run (rows of
    ``extractions.parquet``), which fixes each grid's geometry.
    """
    saved = files_with_suffix(layout.join(score, GENERATIONS), ".png")
    grids = {grid_run(name): path for name, path in files_with_suffix(layout.join(score, score_folder.GRIDS), ".png").items()
             if grid_run(name) is not None}
    grid_bytes: dict[int, bytes] = {}
    out: dict[str, str] = {}
    for gid in dict.fromkeys(generation_ids):
        rel = report.generation(gid)
        if gid in saved:
            if copy_png(saved[gid], report, rel):
                out[gid] = rel
            continue
        parsed = parse_generation_id(gid)
        if parsed is None or parsed.run not in grids:
            continue
        if parsed.run not in grid_bytes:
            grid_bytes[parsed.run] = read_bytes(grids[parsed.run])
        tile = grid_tile(grid_bytes[parsed.run], parsed.index, run_sizes.get(parsed.run, 0))
        if tile is not None:
            layout.atomic_write_bytes(report.path(rel), tile)
            out[gid] = rel
    return out


def run_sizes(extractions: list[Extraction]) -> Counter:
    """Generations per SIDE run, from the generation ids of every extraction row."""
    return Counter(i.run for i in (parse_generation_id(str(r.generation_id)) for r in extractions) if i is not None)
