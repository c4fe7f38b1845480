"""Cross-validation summary (aggregate_cv) and fold-model ensembles on synthetic predictions."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from gigamil.errors import GigamilError
from gigamil.evaluate.aggregate import aggregate_cv
from gigamil.evaluate.ensemble import (
    NO_METRICS,
    ensemble_cohort,
    has_labels,
    mean_probabilities,
    models_per_slide,
    predict_cohort,
)
from gigamil.evaluate.localization import mean_attention, slide_localization
from gigamil.evaluate.predictions import oof_predictions
from gigamil.folds import write_folds
from gigamil.splits import make_folds
from gigamil.viz.slide_info import prediction_labels

CLASSES = ["normal", "lesion"]


def _sheet(n_patients=12, slides=2, cohort="demo"):
    rows = []
    for p in range(n_patients):
        for s in range(slides):
            rows.append(
                {
                    "cohort": cohort,
                    "slide_id": f"{cohort}_p{p}_s{s}",
                    "patient_id": f"{cohort}_p{p}",
                    "label": CLASSES[p % 2],
                }
            )
    return pd.DataFrame(rows)


def _predict(slides: pd.DataFrame, fold: int, rng, signal=2.0, nan_slide=None) -> pd.DataFrame:
    y = (slides["label"] == "lesion").to_numpy()
    logit = rng.normal(size=len(slides)) + signal * (2 * y - 1)
    p1 = 1 / (1 + np.exp(-logit))
    df = slides[["slide_id", "patient_id", "cohort", "label"]].copy()
    df["prob_normal"], df["prob_lesion"] = 1 - p1, p1
    df["pred"] = np.where(p1 >= 0.5, "lesion", "normal")
    df["fold"] = fold
    if nan_slide is not None:
        cols = ["prob_normal", "prob_lesion", "pred"]
        df.loc[df.slide_id == nan_slide, cols] = [np.nan, np.nan, ""]
    return df


def _cv_fixture(tmp_path, nan_slide=None, signal=2.0):
    sheet = _sheet()
    folds = make_folds(sheet, folds=3, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        test = folds[(folds.fold == k) & (folds.role == "test")]
        p = tmp_path / f"fold{k}" / "demo.csv"
        p.parent.mkdir()
        _predict(test, k, rng, signal=signal, nan_slide=nan_slide).to_csv(p, index=False)
        paths.append(p)
    return folds, paths


def _damage_last_row(path, edit):
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    row = dict(zip(header, lines[-1].split(","), strict=True))
    edit(row)
    lines[-1] = ",".join(row[c] for c in header)
    path.write_text("\n".join(lines) + "\n")
    return row["slide_id"]


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda r: r.update(prob_normal="0.3", prob_lesion="0.26"), "sum to 0.56, not 1"),
        (lambda r: r.update(prob_lesion="", pred=""), "only some probabilities given"),
        (lambda r: r.update(prob_lesion="x"), "prob_lesion not a number"),
        (lambda r: r.update(prob_normal="-0.5", prob_lesion="1.5"), "outside \\[0, 1\\]"),
        (lambda r: r.update(prob_normal="", prob_lesion=""), "pred '(normal|lesion)' without"),
        (lambda r: r.update(pred="Lesion"), "pred 'Lesion' is not one of the classes"),
        (lambda r: r.update(fold=""), "fold '' is not an integer"),
    ],
)
def test_a_damaged_prediction_row_is_an_error_not_data(tmp_path, edit, why):
    """A fold's prediction file cut short or edited by hand: the row was read as another
    prediction (probabilities summing to 0.56) or dropped as 'no patches' (one probability
    missing), i.e. a silent wrong AUC."""
    _, paths = _cv_fixture(tmp_path)
    slide = _damage_last_row(paths[2], edit)
    with pytest.raises(GigamilError, match=f"demo.csv: row .*slide {slide}.*{why}"):
        aggregate_cv(paths, tmp_path / "folds.csv", CLASSES, tmp_path / "eval", "demo", n_boot=9)


def test_an_unpredicted_slide_is_neither_right_nor_wrong(tmp_path):
    """per_slide_predictions.csv gave a slide without patches correct=False, as if misclassified."""
    folds, paths = _cv_fixture(tmp_path, nan_slide="demo_p3_s1")
    aggregate_cv(paths, tmp_path / "folds.csv", CLASSES, tmp_path / "eval", "demo", n_boot=10)
    per_slide = pd.read_csv(tmp_path / "eval" / "per_slide_predictions.csv", keep_default_na=False)
    none = per_slide["prob_lesion"] == ""
    assert per_slide.loc[none, "slide_id"].tolist() == ["demo_p3_s1"]
    assert per_slide.loc[none, "correct"].tolist() == [""]
    assert set(per_slide.loc[~none, "correct"]) <= {"True", "False"}


def test_aggregate_cv_outputs_and_values(tmp_path):
    folds, paths = _cv_fixture(tmp_path, nan_slide="demo_p3_s1")
    out = tmp_path / "eval"
    summary = aggregate_cv(paths, tmp_path / "folds.csv", CLASSES, out, "demo", n_boot=200)
    for name in (
        "summary.json",
        "metrics.csv",
        "per_slide_predictions.csv",
        "roc.png",
        "confusion.png",
        "metrics.html",
    ):
        assert (out / name).is_file(), name
    assert (out / "metrics.html").read_text().count(
        "data:image/png;base64,"
    ) == 3  # ROC, confusion, calibration
    on_disk = json.loads((out / "summary.json").read_text())
    for key in (
        "oof_auc",
        "fold_auc_mean",
        "fold_auc_sd",
        "balanced_accuracy",
        "macro_f1",
        "n_slides",
        "n_patients",
    ):
        assert key in on_disk, key
    preds = pd.concat([pd.read_csv(p) for p in paths])
    ok = preds.dropna(subset=["prob_lesion"])
    assert on_disk["n_slides"] == 23 and on_disk["n_unpredicted"] == 1
    assert on_disk["n_folds"] == folds["fold"].nunique() == len(paths)
    assert on_disk["n_patients"] == 12  # enough patients; these rank perfectly: [1, 1]
    assert on_disk["oof_auc_ci"] == [1.0, 1.0]
    assert on_disk["ci_note"].startswith("zero-width interval(s) oof_auc [1, 1]")
    assert on_disk["oof_auc"] == pytest.approx(roc_auc_score(ok.label == "lesion", ok.prob_lesion))
    fold_aucs = [roc_auc_score(f.label == "lesion", f.prob_lesion) for _, f in ok.groupby("fold")]
    assert on_disk["fold_auc"] == pytest.approx(fold_aucs)
    assert on_disk["fold_auc_mean"] == pytest.approx(np.mean(fold_aucs))
    assert on_disk["fold_auc_sd"] == pytest.approx(np.std(fold_aucs, ddof=1))
    pred = np.where(ok.prob_lesion > ok.prob_normal, "lesion", "normal")
    assert on_disk["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(ok.label, pred))
    lo, hi = on_disk["oof_auc_ci"]
    assert lo <= on_disk["oof_auc"] <= hi
    table = pd.read_csv(out / "metrics.csv", index_col="scope")
    assert list(table.index) == [
        "fold0",
        "fold1",
        "fold2",
        "mean",
        "sd",
        "oof",
        "oof_ci_low",
        "oof_ci_high",
        "oof_patient",
        "oof_patient_ci_low",
        "oof_patient_ci_high",
    ]
    # the patient row: the same metrics on each patient's mean probability, its CI by patients
    patients = (
        ok.groupby("patient_id")[["prob_lesion"]]
        .mean()
        .join(ok.groupby("patient_id")["label"].first())
    )
    assert table.loc["oof_patient", "auc"] == pytest.approx(
        roc_auc_score(patients.label == "lesion", patients.prob_lesion)
    )
    assert table.loc["oof_patient", "auc"] == pytest.approx(on_disk["patient_auc"])
    assert table.loc["oof_patient", "n_patients"] == 12
    assert [table.loc[f"oof_patient_ci_{s}", "auc"] for s in ("low", "high")] == pytest.approx(
        on_disk["patient_auc_ci"]
    )
    per_slide = pd.read_csv(out / "per_slide_predictions.csv")
    assert len(per_slide) == 24 and set(per_slide.columns) >= {"fold", "pred", "correct"}
    assert summary == on_disk | {"fold_auc_sd": summary["fold_auc_sd"]}
    # the report shows the headline numbers inline, as text, above the fold table
    page = (out / "metrics.html").read_text()
    lo, hi = on_disk["oof_auc_ci"]
    assert lo == hi == 1.0  # every resample ranks perfectly: said, not shown as an interval
    assert f"{on_disk['oof_auc']:.3f} (no 95% CI: every resample gave 1.000)" in page
    plo, phi = on_disk["patient_auc_ci"]  # resampling patients, as the slide AUC's CI
    assert plo <= on_disk["patient_auc"] <= phi
    assert f"{on_disk['patient_auc']:.3f} ({_ci_text(plo, phi)})" in page
    assert f"{on_disk['balanced_accuracy']:.3f} (95% CI" in page
    # each class's recall with its counts and CI: the sensitivity and specificity at the
    # predicted class, resampling patients as the other intervals do
    (tn, fp), (fn, tp) = on_disk["confusion_matrix"]
    sens, (slo, shi) = (
        on_disk["per_class_recall"]["lesion"],
        on_disk["per_class_recall_ci"]["lesion"],
    )
    assert sens == pytest.approx(tp / (tp + fn)) and slo <= sens <= shi
    assert f"sensitivity (recall of lesion)</td><td>{tp} / {tp + fn} = {sens:.3f} (95% CI" in page
    assert f"specificity (recall of normal)</td><td>{tn} / {tn + fp} = " in page
    _check_patient_recall(on_disk, table, page)
    assert table.loc["oof_ci_low", "recall_lesion"] == pytest.approx(slo)
    assert "23 / 12" in page and "slides without patches (not scored)</td><td>1<" in page


def test_oof_predictions_refuse_leakage_and_missing_slides(tmp_path):
    folds, paths = _cv_fixture(tmp_path)
    preds = pd.concat([pd.read_csv(p, dtype={"fold": int}) for p in paths], ignore_index=True)
    with pytest.raises(GigamilError, match="has no prediction$"):
        oof_predictions(preds.iloc[1:], folds)
    # one fold's CSV for the whole cross-validation: the folds it lacks are named
    one = preds[preds["fold"] == 0]
    with pytest.raises(GigamilError, match=r"the predictions have no fold 1, 2.*one CSV per fold"):
        oof_predictions(one, folds)
    # an external cohort's predictions given to the CV evaluation: said, with the command to use
    with pytest.raises(
        GigamilError, match=r"of cohort\(s\) ext, not of the folds' test .*ensemble"
    ):
        oof_predictions(preds.assign(cohort="ext"), folds)
    with pytest.raises(GigamilError, match="predicted twice by fold"):
        oof_predictions(pd.concat([preds, preds.iloc[:1]], ignore_index=True), folds)
    train0 = folds[(folds.fold == 0) & (folds.role == "train")].iloc[:1]
    extra = _predict(train0, 0, np.random.default_rng(1))
    with pytest.raises(GigamilError, match="whose model used it for train"):
        oof_predictions(pd.concat([preds, extra], ignore_index=True), folds)
    # a label or patient in the predictions other than folds.csv's: the metrics would count it
    # (an edited CSV gave OOF AUC 0.625 instead of 0.333 without a word)
    assert len(oof_predictions(preds, folds)) == len(preds)
    flipped = preds.copy()
    flipped.loc[3, "label"] = "normal" if preds.loc[3, "label"] == "lesion" else "lesion"
    r = flipped.loc[3]
    with pytest.raises(
        GigamilError,
        match=rf"slide {r['cohort']}/{r['slide_id']} has label '{r['label']}' in the predictions "
        rf"of fold {r['fold']} but '{preds.loc[3, 'label']}' in folds.csv \(1 test slide",
    ):
        oof_predictions(flipped, folds)
    with pytest.raises(GigamilError, match=r"has patient_id 'someone' in the predictions"):
        oof_predictions(preds.assign(patient_id="someone"), folds)


def _slide_with_mask(grid_slide, tmp_path, sid: str, positive: bool):
    """A test store and its lesion mask (grid rows 1-2, cols 1-2 on positive slides):
    (store, mask path, lesion flag per patch)."""
    store = tmp_path / f"{sid}.zarr"
    _, grid = grid_slide.write(store)
    mask = tmp_path / f"{sid}.png"
    rows = [1, 2] if positive else []
    grid_slide.write_mask(mask, rows=rows, cols=[1, 2], downsample=16)
    return store, mask, np.isin(grid[:, 0], rows) & np.isin(grid[:, 1], [1, 2])


def test_localization_in_summary(grid_slide, tmp_path):
    # an 8-patient cohort (4 per class: 2 folds leave a training and a validation patient of
    # each class beside the test part) whose slides have stores, masks and attention
    sheet = _sheet(n_patients=8, slides=1)
    folds = make_folds(sheet, folds=2, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    rng = np.random.default_rng(0)
    paths, loc = [], {}
    for k in range(2):
        test = folds[(folds.fold == k) & (folds.role == "test")]
        p = tmp_path / f"p{k}.csv"
        _predict(test, k, rng).to_csv(p, index=False)
        paths.append(p)
        for sid, label in zip(test.slide_id, test.label, strict=True):
            store, mask, lesion = _slide_with_mask(grid_slide, tmp_path, sid, label == "lesion")
            att = np.where(lesion, 1.0, 0.0) + 3 * rng.random(len(lesion))  # noisy: AUC < 1
            np.save(tmp_path / f"{sid}.npy", att.astype(np.float32))
            logits = np.where(lesion, 1.0, 0.0) + rng.random(len(lesion))  # the patch logits
            (tmp_path / "patch_logits").mkdir(exist_ok=True)
            np.save(tmp_path / "patch_logits" / f"{sid}.npy", logits.astype(np.float32))
            loc[sid] = (store, tmp_path / f"{sid}.npy", mask)
    s = aggregate_cv(
        paths, tmp_path / "folds.csv", CLASSES, tmp_path / "eval", "t", localization=loc, n_boot=50
    )
    assert s["patch_score_localization_auc"] > s["localization_auc"]  # less noisy logits
    assert sorted(s["patch_score_localization_auc_per_slide"]) == sorted(
        s["localization_auc_per_slide"]
    )
    patch_table = pd.read_csv(tmp_path / "eval" / "per_slide_predictions.csv")
    assert patch_table["patch_score_localization_auc"].notna().sum() == 4
    assert "of the patch score" in (tmp_path / "eval" / "metrics.html").read_text()
    per = s["localization_auc_per_slide"]
    assert sorted(per) == sorted(folds.loc[folds.label == "lesion", "slide_id"].unique())
    assert s["localization_n_slides"] == 4
    assert s["localization_auc"] == pytest.approx(np.mean(list(per.values())))
    assert 0.5 < s["localization_auc"] < 1.0
    table = pd.read_csv(tmp_path / "eval" / "per_slide_predictions.csv")
    assert table["localization_auc"].notna().sum() == 4
    loc_text = f"{s['localization_auc']:.3f} ± {s['localization_auc_sd']:.3f} (4 slides)"
    assert loc_text in (tmp_path / "eval" / "metrics.html").read_text()


def test_ensemble_means_fold_probabilities(tmp_path):
    ext = _sheet(n_patients=10, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    frames, paths = [], []
    for k in range(3):
        df = _predict(ext, k, rng, signal=1.0)
        p = tmp_path / f"fold{k}.csv"
        df.to_csv(p, index=False)
        frames.append(df)
        paths.append(p)
    out = tmp_path / "ens"
    summary = ensemble_cohort(paths, CLASSES, out, "ext", "demo", n_boot=100)
    ens = pd.read_csv(out / "predictions.csv").set_index("slide_id")
    manual = pd.concat(frames).groupby("slide_id")["prob_lesion"].mean()
    # written with 6 significant digits
    np.testing.assert_allclose(ens.loc[manual.index, "prob_lesion"], manual.to_numpy(), rtol=1e-5)
    assert ens["n_models"].eq(3).all()
    assert summary["auc"] == pytest.approx(
        roc_auc_score(manual.index.map(ext.set_index("slide_id")["label"]) == "lesion", manual)
    )
    assert summary["n_models"] == 3 and summary["n_slides"] == 10
    assert summary["models_per_slide"] == [3, 3]
    single = [roc_auc_score(f.label == "lesion", f.prob_lesion) for f in frames]
    assert summary["fold_auc"] == pytest.approx(single)
    for name in ("summary.json", "metrics.csv", "metrics.html", "roc.png", "confusion.png"):
        assert (out / name).is_file()
    assert "patient_overlap" not in summary
    # an allowed overlap with train patients (issue 15, item 4) is recorded in the summary
    again = ensemble_cohort(
        paths, CLASSES, tmp_path / "ens2", "ext", n_boot=10, patient_overlap=["p9", "p3"]
    )
    assert again["patient_overlap"]["n_patients"] == 2
    assert again["patient_overlap"]["patient_ids"] == ["p3", "p9"]
    assert "allow_patient_overlap" in again["patient_overlap"]["note"]
    assert "patient_overlap" in (tmp_path / "ens2" / "summary.json").read_text()
    # and on the page the report shows, above the figures it makes optimistic
    overlap_page = (tmp_path / "ens2" / "metrics.html").read_text()
    warning = "WARNING: patients also in training (the figures below are optimistic)"
    assert f"<td>{warning}</td><td>2: p3, p9</td>" in overlap_page
    assert overlap_page.index(warning) < overlap_page.index("slide AUC")
    assert "patients also in training" not in (out / "metrics.html").read_text()
    # a cohort's page scores a patient on this cohort's slides (others may be in another)
    label = "patient AUC (mean probability of each patient&#x27;s slides in this cohort)"
    assert label in overlap_page  # (html.escape writes the apostrophe so)
    page = (out / "metrics.html").read_text()
    lo, hi = summary["auc_ci"]
    assert f"slide AUC (ensemble)</td><td>{summary['auc']:.3f} ({_ci_text(lo, hi)})" in page
    plo, phi = summary["patient_auc_ci"]
    assert f"<td>{summary['patient_auc']:.3f} ({_ci_text(plo, phi)})" in page
    assert "<title>demo: cohort ext ensemble metrics</title>" in page
    # the ROC and confusion plots on the page itself (embedded: the page stands alone)
    assert page.count("<img src='data:image/png;base64,") == 3
    assert "alt='roc.png'" in page and "alt='confusion.png'" in page


def test_a_train_cohorts_files_are_out_of_fold_and_say_so(tmp_path):
    """Each slide scored by its out-of-fold model only: pages titled out-of-fold, and the
    metrics.csv rows named as the cross-validation's are (a new-user trial read the rows
    'ensemble' of a folder of one model per slide as an ensemble's figures)."""
    ext = _sheet(n_patients=10, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    frames = [_predict(ext, k, rng, signal=1.0) for k in range(3)]
    oof_paths = []
    for k, part in enumerate(np.array_split(np.arange(len(ext)), 3)):
        oof_paths.append(tmp_path / f"oof{k}.csv")
        frames[k].iloc[part].to_csv(oof_paths[-1], index=False)
    oof = ensemble_cohort(oof_paths, CLASSES, tmp_path / "oof", "ext", "demo", n_boot=10)
    assert oof["models_per_slide"] == [1, 1]
    page = (tmp_path / "oof" / "metrics.html").read_text()
    assert "<title>demo: cohort ext out-of-fold (1 model per slide) metrics</title>" in page
    assert "slide AUC (out-of-fold)</td>" in page and "(ensemble)" not in page
    rows = pd.read_csv(tmp_path / "oof" / "metrics.csv", index_col=0).index.tolist()
    assert {"oof", "oof_ci_low", "oof_patient"} <= set(rows) and "ensemble" not in rows
    paths = []
    for k, frame in enumerate(frames):
        frame.to_csv(path := tmp_path / f"fold{k}.csv", index=False)
        paths.append(path)
    ensemble_cohort(paths, CLASSES, tmp_path / "ens", "ext", "demo", n_boot=10)
    assert "ensemble" in pd.read_csv(tmp_path / "ens" / "metrics.csv", index_col=0).index
    # one model scoring a whole cohort is not out of fold (a review found it called so)
    one = ensemble_cohort(paths[:1], CLASSES, tmp_path / "one", "ext", "demo", n_boot=10)
    assert one["n_models"] == 1 and one["models_per_slide"] == [1, 1]
    page = (tmp_path / "one" / "metrics.html").read_text()
    assert "<title>demo: cohort ext 1 model metrics</title>" in page
    assert "slide AUC (1 model)</td>" in page and "out-of-fold" not in page
    rows = pd.read_csv(tmp_path / "one" / "metrics.csv", index_col=0).index.tolist()
    assert "ensemble" in rows and "oof" not in rows
    assert "each fold&#x27;s model on all 10 slides" in page


@pytest.mark.parametrize("which", ["ensemble_cohort", "predict_cohort"])
def test_a_fold_file_lacking_slides_the_other_models_predicted_is_an_error(tmp_path, which):
    """On an external cohort every fold model predicts every slide: a file without some of them
    (cut short, edited) made those slides the mean of fewer models without a word."""
    ext = _sheet(n_patients=10, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    paths = []
    for k in range(3):
        df = _predict(ext, k, rng, signal=1.0)
        paths.append(tmp_path / f"fold{k}.csv")
        (df.iloc[:-3] if k == 1 else df).to_csv(paths[-1], index=False)
    run = ensemble_cohort if which == "ensemble_cohort" else predict_cohort
    with pytest.raises(
        GigamilError, match=r"fold1\.csv lacks the prediction of 3 slide\(s\) .*\(ext_p7_s0, "
    ):
        run(paths, CLASSES, tmp_path / "ens", "ext")
    assert not (tmp_path / "ens" / "summary.json").exists()


@pytest.mark.parametrize("which", ["ensemble_cohort", "predict_cohort"])
def test_predictions_must_cover_exactly_the_sheets_slides(tmp_path, which):
    """A slide missing from every fold model's file dropped out of the ensemble's metrics
    without a word; one not in the sheet (stale, another cohort's) was counted."""
    ext = _sheet(n_patients=10, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"fold{k}.csv")
        _predict(ext.iloc[1:], k, rng, signal=1.0).to_csv(paths[-1], index=False)
    run = ensemble_cohort if which == "ensemble_cohort" else predict_cohort
    sheet = list(ext.slide_id)
    run(paths, CLASSES, tmp_path / "ok", "ext", slides=sheet[1:])  # all there: fine
    with pytest.raises(
        GigamilError, match=r"1 slide\(s\) of the sheet have no prediction \(ext_p0_s0\)"
    ):
        run(paths, CLASSES, tmp_path / "ens", "ext", slides=sheet)
    with pytest.raises(
        GigamilError, match=r"2 predicted slide\(s\) are not in the sheet \(ext_p1_s0, ext_p2_s0\)"
    ):
        run(paths, CLASSES, tmp_path / "ens", "ext", slides=sheet[3:])
    assert not (tmp_path / "ens" / "summary.json").exists()


def test_ensemble_localization_uses_the_mean_attention_of_the_fold_models(
    grid_slide, tmp_path, capsys
):
    ext = _sheet(n_patients=4, slides=1, cohort="ext")
    rng = np.random.default_rng(5)
    paths = []
    for k in range(2):
        p = tmp_path / f"fold{k}.csv"
        _predict(ext, k, rng, signal=1.0).to_csv(p, index=False)
        paths.append(p)
    loc, expected = {}, {}
    for sid, label in zip(ext.slide_id, ext.label, strict=True):
        store, mask, lesion = _slide_with_mask(grid_slide, tmp_path, sid, label == "lesion")
        atts = []
        for k in range(2):  # each model alone is noisy; the ensemble averages the noise
            a = np.where(lesion, 1.0, 0.0) + 2 * rng.random(len(lesion))
            atts.append(tmp_path / f"{sid}.fold{k}.npy")
            np.save(atts[-1], a.astype(np.float32))
        if sid == ext.slide_id.iloc[1]:
            atts.append(tmp_path / "missing.npy")  # a fold model without this slide: ignored
        loc[sid] = (store, atts, mask)
        if lesion.any():
            mean = np.mean([np.load(a) for a in atts if a.is_file()], axis=0)
            expected[sid] = slide_localization(store, mean, mask)["localization_auc"]
    loc[ext.slide_id.iloc[0]] = (
        loc[ext.slide_id.iloc[0]][0],
        [tmp_path / "none.npy"],
        loc[ext.slide_id.iloc[0]][2],
    )
    summary = ensemble_cohort(paths, CLASSES, tmp_path / "ens", "ext", n_boot=20, localization=loc)
    per = summary["localization_auc_per_slide"]
    assert per == pytest.approx(expected) and len(per) == 2
    # 4 patients: the bootstrap intervals carry a caveat (12 patients, above: none)
    assert "resample only 4 patient(s)" in summary["ci_note"]
    assert summary["localization_auc"] == pytest.approx(np.mean(list(expected.values())))
    assert 0.5 < summary["localization_auc"] <= 1.0
    table = pd.read_csv(tmp_path / "ens" / "predictions.csv").set_index("slide_id")
    assert table["localization_auc"].dropna().to_dict() == pytest.approx(expected)
    assert table.loc[list(expected), "n_lesion_patches"].eq(4).all()
    # the same through `gigamil ensemble --localization` (one CSV row per fold model's attention)
    from gigamil.cli import main

    rows = [
        {"slide_id": sid, "store": str(st), "attention": str(a), "mask": str(m)}
        for sid, (st, atts, m) in loc.items()
        for a in atts
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "loc.csv", index=False)
    assert (
        main(
            [
                "ensemble",
                "--cohort",
                "ext",
                "--out",
                str(tmp_path / "cli"),
                "--n-boot",
                "20",
                "--localization",
                str(tmp_path / "loc.csv"),
                "--predictions",
                *map(str, paths),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["localization_auc"] == pytest.approx(summary["localization_auc"])


def test_mean_probabilities_skip_missing_models_and_mean_attention(tmp_path):
    ext = _sheet(n_patients=2, slides=1, cohort="ext")
    a = _predict(ext, 0, np.random.default_rng(0))
    b = _predict(ext, 1, np.random.default_rng(1), nan_slide="ext_p0_s0")
    ens = mean_probabilities(pd.concat([a, b]), CLASSES).set_index("slide_id")
    assert ens.loc["ext_p0_s0", "n_models"] == 1 and ens.loc["ext_p0_s0", "folds"] == "0"
    assert ens.loc["ext_p1_s0", "n_models"] == 2 and ens.loc["ext_p1_s0", "folds"] == "0;1"
    c = _predict(ext, 2, np.random.default_rng(2), nan_slide="ext_p0_s0")
    none = mean_probabilities(pd.concat([b, c]), CLASSES).set_index("slide_id")
    assert none.loc["ext_p0_s0", ["n_models", "folds", "pred"]].tolist() == [0, "", ""]
    assert models_per_slide(ens.reset_index()) == [1, 2] and models_per_slide(none) == [2, 2]
    assert ens.loc["ext_p0_s0", "prob_lesion"] == pytest.approx(a.prob_lesion.iloc[0])
    np.save(tmp_path / "a.npy", np.array([0.2, 0.8], np.float32))
    np.save(tmp_path / "b.npy", np.array([0.4, 0.6], np.float32))
    np.testing.assert_allclose(mean_attention([tmp_path / "a.npy", tmp_path / "b.npy"]), [0.3, 0.7])
    np.save(tmp_path / "c.npy", np.array([1.0], np.float32))
    with pytest.raises(GigamilError, match="different lengths"):
        mean_attention([tmp_path / "a.npy", tmp_path / "c.npy"])


def test_cli_evaluate_and_ensemble(tmp_path, capsys):
    from gigamil.cli import main

    folds, paths = _cv_fixture(tmp_path)
    args = [
        "evaluate",
        "--folds",
        str(tmp_path / "folds.csv"),
        "--out",
        str(tmp_path / "ev"),
        "--n-boot",
        "50",
        "--predictions",
        *map(str, paths),
    ]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_slides"] == 24 and 0.0 <= printed["oof_auc"] <= 1.0
    args = [
        "ensemble",
        "--cohort",
        "demo",
        "--out",
        str(tmp_path / "en"),
        "--n-boot",
        "50",
        "--predictions",
        *map(str, paths),
    ]
    assert main(args) == 0
    ens = json.loads(capsys.readouterr().out)
    assert ens["auc"] == pytest.approx(printed["oof_auc"])  # OOF ensemble == OOF predictions


def test_multiclass_cv_summary_uses_macro_ovr_auc(tmp_path):
    classes = ["a", "b", "c"]
    rows = [
        {"cohort": "m", "slide_id": f"s{p}", "patient_id": f"p{p}", "label": classes[p % 3]}
        for p in range(18)
    ]
    sheet = pd.DataFrame(rows)
    folds = make_folds(sheet, folds=3, seed=1)
    write_folds(folds, tmp_path / "folds.csv")
    rng = np.random.default_rng(5)
    paths, frames = [], []
    for k in range(3):
        test = folds[(folds.fold == k) & (folds.role == "test")].copy()
        y = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        logits = rng.normal(size=(len(test), 3)) + 1.0 * np.eye(3)[y]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        for i, c in enumerate(classes):
            test[f"prob_{c}"] = p[:, i]
        test["pred"] = np.array(classes)[p.argmax(1)]
        test = test.drop(columns="role")
        test.to_csv(tmp_path / f"f{k}.csv", index=False)
        paths.append(tmp_path / f"f{k}.csv")
        frames.append(test)
    s = aggregate_cv(paths, tmp_path / "folds.csv", classes, tmp_path / "ev", n_boot=50)
    allp = pd.concat(frames)
    ref = roc_auc_score(
        allp["label"],
        allp[[f"prob_{c}" for c in classes]].to_numpy(),
        multi_class="ovr",
        average="macro",
        labels=classes,
    )
    assert s["oof_auc"] == pytest.approx(ref)
    assert set(s["per_class_recall"]) == set(classes)
    assert np.array(s["confusion_matrix"]).shape == (3, 3)
    # the macro AUC's parts (only in roc.png's legend before): summary.json and metrics.csv
    probs = allp[[f"prob_{c}" for c in classes]].to_numpy()
    for i, c in enumerate(classes):
        one = roc_auc_score(allp["label"] == c, probs[:, i])
        assert s["per_class_auc"][c] == pytest.approx(one)
        low, high = s["per_class_auc_ci"][c]
        assert low <= high
    assert np.mean(list(s["per_class_auc"].values())) == pytest.approx(ref)
    table = pd.read_csv(tmp_path / "ev" / "metrics.csv", index_col=0)
    assert table.loc["oof", "auc_b"] == pytest.approx(s["per_class_auc"]["b"])
    assert (tmp_path / "ev" / "roc.png").stat().st_size > 0
    # the page and the end-of-run line say how the AUC is formed
    assert (
        "slide AUC (out-of-fold; macro one-vs-rest)"
        in (tmp_path / "ev" / "metrics.html").read_text()
    )


def test_prediction_labels_of_a_heatmap_are_the_mean_over_the_models_that_predicted_it(tmp_path):
    ext = _sheet(n_patients=2, slides=1, cohort="ext")
    paths = []
    for k, p1 in enumerate((0.9, 0.6)):
        df = ext[["slide_id", "patient_id", "cohort", "label"]].assign(
            prob_normal=1 - p1, prob_lesion=p1, pred="lesion", fold=k
        )
        df.loc[1, ["prob_normal", "prob_lesion", "pred"]] = [0.8, 0.2, "normal"]
        paths.append(tmp_path / f"fold{k}.csv")
        df.to_csv(paths[-1], index=False)
    first, second = ext["slide_id"]
    assert prediction_labels(paths, CLASSES, first) == {
        "label": "normal",
        "prediction": "lesion",
        "P(lesion)": "0.750",
        "correct": "no",
    }
    # P(lesion) of a slide predicted normal: the number its heatmap title shows
    assert prediction_labels(paths, CLASSES, second)["P(lesion)"] == "0.200"
    assert prediction_labels(paths + [tmp_path / "gone.csv"], CLASSES, "zz")["prediction"] == "?"
    unlabelled = pd.read_csv(paths[0]).assign(label="")
    unlabelled.loc[0, ["prob_normal", "prob_lesion", "pred"]] = [np.nan, np.nan, ""]
    unlabelled.to_csv(paths[0], index=False)
    assert prediction_labels(paths[:1], CLASSES, first) == {
        "label": "-",
        "prediction": "none (no patches)",
        "P(lesion)": "",
        "correct": "-",
    }


def test_predict_cohort_writes_predictions_and_no_metrics(tmp_path, capsys):
    from gigamil.cli import main

    new = _sheet(n_patients=4, slides=1, cohort="new").assign(label="")
    rng = np.random.default_rng(5)
    paths = []
    for k in range(2):
        df = _predict(new.assign(label="normal"), k, rng).assign(label="")
        if k == 0:
            df.loc[df.slide_id == "new_p3_s0", ["prob_normal", "prob_lesion", "pred"]] = [
                np.nan,
                np.nan,
                "",
            ]
        paths.append(tmp_path / f"fold{k}.csv")
        df.to_csv(paths[-1], index=False)
    assert not has_labels(paths)
    out = tmp_path / "ens"
    summary = predict_cohort(paths, CLASSES, out, "new", "demo")
    assert sorted(p.name for p in out.iterdir()) == [
        "patient_predictions.csv",
        "predictions.csv",
        "predictions.html",
        "summary.json",
    ]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary and summary["metrics"] is None and "no metrics" in summary["note"]
    assert "auc" not in summary and summary["n_slides"] == 4 and summary["n_models"] == 2
    assert summary["models_per_slide"] == [1, 2]  # new_p3_s0 has patches for one model only
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("slide_id")
    frames = pd.concat([pd.read_csv(p) for p in paths])
    manual = frames.groupby("slide_id")["prob_lesion"].mean()  # NaN rows skipped
    np.testing.assert_allclose(
        table.loc[manual.index, "prob_lesion"].astype(float), manual, rtol=1e-5
    )
    assert table.loc["new_p3_s0", "n_models"] == 1 and (table["label"] == "").all()
    counts = table["pred"].value_counts()
    assert summary["predicted"] == {c: int(counts.get(c, 0)) for c in CLASSES}
    page = (out / "predictions.html").read_text()
    assert "<td>new_p0_s0</td>" in page and "4 of 4 slide(s) predicted" in page
    assert f"<td>{table.loc['new_p0_s0', 'prob_lesion']:.3f}</td>" in page
    # a slide no model could predict (no patches) is counted as such, not as predicted
    for path in paths:
        df = pd.read_csv(path)
        df.loc[df.slide_id == "new_p1_s0", ["prob_normal", "prob_lesion", "pred"]] = [
            np.nan,
            np.nan,
            "",
        ]
        df.to_csv(path, index=False)
    empty = predict_cohort(paths, CLASSES, tmp_path / "ens_empty", "new", "demo")
    page = (tmp_path / "ens_empty" / "predictions.html").read_text()
    assert empty["n_unpredicted"] == 1 and sum(empty["predicted"].values()) == 3
    assert "3 of 4 slide(s) predicted: " in page and "; 1 without patches, not predicted." in page
    # `gigamil ensemble` on predictions without labels: the same, no metrics
    capsys.readouterr()
    args = ["ensemble", "--cohort", "new", "--out", str(tmp_path / "cli"), "--predictions"]
    assert main(args + list(map(str, paths))) == 0
    assert "; no labels, no metrics: " in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["metrics"] is None
    assert not (tmp_path / "cli" / "metrics.csv").exists()
    assert has_labels([_write(tmp_path / "l.csv", _predict(new.assign(label="lesion"), 0, rng))])


def _write(path, df):
    df.to_csv(path, index=False)
    return path


def test_prediction_labels_with_three_classes_give_the_predicted_class_probability(tmp_path):
    row = {"slide_id": "s", "patient_id": "p", "cohort": "c", "label": "a", "fold": 0}
    probs = {"prob_normal": 0.1, "prob_a": 0.3, "prob_b": 0.6, "pred": "b"}
    pd.DataFrame([row | probs]).to_csv(tmp_path / "f.csv", index=False)
    labels = prediction_labels([tmp_path / "f.csv"], ["normal", "a", "b"], "s")
    assert labels == {"label": "a", "prediction": "b", "P(predicted)": "0.600", "correct": "no"}


def test_localization_label_reads_the_first_summary_that_has_the_slide(tmp_path):
    from gigamil.evaluate.localization import localization_label

    ens, cv = tmp_path / "ens.json", tmp_path / "cv.json"
    ens.write_text('{"auc": 0.9}')  # an ensemble without lesion masks
    cv.write_text('{"localization_auc_per_slide": {"s1": 0.9166, "s2": null}}')
    assert localization_label([tmp_path / "gone.json", ens, cv], "s1") == "0.917"
    assert localization_label([ens, cv], "s2") == "-"  # no AUC for that slide
    assert localization_label([ens], "s1") == "-"


def _ci_text(lo: float, hi: float) -> str:
    """How metrics.html writes a 95 % interval: a range, or, when every resample gave the same
    value, that there is none."""
    return f"no 95% CI: every resample gave {lo:.3f}" if lo == hi else f"95% CI {lo:.3f}–{hi:.3f}"


def _check_patient_recall(summary: dict, table: pd.DataFrame, page: str) -> None:
    """The per-patient confusion matrix, recall and interval: in the summary, equal to the
    table's ``oof_patient`` row, and on the page."""
    (tn, fp), (fn, tp) = summary["patient_confusion_matrix"]
    assert tn + fp + fn + tp == summary["n_patients"]
    sens = summary["patient_per_class_recall"]["lesion"]
    assert sens == pytest.approx(table.loc["oof_patient", "recall_lesion"])
    assert summary["patient_balanced_accuracy"] == pytest.approx(
        table.loc["oof_patient", "balanced_accuracy"]
    )
    lo, hi = summary["patient_per_class_recall_ci"]["lesion"]
    assert (
        "patient sensitivity (recall of lesion), mean probability per patient</td>"
        f"<td>{tp} / {tp + fn} = {sens:.3f} ({_ci_text(lo, hi)})"
    ) in page


def test_a_prediction_file_given_twice_is_refused(tmp_path):
    """A repeated file, or a copy of one fold's file, counted that model twice in the mean
    (P(lesion) 0.837 instead of 0.757 in a new user's trial); ``gigamil evaluate`` refused it."""
    import shutil

    ext = _sheet(n_patients=4, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"fold{k}.csv")
        _predict(ext, k, rng).to_csv(paths[-1], index=False)
    with pytest.raises(
        GigamilError, match=r"cohort 'exx': no predictions in .* \(they hold cohort"
    ):
        ensemble_cohort(paths, CLASSES, tmp_path / "x", "exx", n_boot=10)  # a typo: named
    with pytest.raises(GigamilError, match=r"fold0.csv is given twice"):
        ensemble_cohort([*paths, paths[0]], CLASSES, tmp_path / "a", "ext", n_boot=10)
    shutil.copy(paths[0], tmp_path / "copy.csv")
    with pytest.raises(GigamilError, match=r"fold 0 is predicted by both .*fold0.csv and .*copy"):
        ensemble_cohort([*paths, tmp_path / "copy.csv"], CLASSES, tmp_path / "b", "ext", n_boot=10)


@pytest.mark.parametrize("which", ["ensemble_cohort", "predict_cohort"])
def test_a_slide_twice_in_one_file_or_of_two_patients_is_refused(tmp_path, which):
    """A row repeated in one fold's file (a hand edit, an appended rerun) gave that model two
    votes in the slide's mean; a slide's patient_id differing between files was taken from the
    first file without a word."""
    ext = _sheet(n_patients=4, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    frames = [_predict(ext, k, rng) for k in range(2)]
    paths = [tmp_path / f"fold{k}.csv" for k in range(2)]
    run = ensemble_cohort if which == "ensemble_cohort" else predict_cohort
    pd.concat([frames[0], frames[0].head(1)]).to_csv(paths[0], index=False)
    frames[1].to_csv(paths[1], index=False)
    slide = frames[0]["slide_id"].iloc[0]
    with pytest.raises(
        GigamilError, match=rf"fold0.csv predicts slide\(s\) {slide} more than once"
    ):
        run(paths, CLASSES, tmp_path / "a", "ext")
    frames[0].to_csv(paths[0], index=False)
    moved = frames[1].copy()
    moved.loc[moved.index[0], "patient_id"] = "someone_else"
    moved.to_csv(paths[1], index=False)
    with pytest.raises(GigamilError, match=rf"slide ext/{slide} has different patient ids"):
        run(paths, CLASSES, tmp_path / "b", "ext")
    frames[1].to_csv(paths[1], index=False)
    run(paths, CLASSES, tmp_path / "c", "ext")  # the files as written: no error


def test_slides_without_patches_are_counted_once_and_all_of_them_named(tmp_path, caplog):
    """An external cohort of 2 slides without patches, 6 fold models: the log said '2 slide(s)'
    and then '12 slide(s)' (the rows of the stacked fold files, names repeated); with none left
    the error gave no cause."""
    ext = _sheet(n_patients=4, slides=1, cohort="ext")
    rng = np.random.default_rng(3)
    slide = ext["slide_id"].iloc[0]
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"fold{k}.csv")
        _predict(ext, k, rng, nan_slide=slide).to_csv(paths[-1], index=False)
    with caplog.at_level("WARNING"):
        summary = ensemble_cohort(paths, CLASSES, tmp_path / "e", "ext", n_boot=10)
    assert summary["n_unpredicted"] == 1 and summary["n_slides"] == 3  # once, not per model
    assert summary["n_patients_unscored"] == 1  # one slide per patient
    warned = [r.getMessage() for r in caplog.records if "have no prediction" in r.getMessage()]
    assert warned == [
        f"1 slide(s) have no prediction (no patches), left out of the metrics: {slide}"
    ]
    for k, path in enumerate(paths):  # no slide has patches
        df = _predict(ext, k, rng)
        df[["prob_normal", "prob_lesion", "pred"]] = [np.nan, np.nan, ""]
        df.to_csv(path, index=False)
    with pytest.raises(
        GigamilError, match=r"none of its 4 slide\(s\) has patches \(see results/qc"
    ):
        ensemble_cohort(paths, CLASSES, tmp_path / "f", "ext", n_boot=10)


def test_an_external_cohort_of_one_class_says_why_it_has_no_auc(tmp_path, caplog):
    """Two normal slides: the AUC is undefined; the summary and the log say why (it was a bare
    null / "AUC nan")."""
    ext = _sheet(n_patients=2, slides=1, cohort="ext").assign(label="normal")
    paths = []
    for k in range(2):
        paths.append(tmp_path / f"fold{k}.csv")
        _predict(ext, k, np.random.default_rng(k)).to_csv(paths[-1], index=False)
    with caplog.at_level("WARNING"):
        summary = ensemble_cohort(paths, CLASSES, tmp_path / "ens", "ext", n_boot=10)
    assert summary["auc"] != summary["auc"]  # NaN
    note = "no AUC: all 2 slide(s) with a prediction are 'normal' (an AUC ranks slides of one"
    assert summary["auc_note"].startswith(note) and note in caplog.text
    assert "auc_note" in (tmp_path / "ens" / "summary.json").read_text()


def test_a_patient_without_a_scored_slide_is_counted_where_the_page_says_so():
    """A patient whose every slide has no patches is missing from the patient count: the row of
    slides without patches says how many such patients there are."""
    from gigamil.evaluate.aggregate import unscored_patients
    from gigamil.evaluate.tables import summary_rows

    preds = pd.DataFrame({"patient_id": ["a", "a", "b", "c"], "slide_id": ["1", "2", "3", "4"]})
    assert unscored_patients(preds, preds[preds["slide_id"].isin(["1", "3"])]) == 1  # c
    assert unscored_patients(preds, preds) == 0
    summary = {"n_slides": 2, "n_patients": 2, "n_unpredicted": 2, "n_patients_unscored": 1}
    rows = dict(summary_rows(summary, "oof_auc"))
    assert rows["slides without patches (not scored)"] == "2 (1 patient(s) with no scored slide)"
    assert "patient AUC (mean probability of each patient's slides)" in rows  # CV: every cohort
    summary["n_patients_unscored"] = 0
    assert dict(summary_rows(summary, "auc"))["slides without patches (not scored)"] == "2"


@pytest.mark.parametrize("which", ["ensemble_cohort", "predict_cohort"])
def test_a_missing_fold_file_is_a_warning_naming_the_fold(tmp_path, caplog, which):
    """Files of folds 0, 1 and 3 (fold 2's forgotten, e.g. a shell glob of ``gigamil
    ensemble``): the mean is of three models, and the warning names fold 2; the files of every
    fold, or a file without rows (a fold with no test slides of a train cohort), are not
    warned about."""
    ext = _sheet(n_patients=6, slides=1, cohort="ext")
    if which == "predict_cohort":
        ext = ext.assign(label="")
    rng = np.random.default_rng(0)
    paths = []
    for k in range(4):
        paths.append(tmp_path / f"fold{k}.csv")
        _predict(ext, k, rng).to_csv(paths[-1], index=False)
    run = ensemble_cohort if which == "ensemble_cohort" else predict_cohort
    kwargs = {"n_boot": 10} if which == "ensemble_cohort" else {}
    run([paths[0], paths[1], paths[3]], CLASSES, tmp_path / "three", "ext", **kwargs)
    warned = [
        r.getMessage() for r in caplog.records if "no prediction file of fold" in r.getMessage()
    ]
    assert len(warned) == 1 and "fold(s) 2 (given: folds 0, 1, 3)" in warned[0]
    summary = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert summary["missing_folds"] == [2]  # kept with the figures, not only in the log
    page_name = "metrics.html" if which == "ensemble_cohort" else "predictions.html"
    page = (tmp_path / "three" / page_name).read_text()  # the page a cohort's readers open
    assert "WARNING: no prediction file of fold(s)" in page and "2" in page
    caplog.clear()
    run(paths, CLASSES, tmp_path / "four", "ext", **kwargs)
    assert "WARNING" not in (tmp_path / "four" / page_name).read_text()
    assert "missing_folds" not in json.loads((tmp_path / "four" / "summary.json").read_text())
    oof = [tmp_path / f"oof{k}.csv" for k in range(3)]
    _predict(ext, 0, rng).iloc[:3].to_csv(oof[0], index=False)
    _predict(ext, 1, rng).iloc[:0].to_csv(oof[1], index=False)  # no rows: its fold is unknown
    _predict(ext, 2, rng).iloc[3:].to_csv(oof[2], index=False)
    if which == "ensemble_cohort":
        run(oof, CLASSES, tmp_path / "oof", "ext", **kwargs)
    assert not [r for r in caplog.records if "no prediction file of fold" in r.getMessage()]


def test_the_summarys_fold_means_and_sds_are_those_of_each_folds_slides(tmp_path):
    """summary.json's fold_<metric>_mean / _sd (sample sd) of every metric are the folds' own
    values (scikit-learn on each fold's scored slides), as metrics.csv's mean and sd rows; its
    patient row counts the slides it summarises."""
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score

    _, paths = _cv_fixture(tmp_path, nan_slide="demo_p3_s1", signal=0.6)
    summary = aggregate_cv(paths, tmp_path / "folds.csv", CLASSES, tmp_path / "e", n_boot=20)
    table = pd.read_csv(tmp_path / "e" / "metrics.csv", index_col="scope")
    ok = pd.concat([pd.read_csv(p) for p in paths]).dropna(subset=["prob_lesion"])
    scores = {
        "balanced_accuracy": balanced_accuracy_score,
        "macro_f1": lambda y, p: f1_score(y, p, average="macro"),
        "accuracy": accuracy_score,
    }
    for name, score in scores.items():
        per_fold = [
            score(f.label, np.where(f.prob_lesion > f.prob_normal, "lesion", "normal"))
            for _, f in ok.groupby("fold")
        ]
        assert np.std(per_fold) > 0.01, name  # the folds differ: ddof matters
        assert summary[f"fold_{name}_mean"] == pytest.approx(np.mean(per_fold)), name
        assert summary[f"fold_{name}_sd"] == pytest.approx(np.std(per_fold, ddof=1)), name
        assert table.loc["mean", name] == pytest.approx(summary[f"fold_{name}_mean"], rel=1e-5)
        assert table.loc["sd", name] == pytest.approx(summary[f"fold_{name}_sd"], rel=1e-5)
    brier = [brier_score_loss(f.label == "lesion", f.prob_lesion) for _, f in ok.groupby("fold")]
    assert summary["fold_brier_mean"] == pytest.approx(np.mean(brier))
    assert summary["fold_brier_sd"] == pytest.approx(np.std(brier, ddof=1))
    assert table.loc["oof", "n_slides"] == table.loc["oof_patient", "n_slides"] == 23
    assert table.loc["oof_patient", "n_patients"] == 12


def test_the_cli_seed_sets_the_bootstrap(tmp_path):
    """``--seed`` of gigamil evaluate and gigamil ensemble reaches the bootstrap: the intervals
    are those of the same seed in the API, and another seed's differ."""
    from gigamil.cli import main

    _, paths = _cv_fixture(tmp_path, signal=0.6)
    preds = [str(p) for p in paths]
    common = ["--n-boot", "40", "--seed", "3", "--predictions", *preds]
    folds = ["--folds", str(tmp_path / "folds.csv")]
    assert main(["evaluate", *folds, "--out", str(tmp_path / "cli"), *common]) == 0
    cli = json.loads((tmp_path / "cli" / "summary.json").read_text())
    api = {
        s: aggregate_cv(
            paths, tmp_path / "folds.csv", CLASSES, tmp_path / f"s{s}", n_boot=40, seed=s
        )
        for s in (0, 3)
    }
    assert cli["oof_auc_ci"] == pytest.approx(api[3]["oof_auc_ci"])
    assert api[3]["oof_auc_ci"] != api[0]["oof_auc_ci"]
    assert main(["ensemble", "--cohort", "demo", "--out", str(tmp_path / "en"), *common]) == 0
    ens = json.loads((tmp_path / "en" / "summary.json").read_text())
    assert ens["auc_ci"] == pytest.approx(cli["oof_auc_ci"])  # the same slides and resamples
    assert ens["balanced_accuracy_ci"] == pytest.approx(cli["balanced_accuracy_ci"])


def test_the_cli_names_the_experiment_of_the_workflow_layout(tmp_path, capsys):
    """`gigamil ensemble` / `gigamil evaluate` without --experiment wrote "experiment": "" into
    summary.json; files in the workflow's layout name it."""
    from gigamil.cli import main
    from gigamil.commands.evaluate import experiment_name

    run = tmp_path / "results" / "predictions" / "exp1"
    run.mkdir(parents=True)
    folds, paths = _cv_fixture(run)
    laid_out = [str(p) for p in paths]  # results/predictions/exp1/fold<k>/demo.csv
    assert experiment_name(None, laid_out) == "exp1"
    assert experiment_name("mine", laid_out) == "mine"
    assert experiment_name(None, [*laid_out, str(tmp_path / "p.csv")]) == ""
    other = tmp_path / "results" / "predictions" / "exp2" / "fold0" / "demo.csv"
    assert experiment_name(None, [*laid_out, str(other)]) == ""  # two experiments: none
    assert experiment_name(None, [str(tmp_path / "fold0" / "demo.csv")]) == ""
    out = tmp_path / "ens"
    args = ["ensemble", "--cohort", "demo", "--out", str(out), "--n-boot", "5"]
    assert main([*args, "--predictions", *laid_out]) == 0
    capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["experiment"] == "exp1"
    ev = ["evaluate", "--folds", str(run / "folds.csv"), "--out", str(tmp_path / "cv")]
    assert main([*ev, "--n-boot", "5", "--predictions", *laid_out]) == 0
    assert json.loads((tmp_path / "cv" / "summary.json").read_text())["experiment"] == "exp1"
    # elsewhere no experiment is known: null, not an empty name
    loose = tmp_path / "loose"
    loose.mkdir()
    copies = []
    for k, p in enumerate(laid_out):
        copies.append(loose / f"f{k}.csv")
        copies[-1].write_text(Path(p).read_text())
    assert (
        main(
            [*args[:4], str(tmp_path / "ens2"), "--n-boot", "5", "--predictions", *map(str, copies)]
        )
        == 0
    )
    assert json.loads((tmp_path / "ens2" / "summary.json").read_text())["experiment"] is None


def test_a_half_labelled_cohort_is_one_error_before_anything_is_written(tmp_path):
    """`gigamil ensemble` on a cohort with some labels failed with "prediction label '' is not
    one of ['normal', 'lesion']" after writing predictions.csv, which looked like a success."""
    _, paths = _cv_fixture(tmp_path)
    for p in paths:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
        df.loc[df["slide_id"].isin(["demo_p0_s1", "demo_p1_s1"]), "label"] = ""
        df.to_csv(p, index=False)
    out = tmp_path / "ens"
    with pytest.raises(GigamilError, match=r"2 of the \d+ slides have no label \(demo_p0_s1, demo"):
        ensemble_cohort(paths, CLASSES, out, "demo", n_boot=5)
    assert not (out / "predictions.csv").exists()


def test_the_predict_log_counts_the_slides_predicted_not_those_listed(tmp_path, caplog):
    """'predicted 2 slides (1 normal, 0 lesion)' was logged for one predicted slide and one
    without patches."""
    ext = _sheet(n_patients=6, slides=1, cohort="ext").assign(label="")
    rng = np.random.default_rng(0)
    nan_slide = str(ext["slide_id"].iloc[0])
    paths = [tmp_path / f"fold{k}.csv" for k in range(2)]
    for k, p in enumerate(paths):
        _predict(ext, k, rng, nan_slide=nan_slide).to_csv(p, index=False)
    caplog.set_level(logging.INFO)
    summary = predict_cohort(paths, CLASSES, tmp_path / "out", "ext")
    said = [r.getMessage() for r in caplog.records if "no labels, no metrics" in r.getMessage()]
    n = sum(summary["predicted"].values())
    assert n == 5 and len(said) == 1 and "5 of 6 slides predicted by " in said[0]
    assert said[0].endswith(", 1 without patches); no labels, no metrics")


def test_one_model_given_as_two_folds_is_warned_about(tmp_path, caplog):
    """A trial predicted with fold 0's model.pt as --fold 0, 1 and 2: the ensemble counted it
    as three models without a word."""
    ext = _sheet(n_patients=6, slides=1, cohort="ext")
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"fold{k}.csv" for k in range(3)]
    first = _predict(ext, 0, rng)
    first.to_csv(paths[0], index=False)
    first.assign(fold=1).to_csv(paths[1], index=False)  # the same model, another fold number
    _predict(ext, 2, rng).to_csv(paths[2], index=False)
    ensemble_cohort(paths, CLASSES, tmp_path / "ens", "ext", n_boot=5)
    warned = [r.getMessage() for r in caplog.records if "the same model" in r.getMessage()]
    assert len(warned) == 1 and "fold0.csv and" in warned[0] and "fold1.csv give" in warned[0]
    summary = json.loads((tmp_path / "ens" / "summary.json").read_text())
    assert summary["identical_models"] == [[str(paths[0]), str(paths[1])]]  # kept with figures
    assert "one model twice?" in (tmp_path / "ens" / "metrics.html").read_text()
    caplog.clear()
    _predict(ext, 1, rng).to_csv(paths[1], index=False)
    ensemble_cohort(paths, CLASSES, tmp_path / "ens2", "ext", n_boot=5)
    assert not [r for r in caplog.records if "the same model" in r.getMessage()]
    # a train cohort's out-of-fold files share no slide: nothing to compare
    _, oof = _cv_fixture(tmp_path / "cv")
    ensemble_cohort(oof, CLASSES, tmp_path / "oof", "demo", n_boot=5)
    assert not [r for r in caplog.records if "the same model" in r.getMessage()]


def test_a_missing_fold_is_found_from_every_cohort_of_the_files(tmp_path, caplog):
    """The folds given are read from the files' whole tables: fold 1's file holds only another
    cohort's slides, yet it is a fold given, and fold 2 (no file) is the one missing for
    cohort a."""
    a, b = _sheet(n_patients=8, slides=1, cohort="a"), _sheet(n_patients=4, slides=1, cohort="b")
    rng = np.random.default_rng(0)
    parts = {0: [a.iloc[:4], b.iloc[:2]], 1: [b.iloc[2:]], 3: [a.iloc[4:]]}
    paths = []
    for k, slides in parts.items():
        paths.append(tmp_path / f"fold{k}.csv")
        _predict(pd.concat(slides), k, rng).to_csv(paths[-1], index=False)
    ensemble_cohort(paths, CLASSES, tmp_path / "a", "a", n_boot=10)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["missing_folds"] == [2]
    _predict(a.iloc[4:], 5, rng).to_csv(paths[-1], index=False)  # folds 0, 1, 5: 2, 3, 4 missing
    ensemble_cohort(paths, CLASSES, tmp_path / "a5", "a", n_boot=10)
    summary = json.loads((tmp_path / "a5" / "summary.json").read_text())
    assert summary["missing_folds"] == [2, 3, 4]


def test_a_predict_cohort_with_a_few_labels_says_they_are_not_scored(tmp_path):
    """A role: predict sheet with labels for some slides: summary.json said "no labels"."""
    ext = _sheet(n_patients=4, slides=1, cohort="new")
    ext.loc[ext.index[1:], "label"] = ""  # one labelled slide of four
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"fold{k}.csv" for k in range(2)]
    for k, p in enumerate(paths):
        _predict(ext, k, rng).assign(label=ext["label"].to_numpy()).to_csv(p, index=False)
    note = predict_cohort(paths, CLASSES, tmp_path / "out", "new")["note"]
    assert note.startswith("predictions only, no metrics: 1 of the 4 slides have a label")
    blank = [tmp_path / f"blank{k}.csv" for k in range(2)]
    for p, b in zip(paths, blank, strict=True):
        pd.read_csv(p).assign(label="").to_csv(b, index=False)
    assert predict_cohort(blank, CLASSES, tmp_path / "out2", "new")["note"] == NO_METRICS


def test_experiment_name_of_short_paths_and_of_other_folders_is_none(tmp_path):
    """Relative paths of fewer than four parts (``fold0/demo.csv``) name no experiment (they
    must not index past their start), nor files under predictions/NAME/ outside a fold<k>."""
    from gigamil.commands.evaluate import experiment_name

    assert experiment_name(None, ["fold0/demo.csv"]) == ""
    assert experiment_name(None, ["demo.csv"]) == ""
    attention = tmp_path / "results" / "predictions" / "exp1" / "attention" / "demo.csv"
    assert experiment_name(None, [str(attention)]) == ""
    laid_out = tmp_path / "results" / "predictions" / "exp1" / "fold0" / "demo.csv"
    assert experiment_name(None, [str(laid_out)]) == "exp1"


def test_prediction_files_with_the_classes_in_another_column_order_are_one_class_set(tmp_path):
    """The files' classes are compared as sets: a file whose prob_<class> columns come in
    another order is of the same models' class set, not "of models of other classes"."""
    from gigamil.commands.evaluate import classes_from_predictions

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("fold,cohort,slide_id,patient_id,label,pred,prob_normal,prob_lesion\n")
    second.write_text("fold,cohort,slide_id,patient_id,label,pred,prob_lesion,prob_normal\n")
    assert classes_from_predictions(str(first), None, [str(second)]) == ["normal", "lesion"]


def test_a_blank_label_is_no_label(tmp_path):
    """A label of spaces is as missing as an empty one: one error before anything is written,
    not "label ' ' is not one of the classes" after predictions.csv."""
    _, paths = _cv_fixture(tmp_path)
    for p in paths:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
        df.loc[df["slide_id"] == "demo_p0_s1", "label"] = "  "
        df.to_csv(p, index=False)
    out = tmp_path / "ens"
    with pytest.raises(GigamilError, match=r"1 of the \d+ slides have no label \(demo_p0_s1\)"):
        ensemble_cohort(paths, CLASSES, out, "demo", n_boot=5)
    assert not (out / "predictions.csv").exists()


def test_the_predict_log_of_a_cohort_predicted_whole_counts_no_slides_without_patches(
    tmp_path, caplog
):
    ext = _sheet(n_patients=4, slides=1, cohort="ext").assign(label="")
    rng = np.random.default_rng(0)
    paths = [tmp_path / f"fold{k}.csv" for k in range(2)]
    for k, p in enumerate(paths):
        _predict(ext, k, rng).to_csv(p, index=False)
    caplog.set_level(logging.INFO)
    predict_cohort(paths, CLASSES, tmp_path / "out", "ext")
    (said,) = [r.getMessage() for r in caplog.records if "no labels, no metrics" in r.getMessage()]
    assert "4 of 4 slides predicted by " in said and "without patches" not in said


def test_the_predictions_page_lists_the_absent_folds(tmp_path, monkeypatch):
    from gigamil.evaluate.tables import write_predictions_html

    monkeypatch.chdir(tmp_path)  # the project directory: results/models/demo below

    ext = _sheet(n_patients=2, slides=1, cohort="ext").assign(label="")
    ens = _predict(ext, 0, np.random.default_rng(0)).assign(n_models=3)
    write_predictions_html(ens, CLASSES, tmp_path / "p.html", "t", {"missing_folds": [1, 3]})
    page = (tmp_path / "p.html").read_text()
    assert (
        "WARNING: no prediction file of fold(s) (the figures below lack those models)</b>: 1, 3"
        in page
    )
    twins = {"identical_models": [["a/fold0.csv", "b/fold1.csv"]]}
    write_predictions_html(ens, CLASSES, tmp_path / "r.html", "t", twins)
    page = (tmp_path / "r.html").read_text()
    assert "(one model twice?)</b>: a/fold0.csv and b/fold1.csv" in page
    write_predictions_html(ens, CLASSES, tmp_path / "q.html", "t")
    page = (tmp_path / "q.html").read_text()
    assert "WARNING" not in page
    # what the probabilities are worth, on every page (a new user's trial, 2026-12-06)
    assert "only for slides like their training slides (tissue, stain, scanner, µm/px)" in page
    # no results/models/{experiment} (a project of trained_models): that folder was named
    assert "<code>gigamil model-info MODEL.pt (each file of trained_models)</code>" in page
    # the experiment's own models folder when known, no literal backticks (a new user's trial)
    (tmp_path / "results" / "models" / "demo").mkdir(parents=True)
    write_predictions_html(ens, CLASSES, tmp_path / "e.html", "t", experiment="demo")
    page = (tmp_path / "e.html").read_text()
    assert "<code>gigamil model-info results/models/demo</code> says what" in page
    assert "`" not in page


def test_cli_ensemble_prints_strict_json_where_a_metric_is_undefined(tmp_path, capsys):
    """A one-class cohort has no AUC: the printed summary said NaN, which strict JSON parsers
    refuse, while summary.json has null (a review of the CLI)."""
    from gigamil.cli import main

    ext = _sheet(n_patients=6, slides=1, cohort="ext")
    ext["label"] = "normal"
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        _predict(ext, k, rng).to_csv(path := tmp_path / f"f{k}.csv", index=False)
        paths.append(str(path))
    argv = ["ensemble", "--cohort", "ext", "--out", str(tmp_path / "en"), "--n-boot", "20"]
    assert main([*argv, "--predictions", *paths]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=pytest.fail)
    assert printed["auc"] is None


def test_refused_inputs_leave_no_output_folder(tmp_path):
    """evaluate, ensemble (and heatmap) made their --out folder before reading the inputs: a
    refused run left an empty folder behind (a review of the CLI)."""
    folds, paths = _cv_fixture(tmp_path)
    with pytest.raises(GigamilError, match="no predictions"):
        ensemble_cohort(paths, CLASSES, tmp_path / "ens", "other", n_boot=10)
    assert not (tmp_path / "ens").exists()
    with pytest.raises(GigamilError, match="folds file not found"):
        aggregate_cv(paths, tmp_path / "none.csv", CLASSES, tmp_path / "cv")
    assert not (tmp_path / "cv").exists()
