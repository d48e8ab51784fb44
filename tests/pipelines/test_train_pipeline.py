"""``dupmine train``: flags held to TrainConfig, shards in, a loadable cached model out."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from models.demo.synthetic import SyntheticSample, write_webdataset_shard
from models.score.training.config import TrainConfig
from pipelines import train as train_cmd


def test_every_config_field_has_a_flag_with_its_default():
    args = train_cmd.build_parser().parse_args(["--input", "x", "--output", "y"])
    cfg = train_cmd.config_from_args(args)
    assert cfg == TrainConfig()  # defaults come from the dataclass only
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("conditional", "extra"):
            continue
        value = getattr(TrainConfig(), f.name)
        flag = "--" + f.name.replace("_", "-")
        new = tuple(v * 2 for v in value) if isinstance(value, tuple) else (
            "minilm" if isinstance(value, str) else value + (2 if isinstance(value, int) else value / 2))  # ints +2 keep channels and resolution valid
        if f.name == "cond_drop":
            new = 0.25
        text = ",".join(map(str, new)) if isinstance(new, tuple) else str(new)
        given = [flag, text]
        if isinstance(value, bool):
            new, given = (not value), ["--no-" + flag[2:]] if value else [flag]
        args = train_cmd.build_parser().parse_args(["--input", "x", "--output", "y", *given])
        assert getattr(train_cmd.config_from_args(args), f.name) == new, f.name
    args = train_cmd.build_parser().parse_args(["--input", "x", "--output", "y", "--unconditional"])
    assert train_cmd.config_from_args(args).conditional is False


def test_train_command_on_grayscale_shards(tmp_path, capsys):
    from models.score.targets.loading import load_target

    rng = np.random.default_rng(0)
    samples = []
    for i in range(10):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), "L").save(buf, format="PNG")
        samples.append(SyntheticSample(f"0000{i:05d}", buf.getvalue(), f"caption {i}", f"http://x.invalid/{i}", -1))
    write_webdataset_shard(str(tmp_path / "00000.tar"), samples, failed=[("000000010", "http://x.invalid/10", "timeout")])
    argv = ["--input", str(tmp_path / "00000.tar"), "--output", str(tmp_path / "model"), "--unconditional",
            "--resolution", "8", "--steps", "20", "--batch-size", "8", "--block-out-channels", "16,32", "--log-every", "10"]
    summary = train_cmd.run(argv)
    assert summary["images"] == 10 and summary["rejects"] == 1 and summary["steps"] == 20 and not summary["cached"]
    assert "step 20/20" in capsys.readouterr().out
    target = load_target(summary["spec"], device="cpu")
    assert target.sample_shape == (1, 8, 8)
    assert train_cmd.run(argv)["cached"]
    with pytest.raises(ValueError, match="no decodable"):
        (tmp_path / "empty").mkdir()
        write_webdataset_shard(str(tmp_path / "empty" / "00000.tar"), [], failed=[("000000000", "http://x.invalid/0", "404")])
        train_cmd.run(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "m2")])
