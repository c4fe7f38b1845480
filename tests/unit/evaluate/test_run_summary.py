"""gigamil.evaluate.run_summary: what a finished run prints last."""

from __future__ import annotations

import json
from pathlib import Path

from gigamil.evaluate.run_summary import run_summary_lines

COHORTS = {"demo": {"role": "train"}, "ext": {"role": "external"}, "new": {"role": "predict"}}


def _write(path: Path, summary: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))


def _fold_model(root: Path, fold: int, mtime: float) -> None:
    """An (empty) model.pt of experiment exp's fold, written at ``mtime``."""
    import os

    model = root / f"results/models/exp/fold{fold}/model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    os.utime(model, (mtime, mtime))


def test_run_summary_names_the_figures_and_the_pages(tmp_path: Path) -> None:
    assert run_summary_lines("exp", COHORTS, tmp_path) == []  # nothing evaluated yet
    cv = {"n_slides": 24, "n_patients": 12, "oof_auc": 0.9722, "oof_auc_ci": [0.906, 1.0]}
    cv |= {"localization_auc": 0.87, "localization_auc_sd": 0.103, "localization_n_slides": 12}
    cv |= {"balanced_accuracy": 0.875, "balanced_accuracy_ci": [0.75, 1.0]}
    _write(tmp_path / "results/eval/exp/summary.json", cv)
    ext = {"n_slides": 6, "auc": 0.8, "auc_ci": [0.5, 1.0]}
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext)
    new = {"n_slides": 3, "metrics": None, "predicted": {"normal": 2, "lesion": 1}}
    _write(tmp_path / "results/eval/exp/ensemble/new/summary.json", new)
    lines = run_summary_lines("exp", COHORTS, tmp_path)
    assert lines[0] == "gigamil: results of experiment exp"
    assert lines[1] == (
        "  cross-validation, 24 slides of 12 patients: out-of-fold slide AUC 0.972 (95% CI "
        "0.906–1.000), balanced accuracy 0.875 (95% CI 0.750–1.000); localisation AUC "
        "0.870 ± 0.103 (mean ± sd, 12 slides)"
    )
    assert lines[2] == "    open results/eval/exp/metrics.html"
    assert "external cohort ext, 6 slides: fold-model ensemble slide AUC 0.800" in lines[3]
    assert lines[4] == "    open results/eval/exp/ensemble/ext/metrics.html"
    assert lines[5] == "  cohort new (predict), 3 slides: 2 normal, 1 lesion"
    assert lines[6] == (
        "    open results/eval/exp/ensemble/new/predictions.html (the probabilities mean "
        "something only for slides like the training slides)"
    )
    assert lines[-1].endswith("snakemake --report report.html")
    cv |= {"patch_score_localization_auc": 0.91, "patch_score_localization_auc_sd": 0.05}
    _write(tmp_path / "results/eval/exp/summary.json", cv)
    assert run_summary_lines("exp", COHORTS, tmp_path)[1].endswith(
        "localisation AUC 0.870 ± 0.103, of the patch score 0.910 ± 0.050 (mean ± sd, 12 slides)"
    )
    # a run with --configfile: the report command needs it too (else the demo's experiment)
    lines = run_summary_lines("exp", COHORTS, tmp_path, configfiles=["my.yaml"])
    assert lines[-1].endswith("snakemake --report report.html --configfile my.yaml")
    # no heatmap drawn (heatmaps.slides: none): no folder named that does not exist
    assert (
        lines[-1]
        == "  all results in one page: snakemake --report report.html --configfile my.yaml"
    )
    (tmp_path / "results/heatmaps/exp").mkdir(parents=True)  # this experiment drew some
    # a run started elsewhere (-s / --directory): paths and the command work from anywhere
    lines = run_summary_lines(
        "exp",
        COHORTS,
        tmp_path,
        snakemake_args=["-s", "/repo/Snakefile", "--directory", "/proj"],
        shown_root="/proj",
    )
    assert lines[2] == "    open /proj/results/eval/exp/metrics.html"
    assert lines[-1].endswith(
        "heatmaps: /proj/results/heatmaps/; all results in one page: snakemake -s "
        "/repo/Snakefile --directory /proj --report /proj/report.html"
    )
    # slides without patches are counted beside the scored ones, not silently left out
    _write(tmp_path / "results/eval/exp/ensemble/new/summary.json", new | {"n_unpredicted": 1})
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext | {"n_unpredicted": 2})
    lines = run_summary_lines("exp", COHORTS, tmp_path)
    assert "external cohort ext, 6 slides (+ 2 without patches, not scored):" in lines[3]
    assert lines[5].endswith("2 normal, 1 lesion, 1 without patches (not predicted)")
    # a damaged or half-written summary is left out, not a traceback at the end of a run
    (tmp_path / "results/eval/exp/summary.json").write_text("{")
    assert not any(
        "cross-validation" in line for line in run_summary_lines("exp", COHORTS, tmp_path)
    )


def test_few_patients_get_no_interval_and_the_balanced_accuracy_shows_a_miss(tmp_path):
    """Two external slides, the lesion one called normal: AUC 1.0, and before, "(no 95% CI:
    every resample gave 1.000)" read as a pass; one lesion-masked slide had "mean ± sd"."""
    ext = {"n_slides": 2, "n_patients": 2, "auc": 1.0, "auc_ci": [1.0, 1.0]}
    ext |= {"balanced_accuracy": 0.5, "balanced_accuracy_ci": [0.5, 0.5]}
    ext |= {"localization_auc": 0.875, "localization_auc_sd": None, "localization_n_slides": 1}
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext)
    new = {"n_slides": 1, "metrics": None, "predicted": {"normal": 1}}
    _write(tmp_path / "results/eval/exp/ensemble/new/summary.json", new)
    lines = run_summary_lines("exp", COHORTS, tmp_path)
    assert lines[1] == (
        "  external cohort ext, 2 slides: fold-model ensemble slide AUC 1.000, balanced accuracy "
        "0.500 (no 95% CIs: 2 patients, too few); localisation AUC 0.875 (1 slide)"
    )
    assert lines[3] == "  cohort new (predict), 1 slide: 1 normal"


def test_a_multiclass_auc_is_named_macro_one_vs_rest(tmp_path):
    cv = {"n_slides": 9, "n_patients": 9, "oof_auc": 0.67, "classes": ["n", "a", "b"]}
    _write(tmp_path / "results/eval/exp/summary.json", cv)
    lines = run_summary_lines("exp", {}, tmp_path)
    assert "out-of-fold slide AUC (macro one-vs-rest) 0.670" in lines[1]


def test_a_summary_older_than_the_fold_models_is_marked_stale(tmp_path):
    """`snakemake --until train_fold` retrained the folds and printed the old models' figures."""
    import os

    cv_path = tmp_path / "results/eval/exp/summary.json"
    _write(cv_path, {"n_slides": 4, "n_patients": 4, "oof_auc": 0.5})
    _fold_model(tmp_path, 1, 2000)
    os.utime(cv_path, (1000, 1000))
    (line,) = [x for x in run_summary_lines("exp", {}, tmp_path) if "cross-validation" in x]
    assert line.endswith("[STALE: older than the fold models; run snakemake again to update]")
    os.utime(cv_path, (3000, 3000))  # evaluated after training: as it was
    (line,) = [x for x in run_summary_lines("exp", {}, tmp_path) if "cross-validation" in x]
    assert "STALE" not in line


def test_one_class_and_patients_seen_in_training_are_said_on_the_cohort_line(tmp_path):
    """An external cohort of normal slides only printed "AUC n/a" with no reason, and one whose
    patients the fold models had seen (allow_patient_overlap) printed its figures bare."""
    ext = {"n_slides": 2, "n_patients": 2, "auc": None, "auc_ci": [None, None]}
    ext |= {"auc_note": "no AUC: all 2 slide(s) with a prediction are 'normal' (...)"}
    ext |= {"balanced_accuracy": 1.0, "balanced_accuracy_ci": [1.0, 1.0]}
    ext |= {"patient_overlap": {"n_patients": 1, "patient_ids": ["p1"], "note": "..."}}
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext)
    lines = run_summary_lines("exp", COHORTS, tmp_path)
    assert lines[1] == (
        "  external cohort ext, 2 slides: fold-model ensemble slide AUC n/a (one class only), "
        "balanced accuracy 1.000 (no 95% CIs: 2 patients, too few) [1 patient also in "
        "training: optimistic]"
    )


def test_subgroup_pages_are_named_when_written(tmp_path):
    _write(tmp_path / "results/eval/exp/summary.json", {"n_slides": 4, "oof_auc": 0.9})
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", {"n_slides": 3, "auc": 0.8})
    assert not any("subgroup" in line for line in run_summary_lines("exp", COHORTS, tmp_path))
    (tmp_path / "results/eval/exp/subgroups.html").write_text("<html>")
    (tmp_path / "results/eval/exp/ensemble/ext/subgroups.html").write_text("<html>")
    lines = run_summary_lines("exp", COHORTS, tmp_path)
    assert lines[3] == "    open results/eval/exp/subgroups.html (metrics per subgroup)"
    assert (
        lines[6] == "    open results/eval/exp/ensemble/ext/subgroups.html (metrics per subgroup)"
    )


def test_a_binary_auc_without_a_balanced_accuracy_is_named_bare(tmp_path):
    cv = {"n_slides": 4, "n_patients": 4, "oof_auc": None, "classes": ["normal", "lesion"]}
    _write(tmp_path / "results/eval/exp/summary.json", cv)
    lines = run_summary_lines("exp", {}, tmp_path)
    # no auc_note: not "one class only"; no balanced accuracy in the summary: none printed
    assert lines[1] == (
        "  cross-validation, 4 slides of 4 patients: out-of-fold slide AUC n/a (no 95% CIs: "
        "4 patients, too few)"
    )


def test_a_summary_older_than_any_fold_model_is_stale(tmp_path):
    import os

    cv_path = tmp_path / "results/eval/exp/summary.json"
    _write(cv_path, {"n_slides": 4, "n_patients": 4, "oof_auc": 0.5})
    for fold, mtime in ((0, 1000), (1, 3000)):  # fold 1 retrained after the evaluation
        _fold_model(tmp_path, fold, mtime)
    os.utime(cv_path, (2000, 2000))
    (line,) = [x for x in run_summary_lines("exp", {}, tmp_path) if "cross-validation" in x]
    assert "[STALE: older than the fold models" in line


def test_a_subgroup_page_older_than_the_fold_models_is_marked_stale(tmp_path):
    import os

    _write(tmp_path / "results/eval/exp/summary.json", {"n_slides": 4, "oof_auc": 0.9})
    page = tmp_path / "results/eval/exp/subgroups.html"
    page.write_text("<html>")
    _fold_model(tmp_path, 0, 2000)
    os.utime(page, (1000, 1000))
    (line,) = [x for x in run_summary_lines("exp", {}, tmp_path) if "subgroups.html" in x]
    assert line.startswith("    open results/eval/exp/subgroups.html (metrics per subgroup)")
    assert "[STALE: older than the fold models" in line
    os.utime(page, (3000, 3000))
    (line,) = [x for x in run_summary_lines("exp", {}, tmp_path) if "subgroups.html" in x]
    assert "STALE" not in line

    os.utime(tmp_path / "results/eval/exp/summary.json", (2000, 2000))
    os.utime(tmp_path / "results/models/exp/fold0/model.pt", (2000, 2000))  # same second: not older
    os.utime(page, (1000, 1000))
    lines = run_summary_lines("exp", {}, tmp_path)
    assert "STALE" not in lines[1]
    assert lines[3].startswith("    open results/eval/exp/subgroups.html (metrics per subgroup) [")


def test_unscored_cv_slides_and_a_path_with_a_space_in_the_report_command(tmp_path):
    cv = {"n_slides": 4, "n_patients": 4, "oof_auc": 0.5, "n_unpredicted": 1}
    _write(tmp_path / "results/eval/exp/summary.json", cv)
    lines = run_summary_lines("exp", {}, tmp_path, snakemake_args=["-s", "/my repo/Snakefile"])
    assert "4 slides of 4 patients (+ 1 without patches, not scored):" in lines[1]
    assert "snakemake -s '/my repo/Snakefile' --report report.html" in lines[-1]


def test_models_trained_elsewhere_are_named_and_date_the_summaries(tmp_path):
    """With trained_models the fold models are theirs: a line names the folder, and a summary
    older than one of them (replaced after the last run) is stale."""
    import os

    path = tmp_path / "results/eval/exp/ensemble/ext/summary.json"
    _write(path, {"n_slides": 4, "n_patients": 4, "auc": 0.75})
    models = []
    for k in (0, 1):
        model = tmp_path / f"shared/m/fold{k}/model.pt"
        model.parent.mkdir(parents=True)
        model.write_bytes(b"")
        os.utime(model, (1000, 1000))
        models.append(Path("shared/m") / f"fold{k}" / "model.pt")
    os.utime(path, (2000, 2000))
    lines = run_summary_lines("exp", COHORTS, tmp_path, trained_models=models)
    assert lines[1] == "  predicted by 2 fold models of shared/m (trained_models)"
    said = run_summary_lines(  # the checks' warnings of the start, again at the end
        "exp", COHORTS, tmp_path, trained_models=models, warnings=["1 fold model but cv.folds 2"]
    )
    assert said[-2] == "  WARNING: 1 fold model but cv.folds 2"
    assert "STALE" not in "".join(lines)
    os.utime(tmp_path / models[1], (3000, 3000))
    lines = run_summary_lines("exp", COHORTS, tmp_path, trained_models=models)
    assert any(
        "external cohort ext" in x and "[STALE: older than the fold models" in x for x in lines
    )


def test_a_fold_that_did_not_learn_is_a_warning_with_its_curves(tmp_path):
    """The training loss of fold 1's second member stayed at ln 2: the summary says so, and
    where its training curves are; a fold that learnt, and a run without chance_loss, say
    nothing."""
    import math

    import pandas as pd

    _write(tmp_path / "results/eval/exp/summary.json", {"n_slides": 4, "oof_auc": 0.6})
    for fold, member_losses in ((0, [0.6, 0.3, 0.2, 0.1]), (1, [0.70, 0.69, 0.70, 0.69])):
        rows = pd.concat(
            [
                pd.DataFrame({"epoch": range(1, 5), "train_loss": [0.6, 0.4, 0.3, 0.2]}),
                pd.DataFrame({"epoch": range(1, 5), "train_loss": member_losses}),
            ],
            keys=[0, 1],
            names=["replicate", None],
        ).reset_index(level=0)
        path = tmp_path / f"results/models/exp/fold{fold}/train_log.csv"
        path.parent.mkdir(parents=True)
        rows.to_csv(path, index=False)
    lines = run_summary_lines("exp", {}, tmp_path, chance_loss=math.log(2))
    warned = [x for x in lines if "WARNING" in x]
    assert warned == [
        "  WARNING: fold1 replicate1 did not learn: its training loss ended at 0.693 (chance "
        "level 0.693: a model predicting every class equally likely; flagged at >= 0.624); its "
        "predictions mean nothing (README, 'When a fold does not learn')"
    ]
    assert lines[lines.index(warned[0]) + 1] == (
        "    open results/models/exp/fold1/training_curves.png"
    )
    assert not any("WARNING" in x for x in run_summary_lines("exp", {}, tmp_path))
    # a lower flag given (as focal loss has): fold 0 member 1 (last three epochs 0.2) passes
    flagged = run_summary_lines("exp", {}, tmp_path, chance_loss=math.log(2), flag_loss=0.25)
    assert sum("did not learn" in x for x in flagged) == 3  # all but that one
    # only the folds of this cross-validation (its folds.csv): fold 1 is left from a run with
    # more folds (new-user trial: a stale fold folder was warned about and its plot named)
    folds = tmp_path / "results/splits/exp/folds.csv"
    folds.parent.mkdir(parents=True)
    folds.write_text("fold,role,cohort,slide_id,patient_id,label\n0,test,c,s1,p1,normal\n")
    assert not any("WARNING" in x for x in run_summary_lines("exp", {}, tmp_path, chance_loss=0.69))
    folds.write_text("fold,role,cohort,slide_id,patient_id,label\n1,test,c,s1,p1,normal\n")
    assert (
        sum("WARNING" in x for x in run_summary_lines("exp", {}, tmp_path, chance_loss=0.69)) == 1
    )
    # models trained elsewhere: this project's own fold folders (an earlier run's) are not its
    models = ["shared/m/fold0/model.pt"]
    said = run_summary_lines("exp", {}, tmp_path, trained_models=models, chance_loss=0.69)
    assert not any("did not learn" in x for x in said)


def test_one_model_trained_elsewhere_is_named_and_a_shown_root_with_a_space_is_quoted(tmp_path):
    path = tmp_path / "results/eval/exp/ensemble/ext/summary.json"
    _write(path, {"n_slides": 4, "n_patients": 4, "auc": 0.75})
    model = Path("shared/m/fold0/model.pt")
    lines = run_summary_lines("exp", COHORTS, tmp_path, trained_models=[model])
    assert lines[1] == "  predicted by 1 fold model of shared/m (trained_models)"
    lines = run_summary_lines("exp", COHORTS, tmp_path, shown_root="/my runs/a")
    assert lines[-1].endswith("snakemake --report '/my runs/a/report.html'")


def test_the_patient_auc_is_named_where_a_patient_has_several_slides(tmp_path):
    """24 slides of 12 patients: the patient AUC beside the slide AUC; one slide per patient:
    the same figure twice, so left out."""
    cv = {"n_slides": 24, "n_patients": 12, "oof_auc": 0.9722, "oof_auc_ci": [0.906, 1.0]}
    cv |= {"patient_auc": 0.9, "patient_auc_ci": [0.7, 1.0]}
    _write(tmp_path / "results/eval/exp/summary.json", cv)
    ext = {"n_slides": 12, "n_patients": 12, "auc": 0.8, "auc_ci": [0.5, 1.0]}
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext | {"patient_auc": 0.8})
    lines = run_summary_lines("exp", COHORTS, tmp_path)
    assert lines[1] == (
        "  cross-validation, 24 slides of 12 patients: out-of-fold slide AUC 0.972 (95% CI "
        "0.906–1.000); patient AUC 0.900 (95% CI 0.700–1.000)"
    )
    assert "patient AUC" not in lines[3] and lines[3].startswith("  external cohort ext")
    ext |= {"n_slides": 14, "patient_auc": None}  # undefined (one class): left out
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext)
    assert "patient AUC" not in run_summary_lines("exp", COHORTS, tmp_path)[3]
    ext["patient_auc"] = 0.75
    _write(tmp_path / "results/eval/exp/ensemble/ext/summary.json", ext)
    assert "; patient AUC 0.750" in run_summary_lines("exp", COHORTS, tmp_path)[3]


def test_another_experiments_heatmaps_are_not_named_as_this_runs(tmp_path: Path) -> None:
    """Experiments share results/; heatmaps drawn by experiment a are no heatmaps of experiment
    b (heatmaps.slides: none), whose line leaves the part out (README, Outputs)."""
    _write(tmp_path / "results/eval/b/summary.json", {"n_slides": 24, "n_patients": 12})
    (tmp_path / "results/heatmaps/a/demo/s1").mkdir(parents=True)
    lines = run_summary_lines("b", {"demo": {"role": "train"}}, tmp_path)
    assert lines[-1] == "  all results in one page: snakemake --report report.html"
    (tmp_path / "results/heatmaps/b/demo/s1").mkdir(parents=True)
    lines = run_summary_lines("b", {"demo": {"role": "train"}}, tmp_path)
    assert lines[-1].startswith("  heatmaps: results/heatmaps/; all results in one page")
