"""The Snakemake profiles shipped in profiles/ (issue 6): the local profile's four settings and the
SLURM profile's executor and fallback resources, as README describes them."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def test_default_profile_holds_the_four_local_settings():
    assert _profile("default") == {
        "cores": "all",
        "keep-going": False,
        "rerun-incomplete": True,
        "printshellcmds": True,
    }


def test_slurm_profile_runs_jobs_through_slurm_with_fallback_resources():
    slurm = _profile("slurm")
    assert slurm["executor"] == "slurm"
    assert set(slurm["default-resources"]) >= {"slurm_partition", "runtime", "mem_mb"}
    assert slurm["retries"] >= 1 and slurm["latency-wait"] > 0
    # keys of the local profile win over these (README, "Good to know"): none may be set here
    assert not set(slurm) & set(_profile("default"))
