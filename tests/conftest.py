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
