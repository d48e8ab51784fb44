"""Small builders for test inputs (images and img2dataset shards)."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def noise_image(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width x height`` but carries almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def sample_members(key: str, image: bytes, caption: str = "a caption", **meta) -> list[tuple[str, bytes]]:
    js = {"key": key, "url": f"http://x.invalid/{key}.jpg", "caption": caption, "status": "success"} | meta
    return [(f"{key}.jpg", image), (f"{key}.txt", caption.encode()), (f"{key}.json", json.dumps(js).encode())]
