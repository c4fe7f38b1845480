"""Helpers to run the real workflow with real snakemake in a temporary working directory.

Imported by the integration tests as `from wfutil import ...` (tests/integration is on sys.path).
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[2]

# A quick variant of the demo config: same cohort and stages, fewer folds/epochs, one model per
# fold (config.yaml's two double the training time of every workflow test; the replicate
# ensemble is tested through train_fold and predict_slides in tests/unit/train/test_replicates.py).
FAST_OVERRIDES: dict[str, Any] = {
    "training": {"epochs": 2, "replicates": 1, "early_stopping": {"patience": 2}},
    # validation patients (the schema's default) here: config.yaml's demo trains without them
    # (cv.val_fraction: 0), which test_incremental and test_feature_cache run end to end
    "cv": {"folds": 2, "val_fraction": 0.2},
    "heatmaps": {"slides": ["demo_p01_s1", "demo_p02_s1"]},
}

# One slide each of four demo patients, two per class: the smallest cohort that 2 stratified folds
# take, and every rule still runs. Each slide more costs a few seconds locally and about 6 s in
# a SLURM run (Snakemake starts every component of the packed preprocessing job anew).
FOUR_SLIDES = ("demo_p01_s1", "demo_p02_s1", "demo_p03_s1", "demo_p04_s1")  # lesion x2, normal x2


@functools.cache
def _no_slurm_bin() -> str:
    """A directory with an ``scontrol`` that fails at once (see `local_env`)."""
    path = Path(tempfile.mkdtemp(prefix="gigamil-no-slurm-"))
    stub = path / "scontrol"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    return str(path)


def local_env() -> dict[str, str]:
    """The environment of a local (not SLURM) snakemake run in the tests: unbuffered output, and
    an ``scontrol`` that fails at once. Every snakemake start imports the SLURM executor plugin
    (the `slurm` extra), which runs ``scontrol show config`` and waits up to 10 s for an answer;
    on a machine with a SLURM client but no reachable controller that is 9 s per snakemake call."""
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        PATH=_no_slurm_bin() + os.pathsep + os.environ.get("PATH", ""),
    )


def deep_update(base: dict, upd: dict) -> dict:
    """Recursively merge ``upd`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in upd.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def make_workdir(path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A working directory with the repo's config.yaml (plus overrides) and demo sheet."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = deep_update(cfg, overrides or {})
    (path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copytree(REPO / "resources", path / "resources", dirs_exist_ok=True)
    return path


def copy_workflow(dst: Path, overrides: dict[str, Any], patients: int | Sequence[str]) -> Path:
    """Copy the repository's workflow and config to ``dst`` (the package itself is installed),
    with the demo cohort restricted to its first ``patients`` patients, or, given a list of
    slide ids, to those slides (the demo rule still makes all of its slides)."""
    dst.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", dst / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "gigamil")
    shutil.copytree(REPO / "workflow", dst / "workflow", ignore=ignore)
    shutil.copytree(REPO / "resources", dst / "resources")
    shutil.copytree(REPO / "envs", dst / "envs")  # the rules' `conda:` files are part of the code
    shutil.copytree(REPO / "profiles" / "default", dst / "profiles" / "default")
    cfg = deep_update(yaml.safe_load((REPO / "config.yaml").read_text()), overrides)
    sheet = pd.read_csv(REPO / cfg["cohorts"]["demo"]["sheet"])
    if isinstance(patients, int):
        keep = sheet["patient_id"].isin(sorted(sheet["patient_id"].unique())[:patients])
    else:
        keep = sheet["slide_id"].isin(patients)
        missing = sorted(set(patients) - set(sheet["slide_id"]))
        assert not missing, f"not demo slides: {missing}"
    sheet[keep].to_csv(dst / "resources" / "small.csv", index=False)
    cfg["cohorts"]["demo"]["sheet"] = "resources/small.csv"
    write_config(dst, cfg)
    return dst


def write_config(workdir: Path, cfg: dict[str, Any]) -> None:
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def read_config(workdir: Path) -> dict[str, Any]:
    return yaml.safe_load((workdir / "config.yaml").read_text())


def config_restored(workdir: Path) -> Iterator[Path]:
    """Body of a fixture over a completed run: yields ``workdir`` and afterwards writes its
    config.yaml back as it was, so every test starts from the same configuration."""
    original = (workdir / "config.yaml").read_text()
    yield workdir
    (workdir / "config.yaml").write_text(original)


def run_snakemake(
    workdir: Path, *args: str, timeout: int = 900, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the repo's Snakefile in ``workdir`` with its config.yaml; returns the finished process."""
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [
        str(exe),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=local_env())
    if check and res.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({res.returncode}):\n"
            f"{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
        )
    return res


def snakemake_in(workdir: Path, *args: str, timeout: int = 600, ok: bool = True) -> str:
    """`snakemake --cores 2 ARGS` run in ``workdir`` (its own Snakefile and config.yaml, bounded by
    `timeout -k`); stdout + stderr. Fails loudly with the end of both unless the run succeeds
    (``ok``) or, with ``ok=False``, unless it fails."""
    exe = str(Path(sys.executable).with_name("snakemake"))
    cmd = ["timeout", "-k", "10", str(timeout), exe, "--cores", "2", *args]
    res = subprocess.run(
        cmd, cwd=workdir, capture_output=True, text=True, env=local_env(), timeout=timeout + 30
    )
    out = res.stdout + res.stderr
    expected = "succeed" if ok else "fail"
    assert (res.returncode == 0) == ok, (
        f"{' '.join(cmd)} did not {expected} ({res.returncode}):\n{out[-8000:]}"
    )
    return out


def planned_jobs(workdir: Path, *targets: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job but `all` that a rerun of ``targets`` (default: the
    workflow's) would execute, from `snakemake --dry-run`."""
    out = snakemake_in(workdir, "--dry-run", *targets)
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in out.splitlines():
        head = re.match(r"^\s*(?:local)?rule (\w+):\s*$", line)
        if head:
            jobs.append((head.group(1), {}))
            continue
        wc = re.match(r"^\s+wildcards: (.+)$", line)
        if wc and jobs:
            jobs[-1][1].update(kv.split("=", 1) for kv in wc.group(1).split(", "))
    if not jobs:
        assert "Nothing to be done" in out, out[-4000:]
    return [(rule, wcs) for rule, wcs in jobs if rule != "all"]
