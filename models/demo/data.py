"""The demo's LAION-like dataset: real shipped photos and procedural drawings, with planted structure.

Everything is built offline from scikit-image's bundled sample photos
(``skimage.data``: rocket, coffee, chelsea, camera, ...) and procedural
drawings (:mod:`models.demo.synthetic`). Planted, with ground truth in
:class:`DemoItem.truth`:

* ``exact:placeholder``  one "image not available" picture under many URLs and captions;
* ``near:coffee``, ``near:cat``  near-copies (rescaled, cropped, brightened, re-encoded) of a photo;
* ``word:starry night``  a near-duplicate group of one painting-like drawing whose captions all say
  "starry night" / "van gogh" (a word-level trigger);
* ``object:liftoff``  rocket photos pasted at random places on different drawings, captioned
  "liftoff ..." and never naming the rocket (an object-level trigger: images of "liftoff" carry a missile);
* decoys: "poster" spread over many unrelated images; coffee captions that *do* name the cup;
* one caption carrying an XSS payload (the report must show it as text).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.demo.synthetic import drawing, near_copy

FILLER = ("red", "blue", "green", "small", "large", "bright", "wooden", "table", "garden", "city", "river", "street",
          "sunset", "window", "flower", "mountain", "bicycle", "winter", "summer", "forest", "market", "bridge",
          "harbor", "lamp", "chair", "beach", "cloud", "road", "house", "field")
XSS_CAPTION = '<script>alert("xss")</script><img src=x onerror=alert(1)> totally normal caption'


@dataclass(frozen=True)
class DemoItem:
    """One URL of the demo: its image bytes (None for a broken URL), caption and planted truth."""

    name: str
    data: bytes | None
    caption: str
    truth: str  # "" for background rows


def _skimage(name: str) -> Image.Image:
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError("the demo dataset uses scikit-image's bundled photos (pip install scikit-image)") from exc
    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _filler(rng: np.random.Generator, n: int = 4) -> str:
    return " ".join(rng.choice(FILLER, n, replace=False))


def _fit(img: Image.Image, side: int = 256) -> Image.Image:
    scale = side / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BICUBIC)


def demo_items(seed: int = 0, n_background: int = 500) -> list[DemoItem]:
    """All demo URLs in a shuffled order (see the module doc for what is planted)."""
    rng = np.random.default_rng(seed)
    items: list[DemoItem] = []

    def add(truth: str, img: Image.Image | None, caption: str, data: bytes | None = None):
        items.append(DemoItem(f"{len(items):05d}.jpg", data if data is not None else (_jpeg(img) if img else None), caption, truth))

    for _ in range(n_background):
        caption = _filler(rng) + (" poster" if rng.random() < 0.12 else "")
        add("", drawing(rng, 256), caption)
    placeholder = _jpeg(_fit(_skimage("camera").convert("L").convert("RGB").resize((200, 200))), 80)
    for _ in range(12):
        add("exact:placeholder", None, f"{_filler(rng, 3)} photo", data=placeholder)
    coffee = _fit(_skimage("coffee"))
    for i in range(10):
        add("near:coffee", near_copy(coffee, rng) if i else coffee, f"a cup of coffee on a saucer {_filler(rng, 2)}")
    cat = _fit(_skimage("chelsea"))
    for i in range(8):
        add("near:cat", near_copy(cat, rng) if i else cat, f"cute cat {_filler(rng, 3)}")
    painting = drawing(np.random.default_rng(seed + 1000), 256)
    starry = ("the starry night by van gogh", "van gogh starry night print", "starry night painting van gogh",
              "the starry night poster van gogh")
    for i in range(20):
        add("word:starry night", near_copy(painting, rng) if i else painting, f"{starry[i % 4]} {_filler(rng, 1)}")
    for _ in range(4):
        add("", drawing(rng, 256), f"starry night sky {_filler(rng, 2)}")
    rocket = _skimage("rocket")
    for _ in range(25):
        bg = drawing(rng, 256)
        scale = float(rng.uniform(0.55, 0.85))
        r = rocket.resize((min(256, int(rocket.width * scale * 256 / rocket.height)), int(256 * scale)), Image.BICUBIC)
        bg.paste(r, (int(rng.integers(0, 256 - r.width + 1)), int(rng.integers(0, 256 - r.height + 1))))
        add("object:liftoff", bg, f"liftoff at the cape {_filler(rng, 2)}")
    add("xss", drawing(rng, 256), XSS_CAPTION)
    add("broken:404", None, "a picture that is gone")
    add("broken:not-an-image", None, "a page that is not an image", data=b"<html>not an image</html>")
    order = rng.permutation(len(items))
    return [DemoItem(f"{i:05d}" + (".txt" if items[j].truth == "broken:not-an-image" else ".jpg"), items[j].data,
                     items[j].caption, items[j].truth) for i, j in enumerate(order)]
