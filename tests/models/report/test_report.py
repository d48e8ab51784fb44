"""The static HTML report on a real embed -> dedup -> mine run over planted shards.

The run is built once per test session (:func:`build_run`, shared with the
browser test): one img2dataset webdataset shard with planted exact and near
duplicate groups, one caption replaced by an XSS payload and one key that
tries a path traversal (``../../x``), embedded with the ``pixel`` model.
"""
from __future__ import annotations

import io
import os
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.storage import layout
from models.storage import schemas
from models.report.page import group_anchor
from models.report.render import ReportInputs, render_report
from models.storage.folders.report import ReportFolder

XSS_CAPTION = "<script>alert(1)</script> starry night <img src=x onerror=alert(1)>"
EVIL_KEY = "../../x"
STAR_CAPTION = "starry night swirling poster"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track", "wbr"}


# --------------------------------------------------------------------------- #
# Building a run
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class BuiltRun:
    """A run folder (``embed/``, ``dedup/``, ``mine/``) and facts about what was planted."""

    root: Path
    xss_key: str
    largest_group_size: int
    samples: dict


_CACHE: dict[str, BuiltRun] = {}


def build_run(tmp_path_factory) -> BuiltRun:
    """Shards -> embed (pixel) -> dedup -> mine (tagger none), once per session."""
    if "run" in _CACHE:
        return _CACHE["run"]
    from models.demo.synthetic import planted_dataset, write_webdataset_shard
    from pipelines import dedup, embed, mine

    root = tmp_path_factory.mktemp("report_run")
    shards = root / "shards"
    shards.mkdir()
    samples = planted_dataset(n_unique=60, exact_groups=[6, 3], near_groups=[4], seed=3, shard=0, size=64)
    biggest = [s for s in samples if s.truth_group == 0]
    for s in biggest:
        s.caption = STAR_CAPTION
    biggest[1].caption = XSS_CAPTION
    biggest[2].key = EVIL_KEY
    # The traversal key travels in an img2dataset parquet shard's key column: tar members are keyed by their file
    # names (a "../../x.jpg" member is "x"), a parquet shard's keys are taken as written.
    write_webdataset_shard(str(shards / "00000.tar"), [s for s in samples if s.key != EVIL_KEY],
                           [("000009999", "http://x.invalid/a.jpg", "HTTP Error 404")])
    write_parquet_shard(shards / "00001.parquet", [biggest[2]])
    quiet = ["--progress-seconds", "1000"]
    embed.run(["--input", str(shards), "--output", str(root / "embed"), "--model", "pixel", *quiet])
    dedup.run(["--embeddings", str(root / "embed"), "--output", str(root / "dedup"), "--threshold", "0.9"])
    mine.run(["--embeddings", str(root / "embed"), "--groups", str(root / "dedup"), "--output", str(root / "mine"),
              "--tagger", "none", "--min-support", "3"])
    built = BuiltRun(root, biggest[1].key, len(biggest), {s.key: s for s in samples})
    _CACHE["run"] = built
    return built


def sample_id_of(built: BuiltRun, key: str) -> str:
    """The sample id the stages gave ``key`` (thumbnails are named by it: keys repeat across downloads)."""
    return next(r["sample_id"] for r in pq.read_table(built.root / "dedup" / "groups").to_pylist() if r["key"] == key)


def write_parquet_shard(path: Path, samples: list) -> None:
    """An img2dataset ``output_format parquet`` shard: the metadata columns plus the image bytes in ``jpg``."""
    from models.demo.synthetic import sample_json

    pq.write_table(pa.Table.from_pylist([sample_json(s) | {"jpg": s.image} for s in samples]), path)


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (48, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def add_object_trigger(built: BuiltRun, dest: Path) -> tuple[Path, set[str], set[str]]:
    """A copy of the run's mine folder with object tags and one object trigger ("starry night" -> "flag").

    Returns (mine folder, keys that must be examples, tagged keys whose caption lacks the keyword).
    """
    mine = dest / "mine_objects"
    shutil.copytree(built.root / "mine", mine)
    star = sorted(k for k, s in built.samples.items() if "starry night" in s.caption)
    others = sorted(k for k, s in built.samples.items() if "starry" not in s.caption)[:3]
    tags = [{"key": k, "object": "flag", "score": 3.0} for k in star + others]
    tags += [{"key": k, "object": "<b>bold</b>", "score": 2.0} for k in others]
    layout.write_parquet(str(mine / "object_tags" / "object_tags_00000.parquet"), schemas.table(tags, schemas.OBJECT_TAGS))
    row = {"keyword": "starry night", "object": "flag", "n_w": len(star), "n_o": len(star) + 3, "n_wo": len(star),
           "p_o_given_w": 1.0, "p_o_given_not_w": 0.04, "lift": 12.0, "absent_fraction": 1.0, "p_value": 1e-6,
           "q_value": 2e-6, "flagged": True, "rank": 1}
    layout.write_parquet(str(mine / "object_triggers.parquet"), schemas.table([row], schemas.OBJECT_TRIGGERS))
    return mine, set(star), set(others)


def add_score_outputs(built: BuiltRun, dest: Path) -> Path:
    """Score outputs in the score stage's layout: prompt scores, extractions, SIDE summary, grids, generations."""
    score = dest / "score"
    (score / "grids").mkdir(parents=True)
    (score / "generations").mkdir()
    prompts = pq.read_table(built.root / "mine" / "flagged_prompts.parquet").column("prompt").to_pylist()[:4]
    rows = []
    for i, p in enumerate(prompts + ["a prompt scored but not flagged <b>x</b>"]):
        for check, stat, thr in (("plaplace", 0.1 * i, 0.25), ("wen", 2.0 + i, 3.0)):
            rows.append({"prompt": p, "check": check, "statistic": stat, "threshold": thr,
                         "decision": "memorized" if stat > thr else "not-memorized", "n_samples": 8, "seed": 0, "cost_evals": 400})
    pq.write_table(pa.Table.from_pylist(rows), score / "prompt_scores.parquet")
    groups = pq.read_table(built.root / "dedup" / "groups").to_pylist()
    rep = next(r for r in groups if r["key"] == EVIL_KEY)
    ext = [{"generation_id": "gen-0", "prompt": prompts[0], "matched_key": EVIL_KEY, "similarity": 0.97, "band": "high",
            "group_id": rep["group_id"]},
           {"generation_id": "../../gen-escape", "prompt": XSS_CAPTION, "matched_key": built.xss_key, "similarity": 0.55,
            "band": "mid", "group_id": rep["group_id"]}]
    pq.write_table(pa.Table.from_pylist(ext), score / "extractions.parquet")
    (score / "generations" / "gen-0.png").write_bytes(png_bytes((200, 30, 30)))
    (dest / "gen-escape.png").write_bytes(png_bytes((0, 0, 0)))  # must never be picked up through the ../ id
    (score / "grids" / 'plaplace <i>grid" & co.png').write_bytes(png_bytes((30, 30, 200), (96, 48)))
    (score / "grids" / "not-a-png.png").write_bytes(b"<script>alert(1)</script>")
    side = {"K": 8, "tau": 0.7, "lambda": 2.0, "N_G": 64,
            "bands": {"low": {"AMS": 0.1, "UMS": 0.05}, "mid": {"AMS": 0.2, "UMS": 0.1}, "high": {"AMS": 0.03, "UMS": 0.03}}}
    layout.write_json(str(score / "side_summary.json"), side)
    return score


def full_report(built: BuiltRun, dest: Path, **kw) -> tuple[str, dict]:
    """A report with every section filled (object trigger and score outputs added)."""
    mine, star, others = add_object_trigger(built, dest)
    score = add_score_outputs(built, dest)
    inputs = ReportInputs(embeddings=str(built.root / "embed"), dedup=str(built.root / "dedup"), mine=str(mine), score=str(score))
    index = render_report(inputs, str(dest / "report"), **kw)
    return index, {"star": star, "others": others, "score": score}


# --------------------------------------------------------------------------- #
# HTML checks
# --------------------------------------------------------------------------- #
class PageChecker(HTMLParser):
    """Tag balance plus every attribute, id and text node of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str | None]] = []   # open (tag, id)
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []
        self.group_sizes: list[int] = []               # data-group-size of the cards inside #top-groups, in order

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            self.attrs.append((tag, name, value))
            if name == "id":
                self.ids.append(value)
            if name == "data-group-size" and any(i == "top-groups" for _, i in self.stack):
                self.group_sizes.append(int(value))
        if tag not in VOID:
            self.stack.append((tag, dict(attrs).get("id")))

    def handle_startendtag(self, tag, attrs):
        if tag not in VOID:
            self.errors.append(f"self-closing non-void <{tag}/>")
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            self.errors.append(f"end tag for void element </{tag}>")
        elif not self.stack or self.stack[-1][0] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1][0] if self.stack else None!r} at {self.getpos()}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_page(index: str) -> tuple[str, PageChecker]:
    text = Path(index).read_text(encoding="utf-8")
    checker = PageChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, f"unclosed tags {checker.stack}"
    return text, checker


def assert_safe_and_local(index: str, text: str, checker: PageChecker) -> None:
    """No script, no event handler, no absolute URL; every referenced file exists inside the report."""
    root = Path(index).parent.resolve()
    assert "script" not in checker.tags
    assert not [a for a in checker.attrs if a[1].startswith("on")]
    assert "<script>alert" not in text and "onerror=alert" not in text.replace("&lt;img src=x onerror=alert", "")
    assert not re.search(r"(?i)\b(?:https?|ftp|file|javascript|data):", " ".join(v or "" for _, n, v in checker.attrs if n in ("src", "href")))
    assert "http://" not in text and "https://" not in text
    for tag, name, value in checker.attrs:
        if name == "href":
            assert value.startswith("#") and value[1:] in checker.ids, value
        if name == "src":
            assert not value.startswith("/") and ".." not in value, value
            path = (root / value).resolve()
            assert path.is_file() and root in path.parents, value
            if tag == "img":
                with Image.open(path) as im:
                    im.verify()


def test_page_checker_catches_broken_markup():
    checker = PageChecker()
    checker.feed("<html><body><div><p>x</div></p><img src=a></body></html>")
    assert checker.errors


# --------------------------------------------------------------------------- #
# Tests
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def built(tmp_path_factory) -> BuiltRun:
    return build_run(tmp_path_factory)


def test_report_of_a_real_run(built, tmp_path):
    out = tmp_path / "a" / "b" / "report"
    index = render_report(ReportInputs.from_run_dir(str(built.root)), str(out))
    assert index == str(out / "index.html") and os.path.isfile(index)
    text, checker = check_page(index)
    assert_safe_and_local(index, text, checker)

    # the XSS caption is text: escaped in the HTML, literal in the parsed text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert any("<script>alert(1)</script>" in t for t in checker.text)
    # the traversal key: shown as text, its thumbnail under a hashed name, nothing written outside the report
    assert "../../x" in "".join(checker.text)
    assert (out / ReportFolder.thumb(sample_id_of(built, EVIL_KEY))).is_file() and os.listdir(tmp_path / "a" / "b") == ["report"]
    assert all(re.fullmatch(r"[0-9a-f]{32}\.jpg", f) for f in os.listdir(out / "thumbs"))

    # the largest group first, sizes non-increasing, and it is the planted one
    groups = pq.read_table(built.root / "dedup" / "groups").to_pylist()
    largest = max(r["group_size"] for r in groups)
    assert largest == built.largest_group_size
    assert checker.group_sizes[0] == largest and checker.group_sizes == sorted(checker.group_sizes, reverse=True)
    evil_group = next(r["group_id"] for r in groups if r["key"] == EVIL_KEY)
    first_card = re.search(r'<div class="group" id="([^"]+)" data-group-size', text).group(1)
    assert first_card == group_anchor(evil_group)
    # exact copies: cosine to the representative is 1 (stored float16 vectors)
    assert "cosine to rep. 1.0000" in text or "cosine to rep. 0.9999" in text

    # summary numbers come from the stage outputs
    stats = layout.read_json(str(built.root / "embed" / "stats.json"))
    assert f"<td>rows embedded</td><td class=\"num\">{stats['rows']:,}</td>" in text
    assert "failed_to_download" in text
    dd = layout.read_json(str(built.root / "dedup" / "summary.json"))
    assert f"{100 * dd['duplicate_fraction']:.2f}%" in text
    # word triggers: the planted keyword is flagged and links to the planted group
    words = pq.read_table(built.root / "mine" / "keyword_triggers.parquet").to_pylist()
    star = next(r for r in words if r["keyword"] == "starry night")
    assert star["flagged"] and star["top_group_id"] == evil_group
    assert f'href="#{group_anchor(evil_group)}"' in text
    assert STAR_CAPTION in text  # an example caption, resolved from example_keys
    # plots exist; the score section says it is missing; object section explains the empty table
    assert {"group_sizes.png", "keyword_lift_support.png"} <= set(os.listdir(out / "plots"))
    # dedup's sampled nearest-neighbour histogram, drawn in the dedup section with the threshold the run used (0.9)
    nn = layout.read_json(str(built.root / "dedup" / "nn_similarity.json"))
    assert nn["threshold"] == 0.9 and "nn_similarity.png" in os.listdir(out / "plots")
    assert f"{nn['n_sampled']:,} sampled rows" in text and 'src="plots/nn_similarity.png"' in text
    assert 'id="score-missing"' in text and "No score outputs" in text
    assert "--tagger none" in text


def test_groups_referenced_by_triggers_are_rendered_beyond_max_groups(built, tmp_path):
    inputs = ReportInputs.from_run_dir(str(built.root))
    index = render_report(inputs, str(tmp_path / "r"), max_groups=1, max_members=2, thumb_size=48)
    text, checker = check_page(index)
    assert_safe_and_local(index, text, checker)  # every href="#..." has its target
    assert len(checker.group_sizes) == 1
    prompts = pq.read_table(built.root / "mine" / "flagged_prompts.parquet").to_pylist()
    referenced = {g for p in prompts[:50] for g in p["group_ids"]}
    assert len(referenced) > 1
    for gid in referenced:
        assert f'id="{group_anchor(gid)}"' in text
    assert 'id="referenced-groups"' in text
    with Image.open(tmp_path / "r" / ReportFolder.thumb(sample_id_of(built, EVIL_KEY))) as im:
        assert max(im.size) <= 48


def test_object_triggers_and_score_outputs(built, tmp_path):
    index, facts = full_report(built, tmp_path, max_members=4)
    text, checker = check_page(index)
    assert_safe_and_local(index, text, checker)
    section = text[text.index('id="object-triggers"'):text.index('id="prompts"')]
    # examples: tagged "flag" and caption with the keyword; tagged rows without it are not examples
    shown = {k for k in built.samples if f"<div class=\"key\">{k}</div>" in section}
    assert shown and shown <= facts["star"] and not shown & facts["others"]
    assert len(shown) == 4
    assert "starry night</span> \u2192 <span class=\"caption\">flag</span>" in section
    # scores: per-check rows, histogram per check, extractions with the generated image copied under a hashed name
    prompts_section = text[text.index('id="prompts"'):text.index('id="parameters"')]
    assert "score-missing" not in text
    assert "plaplace" in prompts_section and "not-memorized" in prompts_section and "scored only" in prompts_section
    assert "a prompt scored but not flagged &lt;b&gt;x&lt;/b&gt;" in prompts_section
    plots = os.listdir(tmp_path / "report" / "plots")
    assert any(p.startswith("score_plaplace_") for p in plots) and any(p.startswith("score_wen_") for p in plots)
    gens = os.listdir(tmp_path / "report" / "score" / "generations")
    assert len(gens) == 1 and re.fullmatch(r"[0-9a-f]{32}\.png", gens[0])  # the ../ id got no image
    assert "generated image not saved" in prompts_section
    grids = os.listdir(tmp_path / "report" / "score" / "grids")
    assert len(grids) == 1  # the non-PNG file is not copied
    assert "plaplace &lt;i&gt;grid&quot; &amp; co" in prompts_section
    assert "AMS" in prompts_section and "N_G" in prompts_section


def test_cli_and_errors(built, tmp_path):
    from pipelines import report

    index = report.run(["--run", str(built.root), "--output", str(tmp_path / "cli"), "--max-groups", "2",
                        "--direct_num_workers=2"])
    assert index == str(tmp_path / "cli" / "index.html") and os.path.isfile(index)
    check_page(index)
    # only a mine folder: sections without dedup/embeddings say so
    only_mine = report.run(["--mine", str(built.root / "mine"), "--output", str(tmp_path / "m")])
    text, _ = check_page(only_mine)
    assert "No dedup output given" in text
    with pytest.raises(SystemExit):
        report.run(["--output", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ReportInputs.from_run_dir(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="none of"):
        ReportInputs.from_run_dir(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="score folder"):
        render_report(ReportInputs(mine=str(built.root / "mine"), score=str(tmp_path / "nope")), str(tmp_path / "y"))
    with pytest.raises(ValueError, match="max_groups"):
        render_report(ReportInputs(mine=str(built.root / "mine")), str(tmp_path / "z"), max_groups=0)
    with pytest.raises(ValueError, match="nothing to report"):
        render_report(ReportInputs(), str(tmp_path / "z"))


def test_laion_style_folders_without_shards(tmp_path):
    """Embeddings without a shard list (LAION's layout), one duplicate pair, an empty score folder."""
    emb, dd, score = tmp_path / "emb", tmp_path / "dd", tmp_path / "score"
    x = np.zeros((4, 8), np.float32)
    x[0, 0] = 1.0
    x[1, :2] = np.array([1.0, 0.5]) / np.sqrt(1.25)
    x[2, 2] = x[3, 3] = 1.0
    layout.write_npy(str(emb / "img_emb" / "img_emb_0.npy"), x.astype(np.float16))
    (emb / "metadata").mkdir()
    captions = ["a cat", 'a cat " onmouseover="alert(1)', "a dog", "a bird"]
    pq.write_table(pa.table({"key": ["k0", "k1", "k2", "k3"], "caption": captions}), emb / "metadata" / "metadata_0.parquet")
    rows = [{"key": "k0", "group_id": "k0", "group_size": 2, "is_representative": False, "representative_key": "k1",
             "max_cosine": 0.89, "part": "0"},
            {"key": "k1", "group_id": "k0", "group_size": 2, "is_representative": True, "representative_key": "k1",
             "max_cosine": 0.89, "part": "0"}]
    rows += [{"key": k, "group_id": k, "group_size": 1, "is_representative": True, "representative_key": k,
              "max_cosine": None, "part": "0"} for k in ("k2", "k3")]
    layout.write_parquet(str(dd / "groups" / "groups_0.parquet"), schemas.table(rows, schemas.DEDUP_GROUPS))
    score.mkdir()
    index = render_report(ReportInputs(embeddings=str(emb), dedup=str(dd), score=str(score)), str(tmp_path / "r"))
    text, checker = check_page(index)
    assert_safe_and_local(index, text, checker)
    assert checker.group_sizes == [2]
    cosines = [float(c) for c in re.findall(r"cosine to rep\. ([0-9.]+)", text)]
    assert cosines == [pytest.approx(1 / np.sqrt(1.25), abs=1e-3)]  # k0 against the representative k1
    assert "config.json lists no shards" in text and "no image" in text
    assert 'title="a cat &quot; onmouseover=&quot;alert(1)"' in text
    assert "no prompt_scores.parquet" in text and "No extractions.parquet" in text and "No side_summary.json" in text
    # the histogram counts the 2 singletons (from the groups table: no summary.json here)
    assert (tmp_path / "r" / "plots" / "group_sizes.png").is_file()
    assert "No mine output given" in text
