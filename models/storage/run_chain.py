"""Run chains of incremental dedup and mine runs: manifests, per-row group state, drop keys.

An incremental ``dupmine dedup --previous PREV`` run writes only what changed:
``groups/`` for its *new* embedding parts, ``changed/`` for *old* rows whose
group fields changed, and ``manifest.json`` with the whole chain of runs
(oldest first). The current state of every row is therefore spread over the
chain; this module puts it back together:

* :func:`read_chain` / :func:`write_manifest` -- the chain of :class:`ChainEntry`.
* :func:`part_runs` -- for each part, the runs whose files hold its rows
  (the run that introduced it, then the later runs that changed some of them).
* :func:`load_part_state` -- one part's current rows (O(part rows) read).
* :func:`load_group_state` -- every row's current group (O(all rows); for
  tools, tests and reports, not for the pipeline's hot path).
* :func:`load_drop_keys` -- the union of the chain's drop lists.

Why the drop lists of a chain can simply be unioned: a group's representative
is the member with the largest area (then the smallest key). When an increment
adds members to a group, the old representative stays unless a *new* member
beats it; when it merges old groups, the winner is the best of their old
representatives and the new members. So an old non-representative always
stays a non-representative (a better member than it is still in its group),
and the only old rows an increment demotes are old representatives. Drop sets
only grow; each increment lists the rows it adds (its new non-representatives
and the old representatives it demoted).

Paths recorded in manifests are absolute for local folders (URLs stay as
given), so a chain can be read from any working directory.

A part of a chain is identified by its source (embedding folder URL + part
name) and its content (:func:`part_identity`), never by its name alone:
img2dataset numbers shards from 00000 in every download, so a second folder
whose parts are named like the first one's is new data. Inside a chain each
part has a *slot*, the name its ``changed/`` files and ``changed_parts``
use: the part name the first time a name is introduced, ``NAME@runE`` (E =
the introducing run's position in the chain) when an earlier run already
introduced that name from another folder.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from models.storage import layout
from models.storage import schemas
from models.storage.folders.dedup import DedupFolder

MANIFEST = DedupFolder.MANIFEST  # the names other stages import from here
CENTROIDS = DedupFolder.CENTROIDS
MERGES_FILE = DedupFolder.MERGES

# changed/changed_{part}.parquet: the group fields of an old row after the increment, and before it.
CHANGED_GROUPS = pa.schema(list(schemas.DEDUP_GROUPS) + [
    ("previous_group_id", pa.string()),
    ("previous_group_size", pa.int64()),
    ("previous_is_representative", pa.bool_()),
    ("previous_representative_key", pa.string()),
    ("previous_max_cosine", pa.float32()),
])

# merges.parquet: previous duplicate groups (size > 1) whose id no longer names a group.
MERGES = pa.schema([
    ("old_group_id", pa.string()),
    ("new_group_id", pa.string()),     # the group it is now part of (the first old group's id, in gid order)
    ("old_group_size", pa.int64()),
    ("new_group_size", pa.int64()),
])

# load_group_state(): one row per row of every part of the chain.
STATE_COLUMNS = ["key", "sample_id", "group_id", "group_size", "is_representative", "representative_key", "max_cosine", "part"]


def normalize_path(path: str) -> str:
    """Absolute path for a local folder, the URL unchanged otherwise (manifests store these)."""
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


@dataclass(frozen=True)
class ChainEntry:
    """One dedup run of a chain.

    ``parts`` are the embedding parts this run *introduced* (in gid order),
    ``rows`` their row counts, ``changed_parts`` the older parts for which it
    wrote ``changed/changed_{part}.parquet``.
    """

    run: str
    embeddings: str
    parts: tuple[str, ...]
    rows: tuple[int, ...]
    threshold: float
    seed: int
    max_spill: int
    k: int
    dim: int
    changed_parts: tuple[str, ...] = ()
    previous: str | None = None
    contents: tuple[str, ...] = ()  # per part, :func:`part_identity` (empty in manifests made before it existed)
    index_buckets: int = 0  # buckets of its increment index (transforms/dedup/store.py); 0: none (older runs)

    def __post_init__(self):
        if len(self.parts) != len(self.rows):
            raise ValueError(f"chain entry {self.run}: {len(self.parts)} parts but {len(self.rows)} row counts")
        if self.contents and len(self.contents) != len(self.parts):
            raise ValueError(f"chain entry {self.run}: {len(self.parts)} parts but {len(self.contents)} contents")

    def to_json(self) -> dict:
        return {"run": self.run, "embeddings": self.embeddings, "parts": list(self.parts), "rows": list(self.rows),
                "threshold": self.threshold, "seed": self.seed, "max_spill": self.max_spill, "k": self.k,
                "dim": self.dim, "changed_parts": list(self.changed_parts), "previous": self.previous,
                "contents": list(self.contents), "index_buckets": self.index_buckets}

    @classmethod
    def from_json(cls, d: dict) -> "ChainEntry":
        return cls(run=d["run"], embeddings=d["embeddings"], parts=tuple(d["parts"]), rows=tuple(int(r) for r in d["rows"]),
                   threshold=float(d["threshold"]), seed=int(d["seed"]), max_spill=int(d["max_spill"]), k=int(d["k"]),
                   dim=int(d["dim"]), changed_parts=tuple(d.get("changed_parts", ())), previous=d.get("previous"),
                   contents=tuple(d.get("contents") or ()), index_buckets=int(d.get("index_buckets") or 0))


def read_chain(run_dir: str) -> list[ChainEntry]:
    """The chain of a dedup output folder, oldest first.

    The last entry is ``run_dir`` itself (as given, so a moved or copied
    folder reads its own files); earlier runs are read where they were written.

    Raises:
      ValueError: ``run_dir`` has no ``manifest.json`` (not a finished dedup
        output, or one made before incremental runs existed).
    """
    path = DedupFolder(run_dir).manifest
    if not layout.exists(path):
        raise ValueError(f"{run_dir!r} has no {MANIFEST}: not a finished dupmine dedup output (or one made before "
                         f"incremental runs existed; run dedup on it again from scratch)")
    chain = [ChainEntry.from_json(e) for e in layout.read_json(path).get("chain", [])]
    if not chain:
        raise ValueError(f"{path} lists no runs")
    return chain[:-1] + [replace(chain[-1], run=run_dir)]


def _normalized(entry, *names: str):
    return replace(entry, **{n: normalize_path(getattr(entry, n)) for n in names if getattr(entry, n) is not None})


def write_manifest(run_dir: str, chain: list[ChainEntry], **extra) -> None:
    """Write ``manifest.json`` (``{"chain": [...]}`` plus ``extra`` keys, paths made absolute); the run's commit point."""
    chain = [_normalized(e, "run", "embeddings", "previous") for e in chain]
    layout.write_json(DedupFolder(run_dir).manifest, {"chain": [e.to_json() for e in chain], **extra})


_STAMPS = ("ETag", "md5Hash", "crc32c", "mtime", "LastModified", "updated")  # content hashes first, then times


def _stamp(info: dict) -> str:
    """A file's content stamp from its ``info``: an object store's hash (ETag, md5Hash, crc32c) or its time."""
    for name in _STAMPS:
        if info.get(name) is not None:
            return str(info[name]).strip('"')
    return ""


def part_identity(embeddings: str, part: str) -> str:
    """Content identity of one embedding part: the byte sizes of its metadata and image-embedding files, then
    their content stamps (``SIZE:SIZE|STAMP:STAMP``).

    Two ``info`` calls, no read. A rewrite can keep both sizes (same row
    count, dictionary-encoded keys of the same length); it changes the stamp:
    an object store's ETag / md5Hash / crc32c, or a local file's mtime.
    """
    folder = layout.EmbeddingFolder(embeddings)
    sizes, stamps = [], []
    for path in (folder.metadata(part), folder.img_emb(part)):
        fs, stripped = layout.filesystem(path)
        info = fs.info(stripped)
        sizes.append(str(info.get("size")))
        stamps.append(_stamp(info))
    return ":".join(sizes) + "|" + ":".join(stamps)


def same_content(recorded: str | None, current: str) -> bool:
    """Whether a part's recorded :func:`part_identity` matches its current one (None: nothing recorded).

    Identities recorded before stamps existed (``SIZE:SIZE``) are compared on the sizes.
    """
    if recorded is None:
        return True
    if "|" not in recorded:
        return recorded == current.split("|", 1)[0]
    return recorded == current


_SLOT = re.compile(r"(.+)@run(\d+)")


def slot_part(slot: str) -> str:
    """The part name of a slot (``NAME`` or ``NAME@runE`` -> ``NAME``)."""
    m = _SLOT.fullmatch(slot)
    return m.group(1) if m else slot


def new_slot(part: str, taken, entry_index: int) -> str:
    """The slot of ``part`` introduced by run ``entry_index`` of a chain whose slots are ``taken``."""
    return part if part not in taken else f"{part}@run{entry_index}"


@dataclass(frozen=True)
class PartLocation:
    """Where one part of a chain lives: its embedding folder, rows, position in gid order, introducing run.

    ``slot`` names the part inside the chain (``changed/changed_{slot}.parquet``); ``content`` is its
    :func:`part_identity` when the manifest recorded one.
    """

    part: str
    embeddings: str
    rows: int
    index: int
    run: str
    runs: tuple[str, ...] = field(default=())  # introducing run, then runs that changed some of its rows
    slot: str = ""
    content: str | None = None


def part_locations(chain: list[ChainEntry]) -> dict[str, PartLocation]:
    """Slot -> :class:`PartLocation`, in chain (gid) order (the slot is the part name unless names collide).

    Raises:
      ValueError: a run introduces the same part of the same folder as an earlier run, or changes a slot no
        earlier run introduced.
    """
    out: dict[str, PartLocation] = {}
    sources: dict[tuple[str, str], str] = {}
    for e_index, entry in enumerate(chain):
        contents = entry.contents or (None,) * len(entry.parts)
        for part, rows, content in zip(entry.parts, entry.rows, contents):
            source = (normalize_path(entry.embeddings), part)
            if source in sources:
                raise ValueError(f"part {part!r} of {entry.embeddings} is introduced by both "
                                 f"{out[sources[source]].run} and {entry.run}")
            slot = new_slot(part, out, e_index)
            sources[source] = slot
            out[slot] = PartLocation(part, entry.embeddings, rows, len(out), entry.run, (entry.run,), slot, content)
        for slot in entry.changed_parts:
            if slot not in out:
                raise ValueError(f"{entry.run} changed rows of part {slot!r}, which no earlier run introduced")
            out[slot] = replace(out[slot], runs=out[slot].runs + (entry.run,))
    return out


def part_runs(chain: list[ChainEntry]) -> dict[str, tuple[str, ...]]:
    """Slot -> the runs holding its rows: the introducing run, then every run that changed some of them."""
    return {slot: loc.runs for slot, loc in part_locations(chain).items()}


def _overlay(state: pa.Table, changed: pa.Table) -> pa.Table:
    """Replace the rows of ``state`` whose sample id is in ``changed`` by ``changed``'s rows (same columns)."""
    if changed.num_rows == 0:
        return state
    keep = pc.invert(pc.is_in(state.column("sample_id"), value_set=changed.column("sample_id")))
    return pa.concat_tables([state.filter(keep), changed.select(state.column_names).cast(state.schema)])


def _read(path: str, schema: pa.Schema, columns: list[str]) -> pa.Table:
    if not layout.exists(path):
        raise ValueError(f"{path} is missing: the runs of a chain must stay where they were written")
    return layout.read_parquet(path, columns).select(columns).cast(pa.schema([schema.field(c) for c in columns]))


def load_part_state(runs: tuple[str, ...] | list[str], slot: str, columns: list[str] | None = None) -> pa.Table:
    """The current group rows of one part: ``runs[0]``'s ``groups/groups_{part}.parquet`` overlaid by sample id
    with each later run's ``changed/changed_{part}.parquet``, in order.

    Args:
      runs: from :func:`part_runs` (introducing run first).
      slot: the part's slot in the chain (its name unless names collide, see the module docstring).
      columns: subset of :data:`STATE_COLUMNS` (``key`` and ``sample_id`` are always read).

    Returns:
      Table with ``columns`` (default all of :data:`STATE_COLUMNS`), one row
      per grouped row of the part (rejected rows have none). Row order: the
      unchanged rows in part order, then the changed ones.

    Raises:
      ValueError: one of those files is missing (a run of the chain was moved or deleted).

    Cost: reads one groups file and ``len(runs) - 1`` changed files.
    """
    columns = list(columns or STATE_COLUMNS)
    columns = [c for c in ("key", "sample_id") if c not in columns] + columns
    state = _read(DedupFolder(runs[0]).groups(slot_part(slot)), schemas.DEDUP_GROUPS, columns)
    for run in runs[1:]:
        state = _overlay(state, _read(DedupFolder(run).changed(slot), CHANGED_GROUPS, columns))
    return state


def load_group_state(dedup_dir: str) -> pa.Table:
    """Every row's current group over the whole chain of ``dedup_dir``.

    Reads the chain oldest first: each run's ``groups/`` rows (its new parts),
    then its ``changed/`` rows overlaid by sample id.

    Returns:
      Table with :data:`STATE_COLUMNS` plus ``embeddings`` (the part's
      embedding folder); one row per grouped row of every part of the chain.
      For a from-scratch run this is its ``groups/`` folder.

    Cost: O(rows of the chain) read and memory (a tool for tests, reports and
    audits; the pipelines read one part at a time with :func:`load_part_state`).
    """
    tables = []
    for slot, loc in part_locations(read_chain(dedup_dir)).items():  # chain (gid) order
        t = load_part_state(loc.runs, slot)
        tables.append(t.append_column("embeddings", pa.array([loc.embeddings] * t.num_rows, pa.string())))
    if not tables:
        schema = pa.schema([schemas.DEDUP_GROUPS.field(c) for c in STATE_COLUMNS] + [("embeddings", pa.string())])
        return schemas.table([], schema)
    return pa.concat_tables(tables)


def load_groups(dedup_dir: str, columns: list[str] | None = None) -> pa.Table:
    """The current group of every row of a dedup output: its chain's state, or its ``groups/`` folder.

    The reader for everything downstream (score, report, demo): an
    incremental output's own ``groups/`` holds only its new parts. Folders
    without a manifest (written by other tools, or by hand) are read as they are.
    """
    if layout.exists(DedupFolder(dedup_dir).manifest):
        table = load_group_state(dedup_dir)
    else:
        table = layout.read_parquet(DedupFolder(dedup_dir).groups_dir)
    return table.select(columns) if columns else table


def load_drop_keys(dedup_dir: str) -> pa.Table:
    """The union of the drop lists of ``dedup_dir``'s chain (see the module docstring for why a union is right).

    Returns:
      :data:`models.storage.schemas.DROP_KEYS` table, one row per sample id; where a
      sample was listed by several runs the latest record wins. ``group_id`` and
      ``representative_key`` are as of the run that listed it; a later
      merge can change them (:func:`load_group_state` has the current values).
    """
    tables = []
    for entry in read_chain(dedup_dir):
        path = DedupFolder(entry.run).drop_keys
        fs, p = layout._fs(path)
        if fs.exists(p) and fs.ls(p, detail=False):
            tables.append(layout.read_parquet(path).select(schemas.DROP_KEYS.names).cast(schemas.DROP_KEYS))
    if not tables:
        return schemas.table([], schemas.DROP_KEYS)
    out = tables[0]
    for t in tables[1:]:
        out = _overlay(out, t)
    return out


def load_merges(dedup_dir: str) -> pa.Table:
    """Every run's ``merges.parquet`` of the chain, oldest first (:data:`MERGES` columns)."""
    tables = [layout.read_parquet(DedupFolder(e.run).merges).cast(MERGES)
              for e in read_chain(dedup_dir) if layout.exists(DedupFolder(e.run).merges)]
    return pa.concat_tables(tables) if tables else schemas.table([], MERGES)
