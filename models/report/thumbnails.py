"""Thumbnails of the rows shown, re-read from their shards, and copies of the score stage's PNGs.

Cost: one pass over each shard that holds a shown key, read only until its
last shown key (:data:`SHARD_THREADS` shards in parallel); one decoded image
in memory per thread. Score PNGs are checked by their signature and copied
under hashed names; they are found by listing their folder, never by joining
an id into a path.
"""
from __future__ import annotations

import io
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from models.report.reading import files_with_suffix, read_bytes, read_json_object
from models.report.rows import ScoreImage, ShownRow
from models.storage import layout
from models.storage.folders import score as score_folder
from models.storage.folders.report import ReportFolder

SHARD_THREADS = 4          # shards re-read in parallel for thumbnails
JPEG_QUALITY = 85
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Thumbnails(NamedTuple):
    paths: dict[str, str]   # reference (sample id or plain key) -> report-relative path of its thumbnail
    notes: list[str]        # what could not be shown, and why


class _RowAt(NamedTuple):
    """Where a row's image is: its shard id and its plain key (unique inside the shard)."""

    shard: str
    key: str


class _ShardResult(NamedTuple):
    paths: dict[str, str]
    notes: list[str]


def _shard_refs(embeddings: str) -> dict:
    """``{shard_id: ShardRef}`` from the embed stage's ``config.json`` (``{}`` for folders made elsewhere)."""
    from models.storage.shards import ShardRef

    config = read_json_object(layout.EmbeddingFolder(embeddings).config) or {}
    return {str(s["shard_id"]): ShardRef(s["path"], s["format"], str(s["shard_id"]))
            for s in config.get("shards", []) if isinstance(s, dict) and {"path", "format", "shard_id"} <= set(s)}


def _thumbnail_jpeg(image_bytes: bytes, size: int) -> bytes:
    """Safely decoded image -> JPEG bytes within a ``size`` x ``size`` box.

    Raises:
      ImageRejected: the bytes are not a decodable image.
    """
    from models.storage.imaging import decode_image

    img = decode_image(image_bytes, target_size=size).image
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _one_shard(ref, todo: dict[str, str], report: ReportFolder, size: int) -> _ShardResult:
    """Thumbnails of one shard's rows: ``todo`` maps each wanted row's plain key (unique in its shard) to its sample id."""
    from models.storage.imaging import ImageRejected
    from models.storage.shards import Sample, read_shard

    done: dict[str, str] = {}   # plain key -> relative path ("" when the image was rejected)
    bad: list[str] = []
    try:
        for item in read_shard(ref):
            if not isinstance(item, Sample) or item.key not in todo or item.key in done:
                continue
            rel = report.thumb(todo[item.key])
            try:
                layout.atomic_write_bytes(report.path(rel), _thumbnail_jpeg(item.image, size))
                done[item.key] = rel
            except ImageRejected as exc:
                done[item.key] = ""
                bad.append(exc.reason)
            if len(done) == len(todo):
                break
    except (OSError, ValueError, EOFError) as exc:
        return _ShardResult({k: v for k, v in done.items() if v}, [f"shard {ref.shard_id}: {type(exc).__name__}: {exc}"])
    notes = []
    missing = len(todo) - len(done)
    if missing:
        notes.append(f"shard {ref.shard_id}: {missing} shown row(s) not found in the shard")
    if bad:
        notes.append(f"shard {ref.shard_id}: {len(bad)} image(s) not decodable ({', '.join(sorted(set(bad)))})")
    return _ShardResult({k: v for k, v in done.items() if v}, notes)


def make_thumbnails(embeddings: str, rows: dict[str, ShownRow], refs: set[str], report: ReportFolder,
                    size: int) -> Thumbnails:
    """Re-read the rows of ``refs`` from their shards, decode safely, write ``thumbs/<hash of sample id>.jpg``.

    ``refs`` are keys of ``rows`` (sample ids or plain keys); two references to one
    row share its thumbnail.
    """
    shard_refs = _shard_refs(embeddings)
    if not shard_refs:
        return Thumbnails({}, [f"no thumbnails: {embeddings}/config.json lists no shards (embeddings not made by dupmine embed)"])
    by_shard: dict[str, dict[str, str]] = defaultdict(dict)   # shard id -> {plain key: sample id}
    notes = []
    shown = [rows[r] for r in sorted(refs) if r in rows]
    for row in shown:
        if row.shard in shard_refs:
            by_shard[row.shard][row.key] = row.sample_id
    unknown = sorted({row.shard for row in shown if row.shard not in shard_refs}, key=str)
    if unknown:
        notes.append(f"no thumbnails for rows of shards not listed in config.json: {', '.join(map(str, unknown[:10]))}")
    made: dict[_RowAt, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(SHARD_THREADS, len(by_shard)))) as pool:
        shards = sorted(by_shard)
        for shard, result in zip(shards, pool.map(lambda s: _one_shard(shard_refs[s], by_shard[s], report, size), shards)):
            made.update({_RowAt(shard, k): rel for k, rel in result.paths.items()})
            notes += result.notes
    at = {r: _RowAt(rows[r].shard, rows[r].key) for r in refs if r in rows}
    return Thumbnails({r: made[a] for r, a in at.items() if a in made}, notes)


def copy_png(src: str, report: ReportFolder, rel: str) -> bool:
    """Copy one PNG (checked by its signature) into the report at ``rel``; ``False`` when it is not a PNG."""
    data = read_bytes(src)
    if not data.startswith(PNG_SIGNATURE):
        return False
    layout.atomic_write_bytes(report.path(rel), data)
    return True


def copy_grids(score: str, report: ReportFolder, limit: int) -> list[ScoreImage]:
    """The first ``limit`` ``grids/*.png`` of a score folder (by name), copied; non-PNG files skipped."""
    out = []
    for name, src in files_with_suffix(layout.join(score, score_folder.GRIDS), ".png").items():
        if len(out) == limit:
            break
        rel = report.score_grid(name)
        if copy_png(src, report, rel):
            out.append(ScoreImage(name, rel))
    return out
