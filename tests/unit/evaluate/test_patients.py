"""Patient-level prediction tables (gigamil.evaluate.patients) and their files."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from gigamil.evaluate.aggregate import aggregate_cv
from gigamil.evaluate.ensemble import ensemble_cohort, predict_cohort
from gigamil.evaluate.patients import patient_predictions
from gigamil.folds import write_folds
from gigamil.splits import make_folds

CLASSES = ["normal", "lesion"]


def _slides() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cohort": ["a", "a", "a", "a", "b"],
            "slide_id": ["s1", "s2", "s3", "s4", "s5"],
            "patient_id": ["p1", "p1", "p2", "p3", "p4"],
            "label": ["lesion", "lesion", "normal", "normal", np.nan],
            "fold": [0, 0, 1, 2, 2],
            "prob_normal": [0.2, 0.6, 0.7, np.nan, 0.3],
            "prob_lesion": [0.8, 0.4, 0.3, np.nan, 0.7],
        }
    )


def test_a_patient_is_the_mean_of_its_predicted_slides():
    table = patient_predictions(_slides(), CLASSES).set_index("patient_id")
    assert table.index.tolist() == ["p1", "p2", "p3", "p4"]
    p1 = table.loc["p1"]
    assert p1["slide_ids"] == "s1;s2" and p1["n_slides"] == 2 and p1["n_predicted"] == 2
    assert np.isclose(p1["prob_lesion"], 0.6) and np.isclose(p1["prob_normal"], 0.4)
    assert p1["pred"] == "lesion" and bool(p1["correct"]) and p1["fold"] == "0"
    assert table.loc["p2", "pred"] == "normal" and bool(table.loc["p2", "correct"])


def test_no_prediction_or_no_label_is_neither_right_nor_wrong():
    """A patient none of whose slides has patches, and one without a label (a predict cohort),
    get an empty ``correct``, not False."""
    table = patient_predictions(_slides(), CLASSES).set_index("patient_id")
    p3 = table.loc["p3"]
    assert p3["n_predicted"] == 0 and np.isnan(p3["prob_lesion"]) and p3["pred"] == ""
    assert pd.isna(p3["correct"])
    p4 = table.loc["p4"]
    assert p4["label"] == "" and p4["pred"] == "lesion" and pd.isna(p4["correct"])
    no_labels = patient_predictions(_slides().drop(columns=["label", "fold"]), CLASSES)
    assert (no_labels["label"] == "").all() and no_labels["correct"].isna().all()
    assert "fold" not in no_labels.columns


def test_a_slide_without_patches_does_not_dilute_its_patient():
    """p1's second slide has no patches: the patient is its first slide, not a mean with 0."""
    slides = _slides()
    slides.loc[1, ["prob_normal", "prob_lesion"]] = np.nan
    p1 = patient_predictions(slides, CLASSES).set_index("patient_id").loc["p1"]
    assert p1["n_slides"] == 2 and p1["n_predicted"] == 1 and np.isclose(p1["prob_lesion"], 0.8)


def _cv(tmp_path, rng):
    sheet = pd.DataFrame(
        [
            {
                "cohort": "demo",
                "slide_id": f"d_p{p}_s{s}",
                "patient_id": f"d_p{p}",
                "label": CLASSES[p % 2],
            }
            for p in range(12)
            for s in range(2)
        ]
    )
    folds = make_folds(sheet, folds=3, val_fraction=0.0, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    paths = []
    for k in range(3):
        test = folds[(folds.fold == k) & (folds.role == "test")]
        y = (test["label"] == "lesion").to_numpy()
        p1 = 1 / (1 + np.exp(-(rng.normal(size=len(test)) + 1.5 * (2 * y - 1))))
        df = test[["slide_id", "patient_id", "cohort", "label"]].copy()
        df["prob_normal"], df["prob_lesion"] = 1 - p1, p1
        df["pred"], df["fold"] = np.where(p1 >= 0.5, "lesion", "normal"), k
        paths.append(tmp_path / f"fold{k}.csv")
        df.to_csv(paths[-1], index=False)
    return folds, paths


def test_the_cv_patient_file_is_the_score_of_the_patient_metrics(tmp_path):
    """per_patient_predictions.csv holds the scores the summary's patient AUC is computed on."""
    folds, paths = _cv(tmp_path, np.random.default_rng(3))
    out = tmp_path / "eval"
    summary = aggregate_cv(paths, tmp_path / "folds.csv", CLASSES, out, "demo", n_boot=20)
    table = pd.read_csv(out / "per_patient_predictions.csv")
    assert len(table) == 12 and (table["n_slides"] == 2).all()
    y = (table["label"] == "lesion").astype(int)
    assert np.isclose(roc_auc_score(y, table["prob_lesion"]), summary["patient_auc"])
    test = folds[folds.role == "test"].drop_duplicates("patient_id").set_index("patient_id")
    fold = table.set_index("patient_id")["fold"]
    assert fold.to_dict() == test["fold"].loc[fold.index].to_dict()
    assert (table["correct"] == (table["pred"] == table["label"])).all()


def test_ensembles_and_predict_cohorts_write_their_patients(tmp_path):
    rng = np.random.default_rng(4)
    _, paths = _cv(tmp_path, rng)
    ext = pd.concat([pd.read_csv(p) for p in paths]).assign(cohort="ext")
    files = []
    for k in range(3):  # every fold model predicts every slide of the external cohort
        noisy = ext.assign(fold=k, prob_lesion=np.clip(ext.prob_lesion + 0.05 * k, 0, 1))
        noisy["prob_normal"] = 1 - noisy["prob_lesion"]
        files.append(tmp_path / f"ext{k}.csv")
        noisy.to_csv(files[-1], index=False)
    summary = ensemble_cohort(files, CLASSES, tmp_path / "ens", cohort="ext", n_boot=20)
    table = pd.read_csv(tmp_path / "ens" / "patient_predictions.csv")
    y = (table["label"] == "lesion").astype(int)
    assert len(table) == 12 and "fold" not in table.columns
    assert np.isclose(roc_auc_score(y, table["prob_lesion"]), summary["patient_auc"])
    unlabelled = []
    for k, f in enumerate(files):
        unlabelled.append(tmp_path / f"new{k}.csv")
        pd.read_csv(f).assign(label="").to_csv(unlabelled[-1], index=False)
    predict_cohort(unlabelled, CLASSES, tmp_path / "new", cohort="ext")
    new = pd.read_csv(tmp_path / "new" / "patient_predictions.csv", keep_default_na=False)
    assert len(new) == 12 and (new["label"] == "").all() and (new["correct"] == "").all()
    assert new["pred"].isin(CLASSES).all()
