"""Embedding one shard: read -> decode (thread pool, one batch ahead) -> embed -> write.

Plain Python; the Beam DoFn in :mod:`transforms.embed` calls
:func:`embed_shard` once per shard with a worker-shared embedder and turns its
``count`` callbacks into Beam counters.

Memory per shard: the decoded batch in flight (``2 * batch_size`` images at
model resolution) plus the shard's embeddings, ``N_shard * D * 2`` bytes.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np

from models.storage import layout, schemas
from models.storage.folders.embed import EmbeddingFolder
from models.embed.embedders import Embedder, l2_normalise
from models.storage.imaging import DEFAULT_MAX_PIXELS, ImageRejected, decode_image
from models.storage.shards import Reject, Sample, ShardRef, read_shard

log = logging.getLogger("dupmine.embed")


@dataclass(frozen=True)
class ShardJob:
    """Per-shard embedding parameters (picklable, part of the output fingerprint)."""

    batch_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    decode_workers: int = 2
    progress_seconds: float = 30.0


@dataclass
class ShardResult:
    """What one shard produced. ``img_emb``/``text_emb`` are row-aligned with ``metadata``."""

    shard: ShardRef
    img_emb: np.ndarray
    text_emb: np.ndarray | None
    metadata: list[dict]
    rejects: list[dict]
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def _reason_code(reason: str) -> str:
    """The counter name for a reject reason: its first token (``corrupt-image``, ``failed_to_download``)."""
    return reason.split(":", 1)[0].split(" ", 1)[0] or "unknown"


def _reject_row(r: Reject, stage: str = "embed") -> dict:
    return {"key": r.key, "sample_id": r.sample_id, "shard": r.shard, "url": r.url, "reason": r.reason, "stage": stage}


INT32_MAX = 2**31 - 1


def _as_int(v) -> int | None:
    """A non-negative int32 from metadata of any type (img2dataset's JSON is untrusted), else None."""
    try:
        n = None if v is None or isinstance(v, bool) else int(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return n if n is not None and 0 <= n <= INT32_MAX else None


def _metadata_row(s: Sample, width: int, height: int) -> dict:
    m = s.meta
    exif = m.get("exif")
    return {
        "key": s.key,
        "sample_id": s.sample_id,
        "url": m.get("url"),
        "caption": s.caption,
        "sha256": m.get("sha256"),
        "md5": m.get("md5") or None,
        "width": _as_int(m.get("width")) or width,
        "height": _as_int(m.get("height")) or height,
        "original_width": _as_int(m.get("original_width")) or width,
        "original_height": _as_int(m.get("original_height")) or height,
        "status": m.get("status") or "success",
        "error_message": m.get("error_message"),
        "exif": exif if isinstance(exif, str) or exif is None else str(exif),
        "shard": s.shard,
    }


def _prepare(item: Sample | Reject, embedder: Embedder, max_pixels: int):
    """Decode + preprocess one sample: ``(array, metadata_row)`` or a Reject."""
    if isinstance(item, Reject):
        return item
    try:
        decoded = decode_image(item.image, target_size=embedder.image_size, max_pixels=max_pixels)
        return embedder.preprocess(decoded.image), _metadata_row(item, decoded.width, decoded.height)
    except ImageRejected as exc:
        return Reject(item.key, item.shard, str(exc), item.meta.get("url"), item.sample_id)


def _prepared_chunks(items: Iterable, embedder: Embedder, job: ShardJob, pool: ThreadPoolExecutor) -> Iterator[list]:
    """Yield lists of prepared items, decoding the next chunk while the caller embeds this one."""
    it = iter(items)
    pending: deque = deque()
    while True:
        chunk = list(islice(it, job.batch_size))
        if chunk:
            pending.append([pool.submit(_prepare, s, embedder, job.max_pixels) for s in chunk])
        if pending and (len(pending) > 1 or not chunk):
            yield [f.result() for f in pending.popleft()]
        if not chunk and not pending:
            return


class Progress:
    """Periodic log line: counts, rejects by reason and images/s."""

    def __init__(self, label: str, every: float):
        self.label, self.every, self.start = label, every, time.monotonic()
        self.last = self.start

    def maybe_log(self, counts: Counter, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = counts["embedded"] / max(now - self.start, 1e-9)
        rejects = {k[len("rejected."):]: v for k, v in counts.items() if k.startswith("rejected.")}
        log.info("%s: read %d, embedded %d, rejected %d %s - %.1f img/s", self.label, counts["read"],
                 counts["embedded"], counts["rejected"], rejects or "", rate)


def embed_shard(shard: ShardRef, embedder: Embedder, job: ShardJob,
                count: Callable[[str, int], None] = lambda name, n: None) -> ShardResult:
    """Embed every sample of ``shard``; every input row ends in ``metadata`` or ``rejects``.

    Args:
      shard: the shard to read.
      embedder: a loaded embedder (shared across shards of a worker).
      job: batching and decoding parameters.
      count: called as ``count(name, n)`` for counters ``read``, ``decoded``,
        ``embedded``, ``rejected``, ``rejected.<reason>`` and ``key_source.<column>``
        (where the plain keys came from: ``key``, ``image_path``, ``url`` or ``row``).

    Raises:
      OSError (or the filesystem's error): a read failed transiently; nothing is
      written for the shard, so the retried bundle redoes it.

    Returns:
      ShardResult with ``img_emb`` ``(N, D)`` float16 L2-normalised, optional
      ``text_emb`` the same, and row-aligned metadata and reject rows.
    """
    started = time.monotonic()
    counts: Counter = Counter()
    progress = Progress(f"embed {shard.shard_id}", job.progress_seconds)

    def bump(name: str, n: int = 1) -> None:
        counts[name] += n
        count(name, n)

    img_parts, txt_parts, metadata, rejects = [], [], [], []

    def reject(r: Reject) -> None:
        rejects.append(_reject_row(r))
        bump("rejected")
        bump(f"rejected.{_reason_code(r.reason)}")

    def read() -> Iterator[Sample | Reject]:
        for item in read_shard(shard):
            if isinstance(item, Sample):
                bump(f"key_source.{item.key_source}")
            yield item

    with ThreadPoolExecutor(max_workers=max(1, job.decode_workers)) as pool:
        for chunk in _prepared_chunks(read(), embedder, job, pool):
            ready = []
            for item in chunk:
                bump("read")
                if isinstance(item, Reject):
                    reject(item)
                else:
                    ready.append(item)
            if ready:
                bump("decoded", len(ready))
                emb, ok = l2_normalise(embedder.embed_images(np.stack([a for a, _ in ready])))
                txt = None
                if embedder.has_text:
                    txt, _ = l2_normalise(embedder.embed_texts([m["caption"] or "" for _, m in ready]))
                for idx in np.flatnonzero(~ok):
                    m = ready[idx][1]
                    reject(Reject(m["key"], m["shard"], "zero-embedding: image embedding is zero or not finite", m["url"],
                                  m["sample_id"]))
                img_parts.append(emb[ok].astype(np.float16))
                if txt is not None:
                    txt_parts.append(txt[ok].astype(np.float16))
                metadata.extend(m for (_, m), good in zip(ready, ok) if good)
                bump("embedded", int(ok.sum()))
            progress.maybe_log(counts)
    progress.maybe_log(counts, force=True)
    img = np.concatenate(img_parts) if img_parts else np.zeros((0, embedder.dim), np.float16)
    txt = (np.concatenate(txt_parts) if txt_parts else np.zeros((0, embedder.dim), np.float16)) if embedder.has_text else None
    return ShardResult(shard, img, txt, metadata, rejects, counts, time.monotonic() - started)


def write_shard(folder: EmbeddingFolder, result: ShardResult, fingerprint: str) -> dict:
    """Write a shard's outputs: the old marker removed first, each file atomically, the new marker last.

    A crash between the steps leaves the shard unmarked (invisible to
    readers, redone by the next run), never an old marker over new files.
    Returns the marker's content.
    """
    i = result.shard.shard_id
    layout.remove_if_present(folder.marker(i))
    layout.write_npy(folder.img_emb(i), result.img_emb)
    if result.text_emb is not None:
        layout.write_npy(folder.text_emb(i), result.text_emb)
    else:  # one left by an earlier run with a text tower is stale
        layout.remove_if_present(folder.text_emb(i))
    layout.write_parquet(folder.metadata(i), schemas.table(result.metadata, schemas.EMBED_METADATA))
    layout.write_parquet(folder.rejects(i), schemas.table(result.rejects, schemas.REJECTS))
    marker = {
        "shard": result.shard.path,
        "shard_id": i,
        "fingerprint": fingerprint,
        "rows": len(result.metadata),
        "rejects": len(result.rejects),
        "counts": dict(result.counts),
        "seconds": round(result.seconds, 3),
    }
    layout.write_json(folder.marker(i), marker)
    return marker


def shard_is_done(folder: EmbeddingFolder, shard: ShardRef, fingerprint: str) -> bool:
    """True when the shard's marker exists and was made with the same parameters."""
    try:
        marker = layout.read_json(folder.marker(shard.shard_id))
    except FileNotFoundError:
        return False
    return marker.get("fingerprint") == fingerprint and marker.get("shard") == shard.path
