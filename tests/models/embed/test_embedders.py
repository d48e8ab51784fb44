import numpy as np
import pytest

from models.embed.embedders import (
    EmbedderConfig, ModelSpec, ModelUnavailable, OnnxPreprocess, PixelEmbedder, l2_normalise, load_embedder,
)
from models.storage.imaging import decode_image
from tests.helpers import jpeg, noise_image

TINY = "openclip:dupmine-tiny/random"


def test_model_spec_parsing_and_errors():
    assert ModelSpec.parse("openclip:ViT-B-32/laion2b_s34b_b79k") == ModelSpec("openclip", "ViT-B-32", "laion2b_s34b_b79k")
    assert ModelSpec.parse("openclip:ViT-B-32//abs/ckpt.bin").pretrained == "/abs/ckpt.bin"
    assert ModelSpec.parse("onnx:/m.onnx").path == "/m.onnx"
    assert ModelSpec.parse("pixel").kind == "pixel"
    for bad in ("clip:foo", "openclip:ViT-B-32", "onnx:", "pixel:x"):
        with pytest.raises(ValueError, match="expected"):
            ModelSpec.parse(bad)


def test_l2_normalise_flags_zero_and_nonfinite_rows():
    x = np.array([[3, 4], [0, 0], [np.nan, 1]], np.float32)
    out, ok = l2_normalise(x)
    assert ok.tolist() == [True, False, False]
    np.testing.assert_allclose(out[0], [0.6, 0.8])


def test_pixel_embedding_finds_exact_and_near_copies_but_not_others():
    emb = PixelEmbedder()
    base = noise_image(0, (128, 128)).resize((32, 32)).resize((128, 128))  # smooth-ish content
    other = noise_image(1, (128, 128)).resize((32, 32)).resize((128, 128))
    near = decode_image(jpeg(base.resize((120, 120)), quality=70)).image
    batch = np.stack([emb.preprocess(im) for im in (base, base, near, other)])
    x, ok = l2_normalise(emb.embed_images(batch))
    assert ok.all() and x.shape == (4, PixelEmbedder.KEEP ** 2) == (4, 64)
    sims = x @ x.T
    assert sims[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert sims[0, 2] > 0.95
    assert sims[0, 3] < 0.5
    # DCT is orthonormal: embedding norm equals the thumbnail's low-frequency energy.
    thumb = emb.preprocess(base)
    assert np.linalg.norm(emb.embed_images(thumb[None])[0]) <= np.linalg.norm(thumb) + 1e-4


def test_openclip_tiny_random_identical_images_cosine_one_and_text_tower():
    emb = load_embedder(EmbedderConfig(TINY, device="cpu"))
    assert emb.has_text and emb.dim == 64 and emb.image_size == 64
    a, b = noise_image(3, (80, 60)), noise_image(4, (80, 60))
    x, ok = l2_normalise(emb.embed_images(np.stack([emb.preprocess(a), emb.preprocess(a.copy()), emb.preprocess(b)])))
    assert ok.all()
    assert float(x[0] @ x[1]) == pytest.approx(1.0, abs=1e-5)
    assert float(x[0] @ x[2]) < 0.9999
    t, ok = l2_normalise(emb.embed_texts(["a red square", "a red square", "the starry night by van gogh", ""]))
    assert ok.all() and float(t[0] @ t[1]) == pytest.approx(1.0, abs=1e-5) and float(t[0] @ t[2]) < 0.9999


def test_openclip_random_weights_are_identical_across_loads_and_leave_global_rng_alone():
    import torch

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = load_embedder(EmbedderConfig(TINY, device="cpu"))
    after = torch.rand(1)
    b = load_embedder(EmbedderConfig(TINY, device="cpu"))
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a.embed_texts(["a flag"]), b.embed_texts(["a flag"]))


def test_openclip_tokenizer_is_the_real_bpe_vocabulary():
    import open_clip

    tok = open_clip.get_tokenizer("dupmine-tiny")
    assert tok.vocab_size == 49408
    ids = tok(["van gogh"])[0].tolist()
    assert ids[0] == 49406 and 49407 in ids and len([i for i in ids if i not in (0, 49406, 49407)]) >= 2


def test_openclip_missing_weights_fail_at_start_naming_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as e:
        load_embedder(EmbedderConfig("openclip:ViT-B-32/laion2b_s34b_b79k", device="cpu"))
    msg = str(e.value)
    assert "onnx:PATH" in msg and "pixel" in msg and "random" in msg and "local checkpoint" in msg


def test_openclip_bad_tag_and_arch_are_value_errors():
    with pytest.raises(ValueError, match="neither a local checkpoint nor an open_clip tag"):
        load_embedder(EmbedderConfig("openclip:ViT-B-32/no_such_tag", device="cpu"))
    with pytest.raises(ValueError, match="architecture"):
        load_embedder(EmbedderConfig("openclip:NoSuchNet/random", device="cpu"))


def test_openclip_local_checkpoint_path_roundtrip(tmp_path):
    import torch

    emb = load_embedder(EmbedderConfig(TINY, device="cpu"))
    ckpt = tmp_path / "tiny.pt"
    torch.save(emb.model.state_dict(), ckpt)
    again = load_embedder(EmbedderConfig(f"openclip:dupmine-tiny/{ckpt}", device="cpu"))
    img = np.stack([emb.preprocess(noise_image(5))])
    np.testing.assert_allclose(emb.embed_images(img), again.embed_images(img), rtol=1e-5, atol=1e-6)


def test_onnx_preprocess_sources_and_validation(tmp_path):
    assert OnnxPreprocess.load('{"size": 96, "offset": 128, "scale": 128}', "m.onnx").size == 96
    (tmp_path / "m.onnx.json").write_text('{"size": 32, "resize": "squash"}')
    assert OnnxPreprocess.load(None, str(tmp_path / "m.onnx")).resize == "squash"
    with pytest.raises(ValueError, match="unknown"):
        OnnxPreprocess.load('{"sise": 3}', "m.onnx")
    with pytest.raises(ValueError, match="both offset and scale"):
        OnnxPreprocess(offset=1.0)


def test_onnx_embedder_on_a_tiny_exported_model(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 32, 32), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    emb = load_embedder(EmbedderConfig(f"onnx:{path}", device="cpu", preprocess='{"size": 32}'))
    assert emb.dim == 8 and not emb.fixed_batch
    imgs = [noise_image(i, (40, 40)) for i in range(3)]
    batch = np.stack([emb.preprocess(im) for im in imgs])
    with torch.no_grad():
        ref = net(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(emb.embed_images(batch), ref, rtol=1e-4, atol=1e-5)


def test_shared_mobilenet_onnx(shared_data):
    path = shared_data / "models" / "mobilenet_v1_embedding.onnx"
    emb = load_embedder(EmbedderConfig(f"onnx:{path}", device="cpu", preprocess='{"size":224,"resize":"squash","offset":128,"scale":128}'))
    assert emb.dim == 1024 and emb.fixed_batch
    a = noise_image(0, (100, 100))
    x, ok = l2_normalise(emb.embed_images(np.stack([emb.preprocess(a), emb.preprocess(a), emb.preprocess(noise_image(9, (100, 100)))])))
    assert ok.all() and float(x[0] @ x[1]) == pytest.approx(1.0, abs=1e-5)


def _pixel_cosines(images):
    emb = PixelEmbedder()
    x, ok = l2_normalise(emb.embed_images(np.stack([emb.preprocess(im) for im in images])))
    assert ok.all()
    return x @ x.T


def test_pixel_different_drawings_of_the_same_brightness_and_colour_are_far_apart():
    """Issue 14.12: the old embedding kept DC and was not mean-centred, so brightness and colour dominated."""
    from PIL import Image, ImageDraw

    def drawing(shapes, fg=(200, 40, 40), bg=(40, 40, 200)):
        img = Image.new("RGB", (128, 128), bg)
        d = ImageDraw.Draw(img)
        for kind, box in shapes:
            (d.ellipse if kind == "e" else d.rectangle)(box, fill=fg)
        return img

    a = drawing([("e", (10, 10, 60, 60)), ("r", (70, 70, 120, 120))])        # same colours, same ink area,
    b = drawing([("r", (70, 10, 120, 60)), ("e", (10, 70, 60, 120))])        # different layout
    c = drawing([("r", (10, 40, 120, 90))])
    d = drawing([("r", (40, 10, 90, 120))])                                  # c rotated: same mean, same colours
    means = [np.asarray(im.convert("L"), np.float32).mean() for im in (a, b, c, d)]
    assert max(means[:2]) - min(means[:2]) < 3.0 and abs(means[2] - means[3]) < 1.0
    sims = _pixel_cosines([a, b, c, d])
    assert sims[0, 1] < 0.5 and sims[2, 3] < 0.5
    # the copy detector still sees re-encoded and rescaled copies
    copies = [decode_image(jpeg(im, quality=60)).image for im in (a, c)] + [decode_image(jpeg(a.resize((90, 90)), quality=80)).image]
    sims = _pixel_cosines([a, copies[0], c, copies[1], copies[2]])
    assert sims[0, 1] > 0.99 and sims[2, 3] > 0.99 and sims[0, 4] > 0.99


def test_pixel_ignores_brightness_and_rejects_flat_images():
    from PIL import ImageEnhance

    base = noise_image(0, (128, 128)).resize((16, 16)).resize((128, 128))
    brighter = ImageEnhance.Brightness(base).enhance(1.1)
    assert _pixel_cosines([base, brighter])[0, 1] > 0.98
    emb = PixelEmbedder()
    from PIL import Image

    flat = [Image.new("RGB", (64, 64), c) for c in ((0, 0, 0), (255, 255, 255), (30, 200, 90))]
    _, ok = l2_normalise(emb.embed_images(np.stack([emb.preprocess(im) for im in flat])))
    assert not ok.any()  # no structure: zero embedding, becomes a zero-embedding reject


def test_onnx_model_and_preprocessing_load_from_an_object_store_url(tmp_path):
    """Issue 11.5: the model file, its .json sidecar and --preprocess files go through fsspec, not os.path."""
    import torch

    from models.storage import layout

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    local = tmp_path / "tiny.onnx"
    torch.onnx.export(net, torch.zeros(1, 3, 24, 24), str(local), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
    url = "memory://models-remote/tiny.onnx"
    layout.atomic_write_bytes(url, local.read_bytes())
    layout.atomic_write_bytes(url + ".json", b'{"size": 24, "resize": "squash"}')
    emb = load_embedder(EmbedderConfig(f"onnx:{url}", device="cpu"))
    assert emb.dim == 4 and emb.pre.size == 24 and emb.pre.resize == "squash"
    batch = np.stack([emb.preprocess(noise_image(1, (30, 30)))])
    with torch.no_grad():
        np.testing.assert_allclose(emb.embed_images(batch), net(torch.from_numpy(batch)).numpy(), rtol=1e-4, atol=1e-5)
    layout.atomic_write_bytes("memory://models-remote/pre.json", b'{"size": 16}')
    assert OnnxPreprocess.load("memory://models-remote/pre.json", url).size == 16
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_embedder(EmbedderConfig("onnx:memory://models-remote/none.onnx", device="cpu"))
