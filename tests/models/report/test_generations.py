"""models.report.generations: SIDE generations per prompt and per group, and their images (saved or cut from grids)."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
from PIL import Image

from models.report.generations import (GenerationId, by_group, by_prompt, generation_images, grid_run, grid_tile,
                                       parse_generation_id, run_sizes)
from models.report.render import ReportInputs, render_report
from models.report.rows import Extraction, ScoreImage
from models.storage.folders.report import ReportFolder
from tests.models.report import tiny
from tests.models.report.test_report import assert_safe_and_local, check_page

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128)]


def score_grid(n: int, w: int = 8, h: int = 6) -> bytes:
    """A grid laid out as the score stage lays it out: rows of 4 tiles, white where no image."""
    rows = -(-n // 4)
    grid = Image.new("RGB", (4 * w, rows * h), "white")
    for i in range(n):
        grid.paste(Image.new("RGB", (w, h), COLOURS[i]), ((i % 4) * w, (i // 4) * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def colour(png: bytes):
    with Image.open(io.BytesIO(png)) as im:
        px = np.asarray(im.convert("RGB"))
    assert (px == px[0, 0]).all()   # one flat tile, no neighbour bleeding in
    return tuple(int(v) for v in px[0, 0]), im.size


def ext(gid, prompt, key, sim, band, group) -> Extraction:
    return Extraction(gid, prompt, key, sim, band, group)


def test_ids_and_grid_names():
    assert parse_generation_id("r01g000003") == GenerationId(1, 3)
    assert parse_generation_id("../r01g000003") is None and parse_generation_id("gen-0") is None
    assert grid_run("side_07") == 7 and grid_run("plaplace") is None


def test_tiles_are_cut_where_the_score_stage_put_them():
    grid = score_grid(7)
    for i in range(7):
        assert colour(grid_tile(grid, i, run_size=7)) == (COLOURS[i], (8, 6))
    assert grid_tile(grid, 7, run_size=7) is None                  # not in the grid
    assert grid_tile(score_grid(7, h=5), 0, run_size=40) is None    # 16 images = 4 rows claimed, 2 rows of 5 px drawn
    assert grid_tile(tiny.png((0, 0, 0), (30, 6)), 0, run_size=4) is None   # width 30 is no 4 columns
    assert colour(grid_tile(score_grid(2), 1, run_size=2)) == (COLOURS[1], (8, 6))
    assert grid_tile(b"not a png", 0, run_size=1) is None


def test_by_prompt_and_by_group():
    rows = [ext("r01g000000", "p1", "a", 0.5, None, "g1"), ext("r01g000001", "p1", "b", 0.9, "high", "g1"),
            ext("r01g000002", "p1", "c", None, None, None), ext("r02g000000", "p2", "d", 0.7, "mid", "g2"),
            ext("r00g000000", None, "e", 0.99, "high", "g2")]
    grids = [ScoreImage("side_01", "score/grids/1.png"), ScoreImage("other", "score/grids/x.png")]
    got = by_prompt(rows, ["p1", "p3", "p1", "p2"], grids, limit=2)
    assert [(pg.prompt, pg.total, pg.in_band, [r.matched_key for r in pg.shown], pg.grid) for pg in got] == [
        ("p1", 3, 1, ["b", "a"], grids[0]), ("p2", 1, 1, ["d"], None)]   # p3 has none; p2's run has no grid
    groups = by_group(rows, {"g2", "g9"}, limit=1)
    assert {g: (v.total, [r.matched_key for r in v.shown]) for g, v in groups.items()} == {"g2": (2, ["e"])}
    assert run_sizes(rows) == Counter({1: 3, 2: 1, 0: 1})


def test_images_saved_first_then_cut_from_the_grid(tmp_path):
    score = tmp_path / "score"
    (score / "grids").mkdir(parents=True)
    (score / "generations").mkdir()
    (score / "grids" / "side_01.png").write_bytes(score_grid(3))
    (score / "generations" / "r01g000002.png").write_bytes(tiny.png((1, 2, 3)))
    (tmp_path / "r01g000009.png").write_bytes(tiny.png((9, 9, 9)))
    report = ReportFolder(str(tmp_path / "r"))
    ids = ["r01g000001", "r01g000002", "../r01g000009", "r05g000000", "r01g000001"]
    got = generation_images(str(score), ids, Counter({1: 3}), report)
    assert got == {g: ReportFolder.generation(g) for g in ("r01g000001", "r01g000002")}
    assert colour((tmp_path / "r" / got["r01g000001"]).read_bytes())[0] == COLOURS[1]
    assert (tmp_path / "r" / got["r01g000002"]).read_bytes() == (score / "generations" / "r01g000002.png").read_bytes()


def test_report_shows_generations_beside_training_images_and_groups(tmp_path):
    t = tiny.write_all(tmp_path)
    index = render_report(ReportInputs(*map(str, t)), str(tmp_path / "r"), max_members=4)
    text, checker = check_page(index)
    assert_safe_and_local(index, text, checker)
    block = text[text.index('id="prompt-generations"'):text.index('id="extractions"')]
    assert "a red ball</span></h3>" in block and "2 generated, 2 within a similarity band." in block
    pairs = block.split('<div class="pair">')[1:]
    assert len(pairs) == 2
    first = pairs[0]
    assert f'src="{ReportFolder.generation("r01g000000")}"' in first and "similarity 0.95, band high" in first
    assert f'src="{ReportFolder.thumb(tiny.sid(tmp_path, "k1"))}"' in first and '<div class="key">k1</div>' in first
    assert f'src="{ReportFolder.score_grid("side_01")}"' in block
    groups = text[text.index('id="top-groups"'):text.index('id="word-triggers"')]
    k0 = groups[:groups.index('data-group-size="2"')]
    assert "SIDE: 2 generated images nearest to a member of this group" in k0
    assert k0.count('<figure class="generation">') == 2 and "matches <span class=\"key\">k1</span>" in k0
    assert "SIDE: 1 generated image nearest" in groups[groups.index('data-group-size="2"'):]


def test_report_without_per_prompt_generations(tmp_path):
    t = tiny.write_all(tmp_path)
    import pyarrow.parquet as pq
    table = pq.read_table(t.score / "extractions.parquet")
    pq.write_table(table.set_column(1, "prompt", [[None] * table.num_rows]), t.score / "extractions.parquet")
    (t.score / "generations" / "r01g000000.png").unlink()
    (t.score / "grids" / "side_01.png").unlink()
    index = render_report(ReportInputs(*map(str, t)), str(tmp_path / "r"))
    text, checker = check_page(index)
    assert "No SIDE generation of a flagged prompt" in text
    assert text.count("generated image not saved") >= 2   # run 1 has neither a saved image nor a grid
    assert "SIDE: 2 generated images" in text
