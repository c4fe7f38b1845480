"""The Snakemake profiles shipped in profiles/ (issue 6): the local profile's four settings and the
SLURM profile's executor and fallback resources, as README describes them."""

from __future__ import annotations

import re
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


def _rule_resources() -> dict[str, dict[str, str]]:
    """``{rule: {resource: expression}}`` of every ``resources:`` block in workflow/rules/*.smk
    (one ``key=expression,`` a line, as snakefmt writes them)."""
    found: dict[str, dict[str, str]] = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        rule = None
        block = False
        for line in smk.read_text().splitlines():
            head = re.match(r"^rule (\w+):", line)
            if head:
                rule, block = head.group(1), False
            elif rule and line.strip() == "resources:":
                block = True
                found[rule] = {}
            elif block and re.match(r"^ {8}\w+=", line):
                key, expr = line.strip().split("=", 1)
                found[rule][key] = expr.split("  #", 1)[0].rstrip().rstrip(",")
            elif block:
                block = False
    return found


def _mem_mb(expr: str, attempt: int) -> int:
    value = eval(expr, {})  # noqa: S307 (the workflow's own rule files)
    return value(None, attempt) if callable(value) else value


def test_rules_whose_memory_grows_with_the_slide_ask_for_more_on_each_retry():
    """A job killed by SLURM for its memory (OUT_OF_MEMORY) is resubmitted by the profile's
    `retries`: with the same `--mem` each retry dies the same way, so the rules whose memory
    grows with the slide or bag ask for more on every attempt (as their runtime does)."""
    resources = _rule_resources()
    grows = [
        "tissue_mask",
        "extract_patches",
        "extract_features",
        "train_fold",
        "predict_fold",
        "heatmap",
    ]
    for rule in grows:
        first, second = (_mem_mb(resources[rule]["mem_mb"], a) for a in (1, 2))
        assert second > first, (
            f"{rule}: mem_mb {first} MB on the first attempt, {second} on the second"
        )
    # the first attempt asks for what README and docs/scaling.md describe
    assert _mem_mb(resources["train_fold"]["mem_mb"], 1) == 16000
    assert _mem_mb(resources["tissue_mask"]["mem_mb"], 1) == 4000


def _slurm_section() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Running on SLURM", 1)[1].split("\n## ", 1)[0]


def test_readme_says_a_node_failure_excludes_the_only_node_for_the_rest_of_the_run():
    """After a NODE_FAIL the executor plugin (2.8.0, with sacct) adds --exclude=<node> to every
    later sbatch of the run, the retries included: on a one-node cluster SLURM refuses them all.
    The profile's retries cannot help there; README says what does (a new snakemake run)."""
    section = _slurm_section()
    assert "NODE_FAIL" in section and "--exclude=" in section
    assert "rerun-incomplete" in section.split("NODE_FAIL", 1)[1].split("\n- ", 1)[0]
    profile = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    assert "NODE_FAIL" in profile.split("retries:", 1)[0].rsplit("\n\n", 1)[1]
