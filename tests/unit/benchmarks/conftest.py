"""The ``bench`` fixture: the benchmark script a test module is named after, imported as a module
(``test_gpu.py`` → ``benchmarks/gpu.py``); the benchmarks are scripts, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request):  # noqa: ANN201
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
