"""The real workflow, run by real snakemake on the demo cohort in a temporary directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr
from wfutil import REPO, read_config, run_snakemake, write_config

from gigamil import layout

pytestmark = pytest.mark.integration

STAGES = [
    "demo_cohort",
    "tissue_mask",
    "extract_patches",
    "qc_table",
    "make_splits",
    "train_fold",
    "predict_fold",
    "aggregate_cv",
    "heatmap",
]


def _job_counts(stdout: str) -> dict[str, int]:
    """Parse the 'Job stats' table that `snakemake -n` prints."""
    counts = {}
    for line in stdout.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "job", "count"):
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_dry_run_lists_every_demo_stage(workdir: Path):
    res = run_snakemake(workdir, "-n", "--cores", "2")
    counts = _job_counts(res.stdout)
    for stage in STAGES:
        assert counts.get(stage, 0) >= 1, f"{stage} not in the DAG: {counts}"
    assert counts["tissue_mask"] == 24 and counts["extract_patches"] == 24
    assert counts["train_fold"] == 2  # cv.folds in the fast config


def test_bad_config_stops_before_any_job(workdir: Path):
    cfg = read_config(workdir)
    cfg["training"]["epoch"] = 3
    write_config(workdir, cfg)
    res = run_snakemake(workdir, "-n", "--cores", "1", check=False)
    assert res.returncode != 0
    assert "unknown key training.epoch" in res.stdout + res.stderr
    assert not (workdir / "results").exists()


def _own_project(project: Path) -> Path:
    """A user's project: its own sheet, 12 slide files and a config.yaml without the demo."""
    rows = []
    for i in range(12):
        (project / "slides").mkdir(parents=True, exist_ok=True)
        (project / "slides" / f"m{i}.svs").write_bytes(b"x")
        label = "lesion" if i % 2 else "normal"
        rows.append(
            {"slide_id": f"m{i}", "patient_id": f"p{i}", "label": label, "path": f"slides/m{i}.svs"}
        )
    pd.DataFrame(rows).to_csv(project / "mine.csv", index=False)
    cfg = {
        "experiment": "mine",
        "classes": ["normal", "lesion"],
        "cohorts": {"mine": {"sheet": "mine.csv", "role": "train"}},
        "cv": {"folds": 2},
    }
    (project / "my.yaml").write_text(yaml.safe_dump(cfg))
    return project / "my.yaml"


def test_own_configfile_never_pulls_in_the_demo_cohort(workdir: Path):
    """`snakemake --configfile my.yaml` next to the demo's config.yaml: only my cohort."""
    my = _own_project(workdir)
    exe = Path(sys.executable).with_name("snakemake")
    res = subprocess.run(
        [
            str(exe),
            "-n",
            "--cores",
            "1",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            str(my),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    counts = _job_counts(res.stdout)
    assert "demo_cohort" not in counts and "results/demo" not in res.stdout, counts
    assert counts["tissue_mask"] == 12 and counts["train_fold"] == 2


def test_project_directory_with_its_own_config_yaml(tmp_path: Path):
    """The README's way to run a project from its own directory: its config.yaml is the only
    configuration (the repository's demo config.yaml is not read)."""
    project = tmp_path / "myproject"
    (project / "my.yaml").parent.mkdir(parents=True)
    _own_project(project).rename(project / "config.yaml")
    exe = Path(sys.executable).with_name("snakemake")
    res = subprocess.run(
        [
            str(exe),
            "-n",
            "--cores",
            "1",
            "-s",
            str(REPO / "Snakefile"),
            "--directory",
            str(project),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    counts = _job_counts(res.stdout)
    assert "demo_cohort" not in counts and counts["tissue_mask"] == 12, counts


def test_failing_job_has_its_error_and_traceback_in_its_log(workdir: Path):
    """A job that fails (here: a slide file that is not an image) leaves its error in its own log,
    not only on Snakemake's terminal."""
    (workdir / "broken.svs").write_bytes(b"not a slide" * 100)
    pd.DataFrame(
        [{"slide_id": "broken", "patient_id": "ext_p1", "label": "normal", "path": "broken.svs"}]
    ).to_csv(workdir / "ext.csv", index=False)
    cfg = read_config(workdir)
    cfg["cohorts"]["ext"] = {"sheet": "ext.csv", "role": "external"}
    write_config(workdir, cfg)
    res = run_snakemake(workdir, "--cores", "1", layout.tissue_mask("ext", "broken"), check=False)
    assert res.returncode != 0
    log = (workdir / layout.log_file("tissue_mask", "ext", "broken")).read_text()
    assert "job failed" in log and "broken.svs" in log, log
    assert "Traceback (most recent call last)" in log


@pytest.mark.slow
def test_full_demo_run(workdir: Path):
    run_snakemake(workdir, "--cores", "2", timeout=1200)
    res = workdir / "results"
    sheet = pd.read_csv(res / "demo/sheet.csv")
    assert len(sheet) == 24
    # preprocessing
    for sid in sheet["slide_id"]:
        assert (res / f"masks/demo/{sid}.png").is_file()
        store = zarr.open_group(str(res / f"patches/demo/{sid}.zarr"), mode="r")
        attrs = dict(store.attrs)
        assert abs(attrs["effective_mpp"] - attrs["target_mpp"]) <= 0.01 * attrs["target_mpp"]
        assert store["patches"].shape[0] == store["coords"].shape[0] == store["grid"].shape[0]
    qc = pd.read_csv(res / "qc/demo.csv")
    assert set(qc["slide_id"]) == set(sheet["slide_id"])
    # splits: patient-level, every slide tested once
    folds = pd.read_csv(res / "splits/demo/folds.csv")
    test = folds[folds["role"] == "test"]
    assert sorted(test["slide_id"]) == sorted(sheet["slide_id"])
    assert (folds.groupby(["fold", "patient_id"])["role"].nunique() == 1).all()
    # training, evaluation
    for k in range(2):
        assert (res / f"models/demo/fold{k}/model.pt").is_file()
    summary = json.loads((res / "eval/demo/summary.json").read_text())
    for key in [
        "oof_auc",
        "fold_auc_mean",
        "fold_auc_sd",
        "balanced_accuracy",
        "macro_f1",
        "n_slides",
        "n_patients",
        "localization_auc",
    ]:
        assert key in summary, key
    assert summary["n_slides"] == 24 and summary["n_patients"] == 12
    for name in ["metrics.csv", "per_slide_predictions.csv"]:
        assert (res / "eval/demo" / name).is_file()
    # a second dry run after a complete run schedules nothing
    again = run_snakemake(workdir, "-n", "--cores", "2")
    assert "Nothing to be done" in again.stdout + again.stderr
