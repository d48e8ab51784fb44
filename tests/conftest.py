"""Test-wide setup: offline, quiet, deterministic.

Sets the environment every dupmine test relies on *before* heavy imports:
no hub downloads (HF_HUB_OFFLINE), no albumentations version check
(img2dataset imports it), and torchvision's CPU schema shim.
"""
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from models.tv_compat import ensure_torchvision  # noqa: E402

ensure_torchvision()

SHARED_DATA = Path(os.environ.get("DUPMINE_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data; skips the test where the folder is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA} (set DUPMINE_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture
def beam_pipeline():
    """A TestPipeline on Beam's in-process FnApiRunner (no Prism download attempt)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.test_pipeline import TestPipeline

    return TestPipeline(runner=FnApiRunner())


@pytest.fixture
def synthetic_shards(tmp_path):
    """Three img2dataset webdataset shards with planted duplicates and one failed download each."""
    from models.demo.synthetic import planted_dataset, write_webdataset_shard

    root = tmp_path / "shards"
    root.mkdir()
    all_samples = {}
    for shard in range(3):
        samples = planted_dataset(n_unique=20, exact_groups=[3], near_groups=[3], seed=shard, shard=shard, size=96)
        failed = [(f"{shard:05d}9999", f"http://x.invalid/{shard}.jpg", "HTTP Error 404: Not Found")]
        write_webdataset_shard(str(root / f"{shard:05d}.tar"), samples, failed)
        all_samples.update({s.key: s for s in samples})
        all_samples.update({k: None for k, _, _ in failed})
    return root, all_samples
