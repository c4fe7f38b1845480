"""Incremental reruns: after one complete run, a change to config.yaml schedules only what depends
on it (issue 6). The workflow is copied into a temporary directory and run once, for real, with a
tiny configuration; every case then asks `snakemake --dry-run` what a rerun would do.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from wfutil import (
    FOUR_SLIDES,
    config_restored,
    copy_workflow,
    deep_update,
    planned_jobs,
    read_config,
    snakemake_in,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FOLDS = 2
SLIDES = FOUR_SLIDES

# The demo, as small as the real rules allow: 2 folds, 1 epoch, heatmaps of two slides.
TINY: dict = {
    "training": {"epochs": 1, "early_stopping": {"patience": 1}},
    "cv": {"folds": FOLDS},
    "heatmaps": {"slides": ["demo_p01_s1", "demo_p02_s1"]},
}

# Stages that must never rerun when only evaluation-side settings or external cohorts change.
UPSTREAM = {"demo_cohort", "tissue_mask", "extract_patches", "qc_table"}
TRAINING = {"make_splits", "train_fold"}


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory in which the whole tiny demo workflow has run to completion."""
    workdir = copy_workflow(tmp_path_factory.mktemp("incremental") / "work", TINY, SLIDES)
    out = snakemake_in(workdir, timeout=900)
    assert (workdir / "results" / "eval" / "demo" / "summary.json").is_file()
    # the run ends with its headline figure and the page to open (the Snakefile's onsuccess)
    assert "gigamil: results of experiment demo" in out, out[-3000:]
    assert "out-of-fold slide AUC" in out and "open results/eval/demo/metrics.html" in out
    return workdir


@pytest.fixture()
def workdir(done: Path):
    """The completed run, with config.yaml restored after the test."""
    yield from config_restored(done)


def test_second_dry_run_schedules_nothing(workdir: Path):
    assert planned_jobs(workdir) == []


def test_external_cohort_runs_only_its_own_jobs(workdir: Path):
    # a second cohort, used only as an external test set: three new mosaic slides (another draw
    # of the packaged tiles; copies of demo slides would be refused as the same slide content)
    from gigamil.demo_tiles import make_tile_cohort

    drawn = make_tile_cohort(workdir / "ext", seed=11, n_patients=4, slides_per_patient=1)
    picked = pd.concat([drawn[drawn["label"] == c].head(2) for c in drawn["label"].unique()])
    picked = picked.head(3).reset_index(drop=True)
    rows = []
    for _, row in picked.iterrows():
        rows.append(
            {
                "slide_id": f"ext_{row['slide_id']}",
                "patient_id": f"ext_{row['patient_id']}",
                "label": row["label"],
                "path": f"ext/slides/{row['slide_id']}.tiff",
                # the generator's ground truth of the slide (PNG + JSON sidecar)
                "lesion_mask": f"ext/lesion_masks/{row['slide_id']}.png",
            }
        )
    pd.DataFrame(rows).to_csv(workdir / "ext" / "sheet.csv", index=False)
    ext_ids = {r["slide_id"] for r in rows}
    cfg = read_config(workdir)
    cfg["cohorts"]["ext"] = {"sheet": "ext/sheet.csv", "role": "external"}
    write_config(workdir, cfg)

    jobs = planned_jobs(workdir)
    counts = Counter(rule for rule, _ in jobs)
    assert not set(counts) & (TRAINING | {"demo_cohort"}), counts
    # preprocessing: exactly the new slides, nothing of the demo cohort
    for rule in ("tissue_mask", "extract_patches"):
        assert {w["slide_id"] for r, w in jobs if r == rule} == ext_ids, rule
        assert counts[rule] == len(ext_ids)
    assert all(w.get("cohort", "ext") == "ext" for _, w in jobs), jobs
    # every fold model predicts the new cohort, and the ensemble is redone
    assert counts["predict_fold"] == FOLDS
    assert counts["ensemble"] == 1
    assert set(counts) <= {
        "tissue_mask",
        "extract_patches",
        "qc_table",
        "qc_report_copy",  # the new slides' QC thumbnails for the report
        "predict_fold",
        "ensemble",
        "heatmap",
    }, counts

    # run it: the ensemble scores the external cohort, and its localisation from the masks
    snakemake_in(workdir)
    summary = json.loads(
        (workdir / "results" / "eval" / "demo" / "ensemble" / "ext" / "summary.json").read_text()
    )
    assert summary["n_slides"] == len(ext_ids) and summary["n_models"] == FOLDS
    lesion_ids = {r["slide_id"] for r in rows if r["label"] == "lesion"}
    per_slide = summary["localization_auc_per_slide"]  # (a 1-epoch model: plumbing, not skill)
    assert per_slide and set(per_slide) <= lesion_ids, (per_slide, lesion_ids)
    assert all(0.0 <= v <= 1.0 for v in per_slide.values())
    table = pd.read_csv(
        workdir / "results" / "eval" / "demo" / "ensemble" / "ext" / "predictions.csv"
    ).set_index("slide_id")
    # the CSV holds 6 significant digits
    assert table["localization_auc"].dropna().to_dict() == pytest.approx(per_slide, rel=1e-5)

    # touching or sorting the external sheet re-predicts nothing; a changed label re-predicts
    sheet_file = workdir / "ext" / "sheet.csv"
    ext_sheet = pd.read_csv(sheet_file)
    ext_sheet.iloc[::-1].to_csv(sheet_file, index=False)
    assert planned_jobs(workdir) == []
    relabelled = ext_sheet.copy()
    relabelled.loc[0, "label"] = "lesion" if relabelled.loc[0, "label"] == "normal" else "normal"
    relabelled.to_csv(sheet_file, index=False)
    counts = Counter(rule for rule, _ in planned_jobs(workdir))
    assert counts["predict_fold"] == FOLDS and counts["ensemble"] == 1, counts
    assert not set(counts) & ({"tissue_mask", "extract_patches"} | TRAINING), counts
    ext_sheet.to_csv(sheet_file, index=False)


def test_heatmap_parameter_reruns_heatmaps_only(workdir: Path):
    cfg = read_config(workdir)
    cfg["heatmaps"]["alpha"] = 0.3 if cfg["heatmaps"]["alpha"] != 0.3 else 0.7
    write_config(workdir, cfg)
    counts = Counter(rule for rule, _ in planned_jobs(workdir))
    assert counts, "changing heatmaps.alpha scheduled nothing"
    assert set(counts) == {"heatmap"}, counts
    assert counts["heatmap"] == len(TINY["heatmaps"]["slides"])


def test_training_parameter_reruns_training_not_patching(workdir: Path):
    cfg = read_config(workdir)
    cfg["training"]["lr"] = cfg["training"]["lr"] * 2
    write_config(workdir, cfg)
    counts = Counter(rule for rule, _ in planned_jobs(workdir))
    assert counts["train_fold"] == FOLDS, counts
    assert counts["predict_fold"] >= FOLDS and counts["aggregate_cv"] == 1, counts
    assert not set(counts) & (UPSTREAM | {"make_splits"}), counts


def test_a_fold_without_its_model_is_trained_again(workdir: Path):
    """A retraining killed mid-fold: Snakemake deletes the failed job's model.pt and
    train_log.csv, and the fold's predictions of its previous model stay. model.pt is a target
    of rule all, so the fold trains (resuming its last.pt) and is predicted again; before, the
    rerun said 'Nothing to be done' and the old predictions went into the evaluation."""
    fold = workdir / "results" / "models" / "demo" / "fold1"
    kept = {name: (fold / name).read_bytes() for name in ("model.pt", "train_log.csv")}
    times = {name: (fold / name).stat().st_mtime_ns for name in kept}
    try:
        for name in kept:
            (fold / name).unlink()
        counts = Counter(rule for rule, _ in planned_jobs(workdir))
        assert counts["train_fold"] == 1 and counts["predict_fold"] >= 1, counts
        assert counts["aggregate_cv"] == 1 and counts["training_curves"] == 1, counts
    finally:
        for name, data in kept.items():  # as they were, times included: the run is complete
            (fold / name).write_bytes(data)
            os.utime(fold / name, ns=(times[name], times[name]))
    assert planned_jobs(workdir) == []


def test_switching_tensorboard_on_retrains_nothing(workdir: Path):
    cfg = read_config(workdir)
    cfg["training"]["tensorboard"] = not cfg["training"].get("tensorboard", False)
    write_config(workdir, cfg)
    assert planned_jobs(workdir) == []


def test_chunk_size_or_device_change_retrains_nothing(workdir: Path):
    """Lowering max_instances_per_forward_pass after an out-of-memory error (Troubleshooting)
    or naming the device changes where and in what pieces the same computation runs."""
    cfg = read_config(workdir)
    cfg["training"]["max_instances_per_forward_pass"] = 7
    cfg["training"]["device"] = "cpu"
    write_config(workdir, cfg)
    assert planned_jobs(workdir) == []
    cfg["model"]["batchnorm"] = "train"  # batch statistics per chunk: the chunk trains the model
    write_config(workdir, cfg)
    assert Counter(rule for rule, _ in planned_jobs(workdir))["train_fold"] == FOLDS


def _reversed_keys(value):
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    return value


def test_reordered_config_keys_rerun_nothing(workdir: Path):
    """Snakemake compares params by repr: the same settings with their keys in another order
    (every mapping of config.yaml reversed, as a hand edit or yaml.safe_dump(sort_keys=True)
    might write them) must schedule nothing."""
    write_config(workdir, _reversed_keys(read_config(workdir)))
    assert planned_jobs(workdir) == []


def test_sheet_edit_outside_the_split_columns_or_a_moved_sheet_retrains_nothing(workdir: Path):
    sheet_path = workdir / read_config(workdir)["cohorts"]["demo"]["sheet"]
    original = sheet_path.read_text()
    try:
        sheet = pd.read_csv(sheet_path)
        sheet["note"] = "rescanned"  # a column the folds do not read: nothing to redo
        sheet.to_csv(sheet_path, index=False)
        assert planned_jobs(workdir) == []
        # rows sorted another way: no QC table, CV evaluation or ensemble reruns either
        sheet.iloc[::-1].to_csv(sheet_path, index=False)
        assert planned_jobs(workdir) == []
        # the same sheet under another name: nothing to redo either
        cfg = read_config(workdir)
        moved = sheet_path.with_name("moved.csv")
        moved.write_text(sheet_path.read_text())
        write_config(workdir, deep_update(cfg, {"cohorts": {"demo": {"sheet": str(moved)}}}))
        assert planned_jobs(workdir) == []
        moved.unlink()
        write_config(workdir, cfg)
        # two patients swap labels (each class keeps its patient count)
        first = sheet.groupby("label")["patient_id"].first()
        a, b = first["normal"], first["lesion"]
        sheet.loc[sheet["patient_id"] == a, "label"] = "lesion"
        sheet.loc[sheet["patient_id"] == b, "label"] = "normal"
        sheet.to_csv(sheet_path, index=False)  # new labels: new folds, new models
        counts = Counter(rule for rule, _ in planned_jobs(workdir))
        assert counts["make_splits"] == 1 and counts["train_fold"] == FOLDS, counts
        # no mask or patch job; the QC table (1 s) lists the labels, so it is redrawn
        assert not set(counts) & (UPSTREAM - {"qc_table"}) and counts["qc_table"] == 1, counts
    finally:
        sheet_path.write_text(original)


def test_editing_a_sheet_lesion_masks_sidecar_reruns_what_reads_it(workdir: Path):
    """A plain cohort's lesion mask sidecar (its downsample) is read by the localisation AUC and
    the heatmap's lesion outline: editing it reruns them, not only a demo cohort's. The demo
    cohort as a plain one (same sheet and files) changes the heatmaps' inputs once, so the plan
    is asked with the mtime trigger alone."""
    cfg = read_config(workdir)
    write_config(workdir, deep_update(cfg, {"cohorts": {"demo": {"demo": False}}}))
    sidecar = workdir / "results" / "demo" / "lesion_masks" / "demo_p01_s1.json"
    original, stat = sidecar.read_text(), sidecar.stat()
    mtime = ("--rerun-triggers", "mtime")
    try:
        assert planned_jobs(workdir, *mtime) == []
        meta = json.loads(original)
        meta["downsample"] = meta["downsample"] * 1.01  # within the 2 % the span check allows
        sidecar.write_text(json.dumps(meta))
        counts = Counter(rule for rule, _ in planned_jobs(workdir, *mtime))
        assert counts == {"aggregate_cv": 1, "oof_cohort": 1, "heatmap": 1}, counts
    finally:
        sidecar.write_text(original)
        os.utime(sidecar, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_subgroups_add_only_their_own_job(workdir: Path):
    """`subgroups: [site, cohort]` adds one job, subgroups_cv, which reads the site column
    from the sheet; the numbers come from the out-of-fold predictions."""
    sheet_path = workdir / read_config(workdir)["cohorts"]["demo"]["sheet"]
    original = sheet_path.read_text()
    try:
        sheet = pd.read_csv(sheet_path)
        sheet["site"] = ["A" if i < 2 else "B" for i in range(len(sheet))]
        sheet.to_csv(sheet_path, index=False)
        write_config(workdir, deep_update(read_config(workdir), {"subgroups": ["site", "cohort"]}))
        assert Counter(rule for rule, _ in planned_jobs(workdir)) == {"subgroups_cv": 1}
        snakemake_in(workdir)
        table = pd.read_csv(workdir / "results" / "eval" / "demo" / "subgroups.csv")
        assert list(zip(table["column"], table["value"], strict=True)) == [
            ("all", "all"),
            ("site", "A"),
            ("site", "B"),
            ("cohort", "demo"),
        ]
        assert table["n_slides"].tolist() == [len(sheet), 2, len(sheet) - 2, len(sheet)]
        oof = pd.read_csv(workdir / "results" / "eval" / "demo" / "per_slide_predictions.csv")
        brier = ((oof["prob_lesion"] - oof["label"].eq("lesion")) ** 2).mean()
        assert table.loc[0, "brier"] == pytest.approx(brier, rel=1e-4)
        html = (workdir / "results" / "eval" / "demo" / "subgroups.html").read_text()
        assert "site" in html and "bootstrap" in html
        # a column no sheet has stops the run before any job, naming the sheets' columns
        write_config(workdir, deep_update(read_config(workdir), {"subgroups": ["scanner"]}))
        out = snakemake_in(workdir, "-n", ok=False)
        assert "subgroups: 'scanner' is a column of no scored cohort's sheet" in out, out[-2000:]
        assert "site" in out
    finally:
        sheet_path.write_text(original)


def test_train_cohorts_written_in_another_order_do_not_split_again(tmp_path: Path):
    """The folds of two train cohorts do not depend on their order in config.yaml: written the
    other way round, nothing reruns. Before, make_splits' params listed the cohorts in the
    config's order, so the split, every fold's train_fold job and all after them reran."""
    from gigamil import layout
    from gigamil.demo import make_demo_cohort

    workdir = copy_workflow(tmp_path / "work", TINY, SLIDES)
    cfg = read_config(workdir)
    cohorts = {}
    for seed, name in enumerate(("ca", "cb"), start=3):  # 4 one-slide patients each, 2 classes
        make_demo_cohort(workdir / name, seed=seed, n_patients=4, slides_per_patient=1, prefix=name)
        cohorts[name] = {"sheet": f"{name}/sheet.csv", "role": "train"}
    write_config(workdir, {**cfg, "cohorts": cohorts, "heatmaps": {"slides": "none"}})
    folds = layout.folds_csv(cfg["experiment"])
    snakemake_in(workdir, folds)
    before = (workdir / folds).read_text()
    reordered = {"cohorts": dict(reversed(cohorts.items())), "heatmaps": {"slides": "none"}}
    write_config(workdir, {**cfg, **reordered})
    assert planned_jobs(workdir, folds) == []
    snakemake_in(workdir, folds, "--forcerun", "make_splits")  # the same folds either way
    assert (workdir / folds).read_text() == before
