"""The embedding folder: ours, LAION's or clip-retrieval's, as published.

Layout (LAION and clip-retrieval publish the first three)::

    img_emb/img_emb_{i}.npy          (N_i, D) float16, L2-normalised
    text_emb/text_emb_{i}.npy        (N_i, D) float16 (when the model has a text tower)
    metadata/metadata_{i}.parquet    N_i rows, same order
    rejects/rejects_{i}.parquet      dupmine only: samples without an embedding
    _done/{i}.json                   dupmine only: completion marker (written last)
    config.json, stats.json          dupmine only

``{i}`` is any suffix (``0`` in LAION, ``00000`` shard ids in dupmine); parts
are matched by it. A shard's marker is written after all its files (and
removed before they are rewritten), so readers see only complete shards.

Metadata as published varies: dupmine writes ``key`` and ``sample_id``;
clip-retrieval writes ``image_path`` and ``caption`` (img2dataset's fields
only when metadata is enabled); LAION's releases add ``NSFW``,
``similarity``, ``LICENSE`` and carry ``md5`` or ``sha256``. :meth:`part_ids`
and :func:`exact_hashes` read all of these as they are.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from models.storage import ids, layout

HASH_COLUMNS = ("sha256", "md5")  # exact-duplicate hashes, preferred first


class PartIds(NamedTuple):
    """Row identities of one part: plain keys, fully qualified sample ids, and where the keys came from."""

    keys: list[str]
    sample_ids: list[str]
    key_source: str  # ids.KEY_SOURCES member, ids.ROW_NUMBER, or "sample_id" (dupmine-made folders)


class ExactHashes(NamedTuple):
    """Per-row exact-duplicate hashes, ``"ALGO:HEX"`` (``""`` where a row has none).

    The algorithm prefix keeps an md5 from ever matching a sha256. ``algorithm``
    is None when the part has no hash column: exact matching is off for it.
    """

    values: list[str]
    algorithm: str | None


def exact_hashes(meta: pa.Table) -> ExactHashes:
    """``sha256`` when the part has any, else ``md5``, else none (exact matching off)."""
    for name in HASH_COLUMNS:
        if name in meta.column_names and meta.column(name).null_count < meta.num_rows:
            return ExactHashes([f"{name}:{v}" if v else "" for v in meta.column(name).to_pylist()], name)
    return ExactHashes([""] * meta.num_rows, None)


def _part_order(suffix: str):
    return (len(suffix), suffix) if suffix.isdigit() else (0, suffix)


@dataclass(frozen=True)
class EmbeddingFolder:
    """Paths inside an embedding folder, and the readers that take published folders as they are."""

    root: str

    def img_emb(self, i: str) -> str:
        return layout.join(self.root, "img_emb", f"img_emb_{i}.npy")

    def text_emb(self, i: str) -> str:
        return layout.join(self.root, "text_emb", f"text_emb_{i}.npy")

    def metadata(self, i: str) -> str:
        return layout.join(self.root, "metadata", f"metadata_{i}.parquet")

    def rejects(self, i: str) -> str:
        return layout.join(self.root, "rejects", f"rejects_{i}.parquet")

    def marker(self, i: str) -> str:
        return layout.join(self.root, "_done", f"{i}.json")

    @property
    def config(self) -> str:
        return layout.join(self.root, "config.json")

    @property
    def stats(self) -> str:
        return layout.join(self.root, "stats.json")

    def parts(self) -> list[str]:
        """Suffixes ``i`` with both an ``img_emb_i.npy`` and a ``metadata_i.parquet``, sorted.

        Shards of a dupmine-made folder count only when their marker exists,
        so a half-written shard from a crashed run is never read. Cost: one
        listing each of the root, ``img_emb/``, ``metadata/`` and ``_done/``.

        Raises:
          FileNotFoundError: no ``img_emb/`` folder. ValueError: an img_emb part without metadata.
        """
        emb_names = layout.list_names(layout.join(self.root, "img_emb"))
        if not emb_names:
            raise FileNotFoundError(f"{self.root!r} is not an embedding folder: no img_emb/ inside")
        suffixes = [m.group(1) for n in emb_names if (m := re.fullmatch(r"img_emb_(.+)\.npy", n))]
        markers = layout.list_names(layout.join(self.root, "_done"))
        # dupmine-made: it has a _done/ folder or its config.json (an object store drops an emptied _done/)
        dupmine_made = bool(markers) or bool({"_done", "config.json"} & layout.list_names(self.root))
        meta_names = layout.list_names(layout.join(self.root, "metadata"))
        out = []
        for i in suffixes:
            if dupmine_made and f"{i}.json" not in markers:
                continue
            if f"metadata_{i}.parquet" not in meta_names:
                raise ValueError(f"{self.img_emb(i)} has no row-aligned {self.metadata(i)}")
            out.append(i)
        return sorted(out, key=_part_order)

    def has_text_emb(self, i: str) -> bool:
        return layout.exists(self.text_emb(i))

    def read_text_emb(self, i: str) -> np.ndarray | None:
        """``(N_i, D)`` text embeddings row-aligned with part ``i``, or None where the folder has none."""
        try:
            return layout.read_npy(self.text_emb(i))
        except FileNotFoundError:
            return None

    def part_ids(self, i: str, meta: pa.Table | None = None) -> PartIds:
        """Keys and sample ids of part ``i`` (pass ``meta`` when already read; else read from its metadata).

        dupmine-made parts carry both columns. Published folders: the key is
        :func:`models.storage.ids.row_keys` (``key``, else ``image_path``, else
        ``url``, else ``PART:ROW``) and the sample id qualifies it by the
        metadata file's absolute URL.
        """
        if meta is None:
            meta = layout.read_parquet(self.metadata(i))  # one GET; a column subset would fetch as much
        if "sample_id" in meta.column_names and "key" in meta.column_names and meta.column("sample_id").null_count == 0:
            return PartIds([str(k) for k in meta.column("key").to_pylist()],
                           [str(s) for s in meta.column("sample_id").to_pylist()], "sample_id")
        keys = ids.row_keys(meta, i)
        source = ids.absolute_url(self.metadata(i))
        return PartIds(keys.keys, [ids.sample_id(source, k) for k in keys.keys], keys.source)

    def describe(self) -> dict:
        """What readers will use, from the first part: ``{"key_source", "exact_hash", "text_emb", "note"}``.

        ``note`` is the line a summary prints, e.g. ``ids from image_path;
        exact matching off (no sha256 or md5 column)``.
        """
        parts = self.parts()
        if not parts:
            return {"key_source": None, "exact_hash": None, "text_emb": False, "note": "no parts"}
        meta = layout.read_parquet(self.metadata(parts[0]))
        source = self.part_ids(parts[0], meta).key_source
        algorithm = exact_hashes(meta).algorithm
        note = f"ids from {source}; " + (f"exact matching on {algorithm}" if algorithm else
                                         "exact matching off (no sha256 or md5 column)")
        return {"key_source": source, "exact_hash": algorithm, "text_emb": self.has_text_emb(parts[0]), "note": note}
