"""Train a small pixel-space DDPM and save it in diffusers layout (loadable as a score target).

Algorithm: DDPM training (Ho et al. 2020, arXiv:2006.11239, Algorithm 1):
x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t ~ U{0..T-1}, loss |eps - eps_theta(x_t, t, c)|^2.
Text-conditional models drop the caption to the empty prompt with probability
``cond_drop``, so one network also learns the null condition used by
classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, Algorithm 1).

Output folder (diffusers layout; ``diffusers:DIR`` for conditional models,
``diffusers-uncond:DIR`` for unconditional ones, see
:func:`models.score.targets.loading.load_target`)::

    DIR/unet/{config.json, diffusion_pytorch_model.safetensors}   UNet2DConditionModel | UNet2DModel
    DIR/scheduler/scheduler_config.json                            DDPMScheduler (linear betas)
    DIR/text_encoder/, DIR/tokenizer/                              conditional only (frozen MiniLM)
    DIR/model_index.json
    DIR/dupmine_training.json     config, data fingerprint, steps, seconds, final loss (the cache key)

Memory: the images as float32 (N*R*R*C*4 bytes) plus one (U, L, D) float32
table of caption embeddings (U distinct captions); the model is a few MB.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import fsspec
import numpy as np
import torch

from models.score.training.config import TrainConfig
from models.score.training.data import TrainingImages

TRAINING_FILE = "dupmine_training.json"


@dataclass(frozen=True)
class TrainedModel:
    """Where a trained model is and what it cost.

    Attributes:
      path: the diffusers folder; spec: its target spec (``diffusers:`` / ``diffusers-uncond:``);
      steps: optimizer steps; seconds: wall time of the training loop (0 when loaded from cache);
      final_loss: mean loss of the last 50 steps; cached: True when an identical run was reused.
    """

    path: str
    spec: str
    steps: int
    seconds: float
    final_loss: float
    cached: bool


def target_spec(path: str, conditional: bool) -> str:
    return f"{'diffusers' if conditional else 'diffusers-uncond'}:{path}"


def build_unet(cfg: TrainConfig, cross_attention_dim: int | None = None):
    """A fresh UNet2DConditionModel (conditional) or UNet2DModel, seeded by ``cfg.seed``."""
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import diffusers

    n = len(cfg.block_out_channels)
    common = dict(sample_size=cfg.resolution, in_channels=cfg.channels, out_channels=cfg.channels,
                  layers_per_block=cfg.layers_per_block, block_out_channels=cfg.block_out_channels,
                  norm_num_groups=cfg.norm_num_groups)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if not cfg.conditional:
            return diffusers.UNet2DModel(down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                                         attention_head_dim=cfg.attention_head_dim, **common)
        return diffusers.UNet2DConditionModel(
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
            cross_attention_dim=int(cross_attention_dim), attention_head_dim=cfg.attention_head_dim, **common)


def build_scheduler(cfg: TrainConfig):
    """DDPMScheduler with linear betas; ``cfg.clip_sample`` clips x0 to [-1, 1] at sampling (diffusers' DDPM
    default). Near t = T, x0 = (x_t - sqrt(1 - abar) eps)/sqrt(abar) amplifies eps errors ~150x, which the clip
    contains (see :class:`TrainConfig` for what it costs and buys, measured)."""
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import diffusers

    return diffusers.DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="linear",
                                   beta_start=cfg.beta_start, beta_end=cfg.beta_end, clip_sample=cfg.clip_sample,
                                   clip_sample_range=1.0, prediction_type="epsilon")


FOLDER_FORMAT = 2  # bump when what is written changes without a config field saying so


def _cache_key(cfg: TrainConfig, data: TrainingImages) -> dict:
    return {"config": cfg.to_json(), "data": data.fingerprint(), "n_images": int(data.images.shape[0]),
            "format": FOLDER_FORMAT}


def _read_cached(path: str, key: dict) -> dict | None:
    try:
        with fsspec.open(f"{path.rstrip('/')}/{TRAINING_FILE}", "r", encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        return None
    return meta if meta.get("key") == key else None


def _caption_table(cfg: TrainConfig, captions: list[str]):
    """(tokenizer, encoder, table (U+1, L, D) float32, caption index (N,) into it); row U is the null ""."""
    from models.score.targets.text_encoders import embed_prompts, load_auto_text_encoder, minilm_folder

    folder = minilm_folder()
    tokenizer, encoder = load_auto_text_encoder(folder, folder, torch.device("cpu"), torch.float32)
    uniq = list(dict.fromkeys(captions))
    row = {c: i for i, c in enumerate(uniq)}
    table = torch.cat([embed_prompts(tokenizer, encoder, uniq[lo:lo + 64], cfg.max_length, torch.device("cpu"))
                       for lo in range(0, len(uniq), 64)] +
                      [embed_prompts(tokenizer, encoder, [""], cfg.max_length, torch.device("cpu"))]).clone()
    return tokenizer, encoder, table, torch.as_tensor([row[c] for c in captions], dtype=torch.long)


def _save(unet, scheduler, cfg: TrainConfig, tokenizer, encoder, meta: dict, out: str) -> None:
    """Write the diffusers folder to a local temp dir, then move/copy it to ``out`` (local or URL)."""
    tmp = tempfile.mkdtemp(prefix="dupmine_train_")
    try:
        unet.save_pretrained(os.path.join(tmp, "unet"))
        scheduler.save_pretrained(os.path.join(tmp, "scheduler"))
        index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", type(unet).__name__],
                 "scheduler": ["diffusers", type(scheduler).__name__]}
        if cfg.conditional:
            encoder.save_pretrained(os.path.join(tmp, "text_encoder"))
            tokenizer.model_max_length = cfg.max_length
            tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
            index.update(_class_name="DupminePixelTextToImage", text_encoder=["transformers", type(encoder).__name__],
                         tokenizer=["transformers", type(tokenizer).__name__])
        with open(os.path.join(tmp, "model_index.json"), "w", encoding="utf-8") as fh:
            json.dump(index, fh, indent=1)
        with open(os.path.join(tmp, TRAINING_FILE), "w", encoding="utf-8") as fh:  # last: it marks completion
            json.dump(meta, fh, indent=1)
        fs, root = fsspec.core.url_to_fs(out)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        if "file" in fs.protocol:
            os.makedirs(os.path.dirname(os.path.abspath(root)) or ".", exist_ok=True)
            shutil.move(tmp, root)
        else:
            fs.put(tmp.rstrip("/") + "/", root, recursive=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def train(data: TrainingImages, cfg: TrainConfig, out: str, *, log_every: int = 0, num_threads: int = 1) -> TrainedModel:
    """Train on ``data`` and save to ``out``; reuse ``out`` when it holds a run with the same config and data.

    Args:
      data: training images (resolution and channels must match ``cfg``) with their captions.
      cfg: :class:`TrainConfig`.
      out: output folder (local path or fsspec URL).
      log_every: print the running loss every this many steps (0: silent).
      num_threads: torch intra-op threads while training (restored after). 1 by default: a
        small UNet gains little from more, and on a shared 2-core machine two threads
        thrash (measured 33 ms/step with 1 thread vs 660 ms with 2 under load 5.7).

    Returns:
      :class:`TrainedModel` (path, target spec, steps, seconds, final loss, cached flag).
    """
    if data.resolution != cfg.resolution or data.channels != cfg.channels:
        raise ValueError(f"images are {data.resolution}px x {data.channels} channels, config wants "
                         f"{cfg.resolution}px x {cfg.channels}")
    key = _cache_key(cfg, data)
    cached = _read_cached(out, key)
    if cached is not None:
        return TrainedModel(out, target_spec(out, cfg.conditional), cfg.steps, 0.0, float(cached["final_loss"]), True)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        return _train(data, cfg, out, key, log_every)
    finally:
        torch.set_num_threads(previous_threads)


def _train(data: TrainingImages, cfg: TrainConfig, out: str, key: dict, log_every: int) -> TrainedModel:
    tokenizer = encoder = table = caption_row = None
    if cfg.conditional:
        tokenizer, encoder, table, caption_row = _caption_table(cfg, data.captions)
    unet = build_unet(cfg, None if table is None else int(table.shape[-1]))
    scheduler = build_scheduler(cfg)
    abar = scheduler.alphas_cumprod.float()
    x_all = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.warmup_steps)))
    losses: list[float] = []
    unet.train()
    started = time.monotonic()
    for step in range(cfg.steps):
        idx = torch.randint(0, x_all.shape[0], (cfg.batch_size,), generator=gen)
        x0 = x_all[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, cfg.num_train_timesteps, (cfg.batch_size,), generator=gen)
        a = abar[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
        if cfg.conditional:
            rows = caption_row[idx]
            drop = torch.rand(cfg.batch_size, generator=gen) < cfg.cond_drop
            rows = torch.where(drop, torch.full_like(rows, table.shape[0] - 1), rows)
            pred = unet(xt, t, encoder_hidden_states=table[rows]).sample
        else:
            pred = unet(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{cfg.steps} loss {np.mean(losses[-log_every:]):.4f}", flush=True)
    seconds = time.monotonic() - started
    final = float(np.mean(losses[-50:]))
    unet.eval()
    meta = {"key": key, "steps": cfg.steps, "seconds": round(seconds, 2), "final_loss": final,
            "parameters": int(sum(p.numel() for p in unet.parameters()))}
    _save(unet, scheduler, cfg, tokenizer, encoder, meta, out)
    return TrainedModel(out, target_spec(out, cfg.conditional), cfg.steps, seconds, final, False)
