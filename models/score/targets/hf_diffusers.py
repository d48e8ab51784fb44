"""Diffusers-backed diffusion "targets": real (Stable Diffusion style) noise predictors.

These classes expose the same small interface as the closed-form targets of
:mod:`models.score.targets.closed_form` (METHODS.md §5.7: "an injected
score_fn(x_t, t, cond)"), so every scorer written against that interface
(:func:`models.score.plaplace.noise_cosine_statistic`, :func:`models.score.targets.closed_form.ddim_sample`,
:mod:`models.score.wen`) runs unchanged on a real model:

* ``target.schedule``: a :class:`~models.score.targets.closed_form.VPSchedule` built
  from the folder's scheduler betas (``alphas_cumprod``, ``T``, ``abar``,
  ``timesteps``, ``ddim_step``);
* ``target.dim``: d = C·h·w of the flattened latent (pixel space for
  :class:`DiffusersUnconditionalTarget`);
* ``target.eps(x_t (B, d), t, cond) -> (B, d)``: ε̂(x_t, t, c), batched;
  numpy in → numpy out (float32 stays float32, anything else float64), torch
  in → torch out (input dtype/device), no autograd;
* ``target.eps_torch`` / ``target.score_torch``: differentiable versions
  (reverse and forward mode; s = −ε̂/√(1−ᾱ_t), METHODS §4.6), e.g. for the
  Jeon JVP in :mod:`models.score.wen`.

Conditioning (:class:`DiffusersTextToImageTarget`): ``cond`` is ``None`` (the
null / empty prompt), a prompt ``str``, a per-row sequence or array of prompts
(B,), or a prompt-embedding tensor (L, D), (1, L, D) or (B, L, D) from
:meth:`DiffusersTextToImageTarget.encode_prompts`. Note that
:func:`models.score.plaplace.noise_cosine_statistic` treats any array-like ``cond``
as per-sample conditions, so pass it a prompt string (or a (B,) array of
prompts), not an embedding tensor.

Latents follow the SD protocol of METHODS §2.3: x₀ = VAE-encoded image ×
``vae.config.scaling_factor`` (0.18215 for SD 1.x), flattened to (B, d).

Folders (:func:`load_any_target` specs):

* ``diffusers:PATH``: a local diffusers text-to-image folder with
  ``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/`` (each with its config and
  weights), optional ``tokenizer/`` and ``model_index.json``. Where the
  tokenizer is missing or unloadable it is rebuilt from open_clip's bundled
  BPE vocabulary (identical to SD's ``CLIPTokenizer`` on plain text), and its
  size is checked to be 49408.
* ``diffusers-uncond:PATH``: an unconditional (or class-conditional)
  ``UNet2DModel`` with a scheduler (``unet/`` + ``scheduler/``, or the flat
  layout ``config.json`` + weights + ``scheduler_config.json``).
* ``gmm:FILE`` / ``memorizer:FILE``: closed-form targets from
  :func:`models.score.targets.closed_form.load_target`.

Nothing is downloaded: every ``from_pretrained`` call is ``local_files_only``.
diffusers / transformers are imported lazily (``pip install 'dupmine[diffusion]'``),
after :func:`models.tv_compat.ensure_torchvision`.
"""
from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import math
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from models.score.targets.closed_form import VPSchedule, load_target

__all__ = [
    "CLIP_VOCAB_SIZE",
    "TARGET_PREFIXES",
    "GenerationResult",
    "DiffusersTextToImageTarget",
    "DiffusersUnconditionalTarget",
    "clip_bpe_tokenizer",
    "forward_ad_attention",
    "load_any_target",
]

CLIP_VOCAB_SIZE = 49408
"""Size of the OpenAI CLIP BPE vocabulary used by SD 1.x/2.x text encoders."""

TARGET_PREFIXES = ("diffusers:", "diffusers-uncond:", "gmm:", "memorizer:")
"""Spec prefixes accepted by :func:`load_any_target`."""

_PIP_HINT = "pip install 'dupmine[diffusion]'"
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # merges used by CLIP's tokenizer (OpenAI and HF agree)
_WEIGHT_EXTS = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_UNET_STEM = "diffusion_pytorch_model"
_TEXT_STEMS = ("model", "pytorch_model")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
_EMBED_CACHE_SIZE = 1024

TimeArg = Union[int, np.integer, np.ndarray]
GeneratorArg = Union[torch.Generator, int, None]


# --------------------------------------------------------------------------- #
# Lazy imports
# --------------------------------------------------------------------------- #
def _import_diffusers():
    """Import diffusers after the torchvision CPU shim; ImportError names the extra."""
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"diffusers targets need the 'diffusers' package: {_PIP_HINT}") from exc
    return diffusers


def _import_transformers():
    """Import transformers after the torchvision CPU shim; ImportError names the extra."""
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"diffusers text-to-image targets need the 'transformers' package: {_PIP_HINT}") from exc
    return transformers


# --------------------------------------------------------------------------- #
# CLIP BPE tokenizer from open_clip's bundled vocabulary
# --------------------------------------------------------------------------- #
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte → printable-unicode map (256 entries)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _open_clip_bpe_path() -> str:
    """Path of open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "building the CLIP tokenizer needs open_clip's bundled BPE vocabulary: pip install open_clip_torch"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], _BPE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"open_clip's BPE vocabulary not found at {path!r}")
    return path


def _check_clip_vocab(tokenizer: Any, source: str) -> None:
    n = len(tokenizer)
    if n != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"CLIP tokenizer from {source} has {n} tokens, expected {CLIP_VOCAB_SIZE} (the SD/OpenAI CLIP BPE "
            "vocabulary). An offline from_pretrained without vocab.json/merges.txt or tokenizer.json silently "
            "returns a tiny default tokenizer; provide the files or let dupmine rebuild it from open_clip's BPE."
        )


def clip_bpe_tokenizer(
    max_length: int = 77,
    pad_token: str = "<|endoftext|>",
    bpe_path: Optional[str] = None,
):
    """SD's CLIP tokenizer rebuilt from open_clip's bundled BPE vocabulary.

    The vocabulary is built exactly as ``open_clip.tokenizer.SimpleTokenizer``
    (and OpenAI CLIP) do: 256 byte symbols, the same with ``</w>``, the first
    48894 merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
    It is written as ``vocab.json`` / ``merges.txt`` to a temporary folder and
    loaded with ``transformers.CLIPTokenizer.from_pretrained`` (works with
    transformers 4.x and 5.x). Plain-text token ids equal open_clip's.

    Args:
        max_length: ``model_max_length`` (the text encoder's positions, 77 for SD).
        pad_token: ``"<|endoftext|>"`` for SD 1.x; SD 2.x folders use ``"!"``.
        bpe_path: optional path of a ``bpe_simple_vocab_16e6.txt.gz``.

    Returns:
        a ``transformers.CLIPTokenizer`` with exactly 49408 tokens.

    Raises:
        ValueError: if the built tokenizer does not have 49408 tokens.
    """
    transformers = _import_transformers()
    path = bpe_path or _open_clip_bpe_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"BPE vocabulary file not found: {path!r}")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1 : _N_MERGES + 1]
    byte_syms = list(_bytes_to_unicode().values())
    vocab = byte_syms + [s + "</w>" for s in byte_syms] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"BPE file {path!r} gives {len(vocab)} vocabulary entries, expected {CLIP_VOCAB_SIZE}")
    with tempfile.TemporaryDirectory(prefix="dupmine_clip_bpe_") as tmp:
        with open(os.path.join(tmp, "vocab.json"), "w", encoding="utf-8") as fh:
            json.dump({tok: i for i, tok in enumerate(vocab)}, fh, ensure_ascii=False)
        with open(os.path.join(tmp, "merges.txt"), "w", encoding="utf-8") as fh:
            fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        tok = transformers.CLIPTokenizer.from_pretrained(
            tmp, local_files_only=True, model_max_length=int(max_length), pad_token=pad_token
        )
    _check_clip_vocab(tok, f"open_clip BPE {path!r}")
    return tok


# --------------------------------------------------------------------------- #
# Folder checks, device and dtype
# --------------------------------------------------------------------------- #
def _weight_variant(folder: str, stems: Sequence[str]) -> tuple[bool, Optional[str]]:
    """(has_weights, variant): variant is e.g. "fp16" when only ``stem.fp16.ext`` files exist."""
    if not os.path.isdir(folder):
        return False, None
    names = set(os.listdir(folder))
    if any(stem + ext in names for stem in stems for ext in _WEIGHT_EXTS):
        return True, None
    for name in sorted(names):
        for stem in stems:
            for ext in _WEIGHT_EXTS:
                if name.startswith(stem + ".") and name.endswith(ext):
                    variant = name[len(stem) + 1 : -len(ext)]
                    if variant and "." not in variant and "-of-" not in variant:
                        return True, variant
    return False, None


def _require_dir(path: str, kind: str) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"{kind} path must be a non-empty string, got {path!r}")
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{kind} folder not found: {path!r}")
    return path


def _resolve_device(device: Union[str, torch.device]) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) and device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif isinstance(device, str) and (device == "cpu" or device.startswith("cuda")):
        dev = torch.device(device)
    else:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    return dev


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64,
}


def _resolve_dtype(dtype: Union[str, torch.dtype, None], device: torch.device) -> torch.dtype:
    """None → float16 on CUDA, float32 on CPU."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)} (or a torch float dtype), got {dtype!r}")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read JSON file {path!r}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"JSON file {path!r} must hold an object, got {type(data).__name__}")
    return data


def _make_generator(generator: GeneratorArg) -> Optional[torch.Generator]:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return torch.Generator("cpu").manual_seed(int(generator))
    raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {generator!r}")


@contextlib.contextmanager
def forward_ad_attention() -> Iterator[None]:
    """Restrict ``F.scaled_dot_product_attention`` to its math backend.

    The fused SDPA kernels (flash / memory-efficient, CPU and CUDA) have no
    forward-mode AD formula, so :func:`torch.func.jvp` through a diffusers UNet
    fails without this. The math backend is composite and supports JVPs; it
    materialises the (heads, N, N) attention matrix, which is the main extra
    memory cost of a JVP at SD resolution (see :func:`models.score.wen.jeon_sharpness`).
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - old torch
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _schedule_from_scheduler_config(config: dict, source: str) -> VPSchedule:
    """VPSchedule whose ᾱ matches diffusers' DDPM/DDIM ``alphas_cumprod`` for ``config``.

    Betas are taken from ``DDPMScheduler.from_config`` (linear, scaled_linear,
    squaredcos_cap_v2, trained_betas, …). A zero-terminal-SNR schedule has
    β_{T−1} = 1; it is clipped to 1 − 2⁻²⁴ (VPSchedule needs β < 1), as diffusers
    itself replaces ᾱ_{T−1} = 0 by 2⁻²⁴.
    """
    diffusers = _import_diffusers()
    try:
        ddpm = diffusers.DDPMScheduler.from_config(config)
    except Exception as exc:
        raise ValueError(f"cannot build a DDPM schedule from scheduler config {source!r}: {exc}") from exc
    betas = ddpm.betas.detach().cpu().double().numpy()
    return VPSchedule(np.clip(betas, 1e-12, 1.0 - 2.0**-24))


# --------------------------------------------------------------------------- #
# Shared machinery
# --------------------------------------------------------------------------- #
@dataclass
class GenerationResult:
    """Output of ``generate``.

    Attributes:
        latents: (N, d) float32 final DDIM latents (SD: scaled VAE latents;
            unconditional: pixels in [-1, 1]), N = n_prompts · n_per_prompt.
        images: (N, H, W, 3) uint8 decoded images, or None when not requested.
        prompt_index: (N,) int64 index of each row's prompt (rows are grouped
            by prompt: prompt 0's samples first).
        timesteps: (steps,) int64 DDIM timesteps used.
        evals: per-sample UNet evaluations spent (2 per step under CFG).
    """

    latents: np.ndarray
    images: Optional[np.ndarray]
    prompt_index: np.ndarray
    timesteps: np.ndarray
    evals: int


class _DiffusersTarget:
    """Common code: schedule, timesteps, prediction-type conversion, batching, counters.

    Subclasses set ``unet``, ``schedule``, ``scheduler_config``, ``device``,
    ``dtype``, ``sample_shape`` (C, h, w), ``batch_size`` and implement
    ``_model_output(x (b,C,h,w), t (b,) long, cond_rows)``.
    """

    unet: Any
    schedule: VPSchedule
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    sample_shape: tuple[int, int, int]
    batch_size: int
    prediction_type: str

    def _init_counters(self) -> None:
        self.evals = 0  # per-sample UNet evaluations (rows), forward or JVP
        self.unet_calls = 0  # batched UNet forward calls

    # ----- shapes and time ------------------------------------------------- #
    @property
    def dim(self) -> int:
        """d = C·h·w of a flattened sample."""
        c, h, w = self.sample_shape
        return int(c * h * w)

    def _check_x(self, x: Any) -> Union[np.ndarray, torch.Tensor]:
        if isinstance(x, torch.Tensor):
            if x.ndim != 2 or x.shape[1] != self.dim or not x.is_floating_point():
                raise ValueError(f"x must be a float tensor of shape (B, {self.dim}), got {x.dtype} {tuple(x.shape)}")
            return x
        arr = np.asarray(x)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}) (flattened {self.sample_shape}), got {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"x must be a real array, got dtype {arr.dtype}")
        return arr

    def _t_rows(self, t: TimeArg, B: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps (B,) int64, ᾱ (B,) float64) for an int or (B,) int array t."""
        if t is None:
            raise ValueError(f"{type(self).__name__} needs an integer timestep t in [0, {self.schedule.T - 1}], got None")
        tt = np.asarray(t)
        if tt.ndim == 0:
            tt = np.full(B, tt)
        elif tt.shape != (B,):
            raise ValueError(f"t must be an int or an int array of shape ({B},), got shape {tt.shape}")
        abar = np.asarray(self.schedule.abar(tt), dtype=np.float64).reshape(B)
        return tt.astype(np.int64), abar

    def ddim_timesteps(self, steps: int) -> np.ndarray:
        """Descending DDIM timesteps of diffusers' ``DDIMScheduler`` for this folder's
        scheduler config (``timestep_spacing``, ``steps_offset``; SD 1.x with 50
        steps: 981, 961, …, 1), int64 (steps,)."""
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= self.schedule.T:
            raise ValueError(f"steps must be an integer in [1, {self.schedule.T}], got {steps!r}")
        sched = self._ddim_scheduler()
        sched.set_timesteps(int(steps))
        return sched.timesteps.detach().cpu().numpy().astype(np.int64)

    def _ddim_scheduler(self):
        diffusers = _import_diffusers()
        # ε̂ is passed to step(), so the scheduler must treat model outputs as ε.
        return diffusers.DDIMScheduler.from_config(self.scheduler_config, prediction_type="epsilon")

    # ----- core evaluation ------------------------------------------------- #
    def _model_output(self, x: torch.Tensor, t: torch.Tensor, cond_rows: Any) -> torch.Tensor:
        """Raw UNet output (b, C, h, w) for model-dtype input x and long timesteps t (b,)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _model_output")

    def _resolve_cond(self, cond: Any, B: int) -> Any:
        """Per-row condition object accepted by :meth:`_slice_cond` / :meth:`_model_output`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _resolve_cond")

    def _slice_cond(self, cond_rows: Any, lo: int, hi: int) -> Any:
        return None if cond_rows is None else cond_rows[lo:hi]

    def _eps_core(self, x: torch.Tensor, tt: np.ndarray, abar: np.ndarray, cond_rows: Any) -> torch.Tensor:
        """ε̂ for x (b, d) (any float dtype/device, differentiable); returns (b, d) float32 on self.device."""
        b = x.shape[0]
        xs = x.to(device=self.device, dtype=torch.float32)
        t_dev = torch.as_tensor(tt, dtype=torch.long, device=self.device)
        out = self._model_output(xs.reshape(b, *self.sample_shape).to(self.dtype), t_dev, cond_rows)
        out = out.reshape(b, self.dim).float()
        self.evals += b
        self.unet_calls += 1
        if self.prediction_type == "epsilon":
            return out
        a = torch.as_tensor(abar, dtype=torch.float32, device=self.device)[:, None]
        if self.prediction_type == "v_prediction":  # v = √ᾱ ε − √(1−ᾱ) x₀  ⇒  ε = √ᾱ v + √(1−ᾱ) x_t
            return torch.sqrt(a) * out + torch.sqrt(1.0 - a) * xs
        # "sample": the model predicts x₀  ⇒  ε = (x_t − √ᾱ x̂₀)/√(1−ᾱ)
        return (xs - torch.sqrt(a) * out) / torch.sqrt(1.0 - a)

    def _eps_batched(self, x: torch.Tensor, t: TimeArg, cond: Any) -> torch.Tensor:
        B = x.shape[0]
        tt, abar = self._t_rows(t, B)
        cond_rows = self._resolve_cond(cond, B)
        outs = []
        for lo in range(0, B, self.batch_size):
            hi = min(B, lo + self.batch_size)
            outs.append(self._eps_core(x[lo:hi], tt[lo:hi], abar[lo:hi], self._slice_cond(cond_rows, lo, hi)))
        if not outs:
            return torch.zeros((0, self.dim), dtype=torch.float32, device=self.device)
        return torch.cat(outs, dim=0)

    def eps(self, x_t: Any, t: TimeArg, cond: Any = None) -> Union[np.ndarray, torch.Tensor]:
        """Predicted noise ε̂(x_t, t, c), batched in chunks of ``batch_size`` rows.

        Args:
            x_t: (B, d) flattened noisy samples, numpy or torch.
            t: integer timestep in [0, T−1] or an int array (B,).
            cond: see the module docstring (text-to-image) or
                :class:`DiffusersUnconditionalTarget`.

        Returns:
            (B, d): numpy (float32 for float32 input, else float64) for numpy
            input; a torch tensor in the input's dtype/device for torch input.
            No autograd (see :meth:`eps_torch`). Seeding is the caller's job:
            this call is deterministic given its inputs.
        """
        x = self._check_x(x_t)
        with torch.inference_mode():
            if isinstance(x, torch.Tensor):
                return self._eps_batched(x, t, cond).to(dtype=x.dtype, device=x.device)
            out = self._eps_batched(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), t, cond)
            res = out.cpu().numpy()
        return res if x.dtype == np.float32 else res.astype(np.float64)

    def eps_torch(self, x: torch.Tensor, t: TimeArg, cond: Any = None) -> torch.Tensor:
        """Differentiable ε̂(x_t, t, c) for a torch (B, d) tensor; same dtype/device as ``x``.

        Works under :func:`torch.func.jvp` inside :func:`forward_ad_attention`.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"eps_torch needs a torch tensor, got {type(x).__name__}")
        x = self._check_x(x)
        return self._eps_batched(x, t, cond).to(dtype=x.dtype, device=x.device)

    def score_torch(self, x: torch.Tensor, t: TimeArg, cond: Any = None) -> torch.Tensor:
        """Score s(x_t, c) = −ε̂/√(1−ᾱ_t) (METHODS §4.6), differentiable; (B, d) like ``x``."""
        e = self.eps_torch(x, t, cond)
        _, abar = self._t_rows(t, e.shape[0])
        scale = torch.as_tensor(1.0 / np.sqrt(1.0 - abar), dtype=e.dtype, device=e.device)[:, None]
        return -scale * e

    def score(self, x: np.ndarray, t: TimeArg, cond: Any = None) -> np.ndarray:
        """Numpy score −ε̂/√(1−ᾱ_t), shape (B, d) (for :func:`models.score.plaplace.flux_estimator`)."""
        x = self._check_x(x)
        e = self.eps(x, t, cond)
        _, abar = self._t_rows(t, e.shape[0])
        return (-e / np.sqrt(1.0 - abar)[:, None]).astype(e.dtype, copy=False)

    # ----- DDIM ------------------------------------------------------------ #
    def _ddim_loop(
        self,
        n_rows: int,
        steps: int,
        generator: GeneratorArg,
        eps_fn,
    ) -> tuple[torch.Tensor, np.ndarray, int]:
        """Run deterministic DDIM (η = 0) with diffusers' DDIMScheduler.

        ``eps_fn(x (b,d) float32, t int, lo, hi) -> (b,d) float32`` gives the
        (possibly guided) ε̂ for rows lo:hi. Initial noise is drawn on the CPU
        from ``generator`` (device-independent), then moved to ``self.device``.
        """
        if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 0:
            raise ValueError(f"number of samples must be a non-negative integer, got {n_rows!r}")
        timesteps = self.ddim_timesteps(steps)
        gen = _make_generator(generator)
        sched = self._ddim_scheduler()
        sched.set_timesteps(int(steps))
        noise = torch.randn((n_rows, self.dim), generator=gen, dtype=torch.float32) * float(sched.init_noise_sigma)
        start = self.evals
        out = []
        with torch.inference_mode():
            for lo in range(0, n_rows, self.batch_size):
                hi = min(n_rows, lo + self.batch_size)
                x = noise[lo:hi].to(self.device)
                for t in timesteps:
                    e = eps_fn(x, int(t), lo, hi)
                    x4 = sched.step(e.reshape(hi - lo, *self.sample_shape), int(t),
                                    x.reshape(hi - lo, *self.sample_shape), eta=0.0).prev_sample
                    x = x4.reshape(hi - lo, self.dim).float()
                out.append(x)
        lat = torch.cat(out, 0) if out else torch.zeros((0, self.dim), device=self.device)
        return lat, timesteps, self.evals - start


# --------------------------------------------------------------------------- #
# Text-to-image (Stable Diffusion 1.x / 2.x layout)
# --------------------------------------------------------------------------- #
class DiffusersTextToImageTarget(_DiffusersTarget):
    """A local SD-style diffusers folder as a memorization target (METHODS §2.3, §4.3, §4.6).

    Build with :meth:`load`. Attributes: ``unet`` (UNet2DConditionModel), ``vae``
    (AutoencoderKL), ``text_encoder`` (CLIPTextModel), ``tokenizer``
    (CLIPTokenizer, 49408 tokens), ``tokenizer_source`` ("folder" or
    "open_clip_bpe"), ``scheduler_config`` (dict), ``schedule`` (VPSchedule
    from the scheduler's betas), ``prediction_type``, ``device``, ``dtype``,
    ``sample_shape`` (C, h, w) of the latent, ``image_size`` (H, W) in pixels,
    ``scaling_factor``, ``batch_size``; counters ``evals`` (per-sample UNet
    evaluations), ``unet_calls``, ``text_evals``, ``vae_evals``.
    """

    def __init__(
        self,
        unet: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        scheduler_config: dict,
        *,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 8,
        resolution: Optional[int] = None,
        tokenizer_source: str = "given",
    ) -> None:
        _check_clip_vocab(tokenizer, tokenizer_source)
        te_vocab = int(getattr(text_encoder.config, "vocab_size", CLIP_VOCAB_SIZE))
        if te_vocab < len(tokenizer):
            raise ValueError(f"text encoder vocab_size {te_vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.tokenizer_source = tokenizer_source
        self.scheduler_config = dict(scheduler_config)
        self.schedule = _schedule_from_scheduler_config(self.scheduler_config, "scheduler_config")
        self.prediction_type = str(self.scheduler_config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config")
        self.device, self.dtype, self.batch_size = device, dtype, int(batch_size)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)
        c = int(unet.config.in_channels)
        if c != int(vae.config.latent_channels):
            raise ValueError(f"UNet in_channels {c} != VAE latent_channels {vae.config.latent_channels}")
        if resolution is None:
            ss = unet.config.sample_size
            h, w = (ss, ss) if isinstance(ss, int) else tuple(ss)
        else:
            if int(resolution) % self.vae_scale_factor:
                raise ValueError(f"resolution {resolution} must be divisible by the VAE factor {self.vae_scale_factor}")
            h = w = int(resolution) // self.vae_scale_factor
        self.sample_shape = (c, int(h), int(w))
        self.image_size = (int(h) * self.vae_scale_factor, int(w) * self.vae_scale_factor)
        self.max_length = int(getattr(tokenizer, "model_max_length", 77))
        if self.max_length > 4096:  # "unset" sentinel of transformers
            self.max_length = int(text_encoder.config.max_position_embeddings)
        self._embed_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._init_counters()
        self.text_evals = 0
        self.vae_evals = 0

    # ----- loading --------------------------------------------------------- #
    @classmethod
    def load(
        cls,
        path: str,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype, None] = None,
        *,
        batch_size: int = 8,
        resolution: Optional[int] = None,
    ) -> "DiffusersTextToImageTarget":
        """Load ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` from a local folder.

        Args:
            path: diffusers folder (``model_index.json``, ``unet/``, ``vae/``,
                ``text_encoder/``, ``tokenizer/``, ``scheduler/``). fp16 weight
                variants (``*.fp16.safetensors``) are detected.
            device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
            dtype: None → float16 on CUDA, float32 on CPU. A VAE whose config
                has ``force_upcast`` stays float32.
            batch_size: rows per UNet / VAE / text-encoder call.
            resolution: image side in pixels (default: UNet sample_size × VAE factor).

        Raises:
            FileNotFoundError: folder or required parts missing (all named at once).
            ValueError: bad device/dtype, or a tokenizer without 49408 tokens.
        """
        root = _require_dir(path, "diffusers text-to-image")
        parts = {
            "unet": ("config.json", (_UNET_STEM,)),
            "vae": ("config.json", (_UNET_STEM,)),
            "text_encoder": ("config.json", _TEXT_STEMS),
        }
        missing: list[str] = []
        variants: dict[str, Optional[str]] = {}
        for sub, (cfg, stems) in parts.items():
            folder = os.path.join(root, sub)
            if not os.path.isdir(folder):
                missing.append(f"{sub}/")
                continue
            if not os.path.isfile(os.path.join(folder, cfg)):
                missing.append(f"{sub}/{cfg}")
            ok, variants[sub] = _weight_variant(folder, stems)
            if not ok:
                missing.append(f"{sub}/{stems[0]}.safetensors (or .bin)")
        sched_file = os.path.join(root, "scheduler", "scheduler_config.json")
        if not os.path.isfile(sched_file):
            missing.append("scheduler/scheduler_config.json")
        if missing:
            raise FileNotFoundError(
                f"diffusers folder {root!r} is incomplete: missing {missing}. Expected layout: model_index.json, "
                "unet/{config.json, diffusion_pytorch_model.safetensors}, vae/{config.json, "
                "diffusion_pytorch_model.safetensors}, text_encoder/{config.json, model.safetensors}, "
                "scheduler/scheduler_config.json, tokenizer/{vocab.json, merges.txt} (optional: rebuilt from "
                "open_clip's BPE when absent)"
            )
        dev = _resolve_device(device)
        dt = _resolve_dtype(dtype, dev)
        diffusers = _import_diffusers()
        transformers = _import_transformers()
        unet = diffusers.UNet2DConditionModel.from_pretrained(
            root, subfolder="unet", torch_dtype=dt, local_files_only=True, variant=variants["unet"]
        )
        # diffusers' AutoencoderKL defaults force_upcast to True: such VAEs stay float32 under fp16.
        force_upcast = bool(_read_json(os.path.join(root, "vae", "config.json")).get("force_upcast", True))
        vae_dt = torch.float32 if (dt == torch.float16 and force_upcast) else dt
        vae = diffusers.AutoencoderKL.from_pretrained(
            root, subfolder="vae", torch_dtype=vae_dt, local_files_only=True, variant=variants["vae"]
        )
        text_encoder = transformers.CLIPTextModel.from_pretrained(
            os.path.join(root, "text_encoder"), local_files_only=True, variant=variants["text_encoder"]
        )
        tokenizer, source = cls._load_tokenizer(root, int(text_encoder.config.max_position_embeddings))
        # Inference only: frozen parameters keep autograd/JVP from tracking weights
        # (gradients w.r.t. inputs, e.g. latents or prompt embeddings, still work).
        unet.to(dev).eval().requires_grad_(False)
        vae.to(dev).eval().requires_grad_(False)
        text_encoder.to(device=dev, dtype=dt).eval().requires_grad_(False)
        return cls(
            unet, vae, text_encoder, tokenizer, _read_json(sched_file),
            device=dev, dtype=dt, batch_size=batch_size, resolution=resolution, tokenizer_source=source,
        )

    @staticmethod
    def _load_tokenizer(root: str, max_length: int) -> tuple[Any, str]:
        """The folder's tokenizer when it loads with 49408 tokens, else the open_clip BPE rebuild."""
        transformers = _import_transformers()
        tdir = os.path.join(root, "tokenizer")
        pad_token = "<|endoftext|>"
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            f = os.path.join(tdir, name)
            if os.path.isfile(f):
                try:
                    pad = _read_json(f).get("pad_token")
                except ValueError:
                    continue
                pad = pad.get("content") if isinstance(pad, dict) else pad
                if isinstance(pad, str) and pad:
                    pad_token = pad
                    break
        has_files = os.path.isdir(tdir) and (
            any(os.path.isfile(os.path.join(tdir, f)) for f in _TOKENIZER_FILES)
            and (os.path.isfile(os.path.join(tdir, "tokenizer.json")) or os.path.isfile(os.path.join(tdir, "merges.txt")))
        )
        if has_files:
            try:
                tok = transformers.CLIPTokenizer.from_pretrained(tdir, local_files_only=True)
                _check_clip_vocab(tok, f"folder {tdir!r}")
                return tok, "folder"
            except (OSError, ValueError, TypeError, KeyError):
                pass  # unloadable or wrong size: rebuild below (checked again there)
        return clip_bpe_tokenizer(max_length=max_length, pad_token=pad_token), "open_clip_bpe"

    # ----- text ------------------------------------------------------------ #
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text-encoder embeddings (P, L, D) in the model dtype on ``self.device``.

        Prompts are padded/truncated to ``max_length`` (77) like SD pipelines;
        the output is ``last_hidden_state``. The empty prompt "" is the null
        condition ε̂(x_t, ∅) of classifier-free guidance. Batched by
        ``batch_size``; results are cached per prompt string.
        """
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple, np.ndarray)):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        prompts = [p for p in prompts]
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must be strings, got {bad[:3]!r}")
        todo = list(dict.fromkeys(p for p in prompts if p not in self._embed_cache))
        with torch.inference_mode():
            for lo in range(0, len(todo), self.batch_size):
                chunk = todo[lo : lo + self.batch_size]
                ids = self.tokenizer(
                    chunk, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
                ).input_ids.to(self.device)
                emb = self.text_encoder(ids).last_hidden_state.to(self.dtype)
                self.text_evals += len(chunk)
                for p, e in zip(chunk, emb):
                    self._embed_cache[p] = e
                    if len(self._embed_cache) > _EMBED_CACHE_SIZE:
                        self._embed_cache.popitem(last=False)
            if not prompts:
                hidden = int(self.text_encoder.config.hidden_size)
                return torch.zeros((0, self.max_length, hidden), dtype=self.dtype, device=self.device)
            missing = [p for p in prompts if p not in self._embed_cache]
            if missing:  # evicted in this call (more distinct prompts than the cache): recompute directly
                ids = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                                     truncation=True, return_tensors="pt").input_ids.to(self.device)
                self.text_evals += len(prompts)
                return self.text_encoder(ids).last_hidden_state.to(self.dtype)
            return torch.stack([self._embed_cache[p] for p in prompts], 0)

    @property
    def null_embedding(self) -> torch.Tensor:
        """(L, D) embedding of the empty prompt (the null condition)."""
        return self.encode_prompts([""])[0]

    def _resolve_cond(self, cond: Any, B: int) -> torch.Tensor:
        """(B, L, D) embeddings (possibly an expanded view) for any accepted ``cond``."""
        if cond is None or isinstance(cond, str):
            return self.encode_prompts(["" if cond is None else cond])[0].unsqueeze(0).expand(B, -1, -1)
        if isinstance(cond, torch.Tensor):
            emb = cond.to(device=self.device, dtype=self.dtype)
            if emb.ndim == 2:
                return emb.unsqueeze(0).expand(B, -1, -1)
            if emb.ndim == 3 and emb.shape[0] == 1:
                return emb.expand(B, -1, -1)
            if emb.ndim == 3 and emb.shape[0] == B:
                return emb
            raise ValueError(f"cond embeddings must have shape (L, D), (1, L, D) or ({B}, L, D), got {tuple(emb.shape)}")
        if isinstance(cond, (list, tuple, np.ndarray)):
            rows = list(np.asarray(cond, dtype=object).reshape(-1)) if isinstance(cond, np.ndarray) else list(cond)
            if len(rows) != B or np.ndim(cond) != 1:
                raise ValueError(f"a per-row cond must be a 1-D sequence of {B} prompts, got shape {np.shape(cond)}")
            rows = ["" if r is None else r for r in rows]
            if not all(isinstance(r, str) for r in rows):
                raise ValueError("a per-row cond must hold prompt strings (or None for the null prompt)")
            uniq = {p: i for i, p in enumerate(dict.fromkeys(rows))}
            emb = self.encode_prompts(list(uniq))
            return emb[torch.as_tensor([uniq[r] for r in rows], dtype=torch.long, device=self.device)]
        raise ValueError(
            f"cond must be None, a prompt string, a sequence of {B} prompts or an embedding tensor; "
            f"got {type(cond).__name__}"
        )

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond_rows).sample

    # ----- images ---------------------------------------------------------- #
    def _check_images(self, images: Any) -> np.ndarray:
        arr = np.asarray(images)
        H, W = self.image_size
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (H, W, 3):
            raise ValueError(f"images must be uint8 of shape (B, {H}, {W}, 3), got {arr.dtype} {arr.shape}")
        return arr

    def encode_images(self, images: np.ndarray, *, sample: bool = False, generator: GeneratorArg = None) -> np.ndarray:
        """VAE latents x₀ = (z − shift)·scaling_factor of uint8 images (METHODS §2.3).

        Args:
            images: (B, H, W, 3) uint8 RGB, H, W = ``image_size``.
            sample: draw z from the posterior (``latent_dist.sample``) instead
                of its mean (default, deterministic).
            generator: torch.Generator / int seed for ``sample=True``.

        Returns:
            (B, d) float32 numpy latents.
        """
        arr = self._check_images(images)
        gen = _make_generator(generator)
        vdt = next(self.vae.parameters()).dtype
        out = []
        with torch.inference_mode():
            for lo in range(0, arr.shape[0], self.batch_size):
                x = torch.from_numpy(arr[lo : lo + self.batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                dist = self.vae.encode(x.to(device=self.device, dtype=vdt)).latent_dist
                if sample:
                    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen, dtype=torch.float32).to(
                        device=self.device, dtype=dist.mean.dtype)
                else:
                    z = dist.mean
                z = (z.float() - self.shift_factor) * self.scaling_factor
                self.vae_evals += x.shape[0]
                out.append(z.reshape(z.shape[0], -1).cpu())
        lat = torch.cat(out, 0).numpy() if out else np.zeros((0, self.dim), np.float32)
        if lat.shape[1] != self.dim:
            raise ValueError(f"VAE latents have {lat.shape[1]} values, expected d={self.dim} for {self.sample_shape}")
        return lat

    def decode_latents(self, latents: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """uint8 (B, H, W, 3) images from (B, d) latents (inverse of :meth:`encode_images`)."""
        lat = self._check_x(latents)
        lat = lat if isinstance(lat, torch.Tensor) else torch.from_numpy(np.asarray(lat, dtype=np.float32))
        vdt = next(self.vae.parameters()).dtype
        out = []
        with torch.inference_mode():
            for lo in range(0, lat.shape[0], self.batch_size):
                z = lat[lo : lo + self.batch_size].to(device=self.device, dtype=torch.float32)
                z = z.reshape(z.shape[0], *self.sample_shape) / self.scaling_factor + self.shift_factor
                img = self.vae.decode(z.to(vdt)).sample.float()
                self.vae_evals += z.shape[0]
                img = ((img.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
                out.append(img.permute(0, 2, 3, 1).cpu())
        H, W = self.image_size
        return torch.cat(out, 0).numpy() if out else np.zeros((0, H, W, 3), np.uint8)

    # ----- generation ------------------------------------------------------ #
    def generate(
        self,
        prompts: Sequence[str],
        n_per_prompt: int = 1,
        steps: int = 50,
        guidance_scale: float = 7.5,
        generator: GeneratorArg = None,
        *,
        return_images: bool = True,
    ) -> GenerationResult:
        """DDIM (η = 0) with classifier-free guidance, as SD pipelines (METHODS §1.2, §4.3).

        ε̂ = ε̂(x, ∅) + w·(ε̂(x, c) − ε̂(x, ∅)), w = ``guidance_scale`` (w = 1:
        conditional only; w = 0: unconditional only). x_T ~ N(0, I) is drawn on
        the CPU from ``generator`` (torch.Generator or int seed), so results do
        not depend on the device's RNG. Rows are grouped by prompt.

        Returns:
            :class:`GenerationResult` (latents (N, d) float32, images uint8 or None).
        """
        if isinstance(n_per_prompt, bool) or not isinstance(n_per_prompt, (int, np.integer)) or n_per_prompt < 1:
            raise ValueError(f"n_per_prompt must be a positive integer, got {n_per_prompt!r}")
        w = float(guidance_scale)
        if not math.isfinite(w):
            raise ValueError(f"guidance_scale must be finite, got {guidance_scale!r}")
        cond = self.encode_prompts(prompts)
        P, n = cond.shape[0], int(n_per_prompt)
        prompt_index = np.repeat(np.arange(P, dtype=np.int64), n)
        cond_rows = cond.repeat_interleave(n, dim=0)
        null = self.null_embedding

        def eps_fn(x: torch.Tensor, t: int, lo: int, hi: int) -> torch.Tensor:
            b = hi - lo
            tt = np.full(b, t, dtype=np.int64)
            abar = np.full(b, self.schedule.abar(t))
            if w == 1.0:
                return self._eps_core(x, tt, abar, cond_rows[lo:hi])
            if w == 0.0:
                return self._eps_core(x, tt, abar, null.expand(b, -1, -1))
            both = self._eps_core(torch.cat([x, x]), np.concatenate([tt, tt]), np.concatenate([abar, abar]),
                                  torch.cat([null.expand(b, -1, -1), cond_rows[lo:hi]]))
            e_u, e_c = both[:b], both[b:]
            return e_u + w * (e_c - e_u)

        lat, timesteps, evals = self._ddim_loop(P * n, steps, generator, eps_fn)
        images = self.decode_latents(lat) if return_images else None
        return GenerationResult(lat.cpu().numpy(), images, prompt_index, timesteps, evals)


# --------------------------------------------------------------------------- #
# Unconditional / class-conditional pixel-space UNet2DModel
# --------------------------------------------------------------------------- #
class DiffusersUnconditionalTarget(_DiffusersTarget):
    """A local ``UNet2DModel`` + scheduler folder (e.g. google/ddpm-cifar10-32 layout) in pixel space.

    ``eps(x_t (B, d), t, cond=None)`` with x_t the flattened (C, H, W) image
    in [-1, 1] units; ``cond`` must be None unless the UNet is class-conditional
    (``num_class_embeds``), where it is an int label or an int array (B,).
    """

    def __init__(
        self,
        unet: Any,
        scheduler_config: dict,
        *,
        device: torch.device,
        dtype: torch.dtype,
        batch_size: int = 64,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.unet = unet
        self.scheduler_config = dict(scheduler_config)
        self.schedule = _schedule_from_scheduler_config(self.scheduler_config, "scheduler_config")
        self.prediction_type = str(self.scheduler_config.get("prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {self.prediction_type!r} in the scheduler config")
        self.device, self.dtype, self.batch_size = device, dtype, int(batch_size)
        ss = unet.config.sample_size
        h, w = (ss, ss) if isinstance(ss, int) else tuple(ss)
        self.sample_shape = (int(unet.config.in_channels), int(h), int(w))
        self.image_size = (int(h), int(w))
        self.num_classes = getattr(unet.config, "num_class_embeds", None)
        self._init_counters()

    @classmethod
    def load(
        cls,
        path: str,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype, None] = None,
        *,
        batch_size: int = 64,
    ) -> "DiffusersUnconditionalTarget":
        """Load ``unet/`` (or a flat ``config.json`` + weights) and ``scheduler/scheduler_config.json``
        (or a flat ``scheduler_config.json``) from a local folder.

        Raises:
            FileNotFoundError: folder or required files missing (named).
        """
        root = _require_dir(path, "diffusers unconditional")
        sub = os.path.join(root, "unet")
        unet_dir, subfolder = (sub, "unet") if os.path.isdir(sub) else (root, None)
        missing = []
        if not os.path.isfile(os.path.join(unet_dir, "config.json")):
            missing.append("unet/config.json")
        ok, variant = _weight_variant(unet_dir, (_UNET_STEM,))
        if not ok:
            missing.append(f"unet/{_UNET_STEM}.safetensors (or .bin)")
        sched_file = os.path.join(root, "scheduler", "scheduler_config.json")
        if not os.path.isfile(sched_file):
            flat = os.path.join(root, "scheduler_config.json")
            sched_file = flat if os.path.isfile(flat) else sched_file
        if not os.path.isfile(sched_file):
            missing.append("scheduler/scheduler_config.json")
        if missing:
            raise FileNotFoundError(
                f"diffusers unconditional folder {root!r} is incomplete: missing {missing}. Expected "
                "unet/{config.json, diffusion_pytorch_model.safetensors} and scheduler/scheduler_config.json "
                "(or the same files flat in the folder)"
            )
        dev = _resolve_device(device)
        dt = _resolve_dtype(dtype, dev)
        diffusers = _import_diffusers()
        unet = diffusers.UNet2DModel.from_pretrained(
            root, subfolder=subfolder, torch_dtype=dt, local_files_only=True, variant=variant
        )
        unet.to(dev).eval().requires_grad_(False)
        return cls(unet, _read_json(sched_file), device=dev, dtype=dt, batch_size=batch_size)

    def _resolve_cond(self, cond: Any, B: int) -> Optional[torch.Tensor]:
        if cond is None:
            return None
        if not self.num_classes:
            raise ValueError(f"this UNet2DModel is unconditional; cond must be None, got {cond!r}")
        c = np.asarray(cond)
        if c.dtype.kind not in "iu":
            raise ValueError(f"cond must be an integer class label or an int array, got {cond!r}")
        if c.ndim == 0:
            c = np.full(B, int(c))
        elif c.shape != (B,):
            raise ValueError(f"cond array must have shape ({B},), got {c.shape}")
        if c.size and (c.min() < 0 or c.max() >= int(self.num_classes)):
            raise ValueError(f"class labels must lie in [0, {int(self.num_classes) - 1}], got {np.unique(c)[:10].tolist()}")
        return torch.as_tensor(c, dtype=torch.long, device=self.device)

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, cond_rows: Optional[torch.Tensor]) -> torch.Tensor:
        return self.unet(x, t, class_labels=cond_rows).sample

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """(B, d) float32 x₀ in [-1, 1] from uint8 (B, H, W, C) images (C = UNet channels)."""
        arr = np.asarray(images)
        c, h, w = self.sample_shape
        if arr.ndim == 3 and c == 1:
            arr = arr[..., None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (h, w, c):
            raise ValueError(f"images must be uint8 of shape (B, {h}, {w}, {c}), got {arr.dtype} {arr.shape}")
        x = arr.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
        return x.reshape(arr.shape[0], -1)

    def decode_latents(self, x0: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
        """uint8 (B, H, W, C) images from (B, d) pixel-space samples in [-1, 1]."""
        x = self._check_x(x0)
        arr = x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)
        img = np.round((np.clip(arr, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        return img.reshape(arr.shape[0], *self.sample_shape).transpose(0, 2, 3, 1)

    def generate(
        self,
        n: int,
        steps: int = 50,
        generator: GeneratorArg = None,
        *,
        cond: Any = None,
        return_images: bool = True,
    ) -> GenerationResult:
        """DDIM (η = 0) samples; ``cond`` = class label(s) for class-conditional UNets."""
        cond_rows = self._resolve_cond(cond, int(n)) if cond is not None else None

        def eps_fn(x: torch.Tensor, t: int, lo: int, hi: int) -> torch.Tensor:
            b = hi - lo
            return self._eps_core(x, np.full(b, t, dtype=np.int64), np.full(b, self.schedule.abar(t)),
                                  None if cond_rows is None else cond_rows[lo:hi])

        lat, timesteps, evals = self._ddim_loop(n, steps, generator, eps_fn)
        lat_np = lat.cpu().numpy()
        images = self.decode_latents(lat_np) if return_images else None
        return GenerationResult(lat_np, images, np.zeros(lat_np.shape[0], dtype=np.int64), timesteps, evals)


# --------------------------------------------------------------------------- #
# Dispatch
# --------------------------------------------------------------------------- #
def load_any_target(spec: str, **kwargs: Any):
    """Load a target from a spec string.

    ``diffusers:PATH`` → :meth:`DiffusersTextToImageTarget.load`,
    ``diffusers-uncond:PATH`` → :meth:`DiffusersUnconditionalTarget.load`
    (``kwargs``: device, dtype, batch_size, …), ``gmm:FILE`` / ``memorizer:FILE``
    → :func:`models.score.targets.closed_form.load_target` (no kwargs).

    Raises:
        ValueError: unknown prefix (the allowed prefixes are listed).
    """
    if isinstance(spec, str):
        kind, sep, path = spec.partition(":")
        kind = kind.strip().lower()
        if sep and kind == "diffusers":
            return DiffusersTextToImageTarget.load(path, **kwargs)
        if sep and kind == "diffusers-uncond":
            return DiffusersUnconditionalTarget.load(path, **kwargs)
        if sep and kind in ("gmm", "memorizer"):
            if kwargs:
                raise ValueError(f"{kind}: targets take no loader options, got {sorted(kwargs)}")
            return load_target(f"{kind}:{path}")
    raise ValueError(f"unknown target spec {spec!r}; expected one of the prefixes {list(TARGET_PREFIXES)} followed by a path")
