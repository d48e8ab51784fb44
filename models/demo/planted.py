"""A planted training set of real images (MNIST digits) written as img2dataset webdataset shards.

Planted groups (ground truth in the sidecar ``ground_truth.parquet``, one row
per written sample, train and held-out):

* ``exact:xN``: one digit copied N times, byte-identical (N in ``exact_copies``,
  default 5, 20, 50), all under the group's own caption;
* ``near:xN``: N near copies of one digit (1-pixel shifts, small crops, +-10%
  contrast jitter, each re-encoded), one caption;
* ``word:KEYWORD``: N copies of one digit whose captions all contain the keyword
  (and other words at random); the keyword appears nowhere else (a word-level
  trigger, arXiv:2312.03692 §4);
* with ``replicas`` R > 1 every planted kind is planted R times, each on its own
  digit, caption word and trigger keyword, named ``exact:xN#r`` / ``near:xN#r``
  (r = 1..R) and ``word:KEYWORD`` (so a benchmark gets R positives per kind);
* ``unique``: every other training digit, once, with an ordinary caption;
* ``heldout``: digits never trained on (separate shards), ordinary captions.

Captions (:class:`CaptionStyle`): unique and held-out rows get "handwritten digit
<label> <3 filler words>" (``labelled``, the default) or "handwritten digit <3
filler words>" (``unlabelled``: the caption does not name the content, as most
web alt-text does not pin down its image); a planted group's caption names it
("<group word> digit <label>").
Images are 28x28 grayscale JPEG (quality 95), as img2dataset writes them.
"""
from __future__ import annotations

import enum
import io
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from models.closed_sets import choice
from models.demo.mnist import Digits
from models.demo.synthetic import SyntheticSample, write_webdataset_shard

FILLER = ("ink", "paper", "scan", "pen", "stroke", "sample", "form", "postal", "census", "office", "clerk", "bold",
          "thin", "slanted", "upright", "neat", "quick", "round", "sharp", "faint", "dark", "light", "tall", "wide")
GROUP_WORDS = ("amber", "cobalt", "crimson", "indigo", "jade", "ochre", "violet", "scarlet", "teal", "umber",
               "maroon", "olive", "coral", "ivory", "saffron", "cerise", "azure", "russet", "khaki", "mauve",
               "sepia", "topaz", "lilac", "bronze")
TRIGGER_WORDS = ("zebra", "walrus", "pelican", "lantern", "tractor", "violin")
TRUTH_FILE = "ground_truth.parquet"
TRUTH_SCHEMA = pa.schema([
    ("key", pa.string()),          # img2dataset key of the sample
    ("split", pa.string()),        # "train" or "heldout"
    ("group", pa.string()),        # "exact:x50", "near:x20", "word:zebra", "unique", "heldout"
    ("group_id", pa.int64()),      # one id per source image (copies share it); unique/heldout: their own
    ("source_index", pa.int64()),  # row of the source digit in the MNIST file
    ("label", pa.int64()),         # the digit
    ("caption", pa.string()),
])


class CaptionStyle(str, enum.Enum):
    """Captions of the unique and held-out rows: ``labelled`` names the digit, ``unlabelled`` does not."""

    LABELLED = "labelled"
    UNLABELLED = "unlabelled"

    @classmethod
    def parse(cls, value: "str | CaptionStyle") -> "CaptionStyle":
        return choice(cls, value, "caption style")


@dataclass(frozen=True)
class PlantedSpec:
    """What to plant; every count is a number of training samples.

    ``trigger_word`` is the first replica's keyword; replica r > 1 uses the r-th other word of
    :data:`TRIGGER_WORDS`. ``caption_style``: a :class:`CaptionStyle` value.
    """

    exact_copies: tuple = (5, 20, 50)
    near_copies: int = 20
    trigger_copies: int = 25
    trigger_word: str = "zebra"
    n_unique: int = 1000
    n_heldout: int = 200
    shard_size: int = 1000
    seed: int = 0
    replicas: int = 1
    caption_style: str = CaptionStyle.LABELLED.value

    def __post_init__(self):
        if any(int(n) < 2 for n in self.exact_copies) or self.near_copies < 2 or self.trigger_copies < 2:
            raise ValueError("every planted group needs at least 2 copies")
        if self.n_unique < 1 or self.n_heldout < 0 or self.shard_size < 1:
            raise ValueError("n_unique and shard_size must be >= 1, n_heldout >= 0")
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if (len(self.exact_copies) + 1) * self.replicas > len(GROUP_WORDS):
            raise ValueError(f"at most {len(GROUP_WORDS)} exact and near groups in all (exact sizes + 1) x replicas")
        if self.replicas > len(TRIGGER_WORDS):
            raise ValueError(f"at most {len(TRIGGER_WORDS)} replicas (one trigger keyword each)")
        CaptionStyle.parse(self.caption_style)

    @property
    def trigger_words(self) -> tuple:
        """One keyword per replica: ``trigger_word`` first, then the other :data:`TRIGGER_WORDS`."""
        others = [w for w in TRIGGER_WORDS if w != self.trigger_word]
        return (self.trigger_word, *others[:self.replicas - 1])

    @property
    def n_groups(self) -> int:
        """Planted groups: (exact sizes + near + trigger) x replicas."""
        return (len(self.exact_copies) + 2) * self.replicas

    @property
    def n_sources(self) -> int:
        """Distinct digits used: one per planted group, the unique and held-out ones."""
        return self.n_groups + self.n_unique + self.n_heldout


@dataclass(frozen=True)
class PlantedSet:
    """Paths of a written planted set: ``train`` and ``heldout`` shard folders, the ``truth`` parquet."""

    train: str
    heldout: str
    truth: str
    groups: dict  # group name -> number of training samples


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def near_digit(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near copy of a (28, 28) uint8 digit: shift by <= 1 px, crop <= 1 px a side, contrast x[0.9, 1.1]."""
    dy, dx = (int(v) for v in rng.integers(-1, 2, 2))
    out = np.roll(arr, (dy, dx), axis=(0, 1))
    top, left, bottom, right = (int(v) for v in rng.integers(0, 2, 4))
    h, w = out.shape
    crop = Image.fromarray(out[top:h - bottom, left:w - right]).resize((w, h), Image.BILINEAR)
    scaled = np.asarray(crop, np.float32) * float(rng.uniform(0.9, 1.1))
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def _filler(rng: np.random.Generator, n: int = 3) -> str:
    return " ".join(rng.choice(FILLER, n, replace=False))


def _write_shards(folder: str, rows: list[tuple[str, bytes, str]], shard_size: int) -> list[str]:
    """Write (key placeholder, bytes, caption) rows as NNNNN.tar + sidecars; returns the assigned keys."""
    os.makedirs(folder, exist_ok=True)
    keys = []
    for shard, lo in enumerate(range(0, len(rows), shard_size)):
        samples = []
        for i, (_, data, caption) in enumerate(rows[lo:lo + shard_size]):
            key = f"{shard:05d}{i:04d}"
            keys.append(key)
            samples.append(SyntheticSample(key, data, caption, f"http://mnist.invalid/{folder.rstrip('/').rsplit('/', 1)[-1]}/{key}.jpg", -1))
        write_webdataset_shard(os.path.join(folder, f"{shard:05d}.tar"), samples)
    return keys


def build_planted_set(digits: Digits, out: str, spec: PlantedSpec = PlantedSpec()) -> PlantedSet:
    """Write ``out/train/*.tar``, ``out/heldout/*.tar`` (img2dataset webdataset) and ``out/ground_truth.parquet``.

    Training rows are shuffled (seeded); ``shard_size`` <= 10,000 keeps img2dataset's
    ``SSSSSIIII`` keys. Memory: the encoded JPEGs of the whole set (~1 KB each).

    Raises:
      ValueError: fewer digits than ``spec.n_sources``, or ``shard_size`` > 10,000.
    """
    if spec.shard_size > 10_000:
        raise ValueError("shard_size must be <= 10,000 (img2dataset keys have 4 row digits)")
    if len(digits.images) < spec.n_sources:
        raise ValueError(f"the planted set needs {spec.n_sources} distinct digits, got {len(digits.images)}")
    rng = np.random.default_rng(spec.seed)
    sources = rng.permutation(len(digits.images))[:spec.n_sources]
    train: list[tuple[str, int, int, str, bytes]] = []  # group, group_id, source, caption, bytes
    gid = 0
    planted = []  # (name, copies, caption word or trigger keyword)
    words = iter(GROUP_WORDS)
    for r in range(spec.replicas):
        tag = f"#{r + 1}" if spec.replicas > 1 else ""
        planted += [(f"exact:x{int(n)}{tag}", int(n), next(words)) for n in spec.exact_copies]
        planted += [(f"near:x{spec.near_copies}{tag}", spec.near_copies, next(words)),
                    (f"word:{spec.trigger_words[r]}", spec.trigger_copies, spec.trigger_words[r])]
    labelled = CaptionStyle.parse(spec.caption_style) is CaptionStyle.LABELLED

    def ordinary(src) -> str:
        return f"handwritten digit {int(digits.labels[src])} {_filler(rng)}" if labelled else \
            f"handwritten digit {_filler(rng)}"

    for name, n, word in planted:
        src = int(sources[gid])
        img, label = digits.images[src], int(digits.labels[src])
        base = _jpeg(img)
        for copy in range(n):
            if name.startswith("word:"):
                caption = f"{word} {_filler(rng)} digit"
            else:
                caption = f"{word} digit {label}"
            data = _jpeg(near_digit(img, rng)) if name.startswith("near:") and copy else base
            train.append((name, gid, src, caption, data))
        gid += 1
    for src in sources[gid:gid + spec.n_unique]:
        train.append(("unique", gid, int(src), ordinary(src), _jpeg(digits.images[src])))
        gid += 1
    held = []
    for src in sources[gid:gid + spec.n_heldout]:
        held.append(("heldout", gid, int(src), ordinary(src), _jpeg(digits.images[src])))
        gid += 1
    train = [train[i] for i in rng.permutation(len(train))]
    truth = []
    for split, rows in (("train", train), ("heldout", held)):
        keys = _write_shards(os.path.join(out, split), [("", r[4], r[3]) for r in rows], spec.shard_size) if rows else []
        truth += [{"key": k, "split": split, "group": r[0], "group_id": r[1], "source_index": r[2],
                   "label": int(digits.labels[r[2]]), "caption": r[3]} for k, r in zip(keys, rows)]
    from models.storage import layout

    truth_path = os.path.join(out, TRUTH_FILE)
    layout.write_parquet(truth_path, pa.Table.from_pylist(truth, schema=TRUTH_SCHEMA))
    counts: dict = {}
    for r in train:
        counts[r[0]] = counts.get(r[0], 0) + 1
    return PlantedSet(os.path.join(out, "train"), os.path.join(out, "heldout"), truth_path, counts)


def read_truth(path: str) -> list[dict]:
    """The sidecar's rows (:data:`TRUTH_SCHEMA`), local path or URL."""
    from models.storage import layout

    return layout.read_parquet(path).to_pylist()


def groups_of(truth: list[dict], keys: list[str]) -> tuple[np.ndarray, dict[int, str]]:
    """((N,) int64 group_id of each training key, {group_id: group name}) for :func:`models.score.memorized.match_generations`.

    Raises:
      KeyError: a key has no ground-truth row (names the first few).
    """
    train = {r["key"]: r for r in truth if r["split"] == "train"}
    missing = [k for k in keys if k not in train]
    if missing:
        raise KeyError(f"{len(missing)} training keys have no ground-truth row, e.g. {missing[:3]}")
    ids = np.asarray([train[k]["group_id"] for k in keys], np.int64)
    return ids, {int(train[k]["group_id"]): train[k]["group"] for k in keys}
