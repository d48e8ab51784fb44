"""Static HTML report of a dupmine run (embed, dedup, mine and score outputs).

:func:`render_report` reads the stage folders named by a :class:`ReportInputs`
and writes one self-contained folder::

    OUTPUT/
      index.html                 the report (inline CSS, no JavaScript, no external URL)
      thumbs/{sha256(key)}.jpg   thumbnails re-read from the shards (only the keys shown)
      plots/*.png                matplotlib plots (Agg canvas)
      score/grids/*.png          copies of the score stage's sample grids
      score/generations/*.png    copies of the generated images that are shown

It opens from disk (``file://``) with no server and no network. A
``Content-Security-Policy`` meta tag forbids scripts, remote images and remote
styles, as a second line of defence behind the escaping.

Everything that comes from the dataset (captions, keys, keywords, object
names, prompts, group ids, reasons, file names) is untrusted web text: it is
written only through :func:`html.escape` with ``quote=True``, attribute values
included. File names derived from keys or ids are hashes, so a key like
``../../x`` names ``thumbs/<hex>.jpg`` inside the report and nothing else; score
images are looked up by listing their folder, never by joining an id into a
path.

Cost: one streaming pass over the metadata parts (``key``, ``caption``,
``shard`` columns, one part in memory at a time) to find the captions of the
rows shown and the object-trigger examples; memory-mapped reads of only the
needed rows of ``img_emb``; one pass over the shards that hold a shown key,
each read only until its last shown key (4 threads). The report never loads
all embeddings or all images.
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.storage import layout

log = logging.getLogger("dupmine.report")

THUMBS_DIR = "thumbs"
PLOTS_DIR = "plots"
SCORE_DIR = "score"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CAPTION_CHARS = 300        # captions are cut (before escaping) to this many characters
EXAMPLE_CAPTIONS = 3       # example captions per word trigger
SHARD_THREADS = 4          # shards re-read in parallel for thumbnails
CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


# --------------------------------------------------------------------------- #
# Inputs
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class ReportInputs:
    """The stage folders a report reads; any may be ``None`` (its sections say so).

    Attributes:
      embeddings: embed output (``img_emb/``, ``metadata/``, ``config.json`` with the shard list).
      dedup: dedup output (``groups/``, ``summary.json``, ``rejects/``).
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


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #
def _e(value: Any) -> str:
    """Escape untrusted text for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _digest(text: str, n: int = 32) -> str:
    """Hex digest used for file names and anchors derived from untrusted text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:n]


def group_anchor(group_id: str) -> str:
    """The HTML id of a group's card in the gallery (a hash: ids are untrusted)."""
    return "group-" + _digest(group_id, 16)


def thumb_name(key: str) -> str:
    """Relative path of a key's thumbnail inside the report folder (hashed, never the key)."""
    return f"{THUMBS_DIR}/{_digest(key)}.jpg"


def _cut(text: str | None, n: int = CAPTION_CHARS) -> str:
    if text is None:
        return ""
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _fmt(value: Any) -> str:
    """Numbers for tables: ints with separators, floats to 3 significant digits."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "\u2013"
        if math.isinf(v):
            return "\u221e" if v > 0 else "-\u221e"
        return f"{v:.3g}"
    return str(value)


def _pct(value: Any) -> str:
    return "\u2013" if value is None else f"{100 * float(value):.2f}%"


def _fs(path: str):
    return fsspec.core.url_to_fs(path)


def _read_each(path: str, columns: list[str] | None = None, filters=None) -> Iterator[pa.Table]:
    """The tables of a Parquet file or of each ``*.parquet`` file in a folder (nothing when missing).

    Only the requested columns that exist are read (LAION metadata may lack
    ``key`` or ``shard``); folders contribute their ``*.parquet`` files only, so
    temporary files of an interrupted write are ignored. Memory: one file.
    """
    fs, p = _fs(path)
    if not fs.exists(p):
        return
    files = sorted(f for f in fs.ls(p, detail=False) if f.endswith(".parquet")) if fs.isdir(p) else [p]
    for f in files:
        with fs.open(f, "rb") as fh:
            names = pq.ParquetFile(fh).schema_arrow.names
            cols = None if columns is None else [c for c in columns if c in names]
            fh.seek(0)
            yield pq.read_table(fh, columns=cols, filters=filters)


def _read(path: str, columns: list[str] | None = None, filters=None) -> pa.Table | None:
    """:func:`_read_each` as one table; ``None`` when the path is missing or holds no Parquet file."""
    tables = list(_read_each(path, columns, filters))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="permissive")


def _read_json(path: str) -> dict | None:
    if not layout.exists(path):
        return None
    obj = layout.read_json(path)
    return obj if isinstance(obj, dict) else {"value": obj}


def _column(table: pa.Table | None, name: str) -> list:
    if table is None or name not in table.column_names:
        return [] if table is None else [None] * table.num_rows
    return table.column(name).to_pylist()


# --------------------------------------------------------------------------- #
# Data gathered for the page
# --------------------------------------------------------------------------- #
@dataclass
class _Row:
    """One embedding row the page shows."""

    key: str
    caption: str | None
    shard: str | None
    part: str
    index: int


@dataclass
class _Group:
    group_id: str
    size: int
    representative: str
    members: list[str]                 # representative first, at most max_members
    cosine: dict[str, float] = field(default_factory=dict)


@dataclass
class _Data:
    """Everything read from the stage folders, limited to what the page shows."""

    stage_json: dict[str, dict[str, dict]] = field(default_factory=dict)   # stage -> {"config": .., "summary": ..}
    rejects: list[tuple[str, str, int]] = field(default_factory=list)     # (stage, reason, count)
    rows_embedded: int | None = None
    size_hist: dict[int, int] = field(default_factory=dict)                # group size -> groups
    top_groups: list[_Group] = field(default_factory=list)
    extra_groups: list[_Group] = field(default_factory=list)
    groups_total: int = 0
    words: list[dict] = field(default_factory=list)
    words_all: pa.Table | None = None
    objects: list[dict] = field(default_factory=list)
    object_examples: list[list[str]] = field(default_factory=list)
    prompts: list[dict] = field(default_factory=list)
    prompt_scores: pa.Table | None = None
    extractions: list[dict] = field(default_factory=list)
    side_summary: dict | None = None
    grids: list[tuple[str, str]] = field(default_factory=list)             # (name, report-relative path)
    generations: dict[str, str] = field(default_factory=dict)              # generation_id -> relative path
    rows: dict[str, _Row] = field(default_factory=dict)
    thumbs: dict[str, str] = field(default_factory=dict)                   # key -> relative path
    thumb_notes: list[str] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)                    # plot name -> relative path


def _stage_jsons(inputs: ReportInputs) -> dict[str, dict[str, dict]]:
    out = {}
    for stage, root in inputs.as_dict().items():
        if root is None:
            continue
        found = {}
        for name in ("config", "summary", "stats"):
            obj = _read_json(layout.join(root, f"{name}.json"))
            if obj is not None:
                found[name] = obj
        out[stage] = found
    return out


def _reject_counts(inputs: ReportInputs) -> list[tuple[str, str, int]]:
    """(stage, reason up to its first ':', count) over every stage's ``rejects/``."""
    out = []
    for stage, root in inputs.as_dict().items():
        if root is None:
            continue
        counts: Counter = Counter()
        for table in _read_each(layout.join(root, "rejects"), ["reason"]):
            if "reason" not in table.column_names:
                continue
            for item in pc.value_counts(table.column("reason")).to_pylist():
                reason = item["values"] or "unknown"
                counts[reason.split(":", 1)[0].strip() or "unknown"] += int(item["counts"])
        out += [(stage, reason, n) for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return out


def _groups_folder(dedup: str, scratch: str) -> str:
    """The folder of group rows to read: ``groups/``, or for an incremental dedup output the state of its whole
    run chain (its own ``groups/`` holds only the increment's new parts), written once under ``scratch``."""
    from models.storage import run_chain

    manifest = layout.join(dedup, run_chain.MANIFEST)
    if not layout.exists(manifest) or len(run_chain.read_chain(dedup)) == 1:
        return layout.join(dedup, "groups")
    folder = os.path.join(scratch, "_chain_state")
    layout.write_parquet(os.path.join(folder, "groups.parquet"), run_chain.load_groups(dedup, run_chain.STATE_COLUMNS))
    return folder


def _groups(dedup: str, summary: dict | None, max_groups: int, max_members: int,
            referenced: Iterable[str], scratch: str) -> tuple[list[_Group], list[_Group], dict[int, int], int]:
    """Top groups by size, referenced groups not among them, the size histogram, and the number of duplicate groups.

    Two passes over ``groups/``, one part file in memory at a time: the distinct
    ``(group_id, group_size)`` of rows with ``group_size > 1``, then the rows of
    the groups shown (``key``, ``is_representative``, ``representative_key``).
    """
    root = _groups_folder(dedup, scratch)
    if not layout.exists(root):
        raise FileNotFoundError(f"{dedup!r} has no groups/ folder (not a dedup output?)")
    distinct = [t.group_by(["group_id", "group_size"]).aggregate([])
                for t in _read_each(root, ["group_id", "group_size"], filters=[("group_size", ">", 1)])]
    per_group = (pa.concat_tables(distinct).group_by("group_id").aggregate([("group_size", "max")])
                 .sort_by([("group_size_max", "descending"), ("group_id", "ascending")])) if distinct else None
    ids = per_group.column("group_id").to_pylist() if per_group is not None else []
    sizes = per_group.column("group_size_max").to_pylist() if per_group is not None else []
    hist = Counter(int(s) for s in sizes)
    singletons = None
    if summary and isinstance(summary.get("groups"), int) and isinstance(summary.get("duplicate_groups"), int):
        singletons = summary["groups"] - summary["duplicate_groups"]
    else:
        singletons = sum(int(pc.sum(pc.equal(t.column("group_size"), 1)).as_py() or 0) for t in _read_each(root, ["group_size"]))
    if singletons:
        hist[1] = singletons
    top_ids = ids[:max_groups]
    size_of = dict(zip(ids, sizes))
    extra_ids = sorted({g for g in referenced if g in size_of and g not in set(top_ids)}, key=lambda g: (-size_of[g], g))
    wanted = top_ids + extra_ids
    reps: dict[str, str] = {}
    keys: dict[str, list[str]] = defaultdict(list)
    if wanted:
        cols = ["key", "group_id", "is_representative", "representative_key"]
        for t in _read_each(root, cols, filters=[("group_id", "in", wanted)]):
            for key, gid, is_rep, rep_key in zip(*(t.column(c).to_pylist() for c in cols)):
                if is_rep:
                    reps[gid] = key
                reps.setdefault(gid, rep_key or key)
                keys[gid].append(key)
            for gid in list(keys):  # bounded: the max_members smallest keys per group
                keys[gid] = sorted(set(keys[gid]))[: max_members + 1]

    def make(gid: str) -> _Group:
        rep = reps[gid]
        return _Group(gid, int(size_of[gid]), rep, ([rep] + [k for k in keys[gid] if k != rep])[:max_members])

    return [make(g) for g in top_ids], [make(g) for g in extra_ids], dict(sorted(hist.items())), len(ids)


def _keyword_regex(keyword: str) -> str | None:
    """RE2 pattern: every token of a (lemmatised) keyword as a word prefix, in order.

    Lemmas are prefixes of most surface forms (``paint`` / ``painting``), so
    this finds the captions the mine stage counted for the keyword, bar
    irregular forms (``mouse`` / ``mice``). Word boundaries use Unicode
    letter/number classes (RE2's ``\\b`` is ASCII only).
    """
    tokens = [t for t in re.split(r"[\W_]+", keyword) if t]
    if not tokens:
        return None
    word, sep = r"[\pL\pN]", r"[^\pL\pN]"
    return rf"(?:^|{sep})" + rf"{word}*{sep}+".join(re.escape(t) for t in tokens)


def _scan_metadata(embeddings: str, wanted: set[str], queries: list[tuple[str, set[str]]],
                   per_query: int) -> tuple[dict[str, _Row], list[list[str]]]:
    """One pass over the metadata parts.

    Returns the rows of ``wanted`` keys, and per query ``(keyword, tagged keys)``
    up to ``per_query`` keys whose caption contains the keyword and which are tagged.
    Memory: one part's ``key``/``caption``/``shard`` columns at a time.
    """
    folder = layout.EmbeddingFolder(embeddings)
    found: dict[str, _Row] = {}
    examples: list[list[str]] = [[] for _ in queries]
    wanted_arr = pa.array(sorted(wanted), pa.string())
    query_sets = [(_keyword_regex(kw), pa.array(sorted(tagged), pa.string())) for kw, tagged in queries]
    for part in folder.parts():
        meta = _read(folder.metadata(part), ["key", "caption", "shard"])
        n = meta.num_rows
        keys = meta.column("key").cast(pa.string()) if "key" in meta.column_names else pa.array([f"{part}:{i}" for i in range(n)])
        captions = meta.column("caption").cast(pa.string()) if "caption" in meta.column_names else pa.nulls(n, pa.string())
        shards = meta.column("shard").to_pylist() if "shard" in meta.column_names else [None] * n
        picked = set(np.flatnonzero(pc.fill_null(pc.is_in(keys, value_set=wanted_arr), False).to_numpy(zero_copy_only=False)).tolist())
        for q, (pattern, tagged_arr) in enumerate(query_sets):
            if pattern is None or len(examples[q]) >= per_query or len(tagged_arr) == 0:
                continue
            mask = pc.and_(pc.is_in(keys, value_set=tagged_arr), pc.match_substring_regex(captions, pattern, ignore_case=True))
            for i in np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[: per_query - len(examples[q])]:
                examples[q].append(keys[int(i)].as_py())
                picked.add(int(i))
        for i in sorted(picked):
            key = keys[i].as_py()
            if key is not None and key not in found:
                found[key] = _Row(key, captions[i].as_py(), shards[i], part, i)
    return found, examples


def _count_rows(embeddings: str) -> int:
    """Metadata rows of the complete parts, from the Parquet footers (no data read)."""
    folder = layout.EmbeddingFolder(embeddings)
    total = 0
    for part in folder.parts():
        fs, p = _fs(folder.metadata(part))
        with fs.open(p, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


def _cosines(embeddings: str, rows: dict[str, _Row], groups: list[_Group]) -> None:
    """Fill each group's ``cosine``: member . representative (float32 of the stored float16 rows)."""
    folder = layout.EmbeddingFolder(embeddings)
    need: dict[str, set[int]] = defaultdict(set)
    for g in groups:
        for k in g.members:
            if k in rows:
                need[rows[k].part].add(rows[k].index)
    vecs: dict[tuple[str, int], np.ndarray] = {}
    for part, idx in need.items():
        order = np.array(sorted(idx), dtype=np.int64)
        x = np.asarray(layout.read_npy(folder.img_emb(part))[order], dtype=np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        vecs.update({(part, int(i)): x[j] for j, i in enumerate(order)})
    for g in groups:
        rep = rows.get(g.representative)
        if rep is None:
            continue
        r = vecs[(rep.part, rep.index)]
        for k in g.members:
            if k in rows:
                g.cosine[k] = float(vecs[(rows[k].part, rows[k].index)] @ r)


def _make_thumbs(embeddings: str, rows: dict[str, _Row], keys: set[str], out_dir: str,
                 size: int) -> tuple[dict[str, str], list[str]]:
    """Re-read ``keys`` from their shards, decode safely, write ``thumbs/<hash>.jpg``.

    Returns ({key: relative path}, notes about what could not be shown).
    """
    from models.storage.imaging import ImageRejected, decode_image
    from models.storage.shards import Sample, ShardRef, read_shard

    config = _read_json(layout.EmbeddingFolder(embeddings).config) or {}
    refs = {str(s["shard_id"]): ShardRef(s["path"], s["format"], str(s["shard_id"]))
            for s in config.get("shards", []) if isinstance(s, dict) and {"path", "format", "shard_id"} <= set(s)}
    if not refs:
        return {}, [f"no thumbnails: {embeddings}/config.json lists no shards (embeddings not made by dupmine embed)"]
    by_shard: dict[str, set[str]] = defaultdict(set)
    notes = []
    for k in keys:
        row = rows.get(k)
        if row is not None and row.shard in refs:
            by_shard[row.shard].add(k)
    unknown = sorted({rows[k].shard for k in keys if k in rows and rows[k].shard not in refs}, key=str)
    if unknown:
        notes.append(f"no thumbnails for rows of shards not listed in config.json: {', '.join(map(str, unknown[:10]))}")
    os.makedirs(os.path.join(out_dir, THUMBS_DIR), exist_ok=True)

    def one_shard(shard_id: str) -> tuple[dict[str, str], list[str]]:
        todo, done, bad = by_shard[shard_id], {}, []
        try:
            for item in read_shard(refs[shard_id]):
                if not isinstance(item, Sample) or item.key not in todo or item.key in done:
                    continue
                rel = thumb_name(item.key)
                try:
                    img = decode_image(item.image, target_size=size).image
                    img.thumbnail((size, size))
                    img.save(os.path.join(out_dir, rel), format="JPEG", quality=85)
                    done[item.key] = rel
                except ImageRejected as exc:
                    done[item.key] = ""
                    bad.append(exc.reason)
                if len(done) == len(todo):
                    break
        except (OSError, ValueError, EOFError) as exc:
            return {k: v for k, v in done.items() if v}, [f"shard {shard_id}: {type(exc).__name__}: {exc}"]
        missing = len(todo) - len(done)
        notes_ = [f"shard {shard_id}: {missing} shown row(s) not found in the shard"] if missing else []
        if bad:
            notes_.append(f"shard {shard_id}: {len(bad)} image(s) not decodable ({', '.join(sorted(set(bad)))})")
        return {k: v for k, v in done.items() if v}, notes_

    thumbs: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(SHARD_THREADS, len(by_shard)))) as pool:
        for got, n in pool.map(one_shard, sorted(by_shard)):
            thumbs.update(got)
            notes += n
    return thumbs, notes


def _list_pngs(root: str, sub: str) -> dict[str, str]:
    """{file stem: fs path} of the ``*.png`` files directly inside ``root/sub``."""
    fs, p = _fs(layout.join(root, sub))
    if not fs.isdir(p):
        return {}
    out = {}
    for f in sorted(fs.ls(p, detail=False)):
        name = f.rsplit("/", 1)[-1]
        if name.lower().endswith(".png"):
            out[name[: -len(".png")]] = f
    return out


def _copy_png(root: str, src: str, out_dir: str, rel: str) -> bool:
    """Copy one PNG (checked by its signature) from the score folder into the report."""
    fs, _ = _fs(root)
    with fs.open(src, "rb") as f:
        data = f.read()
    if not data.startswith(PNG_SIGNATURE):
        return False
    dest = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(dest, "wb") as f:
        f.write(data)
    return True


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #
def _figure():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is in the test and report extras
        raise ImportError("the report's plots need matplotlib: pip install 'dupmine[report]'") from exc
    fig = Figure(figsize=(5.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plain(text: str) -> str:
    """Text for matplotlib with mathtext switched off ($ escaped)."""
    return str(text).replace("$", r"\$")


def _save(fig, out_dir: str, name: str) -> str:
    rel = f"{PLOTS_DIR}/{name}.png"
    os.makedirs(os.path.join(out_dir, PLOTS_DIR), exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, rel), format="png")
    return rel


def _plain_log_ticks(ax) -> None:
    """Log axes labelled 1, 2, 5, 10, 20, ... instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def _plot_group_sizes(hist: dict[int, int], out_dir: str) -> str | None:
    if not hist:
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    sizes = np.array(sorted(hist), dtype=float)
    counts = np.array([hist[int(s)] for s in sizes], dtype=float)
    ax.loglog(sizes, counts, "o", color="#1f6feb")
    _plain_log_ticks(ax)
    ax.set_xlabel("group size (images)")
    ax.set_ylabel("number of groups")
    ax.set_title("Group-size distribution")
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, out_dir, "group_sizes")


def _plot_keywords(table: pa.Table | None, out_dir: str) -> str | None:
    if table is None or table.num_rows == 0 or not {"n", "lift"} <= set(table.column_names):
        return None
    n = np.asarray(pc.fill_null(table.column("n").cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=float)
    lift = np.asarray(pc.fill_null(table.column("lift").cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=float)
    flagged = np.asarray(_column(table, "flagged"), dtype=object) == True  # noqa: E712 (nulls are not flagged)
    ok = np.isfinite(n) & np.isfinite(lift) & (n > 0) & (lift > 0)
    if not ok.any():
        return None
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(n[ok & ~flagged], lift[ok & ~flagged], s=10, alpha=0.5, color="#888888", label="tested")
    if (ok & flagged).any():
        ax.scatter(n[ok & flagged], lift[ok & flagged], s=18, color="#d1242f", label="flagged")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xlabel("support n (captions with the keyword)")
    ax.set_ylabel("lift P(G|w) / P(G)")
    ax.set_title("Keywords: lift vs support")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out_dir, "keyword_lift_support")


def _plot_scores(scores: pa.Table | None, out_dir: str) -> dict[str, str]:
    if scores is None or scores.num_rows == 0 or not {"check", "statistic"} <= set(scores.column_names):
        return {}
    by_check: dict[str, list[tuple[float | None, float | None]]] = defaultdict(list)
    for check, stat, thr in zip(_column(scores, "check"), _column(scores, "statistic"), _column(scores, "threshold")):
        by_check[str(check)].append((stat, thr))
    out = {}
    for check, values in sorted(by_check.items()):
        stats = np.array([float(s) for s, _ in values if s is not None], dtype=float)
        stats = stats[np.isfinite(stats)]
        if stats.size == 0:
            continue
        fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(stats, bins=min(30, max(5, stats.size)), color="#1f6feb", alpha=0.8, edgecolor="white")
        thresholds = sorted({float(t) for _, t in values if t is not None and math.isfinite(float(t))})
        for t in thresholds[:3]:
            ax.axvline(t, color="#d1242f", linestyle="--", label=f"threshold {t:.3g}")
        if thresholds:
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel("statistic")
        ax.set_ylabel("prompts")
        ax.set_title(_plain(f"Score check: {check}"))
        out[check] = _save(fig, out_dir, f"score_{re.sub(r'[^A-Za-z0-9_-]', '_', check)[:40]}_{_digest(check, 8)}")
    return out


# --------------------------------------------------------------------------- #
# HTML
# --------------------------------------------------------------------------- #
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:12px 24px}header h1{margin:0;font-size:22px}
nav a{color:#c9d1d9;margin-right:14px;font-size:14px}
main{padding:8px 24px 40px}section{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:16px 0;padding:8px 16px 16px}
h2{border-bottom:1px solid #d0d7de;padding-bottom:4px}h3{margin:14px 0 6px;font-size:16px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}th,td{border:1px solid #d0d7de;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#57606a;font-style:italic}.flagged{color:#d1242f;font-weight:600}
.gallery{display:flex;flex-wrap:wrap;gap:8px}.group{border:1px solid #d0d7de;border-radius:6px;padding:6px 10px;margin:10px 0}
figure{margin:0;width:var(--thumb);font-size:11px}figure img,.noimg{width:var(--thumb);height:var(--thumb);object-fit:contain;background:#eaeef2;display:block}
.noimg{display:flex;align-items:center;justify-content:center;color:#57606a}
.key{font-family:ui-monospace,monospace;color:#57606a;overflow-wrap:anywhere}.caption{overflow-wrap:anywhere}
.rep{color:#1a7f37;font-weight:600}.plots img{max-width:100%;margin:4px}
.pair{display:flex;gap:8px}.examples{margin:0;padding-left:16px}pre{white-space:pre-wrap;word-break:break-word;font-size:12px}
"""


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An HTML table; ``rows`` cells are already-escaped HTML fragments."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _kv(obj: Any, depth: int = 0, max_items: int = 20) -> str:
    """A nested dict as a two-column table (lists longer than ``max_items`` summarised).

    A dict of flat dicts with the same keys (``{"low": {"AMS": .., "UMS": ..}, ...}``)
    becomes one matrix table: a row per outer key, a column per inner key.
    """
    if isinstance(obj, dict):
        if not obj:
            return "<span class=\"note\">(empty)</span>"
        inner = list(obj.values())
        if (len(obj) > 1 and all(isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()) for v in inner)
                and len({tuple(v) for v in inner}) == 1 and len(inner[0]) <= 12):
            cols = list(inner[0])
            return _table(["", *map(str, cols)], [[_e(k), *(_e(_fmt(v[c])) for c in cols)] for k, v in obj.items()],
                          set(range(1, len(cols) + 1)))
        rows = [[_e(k), _kv(v, depth + 1, max_items)] for k, v in obj.items()]
        return _table(["name", "value"], rows)
    if isinstance(obj, list):
        if len(obj) > max_items:
            return _e(json.dumps(obj[:max_items], default=str)[:400]) + f" <span class=\"note\">\u2026 {len(obj):,} items</span>"
        if all(isinstance(v, dict) for v in obj) and obj and depth < 3:
            return "".join(_kv(v, depth + 1, max_items) for v in obj)
        return _e(json.dumps(obj, default=str)[:400])
    if isinstance(obj, float):
        return _e(_fmt(obj))
    return _e(obj if obj is not None else "null")


def _evidence(text: str | None) -> str:
    """The JSON evidence of a flagged prompt as ``name: value`` lines (raw text when it is not a JSON object)."""
    try:
        obj = json.loads(text) if text else None
    except (TypeError, ValueError):
        obj = None
    if not isinstance(obj, dict):
        return f"<pre>{_e(text)}</pre>" if text else "\u2013"
    lines = "".join(f"<li>{_e(k)}: {_e(_fmt(v) if _is_scalar(v) else json.dumps(v, default=str)[:200])}</li>" for k, v in obj.items())
    return f'<ul class="examples">{lines}</ul>'


def _img(rel: str | None, alt: str, size: int, title: str = "") -> str:
    if not rel:
        return f'<div class="noimg" title="{_e(title or "image not available")}">no image</div>'
    return f'<img src="{_e(rel)}" alt="{_e(alt)}" title="{_e(title)}" width="{size}" height="{size}">'


def _group_link(gid: str | None, rendered: set[str]) -> str:
    if gid is None:
        return "\u2013"
    if gid in rendered:
        return f'<a href="#{group_anchor(gid)}" class="key">{_e(gid)}</a>'
    return f'<span class="key" title="not a duplicate group in the dedup output">{_e(gid)}</span>'


class _Page:
    """Renders the gathered :class:`_Data` as HTML fragments."""

    def __init__(self, data: _Data, inputs: ReportInputs, size: int, max_members: int, max_rows: int):
        self.d, self.inputs, self.size = data, inputs, size
        self.max_members, self.max_rows = max_members, max_rows
        self.rendered = {g.group_id for g in data.top_groups + data.extra_groups}

    def caption_of(self, key: str) -> str | None:
        row = self.d.rows.get(key)
        return row.caption if row else None

    def figure(self, key: str, extra: str = "") -> str:
        cap = self.caption_of(key)
        thumb = _img(self.d.thumbs.get(key), f"image {key}", self.size, cap or "")
        return (f'<figure>{thumb}<figcaption><div class="key">{_e(key)}</div>{extra}'
                f'<div class="caption" title="{_e(_cut(cap, 2000))}">{_e(_cut(cap))}</div></figcaption></figure>')

    def summary(self) -> str:
        sj = self.d.stage_json
        emb_stats = sj.get("embeddings", {}).get("stats", {})
        dd = sj.get("dedup", {}).get("summary", {})
        mn = sj.get("mine", {}).get("summary", {})
        rows_embedded = emb_stats.get("rows", self.d.rows_embedded)
        rejected = sum(n for _, _, n in self.d.rejects)
        items = [
            ("rows embedded", _fmt(rows_embedded)),
            ("rows in (embedded + embed rejects)", _fmt(None if rows_embedded is None else rows_embedded + emb_stats.get("rejects", 0))),
            ("rejected rows, all stages", _fmt(rejected)),
            ("duplicate groups", _fmt(dd.get("duplicate_groups", self.d.groups_total if self.inputs.dedup else None))),
            ("rows in duplicate groups", _fmt(dd.get("rows_in_duplicate_groups"))),
            ("rows to drop (non-representatives)", _fmt(dd.get("rows_dropped"))),
            ("duplicate fraction (rows to drop / rows)", _pct(dd.get("duplicate_fraction"))),
            ("keywords tested / word triggers", f"{_fmt(mn.get('keywords_tested'))} / {_fmt(mn.get('word_triggers'))}"),
            ("object pairs tested / object triggers", f"{_fmt(mn.get('object_pairs_tested'))} / {_fmt(mn.get('object_triggers'))}"),
            ("flagged prompts", _fmt(mn.get("flagged_prompts"))),
            ("prompts scored", _fmt(len(set(_column(self.d.prompt_scores, "prompt"))) if self.d.prompt_scores is not None else None)),
        ]
        parts = ['<section id="summary"><h2>Summary</h2>', _table(["", "value"], [[_e(k), v] for k, v in items], {1})]
        inputs = [[_e(k), f'<span class="key">{_e(v)}</span>' if v else '<span class="note">not given</span>']
                  for k, v in self.inputs.as_dict().items()]
        parts += ["<h3>Inputs</h3>", _table(["stage", "folder"], inputs)]
        parts.append("<h3>Rejects by reason</h3>")
        if self.d.rejects:
            parts.append(_table(["stage", "reason", "rows"], [[_e(s), _e(r), _fmt(n)] for s, r, n in self.d.rejects], {2}))
        else:
            parts.append('<p class="note">No rejected rows.</p>')
        parts.append("</section>")
        return "".join(parts)

    def plots(self) -> str:
        parts = ['<section id="plots"><h2>Plots</h2><div class="plots">']
        titles = {"group_sizes": "group-size distribution (log-log)", "keyword_lift_support": "keyword lift vs support"}
        for name, rel in self.d.plots.items():
            title = titles.get(name, f"score histogram: {name.removeprefix('score:')}")
            parts.append(f'<img src="{_e(rel)}" alt="{_e(title)}" title="{_e(title)}">')
        if not self.d.plots:
            parts.append('<p class="note">No plots: no dedup, mine or score outputs with data.</p>')
        parts.append("</div></section>")
        return "".join(parts)

    def group_card(self, g: _Group, rank: int | None) -> str:
        figs = []
        for k in g.members:
            if k == g.representative:
                extra = '<div class="rep">representative</div>'
            elif k in g.cosine:
                extra = f"<div>cosine to rep. {g.cosine[k]:.4f}</div>"
            else:
                extra = ""
            figs.append(self.figure(k, extra))
        more = g.size - len(g.members)
        title = f"Group {rank}" if rank is not None else "Group"
        return (f'<div class="group" id="{group_anchor(g.group_id)}" data-group-size="{g.size}">'
                f'<h3>{title}: {g.size:,} images</h3><p>group id <span class="key">{_e(g.group_id)}</span>, '
                f'representative <span class="key">{_e(g.representative)}</span>'
                + (f", {more:,} more not shown" if more > 0 else "") + "</p>"
                f'<div class="gallery">{"".join(figs)}</div></div>')

    def groups(self) -> str:
        parts = ['<section id="groups"><h2>Duplicate groups</h2>']
        if self.inputs.dedup is None:
            parts.append('<p class="note">No dedup output given: no duplicate groups to show.</p></section>')
            return "".join(parts)
        if not self.d.top_groups:
            parts.append('<p class="note">No duplicate groups: every row is a singleton.</p></section>')
            return "".join(parts)
        parts.append(f"<p>The {len(self.d.top_groups):,} largest of {self.d.groups_total:,} duplicate groups, largest first; "
                     f"at most {self.max_members} members each (representative first, then by key). Cosines are between "
                     "stored image embeddings.</p>")
        parts.append('<div id="top-groups">')
        parts += [self.group_card(g, i + 1) for i, g in enumerate(self.d.top_groups)]
        parts.append("</div>")
        if self.d.extra_groups:
            parts.append('<h3 id="referenced-groups">Other groups referenced by triggers and prompts</h3>')
            parts += [self.group_card(g, None) for g in self.d.extra_groups]
        parts += [f'<p class="note">{_e(n)}</p>' for n in self.d.thumb_notes]
        parts.append("</section>")
        return "".join(parts)

    def words(self) -> str:
        parts = ['<section id="word-triggers"><h2>Word-level triggers</h2>']
        if self.inputs.mine is None:
            return "".join(parts) + '<p class="note">No mine output given.</p></section>'
        if self.d.words_all is None:
            return "".join(parts) + '<p class="note">The mine output has no keyword_triggers.parquet.</p></section>'
        n_flagged = sum(1 for v in _column(self.d.words_all, "flagged") if v)
        parts.append(f"<p>{self.d.words_all.num_rows:,} keywords tested, {n_flagged:,} flagged (concentration = share of the "
                     f"keyword's captions in its top duplicate group; lift = P(G|w)/P(G)). Showing {len(self.d.words):,}, "
                     "flagged first, then by rank.</p>")
        rows = []
        for r in self.d.words:
            examples = "".join(f'<li><span class="caption">{_e(_cut(self.caption_of(k)))}</span> <span class="key">{_e(k)}</span></li>'
                               for k in (r.get("example_keys") or [])[:EXAMPLE_CAPTIONS])
            rows.append([_fmt(r.get("rank")), f'<span class="caption">{_e(r.get("keyword"))}</span>',
                         '<span class="flagged">yes</span>' if r.get("flagged") else "no", _fmt(r.get("n")),
                         _fmt(r.get("n_in_groups")), _fmt(r.get("top_group_share")), _fmt(r.get("lift")),
                         _fmt(r.get("q_value")), _group_link(r.get("top_group_id"), self.rendered),
                         f'<ul class="examples">{examples}</ul>' if examples else "\u2013"])
        if rows:
            parts.append(_table(["rank", "keyword", "flagged", "n", "n in groups", "concentration", "lift", "q-value",
                                 "top group", "example captions"], rows, {0, 3, 4, 5, 6, 7}))
        parts.append("</section>")
        return "".join(parts)

    def objects(self) -> str:
        parts = ['<section id="object-triggers"><h2>Object-level triggers</h2>']
        if self.inputs.mine is None:
            return "".join(parts) + '<p class="note">No mine output given.</p></section>'
        if not self.d.objects:
            tagger = self.d.stage_json.get("mine", {}).get("config", {}).get("config", {}).get("tagger")
            extra = f" (the mine stage ran with --tagger {tagger})" if tagger == "none" else ""
            return "".join(parts) + f'<p class="note">No keyword-object pairs were tested{_e(extra)}.</p></section>'
        parts.append("<p>Keyword w \u2192 object o that images with w keep showing while the caption does not name it. "
                     "Examples: rows tagged with o whose caption contains w.</p>")
        rows = []
        for r, ex in zip(self.d.objects, self.d.object_examples):
            figs = "".join(self.figure(k) for k in ex)
            rows.append([_fmt(r.get("rank")), f'<span class="caption">{_e(r.get("keyword"))}</span> \u2192 '
                         f'<span class="caption">{_e(r.get("object"))}</span>',
                         '<span class="flagged">yes</span>' if r.get("flagged") else "no", _fmt(r.get("n_w")),
                         _fmt(r.get("n_wo")), _fmt(r.get("p_o_given_w")), _fmt(r.get("p_o_given_not_w")), _fmt(r.get("lift")),
                         _fmt(r.get("absent_fraction")), _fmt(r.get("q_value")),
                         f'<div class="gallery">{figs}</div>' if figs else '<span class="note">none found</span>'])
        parts.append(_table(["rank", "keyword \u2192 object", "flagged", "n(w)", "n(w,o)", "P(o|w)", "P(o|not w)", "lift",
                             "absent fraction", "q-value", "example images"], rows, {0, 3, 4, 5, 6, 7, 8, 9}))
        parts.append("</section>")
        return "".join(parts)

    def score_rows_for(self, prompt: str, by_prompt: dict[str, list[dict]]) -> str:
        checks = by_prompt.get(prompt)
        if not checks:
            return '<span class="note">not scored</span>'
        return _table(["check", "statistic", "threshold", "decision", "n", "seed", "cost (evals)"],
                      [[_e(c.get("check")), _fmt(c.get("statistic")), _fmt(c.get("threshold")), _e(_fmt(c.get("decision"))),
                        _fmt(c.get("n_samples")), _fmt(c.get("seed")), _fmt(c.get("cost_evals"))] for c in checks], {1, 2, 4, 5, 6})

    def prompts(self) -> str:
        parts = ['<section id="prompts"><h2>Flagged prompts and scores</h2>']
        score = self.inputs.score
        if score is None:
            parts.append('<p class="note" id="score-missing">No score outputs: the score folder was not given or does not '
                         "exist, so the prompts below are unscored. Run <code>dupmine score</code> to add them.</p>")
        by_prompt: dict[str, list[dict]] = defaultdict(list)
        if self.d.prompt_scores is not None:
            for r in self.d.prompt_scores.to_pylist():
                by_prompt[str(r.get("prompt"))].append(r)
        elif score is not None:
            parts.append('<p class="note" id="score-missing">The score folder has no prompt_scores.parquet.</p>')
        if self.inputs.mine is None:
            parts.append('<p class="note">No mine output given: no flagged prompts.</p>')
        elif not self.d.prompts:
            parts.append('<p class="note">No flagged prompts.</p>')
        shown = set()
        rows = []
        for r in self.d.prompts:
            shown.add(str(r.get("prompt")))
            groups = " ".join(_group_link(g, self.rendered) for g in (r.get("group_ids") or [])) or "\u2013"
            trigger = " \u2192 ".join(_e(v) for v in (r.get("keyword"), r.get("object")) if v) or "\u2013"
            rows.append([_fmt(r.get("rank")), f'<span class="caption">{_e(r.get("prompt"))}</span>', _e(r.get("kind")), trigger,
                         _fmt(r.get("support")), groups, _evidence(r.get("evidence")),
                         self.score_rows_for(str(r.get("prompt")), by_prompt) if score is not None else "\u2013"])
        extra = [p for p in by_prompt if p not in shown]
        if len(extra) > self.max_rows:
            parts.append(f'<p class="note">{len(extra) - self.max_rows:,} more scored prompts not shown.</p>')
        for p in extra[: self.max_rows]:
            rows.append(["\u2013", f'<span class="caption">{_e(p)}</span>', "scored only", "\u2013", "\u2013", "\u2013", "\u2013",
                         self.score_rows_for(p, by_prompt)])
        if rows:
            parts.append(_table(["rank", "prompt", "kind", "trigger", "support", "groups", "evidence", "scores"], rows, {0, 4}))
        if score is not None:
            parts.append(self.extractions())
            parts.append(self.side())
            parts.append(self.grids())
        parts.append("</section>")
        return "".join(parts)

    def extractions(self) -> str:
        parts = ['<h3 id="extractions">Extractions</h3>']
        if not self.d.extractions:
            return "".join(parts) + '<p class="note">No extractions.parquet (or no extractions) in the score folder.</p>'
        parts.append("<p>Generated image (left) next to its best-matching training image (right), most similar first.</p>")
        rows = []
        for r in self.d.extractions:
            gen_id, key = str(r.get("generation_id")), r.get("matched_key")
            gen = _img(self.d.generations.get(gen_id), f"generation {gen_id}", self.size, "generated image not saved")
            pair = (f'<div class="pair"><figure>{gen}<figcaption><div class="key">{_e(gen_id)}</div></figcaption></figure>'
                    + (self.figure(str(key)) if key is not None else "") + "</div>")
            rows.append([pair, f'<span class="caption">{_e(r.get("prompt"))}</span>', _fmt(r.get("similarity")), _e(r.get("band")),
                         _group_link(r.get("group_id"), self.rendered)])
        parts.append(_table(["generated \u2194 training", "prompt", "similarity", "band", "group"], rows, {2}))
        return "".join(parts)

    def side(self) -> str:
        if self.d.side_summary is None:
            return '<h3 id="side">SIDE summary</h3><p class="note">No side_summary.json in the score folder.</p>'
        return '<h3 id="side">SIDE summary (AMS / UMS per band)</h3>' + _kv(self.d.side_summary)

    def grids(self) -> str:
        if not self.d.grids:
            return '<h3 id="grids">Sample grids</h3><p class="note">No grids/*.png in the score folder.</p>'
        figs = "".join(f'<figure style="width:auto"><img src="{_e(rel)}" alt="{_e(name)}" style="width:auto;height:auto;max-width:100%">'
                       f'<figcaption class="key">{_e(name)}</figcaption></figure>' for name, rel in self.d.grids)
        return f'<h3 id="grids">Sample grids</h3><div class="gallery">{figs}</div>'

    def parameters(self) -> str:
        parts = ['<section id="parameters"><h2>Parameters</h2>']
        if not self.d.stage_json:
            parts.append('<p class="note">No stage folders given.</p>')
        for stage, found in self.d.stage_json.items():
            for name, obj in found.items():
                parts.append(f"<details><summary>{_e(stage)}: {_e(name)}.json</summary>{_kv(obj)}</details>")
        parts.append("</section>")
        return "".join(parts)

    def render(self) -> str:
        nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
            ("summary", "Summary"), ("plots", "Plots"), ("groups", "Duplicate groups"), ("word-triggers", "Word triggers"),
            ("object-triggers", "Object triggers"), ("prompts", "Prompts and scores"), ("parameters", "Parameters")))
        body = "".join([self.summary(), self.plots(), self.groups(), self.words(), self.objects(), self.prompts(), self.parameters()])
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f'<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>dupmine report</title><style>:root{{--thumb:{self.size}px}}{STYLE}</style></head>"
                f"<body><header><h1>dupmine report</h1><nav>{nav}</nav></header><main>{body}</main></body></html>\n")


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #
def _gather(inputs: ReportInputs, out_dir: str, max_groups: int, max_members: int, thumb_size: int, max_rows: int) -> _Data:
    d = _Data()
    d.stage_json = _stage_jsons(inputs)
    d.rejects = _reject_counts(inputs)

    referenced: list[str] = []
    if inputs.mine is not None:
        d.words_all = _read(layout.join(inputs.mine, "keyword_triggers.parquet"))
        if d.words_all is not None and d.words_all.num_rows:
            order = [(c, o) for c, o in (("flagged", "descending"), ("rank", "ascending")) if c in d.words_all.column_names]
            d.words = d.words_all.sort_by(order).slice(0, max_rows).to_pylist() if order else d.words_all.slice(0, max_rows).to_pylist()
        objs = _read(layout.join(inputs.mine, "object_triggers.parquet"))
        if objs is not None and objs.num_rows:
            order = [(c, o) for c, o in (("flagged", "descending"), ("rank", "ascending")) if c in objs.column_names]
            d.objects = (objs.sort_by(order) if order else objs).slice(0, max_rows).to_pylist()
        prompts = _read(layout.join(inputs.mine, "flagged_prompts.parquet"))
        if prompts is not None and prompts.num_rows:
            d.prompts = (prompts.sort_by("rank") if "rank" in prompts.column_names else prompts).slice(0, max_rows).to_pylist()
        referenced += [r["top_group_id"] for r in d.words if r.get("top_group_id")]
        referenced += [g for r in d.prompts for g in (r.get("group_ids") or []) if g]

    if inputs.score is not None:
        d.prompt_scores = _read(layout.join(inputs.score, "prompt_scores.parquet"))
        ext = _read(layout.join(inputs.score, "extractions.parquet"))
        if ext is not None and ext.num_rows:
            ext = ext.sort_by([("similarity", "descending")]) if "similarity" in ext.column_names else ext
            d.extractions = ext.slice(0, max_rows).to_pylist()
        d.side_summary = _read_json(layout.join(inputs.score, "side_summary.json"))
        for name, src in list(_list_pngs(inputs.score, "grids").items())[:max_rows]:
            rel = f"{SCORE_DIR}/grids/{_digest(name)}.png"
            if _copy_png(inputs.score, src, out_dir, rel):
                d.grids.append((name, rel))
        gens = _list_pngs(inputs.score, "generations")
        for r in d.extractions:
            gid = str(r.get("generation_id"))
            if gid in gens:
                rel = f"{SCORE_DIR}/generations/{_digest(gid)}.png"
                if _copy_png(inputs.score, gens[gid], out_dir, rel):
                    d.generations[gid] = rel
        referenced += [r["group_id"] for r in d.extractions if r.get("group_id")]

    if inputs.dedup is not None:
        summary = d.stage_json.get("dedup", {}).get("summary")
        d.top_groups, d.extra_groups, d.size_hist, d.groups_total = _groups(inputs.dedup, summary, max_groups, max_members,
                                                                            referenced, out_dir)

    groups = d.top_groups + d.extra_groups
    if inputs.embeddings is not None:
        if "rows" not in d.stage_json.get("embeddings", {}).get("stats", {}):
            d.rows_embedded = _count_rows(inputs.embeddings)
        wanted = {k for g in groups for k in g.members}
        wanted |= {k for r in d.words for k in (r.get("example_keys") or [])[:EXAMPLE_CAPTIONS]}
        wanted |= {str(r["matched_key"]) for r in d.extractions if r.get("matched_key") is not None}
        queries = []
        if d.objects and inputs.mine is not None:
            names = sorted({str(r.get("object")) for r in d.objects})
            tags = _read(layout.join(inputs.mine, "object_tags"), ["key", "object"], filters=[("object", "in", names)])
            tagged: dict[str, set[str]] = defaultdict(set)
            if tags is not None:
                for k, o in zip(tags.column("key").to_pylist(), tags.column("object").to_pylist()):
                    tagged[o].add(k)
            queries = [(str(r.get("keyword") or ""), tagged.get(str(r.get("object")), set())) for r in d.objects]
        d.rows, d.object_examples = _scan_metadata(inputs.embeddings, wanted, queries, max_members)
        if not queries:
            d.object_examples = [[] for _ in d.objects]
        _cosines(inputs.embeddings, d.rows, groups)
        thumb_keys = {k for g in groups for k in g.members} | {k for ex in d.object_examples for k in ex}
        thumb_keys |= {str(r["matched_key"]) for r in d.extractions if r.get("matched_key") is not None}
        d.thumbs, d.thumb_notes = _make_thumbs(inputs.embeddings, d.rows, thumb_keys, out_dir, thumb_size)
    else:
        d.object_examples = [[] for _ in d.objects]
        if groups:
            d.thumb_notes.append("no embeddings folder given: captions, cosines and thumbnails are not available")

    plot = _plot_group_sizes(d.size_hist, out_dir)
    if plot:
        d.plots["group_sizes"] = plot
    plot = _plot_keywords(d.words_all, out_dir)
    if plot:
        d.plots["keyword_lift_support"] = plot
    for check, rel in _plot_scores(d.prompt_scores, out_dir).items():
        d.plots[f"score:{check}"] = rel
    return d


def render_report(inputs: ReportInputs, output_dir: str, max_groups: int = 30, max_members: int = 8,
                  thumb_size: int = 128, max_rows: int = 50) -> str:
    """Write the static report folder and return the path of its ``index.html``.

    Args:
      inputs: the stage folders (local paths or fsspec URLs); ``None`` ones get a note.
      output_dir: local folder to write (created; files of an earlier report are overwritten).
      max_groups: largest duplicate groups shown in the gallery; groups referenced by the
        shown triggers, prompts and extractions are shown as well, after them.
      max_members: images shown per group (and example images per object trigger).
      thumb_size: thumbnail bounding box in pixels.
      max_rows: rows shown per table (word triggers, object triggers, prompts, extractions, grids).

    Returns:
      Path of ``output_dir/index.html``.

    Raises:
      ValueError: a size or count is not positive, or every input is ``None``.
      FileNotFoundError: a given input folder does not exist, or the dedup folder has no ``groups/``.
    """
    for name, value in (("max_groups", max_groups), ("max_members", max_members), ("thumb_size", thumb_size), ("max_rows", max_rows)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    if not any(inputs.as_dict().values()):
        raise ValueError("nothing to report: every input folder (embeddings, dedup, mine, score) is None")
    for name, path in inputs.as_dict().items():
        if path is not None and not layout.exists(path):
            raise FileNotFoundError(f"{name} folder {path!r} does not exist")
    out_dir = os.path.abspath(output_dir)
    os.makedirs(out_dir, exist_ok=True)
    data = _gather(inputs, out_dir, max_groups, max_members, thumb_size, max_rows)
    page = _Page(data, inputs, thumb_size, max_members, max_rows).render()
    index = os.path.join(out_dir, "index.html")
    layout.atomic_write_bytes(index, page.encode("utf-8"))
    log.info("report: %d groups, %d thumbnails, %d plots -> %s", len(data.top_groups) + len(data.extra_groups),
             len(data.thumbs), len(data.plots), index)
    return index
