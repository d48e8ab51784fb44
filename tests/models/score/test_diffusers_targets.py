"""Tests for models.score.targets.hf_diffusers on tiny random-init diffusers folders.

No pretrained weights exist offline, so each test folder is built from tiny
configs (UNet2DConditionModel (32, 64) channels, AutoencoderKL ×2, 2-layer
CLIPTextModel with the real 49408-token vocabulary, DDPMScheduler with SD's
scaled-linear betas), written with ``save_pretrained`` and loaded back through
:meth:`DiffusersTextToImageTarget.load`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.score.targets.hf_diffusers import (
    CLIP_VOCAB_SIZE,
    DiffusersTextToImageTarget,
    DiffusersUnconditionalTarget,
    clip_bpe_tokenizer,
    load_any_target,
)

PROMPTS = [
    "Mothers influence on her young hippo",
    "Mother and her young hippo",
    "A photo of an astronaut's dog, 1990s!",
    "the no limits business woman podcast",
    "Living in the Light with Ann Graham Lotz",
]


def make_tiny_sd(root: Path, seed: int = 0) -> Path:
    """Write a tiny random-init SD-style diffusers folder (no tokenizer/) under ``root``."""
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
        ).save_pretrained(root / "unet")
        AutoencoderKL(
            block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
        ).save_pretrained(root / "vae")
        CLIPTextModel(CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=49407,
        )).save_pretrained(root / "text_encoder")
    DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        steps_offset=1, clip_sample=False,
    ).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def make_tiny_uncond(root: Path, seed: int = 0) -> Path:
    """Tiny UNet2DModel (3×8×8 pixels) + DDPMScheduler in the flat layout (google/ddpm-* style)."""
    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        UNet2DModel(
            sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=32,
        ).save_pretrained(root)
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def sd(sd_folder) -> DiffusersTextToImageTarget:
    return DiffusersTextToImageTarget.load(str(sd_folder), device="cpu")


def _link_parts(src: Path, dst: Path, parts) -> Path:
    dst.mkdir()
    for p in parts:
        os.symlink(src / p, dst / p)
    return dst


# --------------------------------------------------------------------------- #
# Loading and tokenizer
# --------------------------------------------------------------------------- #
def test_load_shapes_and_schedule(sd):
    from diffusers import DDPMScheduler

    assert sd.dim == 4 * 8 * 8 and sd.sample_shape == (4, 8, 8) and sd.image_size == (16, 16)
    assert sd.device.type == "cpu" and sd.dtype == torch.float32
    assert sd.scaling_factor == pytest.approx(0.18215)
    assert sd.tokenizer_source == "open_clip_bpe" and len(sd.tokenizer) == CLIP_VOCAB_SIZE
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert sd.schedule.T == 1000
    np.testing.assert_allclose(sd.schedule.alphas_cumprod, ref.alphas_cumprod.double().numpy(), rtol=1e-5)
    # SD's DDIM spacing ("leading", steps_offset=1): 50 steps start at 981
    ts = sd.ddim_timesteps(50)
    assert ts[0] == 981 and ts[-1] == 1 and len(ts) == 50


def test_tokenizer_matches_open_clip(sd):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    sot, eot = ref.encoder["<start_of_text>"], ref.encoder["<end_of_text>"]
    assert (sot, eot) == (49406, 49407)
    ids = sd.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
    for prompt, row in zip(PROMPTS, ids):
        body = [sot] + ref.encode(prompt) + [eot]
        assert row[: len(body)] == body, prompt
        assert row[len(body):] == [eot] * (77 - len(body))  # SD 1.x pads with <|endoftext|>


def test_folder_tokenizer_is_used_and_bad_one_replaced(sd, sd_folder, tmp_path):
    parts = ["unet", "vae", "text_encoder", "scheduler", "model_index.json"]
    good = _link_parts(sd_folder, tmp_path / "good", parts)
    sd.tokenizer.save_pretrained(good / "tokenizer")
    t1 = DiffusersTextToImageTarget.load(str(good), device="cpu")
    assert t1.tokenizer_source == "folder" and len(t1.tokenizer) == CLIP_VOCAB_SIZE
    assert t1.tokenizer(PROMPTS).input_ids == sd.tokenizer(PROMPTS).input_ids
    # A tokenizer folder without vocabulary files would load as a tiny default tokenizer offline.
    bad = _link_parts(sd_folder, tmp_path / "bad", parts)
    (bad / "tokenizer").mkdir()
    (bad / "tokenizer" / "tokenizer_config.json").write_text("{}")
    t2 = DiffusersTextToImageTarget.load(str(bad), device="cpu")
    assert t2.tokenizer_source == "open_clip_bpe" and len(t2.tokenizer) == CLIP_VOCAB_SIZE


def test_clip_bpe_tokenizer_checks_vocab_size(tmp_path):
    import gzip

    fake = tmp_path / "bpe.txt.gz"
    with gzip.open(fake, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\nh e\nl l\n")
    with pytest.raises(ValueError, match="49408"):
        clip_bpe_tokenizer(bpe_path=str(fake))


# --------------------------------------------------------------------------- #
# eps
# --------------------------------------------------------------------------- #
def test_eps_shapes_dtypes_and_conditions(sd):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, sd.dim))
    before = sd.evals
    e64 = sd.eps(x, 10, PROMPTS[0])
    assert e64.shape == (3, sd.dim) and e64.dtype == np.float64 and np.all(np.isfinite(e64))
    assert sd.evals - before == 3
    e32 = sd.eps(x.astype(np.float32), 10, PROMPTS[0])
    assert e32.dtype == np.float32
    np.testing.assert_allclose(e32, e64, atol=1e-6)
    et = sd.eps(torch.from_numpy(x), 10, PROMPTS[0])
    assert isinstance(et, torch.Tensor) and et.dtype == torch.float64
    np.testing.assert_allclose(et.numpy(), e64, atol=1e-6)
    # deterministic; None is the empty prompt; embeddings work like strings
    np.testing.assert_array_equal(sd.eps(x, 10, PROMPTS[0]), e64)
    np.testing.assert_allclose(sd.eps(x, 10, None), sd.eps(x, 10, ""), atol=1e-7)
    emb = sd.encode_prompts(PROMPTS[:2])
    assert emb.shape == (2, 77, 32)
    np.testing.assert_allclose(sd.eps(x, 10, emb[0]), e64, atol=1e-6)
    assert np.abs(sd.eps(x, 10, PROMPTS[1]) - e64).max() > 1e-4  # the condition matters
    # per-row prompts and per-row timesteps equal row-by-row calls
    rows = [PROMPTS[0], PROMPTS[1], None]
    ts = np.array([10, 500, 999])
    per_row = sd.eps(x, ts, rows)
    for i in range(3):
        np.testing.assert_allclose(per_row[i], sd.eps(x[i:i + 1], int(ts[i]), rows[i])[0], atol=1e-5)
    np.testing.assert_allclose(sd.eps(x, ts, np.array(rows[:2] + [""])), per_row, atol=1e-5)


def test_eps_batches_like_single_call(sd_folder):
    small = DiffusersTextToImageTarget.load(str(sd_folder), device="cpu", batch_size=2)
    x = np.random.default_rng(1).standard_normal((5, small.dim)).astype(np.float32)
    calls = small.unet_calls
    out = small.eps(x, 100, "a hippo")
    assert small.unet_calls - calls == 3
    np.testing.assert_allclose(out, np.concatenate([small.eps(x[i:i + 1], 100, "a hippo") for i in range(5)]),
                               atol=1e-5)


@pytest.mark.parametrize(
    "x_shape, t, cond, match",
    [
        ((2, 255), 10, None, r"\(B, 256\)"),
        ((2, 256), None, None, "integer timestep"),
        ((2, 256), 1000, None, "out of range"),
        ((2, 256), np.array([1, 2, 3]), None, "shape"),
        ((2, 256), 10, 7, "cond must be"),
        ((2, 256), 10, ["a", "b", "c"], "per-row cond"),
        ((2, 256), 10, torch.zeros(3, 77, 32), "embeddings"),
    ],
)
def test_eps_rejects_bad_arguments(sd, x_shape, t, cond, match):
    with pytest.raises(ValueError, match=match):
        sd.eps(np.zeros(x_shape), t, cond)


def test_score_torch_is_scaled_eps(sd):
    x = torch.randn(2, sd.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    abar = sd.schedule.abar(500)
    s = sd.score_torch(x, 500, "a hippo")
    assert not s.requires_grad  # frozen weights; x does not require grad
    np.testing.assert_allclose(s.numpy(), -sd.eps(x.numpy(), 500, "a hippo") / np.sqrt(1 - abar), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- #
# Images, generation, plaplace / ddim_sample interop
# --------------------------------------------------------------------------- #
def test_encode_decode_images(sd):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    lat = sd.encode_images(imgs)
    assert lat.shape == (3, sd.dim) and lat.dtype == np.float32
    with torch.no_grad():
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        ref = sd.vae.encode(x).latent_dist.mean.reshape(3, -1).numpy() * 0.18215
    np.testing.assert_allclose(lat, ref, rtol=1e-5, atol=1e-6)
    sampled = sd.encode_images(imgs, sample=True, generator=0)
    np.testing.assert_array_equal(sampled, sd.encode_images(imgs, sample=True, generator=0))
    assert not np.allclose(sampled, lat)
    dec = sd.decode_latents(lat)
    assert dec.shape == (3, 16, 16, 3) and dec.dtype == np.uint8
    with pytest.raises(ValueError, match=r"\(B, 16, 16, 3\)"):
        sd.encode_images(imgs[:, :8])
    with pytest.raises(ValueError, match="uint8"):
        sd.encode_images(imgs.astype(np.float32))


def test_generate_cfg_end_to_end(sd):
    t0 = time.perf_counter()
    r = sd.generate(PROMPTS[:2], n_per_prompt=2, steps=4, guidance_scale=7.5, generator=0)
    elapsed = time.perf_counter() - t0
    assert r.latents.shape == (4, sd.dim) and r.latents.dtype == np.float32 and np.all(np.isfinite(r.latents))
    assert r.images.shape == (4, 16, 16, 3) and r.images.dtype == np.uint8
    assert r.prompt_index.tolist() == [0, 0, 1, 1]
    assert r.evals == 2 * 4 * 4  # CFG: conditional + null per row and step
    assert r.timesteps.tolist() == sd.ddim_timesteps(4).tolist()
    assert elapsed < 20.0
    same = sd.generate(PROMPTS[:2], n_per_prompt=2, steps=4, guidance_scale=7.5,
                       generator=torch.Generator().manual_seed(0), return_images=False)
    np.testing.assert_array_equal(same.latents, r.latents)
    assert same.images is None
    other = sd.generate(PROMPTS[:2], n_per_prompt=2, steps=4, guidance_scale=7.5, generator=1, return_images=False)
    assert not np.allclose(other.latents, r.latents)
    plain = sd.generate(PROMPTS[:1], n_per_prompt=1, steps=3, guidance_scale=1.0, generator=0, return_images=False)
    assert plain.evals == 3


def test_generate_matches_manual_cfg_ddim(sd):
    """One DDIM step with CFG by hand (Wen et al. protocol, arXiv:2407.21720) equals generate(steps=1)."""
    r = sd.generate(["a hippo"], 1, steps=1, guidance_scale=3.0, generator=5, return_images=False)
    x = torch.randn((1, sd.dim), generator=torch.Generator().manual_seed(5)).numpy().astype(np.float64)
    t = int(sd.ddim_timesteps(1)[0])
    e_u, e_c = sd.eps(x, t, None), sd.eps(x, t, "a hippo")
    e = e_u + 3.0 * (e_c - e_u)
    a_t = sd.schedule.abar(t)
    # DDIMScheduler ends at ᾱ = 1 unless the config says set_alpha_to_one=False (SD 1.x: ends at ᾱ_0)
    a_prev = 1.0 if sd.scheduler_config.get("set_alpha_to_one", True) else sd.schedule.abar(0)
    x0 = (x - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
    np.testing.assert_allclose(r.latents, np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * e, rtol=1e-4, atol=1e-4)


def test_plugs_into_noise_cosine_and_ddim_sample(sd):
    from models.score.targets.closed_form import ddim_sample
    from models.score.plaplace import noise_cosine_statistic

    imgs = np.random.default_rng(2).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    x0 = sd.encode_images(imgs)
    mean, se = noise_cosine_statistic(sd, x0, 10, 4, np.random.default_rng(0), cond="Mother and her young hippo")
    assert mean.shape == (2,) and np.all(np.isfinite(mean)) and np.all(np.abs(mean) <= 1.0)
    assert np.all(np.isfinite(se))
    mean_rows, _ = noise_cosine_statistic(sd, x0, 10, 4, np.random.default_rng(0), cond=np.array(["a", ""]))
    assert np.all(np.abs(mean_rows) <= 1.0)
    mean_null, _ = noise_cosine_statistic(sd, x0, 10, 4, np.random.default_rng(0), cond=None)
    assert np.all(np.isfinite(mean_null))
    out = ddim_sample(sd, 2, sd.dim, 3, np.random.default_rng(0), cond="a hippo")
    assert out.shape == (2, sd.dim) and np.all(np.isfinite(out))


# --------------------------------------------------------------------------- #
# Folder errors and dispatch
# --------------------------------------------------------------------------- #
def test_missing_or_incomplete_folder(sd_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        DiffusersTextToImageTarget.load(str(tmp_path / "nope"), device="cpu")
    no_vae = _link_parts(sd_folder, tmp_path / "no_vae", ["unet", "text_encoder", "scheduler"])
    with pytest.raises(FileNotFoundError, match=r"missing \['vae/'\]"):
        DiffusersTextToImageTarget.load(str(no_vae), device="cpu")
    partial = _link_parts(sd_folder, tmp_path / "partial", ["vae", "text_encoder"])
    (partial / "unet").mkdir()
    (partial / "unet" / "config.json").write_text((sd_folder / "unet" / "config.json").read_text())
    with pytest.raises(FileNotFoundError) as info:
        DiffusersTextToImageTarget.load(str(partial), device="cpu")
    msg = str(info.value)
    assert "unet/diffusion_pytorch_model.safetensors" in msg and "scheduler/scheduler_config.json" in msg
    assert "vae/'" not in msg and "text_encoder/'" not in msg


def test_bad_device_and_dtype(sd_folder):
    with pytest.raises(ValueError, match="device"):
        DiffusersTextToImageTarget.load(str(sd_folder), device="tpu")
    with pytest.raises(ValueError, match="dtype"):
        DiffusersTextToImageTarget.load(str(sd_folder), device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            DiffusersTextToImageTarget.load(str(sd_folder), device="cuda")


def test_load_any_target_dispatch(sd_folder, tmp_path):
    from models.score.targets.closed_form import GMMTarget, MemorizerTarget, VPSchedule, save_target, triangle_gmm

    t = load_any_target(f"diffusers:{sd_folder}", device="cpu")
    assert isinstance(t, DiffusersTextToImageTarget) and t.dim == 256
    u = load_any_target(f"diffusers-uncond:{make_tiny_uncond(tmp_path / 'uncond')}", device="cpu")
    assert isinstance(u, DiffusersUnconditionalTarget)
    g_spec = save_target(str(tmp_path / "g.npz"), triangle_gmm(schedule=VPSchedule.linear(100)))
    assert isinstance(load_any_target(g_spec), GMMTarget)
    m = MemorizerTarget(np.eye(3), None, VPSchedule.linear(50))
    assert isinstance(load_any_target(save_target(str(tmp_path / "m.npz"), m)), MemorizerTarget)
    for bad in ("sd:/x", "/just/a/path", "", None):
        with pytest.raises(ValueError, match="diffusers-uncond:"):
            load_any_target(bad)
    with pytest.raises(FileNotFoundError, match="diffusers text-to-image folder not found"):
        load_any_target(f"diffusers:{tmp_path / 'missing'}")


# --------------------------------------------------------------------------- #
# Unconditional UNet2DModel
# --------------------------------------------------------------------------- #
def test_unconditional_target(tmp_path):
    u = DiffusersUnconditionalTarget.load(str(make_tiny_uncond(tmp_path / "u")), device="cpu")
    assert u.dim == 3 * 8 * 8 and u.schedule.T == 100 and u.num_classes is None
    x = np.random.default_rng(0).standard_normal((3, u.dim))
    e = u.eps(x, 50)
    assert e.shape == (3, u.dim) and np.all(np.isfinite(e))
    np.testing.assert_array_equal(e, u.eps(x, 50, None))
    with pytest.raises(ValueError, match="unconditional"):
        u.eps(x, 50, 1)
    r = u.generate(2, steps=3, generator=0)
    assert r.latents.shape == (2, u.dim) and r.images.shape == (2, 8, 8, 3) and r.evals == 6
    np.testing.assert_array_equal(r.latents, u.generate(2, steps=3, generator=0, return_images=False).latents)
    imgs = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(u.decode_latents(u.encode_images(imgs)), imgs)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="scheduler/scheduler_config.json"):
        DiffusersUnconditionalTarget.load(str(tmp_path / "empty"), device="cpu")


def test_weight_variant_detection(tmp_path):
    from models.score.targets.hf_diffusers import _weight_variant

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
    assert _weight_variant(str(tmp_path / "a"), ("diffusion_pytorch_model",)) == (True, "fp16")
    (tmp_path / "a" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert _weight_variant(str(tmp_path / "a"), ("diffusion_pytorch_model",)) == (True, None)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.safetensors.index.json").write_text("{}")
    assert _weight_variant(str(tmp_path / "b"), ("model", "pytorch_model")) == (True, None)
    assert _weight_variant(str(tmp_path / "missing"), ("model",)) == (False, None)


def test_class_conditional_null_condition_and_grayscale(tmp_path):
    """cond=None on a class-conditional UNet is the zero class embedding, not a diffusers error; 1-channel works."""
    import copy

    from models.tv_compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import DDPMScheduler, UNet2DModel

    root = tmp_path / "cc"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                    norm_num_groups=16, num_class_embeds=3).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    u = load_any_target(f"diffusers-uncond:{root}", device="cpu")
    assert u.num_classes == 3 and u.sample_shape == (1, 8, 8)
    x = np.random.default_rng(0).standard_normal((4, u.dim)).astype(np.float32)
    null = u.eps(x, 50, None)
    np.testing.assert_array_equal(null, u.eps(x, 50, -1))
    assert not np.allclose(null, u.eps(x, 50, 0))
    zeroed = copy.deepcopy(u.unet)
    zeroed.class_embedding.inner.weight.data.zero_()
    with torch.no_grad():
        ref = zeroed(torch.from_numpy(x).reshape(4, 1, 8, 8), torch.full((4,), 50), class_labels=torch.zeros(4, dtype=torch.long)).sample
    np.testing.assert_allclose(null, ref.reshape(4, -1).numpy(), rtol=1e-5, atol=1e-6)
    mixed = u.eps(x, 50, np.array([-1, 0, 1, 2]))
    np.testing.assert_allclose(mixed[0], null[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed[1], u.eps(x, 50, 0)[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        u.eps(x, 50, 3)
    r = u.generate(2, steps=3, generator=0)  # the null condition
    assert r.images.shape == (2, 8, 8, 3) and np.array_equal(r.images[..., 0], r.images[..., 2])
    from PIL import Image

    Image.fromarray(r.images[0]).save(tmp_path / "gray.png")
    gray = np.random.default_rng(1).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(u.decode_latents(u.encode_images(gray))[..., 0], gray)
