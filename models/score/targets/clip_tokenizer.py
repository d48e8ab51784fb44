"""SD's CLIP BPE tokenizer rebuilt offline from open_clip's bundled vocabulary.

Stable Diffusion 1.x/2.x folders often ship without a loadable ``tokenizer/``;
an offline ``from_pretrained`` then silently returns a tiny default vocabulary.
:func:`clip_bpe_tokenizer` rebuilds the exact 49408-token OpenAI CLIP
vocabulary (Radford et al. 2021, arXiv:2103.00020) from open_clip's
``bpe_simple_vocab_16e6.txt.gz``, and :func:`check_clip_vocab` refuses any
other size.
"""
from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from typing import Any, Optional

from models.score.targets.diffusers_io import import_transformers

CLIP_VOCAB_SIZE = 49408
"""Size of the OpenAI CLIP BPE vocabulary used by SD 1.x/2.x text encoders."""

_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # merges used by CLIP's tokenizer (OpenAI and HF agree)


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


def check_clip_vocab(tokenizer: Any, source: str) -> None:
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
    transformers = import_transformers()
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
    check_clip_vocab(tok, f"open_clip BPE {path!r}")
    return tok
