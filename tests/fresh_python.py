"""Run code in a fresh Python process with this checkout's gigamil (importable from every test:
pytest puts ``tests/`` on ``sys.path`` for its conftest.py). For what an import pulls in
(``sys.modules`` of a new interpreter: the cost of every workflow and job start):
:func:`modules_loaded_by`; :func:`run_fresh` for other code."""

from __future__ import annotations

import json
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


def modules_loaded_by(*modules: str) -> set[str]:
    """The names in ``sys.modules`` of a fresh interpreter after importing ``modules``."""
    code = f"import json, sys\nimport {', '.join(modules)}\nprint(json.dumps(sorted(sys.modules)))"
    res = run_fresh(code)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(json.loads(res.stdout))
