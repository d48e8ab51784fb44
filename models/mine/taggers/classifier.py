"""ONNX image-classifier tagger (the shared MobileNet v2 or any exported torchvision model).

Tags are the ``top_k`` classes with probability >= ``min_prob``;
:func:`vocab_for_labels` turns the classifier's labels into
:class:`models.mine.vocab.VocabEntry` objects (with WordNet synsets where the
labels come with WordNet ids), so caption mentions of its objects can be
checked. Model, labels and preprocessing files may be fsspec URLs: remote
files are copied once into a local cache (onnxruntime reads local files).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

import fsspec
import numpy as np
from PIL import Image

from models.embed.embedders import OnnxEmbedder, OnnxPreprocess
from models.mine.taggers.base import Tagger, Tags, check_top_k, empty_tags, select_tags
from models.mine.vocab import VocabEntry, normalize_vocab_name

__all__ = ["MOBILENET_PREPROCESS", "ClassifierConfig", "OnnxClassifierTagger", "read_labels", "vocab_for_labels"]

# The shared MobileNet v1/v2 models: RGB squashed to 224x224, x = (uint8 - 128) / 128.
MOBILENET_PREPROCESS = OnnxPreprocess(size=224, resize="squash", offset=128.0, scale=128.0)
BACKGROUND_NAMES = ("background", "__background__", "unused background")


def _is_local(path: str) -> bool:
    protocol = fsspec.core.url_to_fs(path)[0].protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """A local path holding ``path``'s bytes: ``path`` itself when local, else a cached copy.

    Remote files (``gs://``, ``s3://``, ``https://`` ...) are downloaded once
    per process host into ``cache_dir`` (default ``$TMPDIR/dupmine-remote``),
    under a folder named by a hash of the URL, keeping the file name (so a
    ``MODEL.onnx.json`` sidecar copied next to it is found). The copy is
    written to a temporary name and renamed, so concurrent workers never read
    a half-written file. Raises FileNotFoundError for a missing remote file.
    """
    path = str(path)
    if _is_local(path):
        return path
    fs, stripped = fsspec.core.url_to_fs(path)
    folder = os.path.join(cache_dir or os.path.join(tempfile.gettempdir(), "dupmine-remote"),
                          hashlib.sha256(os.path.dirname(path).encode()).hexdigest()[:16])
    target = os.path.join(folder, os.path.basename(stripped))
    if not os.path.exists(target):
        if not fs.exists(stripped):
            raise FileNotFoundError(f"{path} does not exist")
        os.makedirs(folder, exist_ok=True)
        tmp = f"{target}.tmp-{os.getpid()}"
        fs.get_file(stripped, tmp)
        os.replace(tmp, target)
    return target


def _localize_model(model_path: str) -> str:
    """The local model file, with its ``MODEL.onnx.json`` preprocessing sidecar copied beside it when one exists."""
    if _is_local(model_path):
        return local_copy(model_path)
    fs, stripped = fsspec.core.url_to_fs(model_path)
    if fs.exists(stripped + ".json"):
        local_copy(model_path + ".json")
    return local_copy(model_path)


def _read_preprocess(preprocess: OnnxPreprocess | dict | str | None) -> OnnxPreprocess | dict | str | None:
    """A preprocessing JSON *file* named by URL or path is read through fsspec (JSON text and dicts pass)."""
    if isinstance(preprocess, str) and not preprocess.lstrip().startswith("{"):
        with fsspec.open(preprocess, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    return preprocess


def read_labels(path: str) -> list[str]:
    """One label per line (UTF-8, local path or fsspec URL); trailing blank lines ignored.

    Raises:
        ValueError: a blank line before the last label, or no labels.
    """
    with fsspec.open(str(path), "rt", encoding="utf-8") as fh:
        lines = [line.strip() for line in fh.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"labels file {str(path)!r} has no labels")
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise ValueError(f"labels file {str(path)!r}: blank label on line(s) {blank[:5]}; one label per line expected")
    return lines


def vocab_for_labels(labels: Sequence[str], source: str = "labels") -> list[VocabEntry]:
    """Classifier labels -> one :class:`VocabEntry` per label, same order.

    ``"flagpole, flagstaff"``: the first comma-separated name is the entry
    name, all names are synonyms; names are normalised like vocabulary names
    (:func:`models.mine.keywords.normalize_vocab_name`: lowercase, ``_`` -> space,
    parenthesised qualifiers split off). ``category_id`` is the label's index
    and ``raw_name`` the label as written.

    Raises:
        ValueError: a label without any name.
    """
    entries = []
    for i, label in enumerate(labels):
        parts = [normalize_vocab_name(p) for p in str(label).split(",")]
        names = [name for name, _ in parts if name]
        if not names:
            raise ValueError(f"label {i} ({label!r}) has no name")
        qualifier = next((q for name, q in parts if name == names[0] and q), None)
        entries.append(VocabEntry(names[0], tuple(names), str(label), qualifier, i, source))
    return entries


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of :class:`OnnxClassifierTagger`.

    Attributes:
        min_prob: smallest class probability that is a tag, in [0, 1].
        top_k: at most this many tags per image, >= 1 (or ``None``: all >= min_prob).
        background_index: output column that is "no object" and never a tag;
            ``"auto"`` = 0 when the first label is ``background``, else none;
            ``None`` = every column is an object.
        output: ``"auto"`` (probe the model: outputs in [0, 1] with row sums
            <= 1.05 are probabilities, else logits), ``"probs"`` or ``"logits"``
            (softmax applied).
        batch_size: images per model call (models with a fixed batch of 1
            are run one image at a time), >= 1.
    """

    min_prob: float = 0.2
    top_k: int | None = 3
    background_index: int | str | None = "auto"
    output: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not (isinstance(self.min_prob, (int, float)) and 0.0 <= self.min_prob <= 1.0):
            raise ValueError(f"min_prob must be in [0, 1], got {self.min_prob!r}")
        check_top_k(self.top_k)
        bg = self.background_index
        if not (bg is None or bg == "auto" or (isinstance(bg, int) and not isinstance(bg, bool) and bg >= 0)):
            raise ValueError(f"background_index must be 'auto', None or an int >= 0, got {bg!r}")
        if self.output not in ("auto", "probs", "logits"):
            raise ValueError(f"output {self.output!r}; expected auto, probs or logits")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _looks_like_probs(out: np.ndarray, tol: float = 0.05) -> bool:
    """Rows of non-negative values <= 1 summing to at most ``1 + tol`` (and > 0)."""
    if out.size == 0 or not np.isfinite(out).all():
        return False
    sums = out.sum(axis=1)
    return bool(out.min() >= -1e-6 and out.max() <= 1 + 1e-6 and (sums > 0).all() and (sums <= 1 + tol).all())


class OnnxClassifierTagger(Tagger):
    """Tags = the ``top_k`` classes of an ONNX image classifier with probability >= ``min_prob``.

    The model takes one preprocessed image tensor (``OnnxPreprocess``: size,
    resize, normalisation, layout) and returns ``(B, C)`` class scores (any
    shape ``(B, ...)`` with C elements per image is flattened). Whether those
    are already probabilities is detected once at construction by running
    three fixed probe inputs (see :class:`ClassifierConfig` ``output``);
    otherwise a softmax is applied. The background column (ImageNet 1001-class
    models: index 0) is never a tag and is not among :attr:`objects`.

    Args:
        model_path: the ``.onnx`` file.
        labels_path: one label per line, C lines (:func:`read_labels`).
        preprocess: :class:`OnnxPreprocess`, a dict or JSON string; ``None``
            reads ``MODEL.onnx.json`` beside the model or uses the ImageNet
            default (:data:`MOBILENET_PREPROCESS` for the shared MobileNet).
        min_prob, top_k, background_index, output, batch_size: see :class:`ClassifierConfig`.
        device, threads: onnxruntime provider (``cpu``/``cuda``) and intra-op threads (0 = default).

    Attributes:
        objects: names of the non-background labels (first comma-separated name, normalised).
        vocab: their :class:`VocabEntry` objects (for caption-mention checks).
        class_index: ``(O,)`` int64 model output column of each object.
        outputs_probs: whether the model output is used as probabilities as is.

    Cost: one forward pass per image (shared MobileNet v2: ~30 ms per image
    including preprocessing on one busy CPU core); memory ``4 * batch_size * C``
    bytes of outputs plus the input batch.

    Raises:
        ModelUnavailable: the model file does not exist.
        ValueError: label count != output width, bad background index or settings.
    """

    needs_images = True

    def __init__(
        self,
        model_path: str,
        labels_path: str,
        preprocess: OnnxPreprocess | dict | str | None = None,
        min_prob: float = 0.2,
        top_k: int | None = 3,
        background_index: int | str | None = "auto",
        *,
        output: str = "auto",
        batch_size: int = 32,
        device: str = "cpu",
        threads: int = 0,
    ) -> None:
        self.config = ClassifierConfig(min_prob=min_prob, top_k=top_k, background_index=background_index, output=output, batch_size=batch_size)
        model_path = str(model_path)
        local_model = _localize_model(model_path)
        pre = preprocess if isinstance(preprocess, OnnxPreprocess) else OnnxPreprocess.load(_read_preprocess(preprocess), local_model)
        self.model_path, self.labels_path = model_path, str(labels_path)
        self._net = OnnxEmbedder(local_model, pre, device=device, threads=threads)
        self.preprocess_config = pre
        labels = read_labels(labels_path)
        n_out = self._net.dim
        if len(labels) != n_out:
            raise ValueError(f"labels file {self.labels_path!r} has {len(labels)} labels but the model outputs {n_out} classes")
        bg = self.config.background_index
        if bg == "auto":
            bg = 0 if labels[0].strip().lower() in BACKGROUND_NAMES else None
        if bg is not None and bg >= n_out:
            raise ValueError(f"background_index {bg} out of range for {n_out} classes (expected 0..{n_out - 1} or None)")
        self.background_index: int | None = bg
        all_vocab = vocab_for_labels(labels)
        self.class_index = np.array([i for i in range(n_out) if i != bg], dtype=np.int64)
        self.labels = [labels[i] for i in self.class_index]
        self.vocab = [all_vocab[i] for i in self.class_index]
        self.objects = [e.name for e in self.vocab]
        if self.config.output == "auto":
            self.outputs_probs = _looks_like_probs(self._net.embed_images(self._probe_batch()))
        else:
            self.outputs_probs = self.config.output == "probs"

    def _probe_batch(self) -> np.ndarray:
        """Three fixed inputs: a mid-gray image and two seeded noise images, preprocessed."""
        size = self.preprocess_config.size
        rng = np.random.default_rng(0)
        images = [Image.new("RGB", (size, size), (128, 128, 128))]
        images += [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(2)]
        return np.stack([self._net.preprocess(im) for im in images])

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One RGB image -> the model's float32 input (``(3, S, S)`` NCHW or ``(S, S, 3)`` NHWC)."""
        return self._net.preprocess(img if img.mode == "RGB" else img.convert("RGB"))

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(B, ...)`` preprocessed float32 -> ``(B, C)`` float32 class probabilities (all columns)."""
        batch = np.asarray(batch, dtype=np.float32)
        bs = self.config.batch_size
        outs = [self._net.embed_images(batch[i : i + bs]) for i in range(0, len(batch), bs)]
        out = np.concatenate(outs) if outs else np.zeros((0, self._net.dim), np.float32)
        return out if self.outputs_probs else _softmax(out)

    def tag_preprocessed(self, batch: np.ndarray) -> Tags:
        """Tag ``(B, ...)`` inputs from :meth:`preprocess` (for decoders that preprocess in workers).

        Returns ``(rows int64, object_idx int64, score float32 probability)``.
        """
        probs = self.probabilities(batch)[:, self.class_index]
        keep = (probs >= self.config.min_prob) & (probs > 0)
        return select_tags(probs, keep, self.config.top_k)

    def tag_images(self, images: Sequence[Image.Image]) -> Tags:
        """Tag RGB images (other modes are converted); rows index ``images``."""
        if len(images) == 0:
            return empty_tags()
        return self.tag_preprocessed(np.stack([self.preprocess(im) for im in images]))

    def describe(self) -> dict[str, Any]:
        pre = self.preprocess_config
        return {
            "kind": "onnx-classifier",
            "model": self.model_path,
            "labels": self.labels_path,
            "n_objects": len(self.objects),
            "background_index": self.background_index,
            "min_prob": self.config.min_prob,
            "top_k": self.config.top_k,
            "output": ("probs" if self.outputs_probs else "logits") + (" (detected)" if self.config.output == "auto" else ""),
            "preprocess": {"size": pre.size, "resize": pre.resize, "mean": list(pre.mean), "std": list(pre.std),
                           "offset": pre.offset, "scale": pre.scale, "layout": pre.layout},
            "fixed_batch": self._net.fixed_batch,
            "score": "class probability",
        }

