"""Named rows the report reads from the stage outputs and hands to the page.

Each Parquet-backed row class names a subset of a schema in
:mod:`models.storage.schemas` (the test holds them to it); :func:`rows_of`
builds them from a table whose columns may be missing (foreign or older
folders), missing columns reading as ``None``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import pyarrow as pa

T = TypeVar("T")


def rows_of(table: pa.Table | None, cls: type[T]) -> list[T]:
    """``table``'s rows as ``cls`` instances (its dataclass fields picked by name; absent columns -> ``None``)."""
    if table is None:
        return []
    names = [f.name for f in dataclasses.fields(cls)]
    present = [n for n in names if n in table.column_names]
    columns = {n: table.column(n).to_pylist() for n in present}
    return [cls(**{n: (columns[n][i] if n in columns else None) for n in names}) for i in range(table.num_rows)]


# --- read from the stage outputs --------------------------------------------
@dataclass(frozen=True)
class WordTrigger:
    """A row of ``keyword_triggers.parquet`` (schemas.KEYWORD_TRIGGERS)."""

    keyword: str | None
    n: int | None
    n_in_groups: int | None
    top_group_id: str | None
    top_group_share: float | None
    lift: float | None
    q_value: float | None
    example_keys: list | None
    flagged: bool | None
    rank: int | None


@dataclass(frozen=True)
class ObjectTrigger:
    """A row of ``object_triggers.parquet`` (schemas.OBJECT_TRIGGERS)."""

    keyword: str | None
    object: str | None
    n_w: int | None
    n_wo: int | None
    p_o_given_w: float | None
    p_o_given_not_w: float | None
    lift: float | None
    absent_fraction: float | None
    q_value: float | None
    flagged: bool | None
    rank: int | None


@dataclass(frozen=True)
class FlaggedPrompt:
    """A row of ``flagged_prompts.parquet`` (schemas.FLAGGED_PROMPTS)."""

    prompt: str | None
    kind: str | None
    keyword: str | None
    object: str | None
    group_ids: list | None
    support: int | None
    evidence: str | None
    rank: int | None


@dataclass(frozen=True)
class PromptScore:
    """A row of ``prompt_scores.parquet`` (schemas.PROMPT_SCORES)."""

    prompt: str | None
    check: str | None
    statistic: float | None
    threshold: float | None
    decision: object
    n_samples: int | None
    seed: int | None
    cost_evals: int | None


@dataclass(frozen=True)
class Extraction:
    """A row of ``extractions.parquet`` (schemas.EXTRACTIONS): a SIDE generation and its nearest training image."""

    generation_id: str | None
    prompt: str | None
    matched_key: str | None
    similarity: float | None
    band: str | None
    group_id: str | None


# --- made by the report ------------------------------------------------------
@dataclass(frozen=True)
class ShownRow:
    """One embedding row the page shows: its identity, where it lives and its caption."""

    key: str            # the plain key (shown on the page)
    sample_id: str      # the fully qualified id (models.storage.ids): thumbnails are named by it
    caption: str | None
    shard: str | None
    part: str
    index: int          # row inside the part's metadata / img_emb files


@dataclass
class DuplicateGroup:
    """A duplicate group as shown: representative first, then members by key, at most ``max_members``.

    Members are references: sample ids when the dedup output has them, else plain keys.
    """

    group_id: str
    size: int
    representative: str
    members: list[str]
    keys: dict[str, str] = field(default_factory=dict)       # member reference -> plain key
    cosine: dict[str, float] = field(default_factory=dict)   # member reference -> cosine to the representative


class RejectCount(NamedTuple):
    """Rejected rows of one stage with one reason (the reason up to its first ':')."""

    stage: str
    reason: str
    count: int


class ScoreImage(NamedTuple):
    """A PNG copied from the score folder: its source file stem and its report-relative path."""

    name: str
    rel: str


@dataclass(frozen=True)
class NnSimilarity:
    """Dedup's ``nn_similarity.json``: a histogram of sampled nearest-neighbour similarities and the threshold used.

    ``counts[i]`` samples have their nearest-neighbour similarity in
    ``[bin_edges[i], bin_edges[i + 1])``; ``space`` names the similarity (``cosine``).
    """

    bin_edges: list[float]
    counts: list[int]
    threshold: float
    n_sampled: int
    space: str

    @classmethod
    def from_json(cls, obj: dict) -> "NnSimilarity":
        """Validate and convert the JSON object.

        Raises:
          ValueError: every problem found (missing fields, lengths, order, negative counts), in one message.
        """
        fields = ("bin_edges", "counts", "threshold", "n_sampled", "space")
        missing = [f for f in fields if f not in obj]
        if missing:
            raise ValueError(f"nn_similarity.json lacks {missing} (expected fields {list(fields)})")
        problems = []
        try:
            edges = [float(v) for v in obj["bin_edges"]]
            counts = [int(v) for v in obj["counts"]]
            threshold, n_sampled = float(obj["threshold"]), int(obj["n_sampled"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"nn_similarity.json has a non-numeric value: {exc}") from exc
        if len(edges) != len(counts) + 1:
            problems.append(f"{len(edges)} bin_edges for {len(counts)} counts (need counts + 1)")
        if any(b <= a for a, b in zip(edges, edges[1:])) or not all(math.isfinite(e) for e in edges):
            problems.append("bin_edges are not finite and strictly increasing")
        if any(c < 0 for c in counts):
            problems.append("a count is negative")
        if not math.isfinite(threshold):
            problems.append(f"threshold {obj['threshold']!r} is not finite")
        if problems:
            raise ValueError("nn_similarity.json: " + "; ".join(problems))
        return cls(edges, counts, threshold, n_sampled, str(obj["space"]))

    def at_or_above_threshold(self) -> int:
        """Samples in the bins whose lower edge is at or above the threshold (a lower bound on those >= threshold)."""
        return sum(c for lo, c in zip(self.bin_edges, self.counts) if lo >= self.threshold)
