"""The HTML page: Jinja2 templates (package data under ``templates/``) filled from a :class:`ReportData`.

Everything from the dataset (captions, keys, keywords, object names,
prompts, group ids, reasons, file names) is untrusted web text. Autoescape
is on for every template; :func:`_escape_output` finalizes each ``{{ }}``
value with :func:`html.escape` (``quote=True``), so attribute values are safe
too and entities are spelled as the stdlib spells them (``&quot;``,
``&#x27;``). The page has no JavaScript, and a ``Content-Security-Policy``
meta tag forbids scripts, remote images and remote styles as a second line of
defence. Templates are loaded relative to this module with
:mod:`importlib.resources`, so the source tree and an installed package both work.
"""
from __future__ import annotations

import enum
import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

import jinja2
import numpy as np
from markupsafe import Markup

from models.report.config import ReportConfig, ReportInputs
from models.report.gather import EXAMPLE_CAPTIONS, ReportData
from models.report.reading import column
from models.report.rows import FlaggedPrompt, PromptScore
from models.storage.folders.report import digest

CSP = "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
CAPTION_CHARS = 300        # captions are cut (before escaping) to this many characters
KV_MAX_ITEMS = 20          # lists longer than this in JSON tables are summarised
PLOT_TITLES = {"group_sizes": "group-size distribution (log-log)", "keyword_lift_support": "keyword lift vs support"}


def group_anchor(group_id: str) -> str:
    """The HTML id of a group's card in the gallery (a hash: ids are untrusted)."""
    return "group-" + digest(group_id, 16)


def prompt_anchor(prompt: str) -> str:
    """The HTML id of a flagged prompt's generations block (a hash: prompts are untrusted)."""
    return "prompt-" + digest(prompt, 16)


def cut(text: str | None, n: int = CAPTION_CHARS) -> str:
    """``text`` cut to ``n`` characters with an ellipsis; ``""`` for ``None``."""
    if text is None:
        return ""
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def fmt(value: Any) -> str:
    """Numbers for tables: ints with separators, floats to 3 significant digits, ``-`` for missing."""
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


def pct(value: Any) -> str:
    return "\u2013" if value is None else f"{100 * float(value):.2f}%"


def _escape_output(value: Any) -> Any:
    """Jinja ``finalize``: ``None`` prints nothing; text is escaped with :func:`html.escape` (Markup passes)."""
    if value is None:
        return ""
    if hasattr(value, "__html__"):
        return value
    return Markup(html.escape(str(value), quote=True))


# --- JSON objects as nested tables -------------------------------------------
class KvKind(enum.Enum):
    EMPTY = "empty"      # an empty dict
    TEXT = "text"        # a scalar or a short list, as text
    LONG = "long"        # a long list: its first items as JSON and the item count
    ITEMS = "items"      # a list of dicts, one table each
    MATRIX = "matrix"    # a dict of flat dicts with the same keys: one row per outer key
    TABLE = "table"      # a dict: name / value rows


class KvRow(NamedTuple):
    name: str
    value: Any           # MATRIX: the formatted cells (tuple of str); TABLE: a KvNode


@dataclass(frozen=True)
class KvNode:
    kind: KvKind
    text: str = ""
    count: int = 0
    columns: tuple = ()
    rows: tuple = ()     # MATRIX and TABLE: KvRow; ITEMS: KvNode


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def kv_tree(obj: Any, depth: int = 0, max_items: int = KV_MAX_ITEMS) -> KvNode:
    """A JSON value as the node tree the ``kv`` macro draws.

    A dict of flat dicts with the same keys (``{"low": {"AMS": .., "UMS": ..}, ...}``)
    becomes one matrix table; lists longer than ``max_items`` are summarised.
    """
    if isinstance(obj, dict):
        if not obj:
            return KvNode(KvKind.EMPTY)
        inner = list(obj.values())
        if (len(obj) > 1 and all(isinstance(v, dict) and v and all(_is_scalar(x) for x in v.values()) for v in inner)
                and len({tuple(v) for v in inner}) == 1 and len(inner[0]) <= 12):
            cols = tuple(inner[0])
            return KvNode(KvKind.MATRIX, columns=tuple(map(str, cols)),
                          rows=tuple(KvRow(str(k), tuple(fmt(v[c]) for c in cols)) for k, v in obj.items()))
        return KvNode(KvKind.TABLE, rows=tuple(KvRow(str(k), kv_tree(v, depth + 1, max_items)) for k, v in obj.items()))
    if isinstance(obj, list):
        if len(obj) > max_items:
            return KvNode(KvKind.LONG, text=json.dumps(obj[:max_items], default=str)[:400], count=len(obj))
        if all(isinstance(v, dict) for v in obj) and obj and depth < 3:
            return KvNode(KvKind.ITEMS, rows=tuple(kv_tree(v, depth + 1, max_items) for v in obj))
        return KvNode(KvKind.TEXT, text=json.dumps(obj, default=str)[:400])
    if isinstance(obj, float):
        return KvNode(KvKind.TEXT, text=fmt(obj))
    return KvNode(KvKind.TEXT, text=str(obj if obj is not None else "null"))


class EvidenceLine(NamedTuple):
    name: str
    value: str


def evidence_lines(text: str | None) -> list[EvidenceLine] | None:
    """A flagged prompt's JSON evidence as ``name: value`` lines; ``None`` when it is not a JSON object."""
    try:
        obj = json.loads(text) if text else None
    except (TypeError, ValueError):
        obj = None
    if not isinstance(obj, dict):
        return None
    return [EvidenceLine(str(k), fmt(v) if _is_scalar(v) else json.dumps(v, default=str)[:200]) for k, v in obj.items()]


# --- the page -----------------------------------------------------------------
class PromptLine(NamedTuple):
    """A row of the prompts table: a flagged prompt (``flagged`` set) or a prompt only the score stage has."""

    text: str
    flagged: FlaggedPrompt | None
    scores: list[PromptScore] | None   # None: not scored


class SummaryItem(NamedTuple):
    name: str
    value: str


def _summary_items(d: ReportData, inputs: ReportInputs) -> list[SummaryItem]:
    emb_stats = d.stage_json.get("embeddings", {}).get("stats", {})
    dd = d.stage_json.get("dedup", {}).get("summary", {})
    mn = d.stage_json.get("mine", {}).get("summary", {})
    rows_embedded = emb_stats.get("rows", d.rows_embedded)
    rows_in = None if rows_embedded is None else rows_embedded + emb_stats.get("rejects", 0)
    scored = len(set(column(d.prompt_scores, "prompt"))) if d.prompt_scores is not None else None
    return [SummaryItem(*item) for item in (
        ("rows embedded", fmt(rows_embedded)),
        ("rows in (embedded + embed rejects)", fmt(rows_in)),
        ("rejected rows, all stages", fmt(sum(r.count for r in d.rejects))),
        ("duplicate groups", fmt(dd.get("duplicate_groups", d.groups_total if inputs.dedup else None))),
        ("rows in duplicate groups", fmt(dd.get("rows_in_duplicate_groups"))),
        ("rows to drop (non-representatives)", fmt(dd.get("rows_dropped"))),
        ("duplicate fraction (rows to drop / rows)", pct(dd.get("duplicate_fraction"))),
        ("keywords tested / word triggers", f"{fmt(mn.get('keywords_tested'))} / {fmt(mn.get('word_triggers'))}"),
        ("object pairs tested / object triggers", f"{fmt(mn.get('object_pairs_tested'))} / {fmt(mn.get('object_triggers'))}"),
        ("flagged prompts", fmt(mn.get("flagged_prompts"))),
        ("prompts scored", fmt(scored)),
    )]


class PromptTable(NamedTuple):
    lines: list[PromptLine]
    more_scored: int                   # scored-only prompts left out (beyond max_rows)


def _prompt_table(d: ReportData, cfg: ReportConfig, scored: bool) -> PromptTable:
    """The flagged prompts, then up to ``max_rows`` scored-only prompts; and how many scored-only ones are left out."""
    by_prompt: dict[str, list[PromptScore]] = defaultdict(list)
    for r in d.score_rows():
        by_prompt[str(r.prompt)].append(r)
    lines = [PromptLine(str(p.prompt), p, by_prompt.get(str(p.prompt)) if scored else None) for p in d.prompts]
    shown = {line.text for line in lines}
    extra = [p for p in by_prompt if p not in shown]
    lines += [PromptLine(p, None, by_prompt[p]) for p in extra[: cfg.max_rows]]
    return PromptTable(lines, max(0, len(extra) - cfg.max_rows))


def _labels(d: ReportData) -> dict[str, str]:
    """Row reference (sample id or key) -> the plain key the page shows for it."""
    labels = {ref: g.keys[ref] for g in d.groups for ref in g.keys}
    labels.update({ref: row.key for ref, row in d.rows.items()})
    return labels


def _environment() -> jinja2.Environment:
    templates = resources.files("models.report") / "templates"
    sources = {t.name: t.read_text(encoding="utf-8") for t in templates.iterdir() if t.name.endswith((".j2", ".css"))}
    env = jinja2.Environment(loader=jinja2.DictLoader(sources), autoescape=True, finalize=_escape_output,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(fmt=fmt, pct=pct, cut=cut, anchor=group_anchor, prompt_anchor=prompt_anchor)
    env.globals.update(KvKind=KvKind)
    return env


_ENV: jinja2.Environment | None = None


def render_page(d: ReportData, inputs: ReportInputs, cfg: ReportConfig) -> str:
    """The whole ``index.html`` text."""
    global _ENV
    if _ENV is None:
        _ENV = _environment()
    prompts = _prompt_table(d, cfg, inputs.score is not None)
    tagger = d.stage_json.get("mine", {}).get("config", {}).get("config", {}).get("tagger")
    context = dict(
        d=d, inputs=inputs, cfg=cfg, size=cfg.thumb_size, csp=CSP,
        captions={k: r.caption for k, r in d.rows.items()}, thumbs=d.thumbs, labels=_labels(d),
        rendered={g.group_id for g in d.groups}, example_captions=EXAMPLE_CAPTIONS,
        summary_items=_summary_items(d, inputs), plot_titles=PLOT_TITLES,
        words_flagged=sum(1 for v in column(d.words_all, "flagged") if v),
        tagger_none=tagger == "none", prompt_lines=prompts.lines, more_scored=prompts.more_scored,
        evidence_lines=evidence_lines, kv_tree=kv_tree,
        side_tree=kv_tree(d.side_summary) if d.side_summary is not None else None,
    )
    return _ENV.get_template("page.html.j2").render(context)
