"""Image (and caption) embedders behind one interface.

Model specs (``--model``):

* ``openclip:ARCH/PRETRAINED``: open_clip. ``PRETRAINED`` is an open_clip tag
  (``ViT-B-32/laion2b_s34b_b79k``, the default), a local checkpoint path
  (``openclip:ViT-B-32//models/clip.bin``) or ``random`` (random init, only
  when asked for, for tests and benchmarks). Image tower for images, text
  tower for captions.
* ``onnx:PATH``: any ONNX image-embedding model run with onnxruntime; its
  preprocessing comes from a JSON sidecar ``PATH.json`` or ``--preprocess``
  (see :class:`OnnxPreprocess`).
* ``pixel``: a weight-free perceptual embedding: the 8x8 lowest-frequency
  2-D DCT coefficients of a mean-removed 32x32 grayscale thumbnail, DC
  dropped (64-d, pHash's block, real-valued). Finds exact and near-exact
  copies (re-encodes, resizes, brightness changes, small crops) with no
  model; see :class:`PixelEmbedder`.

Every embedder maps ``PIL.Image`` -> ``preprocess`` -> a ``(C,H,W)`` or
``(H,W)`` float32 array, and batches of those -> :meth:`Embedder.embed_images`
-> ``(B, D)`` float32 (not yet normalised; :func:`l2_normalise` does that and
flags zero or non-finite rows).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from models.storage import layout
from models.storage.imaging import resize_center_crop

DEFAULT_MODEL = "openclip:ViT-B-32/laion2b_s34b_b79k"
CONFIG_DIR = Path(__file__).parent / "configs"
MODEL_KINDS = ("openclip", "onnx", "pixel")
RANDOM_INIT_SEED = 0  # openclip:ARCH/random is this seed's init, identical across workers and runs


class ModelUnavailable(RuntimeError):
    """Weights or runtime for a model spec cannot be had; says what to use instead."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value."""

    kind: str
    arch: str = ""
    pretrained: str = ""
    path: str = ""

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        kind, _, rest = spec.partition(":")
        if kind == "pixel" and not rest:
            return cls("pixel")
        if kind == "onnx" and rest:
            return cls("onnx", path=rest)
        if kind == "openclip" and rest:
            arch, _, pretrained = rest.partition("/")
            if not arch or not pretrained:
                raise ValueError(f"model spec {spec!r}: expected openclip:ARCH/PRETRAINED, e.g. {DEFAULT_MODEL}")
            return cls("openclip", arch=arch, pretrained=pretrained)
        raise ValueError(
            f"model spec {spec!r} not understood; expected one of 'openclip:ARCH/PRETRAINED', 'onnx:PATH', 'pixel'"
        )


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}; expected auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise ModelUnavailable("--device cuda was asked for but torch sees no CUDA device")
    return "cpu"


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Row-normalise ``(B, D)``; return ``(normalised float32, ok bool (B,))``.

    Rows that are non-finite or have norm <= ``eps`` are not ok (left as zeros):
    they cannot be compared by cosine and become reject rows upstream.
    """
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    norms = np.linalg.norm(np.where(finite[:, None], x, 0.0), axis=1)
    ok = finite & (norms > eps)
    out = np.zeros_like(x)
    out[ok] = x[ok] / norms[ok, None]
    return out, ok


class Embedder:
    """Interface: preprocess one image, embed a batch, optionally embed text.

    Attributes:
      spec: the model spec string.
      dim: embedding width D.
      image_size: the side the model consumes (decoders may downscale to it).
      has_text: whether :meth:`embed_texts` is available.
    """

    spec: str
    dim: int
    image_size: int
    has_text: bool = False

    def preprocess(self, img: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        """``(B, ...)`` preprocessed float32 -> ``(B, D)`` float32 raw embeddings."""
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise ModelUnavailable(f"{self.spec} has no text tower")

    def describe(self) -> dict:
        return {"spec": self.spec, "dim": self.dim, "image_size": self.image_size, "has_text": self.has_text}


class PixelEmbedder(Embedder):
    """Weight-free copy detector: a real-valued perceptual hash, 64-d.

    Gray 32x32 thumbnail (box filter) -> its mean subtracted -> orthonormal
    2-D DCT-II -> the 8x8 lowest frequencies -> coefficient ``(u, v)``
    weighted by ``sqrt(r / r_max)``, ``r = sqrt(u^2 + v^2)`` (so DC, r = 0,
    is dropped). The block and thumbnail are pHash's (Zauner 2010,
    "Implementation and Benchmarking of Perceptual Image Hash Functions",
    sec. 4.4: 32x32 DCT, 8x8 low frequencies, mean/median taken out), kept
    real-valued so cosine works in dedup. Removing the mean and DC leaves the
    layout of light and dark only, so brightness and colour no longer make
    unrelated images similar; the sqrt(r) weight half-whitens the ~1/f
    amplitude spectrum of natural images (Field 1987, JOSA A 4(12)) so the
    one or two lowest coefficients do not decide alone; L2 normalisation
    removes contrast. Weights are <= 1, so the embedding's norm is at most the
    thumbnail's. Measured against imagehash's pHash on the same pairs:
    benchmarks/bench_pixel_copy.py. Any flat (one-colour) image has an
    all-zero embedding and becomes a ``zero-embedding`` reject.
    Cost: ~0.05 ms per image after decode (JPEGs are DCT-downscaled to >= 32 px).
    """

    THUMB = 32
    KEEP = 8

    def __init__(self):
        self.spec, self.dim, self.image_size = "pixel", self.KEEP * self.KEEP, self.THUMB
        u = np.arange(self.KEEP, dtype=np.float64)
        r = np.sqrt(u[:, None] ** 2 + u[None, :] ** 2)
        self.weights = np.sqrt(r / r.max())  # (8, 8), 0 at DC, 1 at the highest kept frequency

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB image -> ``(32, 32)`` float32 gray thumbnail in [0, 1] with its mean subtracted."""
        gray = img.convert("L").resize((self.THUMB, self.THUMB), Image.BOX, reducing_gap=2.0)
        thumb = np.asarray(gray, dtype=np.float32) / 255.0
        return thumb - thumb.mean(dtype=np.float64).astype(np.float32)

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        """``(B, 32, 32)`` mean-removed thumbnails -> ``(B, 64)`` float32 weighted low-frequency DCT, DC = 0."""
        from scipy.fft import dctn

        coeffs = dctn(np.asarray(batch, dtype=np.float64), type=2, axes=(1, 2), norm="ortho")[:, : self.KEEP, : self.KEEP]
        return (coeffs * self.weights).reshape(len(batch), -1).astype(np.float32)


@dataclass(frozen=True)
class OnnxPreprocess:
    """How to turn an RGB image into an ONNX model input.

    ``x = (pixel_0_255 / 255 - mean) / std`` when ``offset``/``scale`` are not
    set, else ``x = (pixel_0_255 - offset) / scale`` (e.g. MobileNet:
    ``offset=128, scale=128``). ``resize``: ``squash`` (to size x size) or
    ``center-crop`` (shorter side to size, then crop). ``layout``: ``NCHW`` or
    ``NHWC``.
    """

    size: int = 224
    resize: str = "center-crop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    offset: float | None = None
    scale: float | None = None
    layout: str = "NCHW"

    def __post_init__(self):
        if self.resize not in ("squash", "center-crop"):
            raise ValueError(f"preprocess resize {self.resize!r}; expected squash or center-crop")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"preprocess layout {self.layout!r}; expected NCHW or NHWC")
        if (self.offset is None) != (self.scale is None):
            raise ValueError("preprocess: give both offset and scale, or neither")

    @classmethod
    def load(cls, value: str | dict | None, model_path: str) -> "OnnxPreprocess":
        """From a dict, a JSON string, a JSON file (path or URL), or ``MODEL.onnx.json`` beside the model."""
        if value is None:
            sidecar = model_path + ".json"
            if not layout.exists(sidecar):
                return cls()
            value = sidecar
        if isinstance(value, str):
            value = json.loads(value if value.lstrip().startswith("{") else layout.read_bytes(value))
        unknown = set(value) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"preprocess keys {sorted(unknown)} unknown; allowed {sorted(cls.__dataclass_fields__)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        return cls(**fixed)


class OnnxEmbedder(Embedder):
    """Any image-embedding ONNX model; output flattened to ``(B, D)``.

    Models with a fixed batch dimension of 1 (e.g. the shared MobileNet) are
    run one image at a time inside :meth:`embed_images`.
    """

    def __init__(self, path: str, preprocess: OnnxPreprocess, device: str = "cpu", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a base dependency
            raise ImportError("onnx: models need onnxruntime (pip install onnxruntime)") from exc
        if not layout.exists(path):
            raise ModelUnavailable(f"ONNX model file {path!r} does not exist")
        providers = ["CPUExecutionProvider"]
        if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        # A local model is opened by path (external weight files beside it keep working); a remote one
        # (gs://, s3://) is fetched in one GET and handed over as bytes.
        fs, local = layout.filesystem(path)
        model = local if layout.is_local(fs) else layout.read_bytes(path)
        self.session = ort.InferenceSession(model, sess_options=options, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = isinstance(inp.shape[0], int) and inp.shape[0] == 1
        self.pre = preprocess
        self.spec, self.image_size = f"onnx:{path}", preprocess.size
        probe_shape = (1, 3, preprocess.size, preprocess.size) if preprocess.layout == "NCHW" else (1, preprocess.size, preprocess.size, 3)
        self.dim = int(np.prod(self.session.run(None, {self.input_name: np.zeros(probe_shape, np.float32)})[0].shape[1:]))

    def preprocess(self, img: Image.Image) -> np.ndarray:
        size = self.pre.size
        img = img.resize((size, size), Image.BILINEAR) if self.pre.resize == "squash" else resize_center_crop(img, size, Image.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
        if self.pre.offset is not None:
            x = (x - self.pre.offset) / self.pre.scale
        else:
            x = (x / 255.0 - np.asarray(self.pre.mean, np.float32)) / np.asarray(self.pre.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.pre.layout == "NCHW" else x)

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if self.fixed_batch:
            outs = [self.session.run(None, {self.input_name: batch[i : i + 1]})[0] for i in range(len(batch))]
            out = np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)
        else:
            out = self.session.run(None, {self.input_name: batch})[0]
        return out.reshape(len(batch), -1).astype(np.float32)


class OpenClipEmbedder(Embedder):
    """open_clip image and text towers; fp16 on CUDA, fp32 on CPU."""

    has_text = True

    def __init__(self, arch: str, pretrained: str, device: str = "cpu", threads: int = 0):
        from models.tv_compat import ensure_torchvision

        ensure_torchvision()
        try:
            import open_clip
            import torch
        except ImportError as exc:
            raise ImportError("openclip: models need open_clip (pip install open_clip_torch)") from exc
        if threads:
            torch.set_num_threads(threads)
        open_clip.add_model_config(CONFIG_DIR)
        if arch not in open_clip.list_models():
            raise ValueError(f"open_clip architecture {arch!r} unknown; e.g. ViT-B-32, ViT-L-14, dupmine-tiny")
        weights = None if pretrained == "random" else pretrained
        if weights and not os.path.exists(weights) and weights not in open_clip.list_pretrained_tags_by_model(arch):
            raise ValueError(
                f"{weights!r} is neither a local checkpoint nor an open_clip tag for {arch}; "
                f"tags: {open_clip.list_pretrained_tags_by_model(arch)}"
            )
        try:
            if weights is None:
                # Random weights must be the same in every worker and every run: seed them, without
                # touching the caller's global RNG state.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(RANDOM_INIT_SEED)
                    model = open_clip.create_model(arch, pretrained=None, device=device)
            else:
                model = open_clip.create_model(arch, pretrained=weights, device=device)
        except RuntimeError as exc:
            raise ModelUnavailable(
                f"cannot load open_clip weights {arch}/{pretrained} ({exc}). Put them in the Hugging Face cache or "
                f"pass a local checkpoint (openclip:{arch}//path/to/weights.bin); or use onnx:PATH (an exported "
                f"image tower), pixel (no weights), or openclip:{arch}/random (random init, tests only)"
            ) from exc
        self.torch, self.device = torch, device
        self.dtype = torch.float16 if device == "cuda" else torch.float32
        self.model = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_preprocess_cfg(model)
        self.image_size = int(cfg["size"][0] if isinstance(cfg["size"], (tuple, list)) else cfg["size"])
        self.mean = np.asarray(cfg["mean"], np.float32)
        self.std = np.asarray(cfg["std"], np.float32)
        self.spec = f"openclip:{arch}/{pretrained}"
        self.dim = int(model.text_projection.shape[-1] if hasattr(model, "text_projection") and model.text_projection is not None else model.visual.output_dim)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        img = resize_center_crop(img, self.image_size, Image.BICUBIC)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def embed_images(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(batch, np.float32)).to(self.device, dtype=self.dtype, non_blocking=True)
            return self.model.encode_image(x).float().cpu().numpy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            tokens = self.tokenizer([t or "" for t in texts]).to(self.device)
            return self.model.encode_text(tokens).float().cpu().numpy()


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything needed to build an embedder in a worker (picklable)."""

    model: str = DEFAULT_MODEL
    device: str = "auto"
    preprocess: str | None = None
    threads: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def load_embedder(cfg: EmbedderConfig) -> Embedder:
    """Build the embedder a spec names, on the resolved device.

    Raises:
      ValueError: the spec is malformed. ModelUnavailable: weights or files missing.
    """
    spec = ModelSpec.parse(cfg.model)
    device = resolve_device(cfg.device)
    if spec.kind == "pixel":
        return PixelEmbedder()
    if spec.kind == "onnx":
        return OnnxEmbedder(spec.path, OnnxPreprocess.load(cfg.preprocess, spec.path), device=device, threads=cfg.threads)
    return OpenClipEmbedder(spec.arch, spec.pretrained, device=device, threads=cfg.threads)
