"""Shared by every test directory: tests marked ``gpu`` need CUDA.

They are deselected by default (pyproject.toml: ``-m "not slurm and not gpu"``); ``pytest -m gpu``
runs them, and on a machine without a CUDA device each one errors at setup with the reason
instead of failing somewhere inside torch (or passing by skipping, which would hide it).
"""

from __future__ import annotations

import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    import torch

    if not torch.cuda.is_available():
        pytest.fail(
            "marked gpu: needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run `pytest -m gpu` "
            "on a GPU machine",
            pytrace=False,
        )
