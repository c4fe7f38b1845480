"""Run code in a fresh Python process with this checkout's gigamil (importable from every test:
pytest puts ``tests/`` on ``sys.path`` for its conftest.py). For what an import pulls in
(``sys.modules`` of a new interpreter: the cost of every workflow and job start)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gigamil


def run_fresh(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` with gigamil importable from this checkout; stdout, stderr captured."""
    package_root = str(Path(gigamil.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=package_root)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
