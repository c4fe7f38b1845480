"""Fixtures of the integration tests (helpers live in wfutil.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wfutil import FAST_OVERRIDES, make_workdir


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return make_workdir(tmp_path / "work", FAST_OVERRIDES)
