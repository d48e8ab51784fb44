"""The module-scoped planted set shared by the kernel tests (built once per session)."""
from __future__ import annotations

import pytest

from tests.models.dedup.planted import make_planted


@pytest.fixture(scope="session")
def planted():
    return make_planted()
