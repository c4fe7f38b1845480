"""The real workflow, run by real snakemake on the demo cohort in a temporary directory: the dry
run, a bad config, and one complete run (module fixture) with a `role: predict` cohort without
labels beside the demo cohort, checked file by file and through `snakemake --report`."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr
from slidefiles import write_svs
from wfutil import (
    FAST_OVERRIDES,
    REPO,
    deep_update,
    local_env,
    make_workdir,
    read_config,
    run_snakemake,
    write_config,
)

from gigamil import layout
from gigamil.demo_tiles import make_tile_cohort

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
    # one message, exit status 1, no traceback line pointing into the workflow's own files
    assert res.returncode == 1 and "common.smk" not in res.stdout + res.stderr
    assert not (workdir / "results").exists()


def _own_project(project: Path) -> Path:
    """A user's project: its own sheet, 12 slide files and a config.yaml without the demo."""
    rows = []
    for i in range(12):
        write_svs(project / "slides" / f"m{i}.svs", seed=i)
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


def _dry_run_elsewhere(directory: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`snakemake -n` of the repository's Snakefile run in ``directory`` (as a user's project
    would run it); fails unless it succeeds (``ok``) or, with ``ok=False``, unless it fails."""
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe), "-n", "--cores", "1", "-s", str(REPO / "Snakefile")]
    res = subprocess.run(
        [*cmd, "--directory", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=local_env(),
    )
    assert (res.returncode == 0) == ok, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_broken_yaml_is_named_with_its_line(workdir: Path):
    text = (workdir / "config.yaml").read_text().replace("\ncv:", "\ncv: {folds: 2", 1)
    (workdir / "config.yaml").write_text(text)
    res = _dry_run_elsewhere(workdir, ok=False)
    assert res.returncode == 1 and "gigamil: config.yaml is not valid YAML" in res.stderr
    assert 'in "config.yaml", line' in res.stderr and "Snakefile" not in res.stderr


def test_key_given_twice_in_a_configfile_stops_the_run(workdir: Path):
    """YAML keeps the last of two equal keys silently (the first one's edit would be lost)."""
    my = _own_project(workdir)
    my.write_text(my.read_text() + "experiment: second\n")
    res = _dry_run_elsewhere(workdir, "--configfile", str(my), ok=False)
    assert "key 'experiment' given twice (lines" in res.stderr and "Traceback" not in res.stderr


def test_own_configfile_never_pulls_in_the_demo_cohort(workdir: Path):
    """`snakemake --configfile my.yaml` next to the demo's config.yaml: only my cohort."""
    my = _own_project(workdir)
    res = _dry_run_elsewhere(workdir, "--configfile", str(my))
    counts = _job_counts(res.stdout)
    assert "demo_cohort" not in counts and "results/demo" not in res.stdout, counts
    assert counts["tissue_mask"] == 12 and counts["train_fold"] == 2


def test_copy_of_a_slide_in_an_external_cohort_stops_the_run(workdir: Path):
    """The same-content check runs in snakemake's main process (jobs skip it): a renamed copy
    of a training slide in an external cohort stops the run before any job."""
    my = _own_project(workdir)
    (workdir / "ext").mkdir()
    shutil.copy(workdir / "slides" / "m3.svs", workdir / "ext" / "other_name.svs")  # a copy
    row = {"slide_id": "e1", "patient_id": "q1", "label": "lesion", "path": "ext/other_name.svs"}
    pd.DataFrame([row]).to_csv(workdir / "ext.csv", index=False)
    cfg = yaml.safe_load(my.read_text())
    cfg["cohorts"]["ext"] = {"sheet": "ext.csv", "role": "external"}
    my.write_text(yaml.safe_dump(cfg))
    res = _dry_run_elsewhere(workdir, "--configfile", str(my), ok=False)
    assert "have the same content" in res.stdout + res.stderr
    write_svs(workdir / "ext" / "other_name.svs", seed=99)  # another slide: the run goes ahead
    _dry_run_elsewhere(workdir, "--configfile", str(my))


def test_unusable_slides_stop_the_run_before_any_job_all_named(workdir: Path):
    """Slides without MPP or that are no slides: one error naming each, before any job (also
    in a dry run); the sheet's `mpp` column fixes a missing MPP."""
    my = _own_project(workdir)
    write_svs(workdir / "slides" / "m2.svs", seed=2, mpp=None)
    write_svs(workdir / "slides" / "m5.svs", seed=5, mpp=None)
    (workdir / "slides" / "m7.svs").write_bytes(b"not a slide" * 100)
    res = _dry_run_elsewhere(workdir, "--configfile", str(my), ok=False)
    out = res.stdout + res.stderr
    assert "3 of 12 slide(s) cannot be used (checked before any job runs)" in out
    assert "mine/m2: " in out and "mine/m5: " in out and "mine/m7: " in out
    assert "no microns-per-pixel" in out and "`mpp` column in the cohort sheet" in out
    assert not (workdir / "results").exists()
    (workdir / "slides" / "m7.svs").unlink()
    write_svs(workdir / "slides" / "m7.svs", seed=7)
    sheet = pd.read_csv(workdir / "mine.csv")
    sheet["mpp"] = [0.5 if s in ("m2", "m5") else None for s in sheet["slide_id"]]
    sheet.to_csv(workdir / "mine.csv", index=False)
    _dry_run_elsewhere(workdir, "--configfile", str(my))


def test_cohort_too_small_for_the_folds_stops_the_dry_run_every_class_named(workdir: Path):
    """Whether the train cohorts can be split into cv.folds is checked when the workflow is
    parsed (a dry run too), not after preprocessing in rule make_splits; each short class named."""
    my = _own_project(workdir)  # 6 patients per class
    cfg = yaml.safe_load(my.read_text())
    cfg["cv"] = {"folds": 7}
    my.write_text(yaml.safe_dump(cfg))
    res = _dry_run_elsewhere(workdir, "--configfile", str(my), ok=False)
    out = res.stdout + res.stderr
    assert "class 'lesion' has 6 patient(s)" in out and "class 'normal' has 6 patient(s)" in out
    assert "patient(s) but cv.folds is 7" in out
    assert "lower cv.folds to at most 6" in out and "Traceback" not in out
    assert not (workdir / "results").exists()


def test_configuration_errors_name_the_file_or_the_command_line(workdir: Path):
    my = _own_project(workdir)
    cfg = yaml.safe_load(my.read_text())
    cfg["training"] = {"epoch": 3}
    my.write_text(yaml.safe_dump(cfg))
    res = _dry_run_elsewhere(workdir, "--configfile", str(my), ok=False)
    assert f"{my}: unknown key training.epoch" in res.stdout + res.stderr
    del cfg["training"]
    my.write_text(yaml.safe_dump(cfg))
    args = ("--configfile", str(my), "--config", "training={'epoch': 3}")
    res = _dry_run_elsewhere(workdir, *args, ok=False)
    assert f"{my} + --config: unknown key training.epoch" in res.stdout + res.stderr
    # numbers typed in a --config mapping are numbers
    _dry_run_elsewhere(workdir, "--configfile", str(my), "--config", "training={'epochs': 3}")


def test_project_directory_with_its_own_config_yaml(tmp_path: Path):
    """The README's way to run a project from its own directory: its config.yaml is the only
    configuration (the repository's demo config.yaml is not read)."""
    project = tmp_path / "myproject"
    (project / "my.yaml").parent.mkdir(parents=True)
    _own_project(project).rename(project / "config.yaml")
    res = _dry_run_elsewhere(project)
    counts = _job_counts(res.stdout)
    assert "demo_cohort" not in counts and counts["tissue_mask"] == 12, counts


def test_failing_job_has_its_error_and_traceback_in_its_log(workdir: Path):
    """A job that fails (here: a slide whose header opens but whose pixels cannot be decoded, so
    the pre-flight check lets it through) leaves its error in its own log, not only on
    Snakemake's terminal."""
    write_svs(workdir / "broken.svs", seed=0, unreadable=True)
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


NEW = ["new_a", "new_b", "new_c"]  # the slides of the `role: predict` cohort


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fast demo config plus a `role: predict` cohort of three slides from another tile draw
    whose sheet has no label column, run to completion once."""
    heatmaps = {"heatmaps": {"slides": FAST_OVERRIDES["heatmaps"]["slides"] + NEW[:2]}}
    workdir = make_workdir(
        tmp_path_factory.mktemp("full") / "work", deep_update(FAST_OVERRIDES, heatmaps)
    )
    drawn = make_tile_cohort(workdir / "new", seed=7, n_patients=3, slides_per_patient=1)
    rows = [
        {"slide_id": sid, "patient_id": f"{sid}_patient", "path": f"new/slides/{s}.tiff"}
        for sid, s in zip(NEW, drawn["slide_id"], strict=True)
    ]
    pd.DataFrame(rows).to_csv(workdir / "new" / "to_predict.csv", index=False)
    cfg = read_config(workdir)
    cfg["cohorts"]["new"] = {"sheet": "new/to_predict.csv", "role": "predict"}
    write_config(workdir, cfg)
    run_snakemake(workdir, "--cores", "2", timeout=1200)
    return workdir


@pytest.mark.slow
def test_full_demo_run(full_run: Path):
    workdir = full_run
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


@pytest.mark.slow
def test_predict_cohort_is_predicted_without_labels_or_metrics(full_run: Path):
    res = full_run / "results"
    ens = res / "eval/demo/ensemble/new"
    assert sorted(p.name for p in ens.iterdir()) == [
        "predictions.csv",
        "predictions.html",
        "summary.json",
    ]
    summary = json.loads((ens / "summary.json").read_text())
    assert summary["metrics"] is None and summary["n_slides"] == 3 and summary["n_models"] == 2
    assert "no metrics" in summary["note"] and "auc" not in summary
    preds = pd.read_csv(ens / "predictions.csv", keep_default_na=False)
    assert sorted(preds["slide_id"]) == NEW and (preds["label"] == "").all()
    assert preds["n_models"].eq(2).all() and preds["pred"].isin(["normal", "lesion"]).all()
    probs = preds[["prob_normal", "prob_lesion"]].astype(float).sum(axis=1)
    assert probs.round(5).eq(1.0).all()
    for k in range(2):  # every fold model predicted every slide
        fold = pd.read_csv(res / f"predictions/demo/fold{k}/new.csv", keep_default_na=False)
        assert sorted(fold["slide_id"]) == NEW
    for sid in NEW[:2]:
        hm = res / f"heatmaps/demo/new/{sid}"
        assert (hm / "overlay.png").is_file()
        # QuPath annotations: the tissue mask in level-0 px, inside the slide, and the top-k
        # patches, each centred inside a tissue piece's bounding box
        store = zarr.open_group(str(res / f"patches/new/{sid}.zarr"), mode="r")
        w0, h0 = store.attrs["slide_dimensions"]
        feats = json.loads((hm / "annotations.geojson").read_text())["features"]
        boxes = []
        for f in feats:
            if f["properties"]["classification"]["name"] == "Tissue":
                xs, ys = zip(*f["geometry"]["coordinates"][0], strict=True)
                assert 0 <= min(xs) < max(xs) <= w0 and 0 <= min(ys) < max(ys) <= h0
                boxes.append((min(xs), min(ys), max(xs), max(ys)))
        top = [f for f in feats if f["properties"]["classification"]["name"] == "Attention top-k"]
        assert boxes and len(top) == min(8, store["coords"].shape[0])  # heatmaps.top_k: 8
        for f in top:
            xs, ys = zip(*f["geometry"]["coordinates"][0], strict=True)
            cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
            assert any(x0 <= cx <= x1 and y0 <= cy <= y1 for x0, y0, x1, y1 in boxes)
    assert (res / "qc/new.csv").is_file() and (res / "qc/new.html").is_file()
    # the CV is untouched by the unlabelled cohort
    folds = pd.read_csv(res / "splits/demo/folds.csv")
    assert set(folds["cohort"]) == {"demo"}


def _report_results(html: str) -> dict[str, dict]:
    """The results embedded in a `snakemake --report` HTML file, with each file decoded."""
    found = re.search(r"var results = (\{.*?\});?\n", html)
    assert found, "no results in the report"
    results = json.loads(found.group(1))
    for item in results.values():
        item["content"] = base64.b64decode(item["data_uri"].split("base64,", 1)[1])
    return results


@pytest.mark.slow
def test_report_shows_numbers_qc_and_training_curves(full_run: Path):
    run_snakemake(full_run, "--report", str(full_run / "report.html"), timeout=600)
    results = _report_results((full_run / "report.html").read_text())
    res = full_run / "results"

    # the headline numbers as text, inline (an HTML table per CV run and per ensemble)
    cv = json.loads((res / "eval/demo/summary.json").read_text())
    page = results["results/eval/demo/metrics.html"]["content"].decode()
    lo, hi = cv["oof_auc_ci"]
    assert f"{cv['oof_auc']:.3f} (95% CI {lo:.3f}–{hi:.3f})" in page
    assert f"<td>{cv['patient_auc']:.3f}</td>" in page
    assert f"{cv['balanced_accuracy']:.3f} (95% CI" in page
    assert f"{cv['localization_auc']:.3f} ± " in page
    ens = json.loads((res / "eval/demo/ensemble/demo/summary.json").read_text())
    page = results["results/eval/demo/ensemble/demo/metrics.html"]["content"].decode()
    assert f"slide AUC (ensemble)</td><td>{ens['auc']:.3f}" in page

    # the QC table of every cohort and a sample of annotated QC thumbnails
    for cohort, slides in (("demo", 24), ("new", 3)):
        page = results[f"results/qc/{cohort}.html"]["content"].decode()
        assert f"{slides} slide(s)" in page and "<th>tissue_fraction</th>" in page
    thumbs = [r for p, r in results.items() if p.endswith(".qc.png")]
    assert len(thumbs) == 8 + 3  # 8 of the demo's 24 slides, all 3 of the new cohort
    assert all(r["mime_type"] == "image/png" and "tissue fraction" in r["labels"] for r in thumbs)

    # one training-curve image per fold
    curves = {p: r for p, r in results.items() if r["job_properties"]["rule"] == "training_curves"}
    assert sorted(curves) == [f"results/models/demo/fold{k}/training_curves.png" for k in (0, 1)]
    assert all(r["content"].startswith(b"\x89PNG") for r in curves.values())

    # heatmaps listed with label, prediction and probability; the predict cohort's table
    overlay = results["results/heatmaps/demo/new/new_a/overlay.png"]["labels"]
    table = pd.read_csv(res / "eval/demo/ensemble/new/predictions.csv").set_index("slide_id")
    pred = table.loc["new_a", "pred"]
    assert overlay["label"] == "-" and overlay["prediction"] == pred
    assert overlay["probability"] == f"{table.loc['new_a', f'prob_{pred}']:.3f}"
    demo = results["results/heatmaps/demo/demo/demo_p01_s1/overlay.png"]["labels"]
    assert demo["label"] in ("normal", "lesion") and demo["prediction"] in ("normal", "lesion")
    page = results["results/eval/demo/ensemble/new/predictions.html"]["content"].decode()
    assert all(f"<td>{sid}</td>" in page for sid in NEW)
