"""What the score stage reads: flagged prompts, reference prompts and the training set (plain Python).

* :func:`load_flagged`: ``flagged_prompts.parquet`` rows in rank order, capped.
* :func:`load_reference`: the calibration prompts (``--reference`` file, else
  captions of singleton training rows).
* :class:`TrainingSet` / :func:`load_training_set`: the training set's
  embeddings, keys, captions and duplicate groups. Memory: (N, D) float64
  embeddings plus N keys and captions on the worker that loads it.
* :class:`ScoreContext` / :func:`load_context`: the target, its prompt
  conditioner and the training set, loaded once per worker process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


class FlaggedPrompt(NamedTuple):
    prompt: str
    group_ids: tuple


def load_flagged(path: str, max_prompts: int) -> list[FlaggedPrompt]:
    """Rows of ``path`` with a prompt, by ``rank`` when present, at most ``max_prompts``."""
    from models.storage import layout

    rows = layout.read_parquet(path).to_pylist()
    if rows and "rank" in rows[0]:
        rows.sort(key=lambda r: r["rank"])
    return [FlaggedPrompt(r["prompt"], tuple(r.get("group_ids") or ())) for r in rows if r.get("prompt")][:max_prompts]


def read_reference_file(path: str) -> list[str]:
    """Prompts from a ``.txt`` file (one per line) or a parquet with a ``prompt`` or ``caption`` column."""
    from models.storage import layout

    if path.endswith(".txt"):
        text = layout.read_bytes(path).decode("utf-8")
        return [line.strip() for line in text.splitlines() if line.strip()]
    t = layout.read_parquet(path)
    return [str(x) for x in t.column("prompt" if "prompt" in t.column_names else "caption").to_pylist() if x]


@dataclass
class TrainingSet:
    """The training set as the embed and dedup stages left it.

    Attributes:
        x: (N, D) float64 image embeddings (row order of the embedding parts).
        keys: N plain keys; captions: N captions (None where missing).
        by_group: {group_id: [row indices]} for groups of size > 1 (empty without ``--groups``).
        singletons: row indices of rows in no duplicate group (all rows without ``--groups``).
        model: the embed model spec from the folder's config.json (None for foreign folders).
        grouped: True when ``--groups`` was read (``singletons`` then excludes group members).
        root: the embedding folder; shards: N shard ids (the metadata's ``shard`` column; None where absent).
    """

    x: np.ndarray
    keys: list
    captions: list
    by_group: dict = field(default_factory=dict)
    singletons: list = field(default_factory=list)
    model: str | None = None
    grouped: bool = False
    root: str | None = None
    shards: list = field(default_factory=list)

    def group_keys(self, group_id: str) -> tuple:
        """The keys of a duplicate group's training rows (empty for an unknown group)."""
        return tuple(self.keys[j] for j in self.by_group.get(group_id, []))

    def rows_of(self, keys) -> list:
        """Row indices of ``keys`` (every key must be a training key)."""
        index = getattr(self, "_index", None)
        if index is None:
            index = self._index = {k: j for j, k in enumerate(self.keys)}
        return [index[k] for k in keys]

    def sample_singletons(self, n: int, seed: int, exclude_captions: set = frozenset()) -> list:
        """A seeded sample of ``n`` rows in no duplicate group (all rows without ``--groups``), as
        (key, caption) pairs; rows whose caption is in ``exclude_captions`` are left out."""
        rows = [j for j in (self.singletons if self.grouped else range(len(self.keys)))
                if self.captions[j] not in exclude_captions]
        rng = np.random.default_rng(seed)
        return [(self.keys[rows[i]], self.captions[rows[i]]) for i in rng.permutation(len(rows))[:n]]


def load_training_set(train: str | None, groups: str | None) -> TrainingSet | None:
    """Read ``--train`` (and ``--groups``); None without ``--train`` or when the folder has no parts."""
    if not train:
        return None
    from models.storage import layout, run_chain

    folder = layout.EmbeddingFolder(train)
    parts = folder.parts()
    if not parts:
        return None
    x = np.concatenate([np.asarray(layout.read_npy(folder.img_emb(i)), np.float64) for i in parts])
    keys, captions, shards = [], [], []
    for i in parts:
        meta = layout.read_parquet(folder.metadata(i))
        keys += folder.part_ids(i, meta).keys
        captions += meta.column("caption").to_pylist() if "caption" in meta.column_names else [None] * meta.num_rows
        shards += [None if s is None else str(s) for s in meta.column("shard").to_pylist()] if "shard" in meta.column_names \
            else [None] * meta.num_rows
    by_group: dict = {}
    in_group: set = set()
    if groups:
        row = {k: j for j, k in enumerate(keys)}
        for r in run_chain.load_groups(groups, ["key", "group_id", "group_size"]).to_pylist():
            if r["group_size"] > 1 and r["key"] in row:
                by_group.setdefault(r["group_id"], []).append(row[r["key"]])
                in_group.add(row[r["key"]])
    model = layout.read_json(folder.config).get("config", {}).get("model") if layout.exists(folder.config) else None
    return TrainingSet(x, keys, captions, by_group, [j for j in range(len(keys)) if j not in in_group], model,
                       grouped=bool(groups), root=train, shards=shards)


def in_target_space(target, train: TrainingSet | None) -> bool:
    """True when the training embeddings are points of the target's own space (closed-form targets over embeddings).

    Image targets (anything with ``decode_latents``) never are, even when the dimensions happen to agree.
    """
    return train is not None and not hasattr(target, "decode_latents") and train.x.shape[1] == target.dim


def image_embed_fn(target, model: str | None):
    """Generations -> the training set's embedding space: decode with the target, embed with the embed-stage model.

    Used when the target does not live in the embedding space (e.g. Stable
    Diffusion latents vs CLIP embeddings). Returns None when that is not possible.
    """
    if model is None or not hasattr(target, "decode_latents"):
        return None
    from models.embed.embedders import EmbedderConfig, l2_normalise, load_embedder
    from models.score.images import to_pil

    embedder = load_embedder(EmbedderConfig(model=model, device="cpu"))

    def embed(z: np.ndarray) -> np.ndarray:
        images = target.decode_latents(np.asarray(z, np.float32))
        batch = np.stack([embedder.preprocess(to_pil(img)) for img in images])
        return l2_normalise(embedder.embed_images(batch))[0].astype(np.float64)

    return embed


def is_pixel_space(target) -> bool:
    """True for image targets without a VAE (their samples are the images, in [-1, 1])."""
    return hasattr(target, "decode_latents") and getattr(target, "vae", None) is None


def image_format(target) -> tuple[tuple[int, int], int]:
    """((H, W), channels) of the images a target encodes: its sample shape in pixel space, RGB behind a VAE."""
    channels = int(target.sample_shape[0]) if is_pixel_space(target) else 3
    return tuple(target.image_size), channels


@dataclass
class ScoreContext:
    """Everything a worker scores with: loaded once per process (``Shared``) and used by every check."""

    target: object
    conditioner: object
    train: TrainingSet | None
    images: object = None  # TrainingImages, made on first use

    def training_images(self):
        """The training images in the target's pixel format (:class:`~models.score.training_images.TrainingImages`)."""
        from models.score.training_images import TrainingImages

        if self.images is None:
            size, channels = image_format(self.target)
            self.images = TrainingImages(self.train.root, dict(zip(self.train.keys, self.train.shards)), size, channels)
        return self.images

    def points(self, keys) -> np.ndarray | None:
        """Training rows ``keys`` as points x0 (k, d) of the target's space, or None where the target has none.

        Closed-form targets over embeddings: the embeddings. Image targets: the
        images re-read from the shards and encoded with ``target.encode_images``
        (pixels in [-1, 1], or VAE latents).
        """
        if self.train is None or not keys:
            return None
        if in_target_space(self.target, self.train):
            return self.train.x[self.train.rows_of(keys)]
        if hasattr(self.target, "encode_images"):
            return np.asarray(self.target.encode_images(self.training_images().get(list(keys))), np.float64)
        return None


def load_context(target_spec: str, device: str, train: str | None, groups: str | None) -> ScoreContext:
    """Load the target (once) and the training set."""
    from models.score.conditioning import PromptConditioner, load_target

    target = load_target(target_spec, device)
    return ScoreContext(target, PromptConditioner(target, target_spec), load_training_set(train, groups))
