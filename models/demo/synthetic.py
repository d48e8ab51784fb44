"""Procedural LAION-like data with planted duplicates, built offline.

Used by ``dupmine demo``, tests and benchmarks. Images are procedural
drawings (gradient backgrounds, random shapes, lines), so any number can be
made with no download. Planted structure:

* exact-duplicate groups: the same JPEG bytes under several keys/URLs;
* near-duplicate groups: one drawing re-encoded at another JPEG quality,
  slightly rescaled, cropped and brightened.

:func:`write_webdataset_shard` writes the exact img2dataset webdataset layout
(``KEY.jpg/.txt/.json`` members plus the ``NNNNN.parquet`` sidecar).
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageEnhance

WORDS = ("red", "blue", "green", "small", "large", "bright", "dark", "round", "square", "abstract",
         "poster", "pattern", "shape", "art", "drawing", "print", "vintage", "modern", "design", "photo")


def drawing(rng: np.random.Generator, size: int = 256) -> Image.Image:
    """A random procedural RGB drawing, ``size x size``."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, size)[None, :, None] if rng.random() < 0.5 else np.linspace(0.0, 1.0, size)[:, None, None]
    bg = (c0[None, None, :] * (1 - ramp) + c1[None, None, :] * ramp) * np.ones((size, size, 1))
    img = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    lo = min(16, size // 4)  # smallest shape side: 16 px (the demo's 256 px drawings), less on tiny canvases
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, size - lo, 2)
        x1, y1 = x0 + rng.integers(lo, size // 2), y0 + rng.integers(lo, size // 2)
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse([int(x0), int(y0), int(x1), int(y1)], fill=color)
        elif kind == 1:
            draw.rectangle([int(x0), int(y0), int(x1), int(y1)], fill=color)
        else:
            pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(3)]
            draw.polygon(pts, fill=color)
    for _ in range(int(rng.integers(1, 4))):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=int(rng.integers(1, 6)))
    return img


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def near_copy(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A near-duplicate: small rescale, small crop, brightness change."""
    w, h = img.size
    scale = float(rng.uniform(0.85, 1.15))
    img = img.resize((max(8, int(w * scale)), max(8, int(h * scale))), Image.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(0, max(1, int(0.03 * min(img.size))), 2))
    img = img.crop((dx, dy, img.size[0] - dx, img.size[1] - dy))
    return ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.93, 1.07)))


@dataclass
class SyntheticSample:
    key: str
    image: bytes
    caption: str
    url: str
    truth_group: int  # planted group id; -1 for a singleton
    extra: dict = field(default_factory=dict)


def caption(rng: np.random.Generator, n_words: int = 5) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def planted_dataset(n_unique: int, exact_groups: list[int], near_groups: list[int], seed: int = 0,
                    shard: int = 0, size: int = 128) -> list[SyntheticSample]:
    """Singletons plus planted exact and near-duplicate groups, in shuffled order.

    Args:
      n_unique: number of singleton drawings.
      exact_groups: sizes of groups sharing identical JPEG bytes.
      near_groups: sizes of groups of near copies of one drawing.
      seed: RNG seed; shard: img2dataset shard number used in keys.

    Returns:
      Samples with img2dataset-style keys ``SSSSSIIII`` and ``truth_group`` labels.
    """
    rng = np.random.default_rng(seed)
    items: list[tuple[bytes, str, int]] = []
    gid = 0
    for n in exact_groups:
        data, text = jpeg_bytes(drawing(rng, size)), caption(rng)
        items += [(data, text, gid)] * n
        gid += 1
    for n in near_groups:
        base, text = drawing(rng, size), caption(rng)
        items.append((jpeg_bytes(base, 92), text, gid))
        items += [(jpeg_bytes(near_copy(base, rng), int(rng.integers(70, 95))), text, gid) for _ in range(n - 1)]
        gid += 1
    items += [(jpeg_bytes(drawing(rng, size)), caption(rng), -1) for _ in range(n_unique)]
    order = rng.permutation(len(items))
    out = []
    for idx, j in enumerate(order):
        data, text, g = items[j]
        key = f"{shard:05d}{idx:04d}"
        out.append(SyntheticSample(key, data, text, f"http://example.invalid/img/{key}.jpg", g))
    return out


def sample_json(s: SyntheticSample, status: str = "success") -> dict:
    with Image.open(io.BytesIO(s.image)) as img:
        w, h = img.size
    return {"url": s.url, "caption": s.caption, "key": s.key, "status": status, "error_message": None,
            "width": w, "height": h, "original_width": w, "original_height": h, "exif": "{}",
            "sha256": hashlib.sha256(s.image).hexdigest()} | s.extra


def write_webdataset_shard(path: str, samples: list[SyntheticSample], failed: list[tuple[str, str, str]] = ()) -> None:
    """Write ``path`` (``NNNNN.tar``) and its sidecar ``NNNNN.parquet`` like img2dataset.

    ``failed`` lists ``(key, url, error_message)`` rows that appear only in the
    sidecar with ``status=failed_to_download``.
    """
    rows = []
    with tarfile.open(path, "w") as tar:
        for s in samples:
            meta = sample_json(s)
            rows.append(meta)
            for ext, data in (("jpg", s.image), ("txt", s.caption.encode()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    for key, url, err in failed:
        rows.append({"url": url, "caption": None, "key": key, "status": "failed_to_download", "error_message": err,
                     "width": None, "height": None, "original_width": None, "original_height": None,
                     "exif": None, "sha256": None})
    pq.write_table(pa.Table.from_pylist(rows), path[: -len(".tar")] + ".parquet")
