"""envs/gigamil.yaml (for --sdm conda) must list the same packages and ranges as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# PyPI name -> conda-forge name, where they differ
CONDA_NAME = {
    "torch": "pytorch",
    "opencv-python-headless": "py-opencv",
    "openslide-bin": "openslide",
    "matplotlib": "matplotlib-base",
}


def _split(spec: str) -> tuple[str, str]:
    m = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", spec)
    assert m, spec
    return m.group(1).lower(), m.group(2).replace(" ", "")


def test_conda_env_mirrors_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(d) for d in project["dependencies"])
    env = yaml.safe_load((REPO / "envs/gigamil.yaml").read_text())
    have = dict(_split(d) for d in env["dependencies"] if isinstance(d, str))
    # packages the env installs with pip (PyPI names) count too
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    have |= dict(_split(d) for group in pip for d in group)
    have.pop("pip")
    have.pop("python")
    mapped = {CONDA_NAME.get(name, name): spec for name, spec in wanted.items()}
    assert mapped == have, (
        f"missing in envs/gigamil.yaml: {sorted(set(mapped) - set(have))}; "
        f"not in pyproject: {sorted(set(have) - set(mapped))}; "
        f"ranges differ: {sorted(k for k in mapped.keys() & have.keys() if mapped[k] != have[k])}"
    )


def test_a_wheel_holds_the_schemas_and_the_imports_are_declared():
    """A non-editable install could not import gigamil.config (the schemas lived outside the
    package), and google_crc32c, imported by the store writer, came only through some zarr
    releases (a review of the packaging). The package reaches workflow/schemas/ through its
    data/schemas link, which its package-data names, so a wheel holds copies."""
    from gigamil.schemas import SCHEMA_DIR

    link = REPO / "workflow" / "gigamil" / "data" / "schemas"
    assert link.resolve() == (REPO / "workflow" / "schemas").resolve() == SCHEMA_DIR.resolve()
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "data/schemas/*.yaml" in tool["package-data"]["gigamil"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_split(d)[0] for d in project["dependencies"]}
    assert "google-crc32c" in declared
