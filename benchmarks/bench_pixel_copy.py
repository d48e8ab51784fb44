"""Copy detection of the weight-free ``pixel`` embedding against imagehash's pHash, on the same pairs.

    python benchmarks/bench_pixel_copy.py [--n 500] [--threshold 0.95] [--phash-bits 10]

Two image pools, each scored on the same pairs by both detectors:

* ``cc3m``: real web photos (``../shared/data/cc3m/00000.tar``; skipped when
  absent), exact duplicates (same sha256) removed first;
* ``drawings``: the demo's procedural drawings (``models.demo.synthetic``),
  copies made by the demo's own ``near_copy``.

Positives: one copy of each base image per transform (JPEG re-encode at
quality 40-90, resize to 50-90%, crop of 2-5% per side, brightness +-10%,
and resize + crop + re-encode together), every copy JPEG-encoded and decoded
through dupmine's own decoder. Negatives: every pair of distinct base images
(N(N-1)/2). ``pixel`` calls a pair a copy at cosine >= ``--threshold`` (0.95,
the shipped dedup default and the demo's); pHash (64-bit, 32x32 DCT, imagehash)
at Hamming distance <= ``--phash-bits``, and also at the cut-off whose
false-positive rate on the negatives is closest to pixel's (an equal-FP
comparison). Precision = TP / (TP + FP) over these pairs; recall per transform.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image, ImageEnhance  # noqa: E402  (Image: resampling filters)

from models.demo.synthetic import drawing, near_copy  # noqa: E402
from models.embed.embedders import PixelEmbedder, l2_normalise  # noqa: E402
from models.storage.imaging import decode_image, encode_jpeg  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
TRANSFORMS = ("reencode", "resize", "crop", "brightness", "resize+crop+reencode")


def cc3m_images(n: int) -> list[bytes] | None:
    path = os.path.join(SHARED, "cc3m", "00000.tar")
    if not os.path.exists(path):
        return None
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    seen, out = set(), []
    for files in members.values():
        sha = json.loads(files.get("json", b"{}")).get("sha256")
        if "jpg" in files and sha not in seen:
            seen.add(sha)
            out.append(files["jpg"])
        if len(out) >= n:
            break
    return out


def make_copy(img: Image.Image, kind: str, rng: np.random.Generator) -> bytes:
    w, h = img.size
    quality = int(rng.integers(40, 91)) if kind in ("reencode", "resize+crop+reencode") else 90
    if kind in ("resize", "resize+crop+reencode"):
        s = float(rng.uniform(0.5, 0.9))
        img = img.resize((max(8, int(w * s)), max(8, int(h * s))), Image.BILINEAR)
    if kind in ("crop", "resize+crop+reencode"):
        f = float(rng.uniform(0.02, 0.05))
        w, h = img.size
        img = img.crop((int(w * f), int(h * f), w - int(w * f), h - int(h * f)))
    if kind == "brightness":
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.9, 1.1)))
    return encode_jpeg(img, quality)


def pixel_vectors(images: list[bytes]) -> np.ndarray:
    """``(N, 64)`` pixel embeddings of JPEG bytes, through dupmine's decode path (DCT draft to >= 32 px)."""
    emb = PixelEmbedder()
    out = []
    for i in range(0, len(images), 256):
        batch = np.stack([emb.preprocess(decode_image(b, target_size=emb.image_size).image) for b in images[i:i + 256]])
        x, _ = l2_normalise(emb.embed_images(batch))
        out.append(x)
    return np.concatenate(out)


def phash_bits(images: list[bytes]) -> np.ndarray:
    """``(N, 64)`` pHash bits (imagehash 4.3, its defaults) of the fully decoded images."""
    import imagehash

    return np.stack([imagehash.phash(decode_image(b).image).hash.ravel() for b in images]).astype(np.uint8)


def evaluate(name: str, base: list[bytes], copies: dict[str, list[bytes]], threshold: float,
             phash_cut: int) -> None:
    n = len(base)
    iu = np.triu_indices(n, 1)
    pix = pixel_vectors(base)
    neg_pix = (pix @ pix.T)[iu]
    bits = phash_bits(base)
    neg_ham = (bits[:, None, :] != bits[None, :, :]).sum(-1)[iu]
    pos_pix, pos_ham = {}, {}
    for kind, imgs in copies.items():
        pos_pix[kind] = np.einsum("ij,ij->i", pix[: len(imgs)], pixel_vectors(imgs))
        pos_ham[kind] = (bits[: len(imgs)] != phash_bits(imgs)).sum(-1)
    fp_pix = int((neg_pix >= threshold).sum())
    fp_rate = fp_pix / len(neg_pix)
    cuts = np.arange(0, 33)
    rates = np.array([(neg_ham <= c).mean() for c in cuts])
    equal_fp_cut = int(cuts[np.argmin(np.abs(rates - fp_rate))])
    print(f"\n== {name}: {n} base images, {len(neg_pix)} different pairs, "
          f"{sum(len(v) for v in copies.values())} copies")
    rows = [(f"pixel cos>={threshold}", lambda k: pos_pix[k] >= threshold, fp_pix)]
    for cut in dict.fromkeys((phash_cut, equal_fp_cut)):
        rows.append((f"pHash ham<={cut}", lambda k, c=cut: pos_ham[k] <= c, int((neg_ham <= cut).sum())))
    header = f"{'detector':18s} {'precision':>9s} {'recall':>7s} {'FP pairs':>8s} {'FP/pair':>9s}  " + \
        "  ".join(f"{k:>10s}" for k in copies)
    print(header)
    for label, hit, fp in rows:
        tp = sum(int(hit(k).sum()) for k in copies)
        total = sum(len(v) for v in copies.values())
        precision = tp / (tp + fp) if tp + fp else float("nan")
        per_kind = "  ".join(f"{hit(k).mean():10.3f}" for k in copies)
        print(f"{label:18s} {precision:9.4f} {tp / total:7.3f} {fp:8d} {fp / len(neg_pix):9.2e}  {per_kind}")
    print(f"pixel cosines: different pairs max {neg_pix.max():.3f} q99.9 {np.quantile(neg_pix, 0.999):.3f}; "
          + ", ".join(f"{k} min {v.min():.3f}" for k, v in pos_pix.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="base images per pool")
    parser.add_argument("--threshold", type=float, default=0.95, help="pixel cosine threshold (shipped: 0.95)")
    parser.add_argument("--phash-bits", type=int, default=10, help="pHash Hamming cut-off (of 64 bits)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    rng = np.random.default_rng(args.seed)
    photos = cc3m_images(args.n)
    if photos is None:
        print("cc3m: ../shared/data/cc3m/00000.tar not found, skipped")
    else:
        copies = {k: [make_copy(decode_image(b).image, k, rng) for b in photos] for k in TRANSFORMS}
        evaluate("cc3m (real photos)", photos, copies, args.threshold, args.phash_bits)
    drawings = [drawing(rng, 128) for _ in range(args.n)]
    demo = {"demo near_copy": [encode_jpeg(near_copy(im, rng), int(rng.integers(70, 95))) for im in drawings]}
    demo |= {k: [make_copy(im, k, rng) for im in drawings] for k in ("reencode", "resize", "brightness")}
    evaluate("demo drawings", [encode_jpeg(im, 92) for im in drawings], demo, args.threshold, args.phash_bits)


if __name__ == "__main__":
    main()
