"""Safe image decoding for untrusted web images.

Every image in a LAION-style shard is untrusted bytes. :func:`decode_image`
turns bytes into an upright 8-bit RGB ``PIL.Image`` or raises
:class:`ImageRejected` with a short machine-readable reason, so callers can
write a reject row instead of crashing:

* decompression bombs are rejected from the header alone (``width*height``
  above ``max_pixels``), before any pixel buffer is allocated;
* JPEGs are decoded at reduced scale with ``Image.draft`` when the model only
  needs ``target_size`` pixels (DCT scaling: 2-8x faster, far less memory);
* EXIF orientation is applied (``ImageOps.exif_transpose``);
* CMYK, palette (with or without transparency), LA/RGBA, 16-bit and 32-bit
  grayscale and float images are converted to RGB (alpha composited on white).

:func:`encode_jpeg` is the project's one JPEG encoder (thumbnails, demo data, benchmarks).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

# Truncated files are an error, never silently zero-filled.
ImageFile.LOAD_TRUNCATED_IMAGES = False

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; PIL's own bomb limit is 89.5M


class ImageRejected(Exception):
    """An image that cannot be embedded; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image and its size before any draft reduction."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, target_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode untrusted bytes into an upright 8-bit RGB image.

    Args:
      data: encoded image bytes (JPEG, PNG, WebP, GIF, TIFF, ...).
      target_size: smallest side the caller needs; JPEGs are DCT-downscaled
        (``draft``) to no less than this. ``None`` decodes at full size.
      max_pixels: header-declared ``width*height`` above which the image is
        rejected as a decompression bomb without decoding it.

    Returns:
      DecodedImage with the RGB image and the *original* width and height.

    Raises:
      ImageRejected: reason is one of ``empty-image``, ``decompression-bomb``,
        ``corrupt-image``.
    """
    if not data:
        raise ImageRejected("empty-image", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageRejected("decompression-bomb", f"{width}x{height} > {max_pixels} pixels")
            if target_size and img.format == "JPEG":
                img.draft("RGB", (target_size, target_size))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression-bomb", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.UnidentifiedImageError) as exc:
        raise ImageRejected("corrupt-image", f"{type(exc).__name__}: {exc}") from exc
    return DecodedImage(img, width, height)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB.

    Alpha (RGBA, LA, palette transparency) is composited on white; 16/32-bit
    integer and float grayscale are rescaled from their actual range to 0..255
    (a plain ``convert('L')`` clips them to white).
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).round().astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def encode_jpeg(img: Image.Image, quality: int = 90, **options) -> bytes:
    """The project's one JPEG encoder: ``img`` as baseline JPEG bytes at ``quality`` (1-95).

    Non-RGB modes go through :func:`to_rgb` first (alpha on white, 16-bit
    rescaled), so every caller gets the same colours for the same image.
    ``options`` go to Pillow's JPEG writer (``optimize=True``, ``subsampling=0``).

    Raises:
      ValueError: ``quality`` outside 1..95 (Pillow's useful range).
    """
    if not 1 <= quality <= 95:
        raise ValueError(f"JPEG quality {quality} must be in 1..95")
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=quality, **options)
    return buf.getvalue()


def resize_center_crop(img: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize the shorter side to ``size`` and center-crop to ``size x size``."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample=resample, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))
