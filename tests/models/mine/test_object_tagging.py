"""Tests for models.mine.taggers (base, calibration, zero_shot, classifier, spec): calibrated zero-shot tagging and the ONNX classifier tagger."""
from __future__ import annotations

import json
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from models.embed.embedders import EmbedderConfig, ModelUnavailable, OnnxPreprocess, load_embedder
from models.storage.imaging import decode_image
from models.mine.mentions import VocabMatcher
from models.mine.vocab import VocabEntry
from models.mine.taggers.base import select_tags
from models.mine.taggers.calibration import ZeroShotCalibration
from models.mine.taggers.classifier import (
    MOBILENET_PREPROCESS,
    ClassifierConfig,
    OnnxClassifierTagger,
    read_labels,
    vocab_for_labels,
)
from models.mine.taggers.spec import TaggerSpec, load_tagger, parse_tagger_spec
from models.mine.taggers.zero_shot import DEFAULT_TEMPLATES, ZeroShotConfig, ZeroShotTagger
from tests.helpers import noise_image

TINY = "openclip:dupmine-tiny/random"
VOCAB = [
    VocabEntry("flag", ("banner", "ensign")),
    VocabEntry("astronaut", ("spaceman", "cosmonaut")),
    VocabEntry("dog", ("puppy",)),
    VocabEntry("horse", ()),
    VocabEntry("car", ("automobile",)),
    VocabEntry("tree", ()),
    VocabEntry("refrigerator", ("fridge",)),
    VocabEntry("space shuttle", ()),
    VocabEntry("guitar", ()),
    VocabEntry("umbrella", ("parasol",)),
    VocabEntry("bicycle", ("bike",)),
    VocabEntry("clock", ()),
]
N_BACKGROUND, N_PLANTED_EACH, NOISE = 4000, 50, 0.2


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.manual_seed(0)  # the random-init text tower is then the same on every run
    return load_embedder(EmbedderConfig(TINY, device="cpu"))


@pytest.fixture(scope="module")
def tagger(tiny):
    return ZeroShotTagger(tiny, VOCAB)


@pytest.fixture(scope="module")
def planted(tagger):
    """Synthetic image embeddings: background images and images of planted objects.

    CLIP image embeddings fill a narrow cone, so background images are
    ``normalise(t_generic + noise)`` (generic photos). Images of object o are
    ``normalise(t_o + noise)``, around o's prompt-ensemble embedding. Every
    image also carries a component along one object's direction (the object
    with the largest ``||t_o - t_generic||``): that object is a "hub" text whose
    score is high on every image, so its baseline differs from the others'.
    """
    rng = np.random.default_rng(0)
    t, g = tagger.text_embeddings, tagger.generic_embedding
    dim = t.shape[1]
    hub = int(np.argmax(np.linalg.norm(tagger.directions, axis=1)))
    shift = 0.5 * _unit(tagger.directions[hub])
    background = _unit(g + NOISE * rng.standard_normal((N_BACKGROUND, dim)) / np.sqrt(dim) + shift)
    labels = np.repeat(np.arange(len(VOCAB)), N_PLANTED_EACH)
    objects = _unit(t[labels] + NOISE * rng.standard_normal((labels.size, dim)) / np.sqrt(dim) + shift)
    perm = rng.permutation(N_BACKGROUND + labels.size)  # planted images spread through the sample
    x = np.concatenate([background, objects])[perm]
    label = np.concatenate([np.full(N_BACKGROUND, -1), labels])[perm]
    return x, label, hub


def _rates(rows, cols, label):
    """(recall of the planted object among tags, fraction of background images with any tag)."""
    tagged = np.zeros(label.size, bool)
    tagged[rows] = True
    hit = np.zeros(label.size, bool)
    hit[rows[cols == label[rows]]] = True
    planted = label >= 0
    return hit[planted].mean(), tagged[~planted].mean()


# ---------------------------------------------------------------------------
# Zero-shot: text side
# ---------------------------------------------------------------------------


def test_prompt_ensemble_is_mean_over_synonyms_and_templates(tiny, tagger):
    from models.embed.embedders import l2_normalise

    prompts = [tpl.replace("{o}", w) for w in ("flag", "banner", "ensign") for tpl in DEFAULT_TEMPLATES]
    emb, ok = l2_normalise(tiny.embed_texts(prompts))
    want = _unit(emb.mean(axis=0))
    np.testing.assert_allclose(tagger.text_embeddings[0], want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tagger.text_embeddings, axis=1), 1.0, atol=1e-5)
    assert tagger.objects[:2] == ["flag", "astronaut"] and not tagger.needs_images


def test_synonyms_change_the_object_embedding(tiny):
    plain = ZeroShotTagger(tiny, [VocabEntry("flag", ())])
    with_syn = ZeroShotTagger(tiny, [VocabEntry("flag", ("banner", "ensign"))])
    capped = ZeroShotTagger(tiny, [VocabEntry("flag", ("banner", "ensign"))], max_synonyms=1)
    assert float(plain.text_embeddings[0] @ with_syn.text_embeddings[0]) < 0.9999
    np.testing.assert_allclose(capped.text_embeddings, plain.text_embeddings, atol=1e-6)
    assert plain.fingerprint != with_syn.fingerprint
    np.testing.assert_allclose(plain.generic_embedding, with_syn.generic_embedding, atol=1e-6)


def test_zero_shot_config_validation(tiny):
    for bad in ({"templates": ("a photo",)}, {"z": 0}, {"top_k": 0}, {"bins": 4}, {"max_synonyms": 0}, {"generic_words": ()}):
        with pytest.raises(ValueError):
            ZeroShotConfig(**bad)
    with pytest.raises(ValueError, match="at least one"):
        ZeroShotTagger(tiny, [])
    from models.embed.embedders import PixelEmbedder

    with pytest.raises(ValueError, match="text tower"):
        ZeroShotTagger(PixelEmbedder(), VOCAB)


# ---------------------------------------------------------------------------
# Zero-shot: calibration and decisions
# ---------------------------------------------------------------------------


def test_calibrated_tagger_recovers_planted_objects(tagger, planted):
    x, label, _ = planted
    with pytest.raises(RuntimeError, match="not calibrated"):
        ZeroShotTagger.from_config(tagger.embedder, VOCAB, tagger.config).tag_embeddings(x[:2])
    cal = tagger.fit(x)
    rows, cols, score = tagger.tag_embeddings(x)
    recall, false_rate = _rates(rows, cols, label)
    assert recall >= 0.9 and false_rate < 0.05, (recall, false_rate)
    assert rows.dtype == cols.dtype == np.int64 and score.dtype == np.float32
    assert (np.diff(rows) >= 0).all()
    np.testing.assert_array_less(cal.threshold[cols] - 1e-6, tagger.scores(x)[rows, cols])
    # top_k=1 keeps the best-ranked object: still the planted one.
    top1 = ZeroShotTagger.from_config(tagger.embedder, VOCAB, ZeroShotConfig(top_k=1))
    top1.set_calibration(cal)
    r1, c1, _ = top1.tag_embeddings(x)
    assert np.bincount(r1, minlength=label.size).max() == 1
    recall1, false1 = _rates(r1, c1, label)
    assert recall1 >= 0.9 and false1 < 0.05, (recall1, false1)
    # The calibration's tag_rate predicts how often each object is tagged on the sample.
    actual = np.bincount(cols, minlength=len(VOCAB)) / label.size
    assert np.abs(cal.tag_rate - actual).max() < 0.005 and cal.n == label.size


def test_one_global_threshold_fails_where_per_object_calibration_succeeds(tagger, planted):
    """The hub object scores high everywhere: a single cut on cosine or margin cannot work."""
    x, label, hub = planted
    planted_rows = np.flatnonzero(label >= 0)
    background = label < 0
    for name, scores in (("cosine", x @ tagger.text_embeddings.T), ("margin", tagger.scores(x))):
        own = np.sort(scores[planted_rows, label[planted_rows]])
        bg_max = np.sort(scores[background].max(axis=1))
        # For every threshold: recall(theta) >= 0.9 forces false-tag rate(theta) >= 0.05.
        recall = 1.0 - np.searchsorted(own, own, side="left") / own.size
        false_rate = 1.0 - np.searchsorted(bg_max, own, side="left") / bg_max.size
        assert not ((recall >= 0.9) & (false_rate < 0.05)).any(), name
        assert (scores[background].argmax(axis=1) == hub).mean() > 0.5  # the hub wins almost every background image
    cal = tagger.fit(x)
    recall, false_rate = _rates(*tagger.tag_embeddings(x)[:2], label)
    assert recall >= 0.9 and false_rate < 0.05
    assert cal.median[hub] == cal.median.max()  # the calibration absorbed the hub's baseline


def test_sketches_merge_exactly_and_calibration_round_trips(tiny, tagger, planted):
    x, label, _ = planted
    whole = tagger.fit(x)
    parts = [tagger.sketch(x[i::3]) for i in range(3)]
    merged = pickle.loads(pickle.dumps(parts[0])) + parts[1] + parts[2]
    assert merged.n == x.shape[0]
    again = tagger.calibrate(merged)
    for name in ("median", "mad", "threshold", "tag_rate"):
        np.testing.assert_array_equal(getattr(again, name), getattr(whole, name))

    restored = ZeroShotCalibration.from_dict(json.loads(json.dumps(whole.to_dict())))
    fresh = ZeroShotTagger(tiny, VOCAB)
    fresh.set_calibration(restored)
    for a, b in zip(fresh.tag_embeddings(x), tagger.tag_embeddings(x)):
        np.testing.assert_array_equal(a, b)
    assert fresh.describe()["calibrated"] and fresh.describe()["calibration_n"] == x.shape[0]
    # A pickled tagger leaves the embedder behind but tags embeddings identically.
    blob = pickle.dumps(tagger)
    shipped = pickle.loads(blob)
    assert shipped.embedder is None and len(blob) < 200_000
    for a, b in zip(shipped.tag_embeddings(x), tagger.tag_embeddings(x)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="without its embedder"):
        shipped.tag_images([noise_image(0)])

    other = ZeroShotTagger(tiny, VOCAB, templates=("a photo of a {o}.",))
    with pytest.raises(ValueError, match="fingerprint"):
        other.set_calibration(whole.to_dict())
    with pytest.raises(ValueError, match="grid"):
        other.calibrate(merged)
    with pytest.raises(ValueError, match="cannot merge"):
        merged + other.sketch(x[:10])
    with pytest.raises(ValueError, match="lacks keys"):
        ZeroShotCalibration.from_dict({"objects": []})


def test_sketch_quantiles_match_exact_statistics(tagger, planted):
    x, _, _ = planted
    s = tagger.scores(x).astype(np.float64)
    sketch = tagger.sketch(x)
    median, mad = sketch.median_mad()
    exact_median = np.median(s, axis=0)
    exact_mad = np.median(np.abs(s - exact_median), axis=0)
    width = sketch.width
    assert (np.abs(median - exact_median) <= width).all()
    assert (np.abs(mad - exact_mad) <= width).all()
    thr = exact_median + 0.01
    assert (np.abs(sketch.fraction_at_least(thr) - (s >= thr).mean(axis=0)) < 0.01).all()
    empty = tagger.empty_sketch()
    assert empty.n == 0
    with pytest.raises(ValueError, match="empty"):
        empty.median_mad()
    with pytest.raises(ValueError, match=">= 2 images"):
        tagger.calibrate(empty)


def test_min_margin_floor_top_k_and_bad_rows(tiny, tagger, planted):
    x, _, _ = planted
    floored = ZeroShotTagger.from_config(tiny, VOCAB, ZeroShotConfig(min_margin=10.0))
    floored.fit(x)
    assert floored.tag_embeddings(x)[0].size == 0
    assert (floored.calibration.threshold == 10.0).all() and (floored.calibration.tag_rate == 0).all()
    tagger.fit(x)
    bad = x[:3].copy()
    bad[1] = 0.0
    bad[2, 0] = np.nan
    rows, _, _ = tagger.tag_embeddings(bad)
    assert not np.isin(rows, [1, 2]).any()
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        tagger.tag_embeddings(np.zeros((2, 5), np.float32))
    r, c, v = select_tags(np.array([[0.1, 0.9, 0.9], [0.5, 0.2, 0.7]]), np.array([[True, True, True], [False, True, True]]), 2)
    assert r.tolist() == [0, 0, 1, 1] and c.tolist() == [1, 2, 2, 1]
    np.testing.assert_allclose(v, [0.9, 0.9, 0.7, 0.2])


def test_zero_shot_tag_images_uses_the_image_tower(tagger, planted):
    x, _, _ = planted
    tagger.fit(x)
    imgs = [noise_image(i, (70, 50)) for i in range(3)]
    emb = tagger.embed_images(imgs)
    assert emb.shape == (3, 64)
    for a, b in zip(tagger.tag_images(imgs), tagger.tag_embeddings(emb)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# ONNX classifier tagger
# ---------------------------------------------------------------------------

LABELS = ["background", "red thing, crimson thing", "green thing", "blue thing", "gray thing, grey thing"]


def _net(softmax: bool):
    """Identity 1x1 conv -> mean colour -> linear: red/green/blue images have known argmax; gray is background."""
    import torch

    conv = torch.nn.Conv2d(3, 3, 1)
    lin = torch.nn.Linear(3, 5)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(3).reshape(3, 3, 1, 1))
        conv.bias.zero_()
        lin.weight.copy_(torch.tensor([[0, 0, 0], [4, -2, -2], [-2, 4, -2], [-2, -2, 4], [0, 0, 0]], dtype=torch.float32))
        lin.bias.copy_(torch.tensor([2, 0, 0, 0, 1], dtype=torch.float32))
    layers = [conv, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), lin] + ([torch.nn.Softmax(dim=1)] if softmax else [])
    return torch.nn.Sequential(*layers).eval()


PRE = OnnxPreprocess(size=8, resize="squash", offset=128.0, scale=128.0)


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("clf")
    paths = {}
    for name, softmax, dynamic in (("logits", False, True), ("probs", True, True), ("fixed", False, False)):
        path = root / f"{name}.onnx"
        extra = {"dynamic_axes": {"x": {0: "b"}, "y": {0: "b"}}} if dynamic else {}
        torch.onnx.export(_net(softmax), torch.zeros(1, 3, 8, 8), str(path), input_names=["x"], output_names=["y"], dynamo=False, **extra)
        paths[name] = str(path)
    labels = root / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n\n")
    paths["labels"] = str(labels)
    return paths


def _solid(rgb):
    return Image.new("RGB", (12, 12), rgb)


def _images():
    half = Image.new("RGB", (16, 8), (255, 0, 0))  # mostly red, partly green
    half.paste((0, 255, 0), (9, 0, 16, 8))
    return [_solid((255, 0, 0)), _solid((0, 255, 0)), _solid((0, 0, 255)), _solid((128, 128, 128)), half]


def _reference_probs(images):
    import torch

    batch = np.stack([np.asarray(im.resize((8, 8), Image.BILINEAR), np.float32).transpose(2, 0, 1) for im in images])
    with torch.no_grad():
        return torch.softmax(_net(False)(torch.from_numpy((batch - 128) / 128)), dim=1).numpy()


def _expected_tags(probs, min_prob, top_k, background):
    cols = [c for c in range(probs.shape[1]) if c != background]
    out = []
    for r in range(probs.shape[0]):
        cand = sorted((c for c in cols if probs[r, c] >= min_prob), key=lambda c: (-probs[r, c], c))[:top_k]
        out += [(r, cols.index(c)) for c in cand]
    return out


def test_classifier_known_argmax_softmax_and_background(classifier_files):
    imgs = _images()
    ref = _reference_probs(imgs)
    tagger = OnnxClassifierTagger(classifier_files["logits"], classifier_files["labels"], PRE, min_prob=0.2, top_k=3)
    assert tagger.needs_images and not tagger.outputs_probs and not tagger._net.fixed_batch
    assert tagger.background_index == 0 and tagger.objects == ["red thing", "green thing", "blue thing", "gray thing"]
    np.testing.assert_allclose(tagger.probabilities(np.stack([tagger.preprocess(im) for im in imgs])), ref, atol=1e-5)
    rows, cols, probs = tagger.tag_images(imgs)
    assert list(zip(rows.tolist(), cols.tolist())) == _expected_tags(ref, 0.2, 3, 0)
    firsts = {r: tagger.objects[c] for r, c in reversed(list(zip(rows.tolist(), cols.tolist())))}
    assert firsts[0] == "red thing" and firsts[1] == "green thing" and firsts[2] == "blue thing"
    assert firsts[3] == "gray thing"  # gray: background (p ~ 0.56) is never a tag; "gray thing" (p ~ 0.21) is
    np.testing.assert_allclose(probs, ref[rows, tagger.class_index[cols]], atol=1e-6)
    assert ((probs > 0) & (probs <= 1)).all() and probs.dtype == np.float32

    # The softmax-exported model is detected as probabilities and gives the same tags.
    soft = OnnxClassifierTagger(classifier_files["probs"], classifier_files["labels"], PRE, min_prob=0.2, top_k=3)
    assert soft.outputs_probs and soft.describe()["output"] == "probs (detected)"
    for a, b in zip(soft.tag_images(imgs), (rows, cols, probs)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Forcing "logits" on it double-softmaxes (flatter probabilities): the switch is honoured.
    forced = OnnxClassifierTagger(classifier_files["probs"], classifier_files["labels"], PRE, output="logits")
    assert not forced.outputs_probs and forced.probabilities(np.stack([forced.preprocess(imgs[0])])).max() < ref[0].max()


def test_classifier_min_prob_top_k_background_and_fixed_batch(classifier_files):
    imgs = _images()
    ref = _reference_probs(imgs)
    gray_p = ref[3, 4]
    assert 0.15 < gray_p < 0.3 and ref[3].argmax() == 0  # gray: background first, "gray thing" second
    for min_prob, top_k, bg in ((0.1, 3, 0), (0.25, 3, 0), (0.1, 1, 0), (0.05, None, 0), (0.1, 2, None)):
        t = OnnxClassifierTagger(classifier_files["fixed"], classifier_files["labels"], PRE, min_prob=min_prob, top_k=top_k,
                                 background_index=bg, batch_size=2)
        assert t._net.fixed_batch
        rows, cols, _ = t.tag_images(imgs)
        assert list(zip(rows.tolist(), cols.tolist())) == _expected_tags(ref, min_prob, top_k or 99, bg), (min_prob, top_k, bg)
    # No background: the gray image's top tag is the "background" class itself.
    t = OnnxClassifierTagger(classifier_files["logits"], classifier_files["labels"], PRE, min_prob=0.1, top_k=1, background_index=None)
    rows, cols, _ = t.tag_images(imgs)
    assert t.objects[0] == "background" and t.objects[int(cols[rows == 3][0])] == "background"
    # Mostly red, partly green: both are tags, red first; top_k=1 keeps red only.
    t = OnnxClassifierTagger(classifier_files["logits"], classifier_files["labels"], PRE, min_prob=0.1, top_k=3)
    rows, cols, _ = t.tag_images(imgs)
    assert [t.objects[c] for c in cols[rows == 4][:2]] == ["red thing", "green thing"]
    t = OnnxClassifierTagger(classifier_files["logits"], classifier_files["labels"], PRE, min_prob=0.1, top_k=1)
    rows, cols, _ = t.tag_images(imgs)
    assert [t.objects[c] for c in cols[rows == 4]] == ["red thing"]
    assert [a.size for a in t.tag_images([])] == [0, 0, 0]
    with pytest.raises(TypeError, match="needs_images"):
        t.tag_embeddings(np.zeros((1, 4), np.float32))


def test_classifier_errors(classifier_files, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    with pytest.raises(ValueError, match="has 2 labels but the model outputs 5"):
        OnnxClassifierTagger(classifier_files["logits"], short, PRE)
    with pytest.raises(ValueError, match="background_index 7 out of range"):
        OnnxClassifierTagger(classifier_files["logits"], classifier_files["labels"], PRE, background_index=7)
    holey = tmp_path / "holey.txt"
    holey.write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="blank label on line"):
        read_labels(holey)
    with pytest.raises(ModelUnavailable):
        OnnxClassifierTagger(tmp_path / "missing.onnx", classifier_files["labels"], PRE)
    for bad in ({"min_prob": 1.5}, {"top_k": 0}, {"output": "softmax"}, {"background_index": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            ClassifierConfig(**bad)
    no_bg = tmp_path / "nobg.txt"
    no_bg.write_text("\n".join(["tench", *LABELS[1:]]))
    assert OnnxClassifierTagger(classifier_files["logits"], no_bg, PRE).background_index is None


def test_vocab_for_labels_and_caption_mentions():
    vocab = vocab_for_labels(["background", "flagpole, flagstaff", "Granny Smith", "crane"])
    assert [e.name for e in vocab] == ["background", "flagpole", "granny smith", "crane"]
    assert vocab[1].synonyms == ("flagpole", "flagstaff") and vocab[1].category_id == 1
    assert vocab[1].raw_name == "flagpole, flagstaff"
    matcher = VocabMatcher(vocab)
    assert matcher.mentioned("A flagstaff in front of the school").tolist() == [1]
    with pytest.raises(ValueError, match="has no name"):
        vocab_for_labels([" , "])


def test_parse_tagger_spec_and_load_tagger(classifier_files, tiny):
    assert parse_tagger_spec("zero-shot") == TaggerSpec("zero-shot")
    spec = parse_tagger_spec(f"onnx-classifier:{classifier_files['logits']},{classifier_files['labels']}")
    assert spec.model_path == classifier_files["logits"] and spec.labels_path == classifier_files["labels"]
    assert parse_tagger_spec(str(spec)) == spec
    for bad in ("zeroshot", "onnx-classifier:", "onnx-classifier:model.onnx", "onnx-classifier:,labels.txt", "clip"):
        with pytest.raises(ValueError, match="zero-shot.*onnx-classifier:MODEL.onnx,LABELS.txt"):
            parse_tagger_spec(bad)
    tagger = load_tagger(spec, classifier=ClassifierConfig(min_prob=0.5, top_k=1), preprocess=PRE)
    assert isinstance(tagger, OnnxClassifierTagger) and tagger.config.top_k == 1
    zs = load_tagger("zero-shot", embedder=tiny, vocab=VOCAB[:2], zero_shot=ZeroShotConfig(z=4.0))
    assert isinstance(zs, ZeroShotTagger) and zs.config.z == 4.0 and zs.describe()["kind"] == "zero-shot"
    with pytest.raises(ValueError, match="needs embedder"):
        load_tagger("zero-shot")


# ---------------------------------------------------------------------------
# Real data: the shared MobileNet v2 classifier on CC3M images
# ---------------------------------------------------------------------------


def _cc3m_images(shard, n):
    out = []
    with tarfile.open(shard) as tar:
        for member in tar:
            if member.name.endswith(".jpg"):
                out.append(decode_image(tar.extractfile(member).read(), target_size=224).image)
                if len(out) == n:
                    break
    return out


def test_mobilenet_v2_tagger_on_cc3m(shared_data):
    model = shared_data / "models" / "mobilenet_v2_imagenet.onnx"
    labels_path = shared_data / "models" / "imagenet_labels.txt"
    shard = shared_data / "cc3m" / "00000.tar"
    for path in (model, labels_path, shard):
        if not path.exists():
            pytest.skip(f"{path} not in the shared data folder")
    tagger = OnnxClassifierTagger(model, labels_path, MOBILENET_PREPROCESS, min_prob=0.2, top_k=3)
    assert tagger.outputs_probs and tagger._net.fixed_batch and tagger.background_index == 0
    labels = read_labels(labels_path)
    assert len(tagger.objects) == len(labels) - 1 == 1000
    assert "flagpole" in tagger.objects and "space shuttle" in tagger.objects
    images = _cc3m_images(shard, 64)
    assert len(images) == 64
    rows, cols, probs = tagger.tag_images(images)
    assert ((rows >= 0) & (rows < 64)).all() and np.bincount(rows, minlength=64).max() <= 3
    assert ((probs > 0) & (probs <= 1)).all() and (probs >= 0.2).all()
    first_names = {vocab_for_labels([lab])[0].name for lab in labels[1:]}
    assert {tagger.objects[c] for c in cols} <= first_names
    assert np.unique(rows).size >= 16  # real photos: many get a confident ImageNet label
    again = tagger.tag_images(images)
    for a, b in zip(again, (rows, cols, probs)):
        np.testing.assert_array_equal(a, b)
