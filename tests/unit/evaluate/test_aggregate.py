"""gigamil.evaluate.aggregate: the summary's note on intervals that say less than they seem."""

from __future__ import annotations

from gigamil.evaluate.aggregate import MIN_PATIENTS_FOR_CI, _ci_note


def test_ci_note_flags_few_patients_and_zero_width_intervals() -> None:
    wide = {"auc_ci": [0.8, 1.0], "patient_auc_ci": [0.7, 1.0], "balanced_accuracy_ci": [0.6, 0.9]}
    assert _ci_note({"n_patients": 12, **wide}) == ""
    assert "resample only 4 patient(s)" in _ci_note({"n_patients": 4, **wide})
    # 12 patients all ranked right: the percentile bootstrap gives [1.0, 1.0] (the demo's
    # patient AUC), which is no certainty
    flat = {**wide, "patient_auc_ci": [1.0, 1.0]}
    note = _ci_note({"n_patients": MIN_PATIENTS_FOR_CI + 2, **flat})
    assert note.startswith("zero-width interval(s) patient_auc [1, 1]: every bootstrap resample")
    assert "auc [" not in note.replace("patient_auc [", "")  # the others are not named
    # an undefined interval (NaN: one class only) is not a zero-width one
    assert _ci_note({"n_patients": 12, **wide, "auc_ci": [float("nan"), float("nan")]}) == ""


def test_the_confidence_intervals_resample_patients_not_slides():
    """Two slides per patient, imperfect ranking: the slide-level CIs are the patient bootstrap
    (groups = patient_id) and the patient-level CIs are those of the per-patient means."""
    import numpy as np
    import pandas as pd

    from gigamil.evaluate import metrics as M
    from gigamil.evaluate.aggregate import pooled_metrics

    rng = np.random.default_rng(0)
    n = 40
    label = np.repeat(rng.integers(0, 2, n // 2), 2)  # one label per patient
    p = np.clip(0.5 + 0.25 * (2 * label - 1) + rng.normal(0, 0.25, n), 0.01, 0.99)
    preds = pd.DataFrame(
        {
            "patient_id": np.repeat([f"p{i}" for i in range(n // 2)], 2),
            "label": np.where(label == 1, "lesion", "normal"),
            "prob_lesion": p,
            "prob_normal": 1 - p,
        }
    )
    classes = ["normal", "lesion"]
    pooled, ci = pooled_metrics(preds, classes, n_boot=300, seed=3)
    y, probs = M.labels_and_probs(preds, classes)
    groups = preds["patient_id"].to_numpy()
    assert ci == M.bootstrap_ci(y, probs, classes, groups=groups, n_boot=300, seed=3)
    assert ci["auc"] != M.bootstrap_ci(y, probs, classes, n_boot=300, seed=3)["auc"]  # by slide
    yp, pp = M.labels_and_probs(M.patient_level(preds, classes), classes)
    assert pooled["patient_ci"] == M.bootstrap_ci(yp, pp, classes, n_boot=300, seed=3)
    assert pooled["patient_ci"]["auc"] != ci["auc"]


def _fold_files(tmp_path, learned):
    """Three folds' prediction CSVs of a 12-patient cohort (every slide ranked right), fold k's
    rows with ``model_learned`` = ``learned[k]`` (the column left out where it is ``"absent"``)."""
    import numpy as np
    import pandas as pd

    from gigamil.folds import write_folds
    from gigamil.splits import make_folds

    sheet = pd.DataFrame(
        {
            "cohort": "c",
            "slide_id": [f"s{i}" for i in range(12)],
            "patient_id": [f"p{i}" for i in range(12)],
            "label": ["normal", "lesion"] * 6,
        }
    )
    folds = make_folds(sheet, folds=3, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    paths = []
    for k, said in enumerate(learned):
        test = folds[(folds.fold == k) & (folds.role == "test")]
        df = test[["slide_id", "patient_id", "cohort", "label"]].copy()
        p1 = np.where(df["label"] == "lesion", 0.8, 0.2)
        df["fold"], df["prob_normal"], df["prob_lesion"] = k, 1 - p1, p1
        df["pred"] = np.where(p1 > 0.5, "lesion", "normal")
        if said != "absent":
            df["model_learned"], df["model_sha256"] = said, f"{k}" * 64
        (path := tmp_path / f"fold{k}.csv").write_text(df.to_csv(index=False))
        paths.append(path)
    return paths


def test_a_fold_model_that_did_not_learn_is_named_on_every_results_page(tmp_path, caplog):
    """model.pt's verdict reaches the figures a user reads first (it was only in the logs, the
    training curves and model-info): summary.json, the caveat row of metrics.html, a warning,
    per_slide_predictions.csv; prediction files from before the column say nothing."""
    import json
    import logging

    import pandas as pd

    from gigamil.evaluate.aggregate import aggregate_cv
    from gigamil.evaluate.ensemble import ensemble_cohort

    paths = _fold_files(tmp_path, [True, False, "absent"])
    with caplog.at_level(logging.WARNING, logger="gigamil.evaluate.aggregate"):
        summary = aggregate_cv(paths, tmp_path / "folds.csv", ["normal", "lesion"], tmp_path / "cv")
    assert summary["folds_not_learned"] == [1]
    assert summary["models"] == {"0": "0" * 64, "1": "1" * 64}  # fold 2's file says none
    assert json.loads((tmp_path / "cv" / "summary.json").read_text())["folds_not_learned"] == [1]
    page = (tmp_path / "cv" / "metrics.html").read_text()
    assert "WARNING: fold model(s) that did not learn" in page and "<td>1</td>" in page
    assert "cross-validation: the model(s) of fold(s) 1 did not learn" in caplog.text
    per_slide = pd.read_csv(tmp_path / "cv" / "per_slide_predictions.csv")
    said = per_slide.groupby("fold")["model_learned"]
    assert said.agg(lambda v: v.isna().all()).tolist() == [False, False, True]
    assert said.first().iloc[:2].astype(str).str.lower().tolist() == ["true", "false"]
    ext = ensemble_cohort(paths, ["normal", "lesion"], tmp_path / "ens", "c", n_boot=10)
    assert ext["folds_not_learned"] == [1] and ext["models"] == summary["models"]
    assert "did not learn" in (tmp_path / "ens" / "metrics.html").read_text()

    (tmp_path / "old").mkdir()
    old = _fold_files(tmp_path / "old", ["absent"] * 3)
    summary = aggregate_cv(
        old, tmp_path / "old" / "folds.csv", ["normal", "lesion"], tmp_path / "o"
    )
    assert "folds_not_learned" not in summary and "models" not in summary
    assert "did not learn" not in (tmp_path / "o" / "metrics.html").read_text()


def test_every_fold_learned_keeps_the_models_and_names_no_fold(tmp_path):
    """Fold models that all learned: summary.json still lists which model.pt files made the
    figures (``models``), with no ``folds_not_learned`` and no warning row."""
    from gigamil.evaluate.aggregate import aggregate_cv

    paths = _fold_files(tmp_path, [True, True, True])
    summary = aggregate_cv(paths, tmp_path / "folds.csv", ["normal", "lesion"], tmp_path / "cv")
    assert summary["models"] == {str(k): f"{k}" * 64 for k in range(3)}
    assert "folds_not_learned" not in summary
    assert "did not learn" not in (tmp_path / "cv" / "metrics.html").read_text()


def test_model_digests_keep_real_digests_one_per_fold_in_fold_order():
    """``{fold: sha256}`` as summary.json writes it: fold numbers as integers' text (a fold
    column read as floats gives "1", not "1.0"), in fold order, an empty or unreadable digest
    cell left out (an edited file), and nothing for rows without a fold column."""
    import json

    import pandas as pd

    from gigamil.train.model_info import model_digests

    a, b = "a" * 64, "b" * 64
    preds = pd.DataFrame(
        {"fold": [2.0, 2.0, 0.0, 1.0, 3.0], "model_sha256": [b, b, a, "", "not-a-digest"]}
    )
    digests = model_digests(preds)
    assert json.dumps(digests) == json.dumps({"0": a, "2": b})
    assert model_digests(preds.drop(columns="fold")) == {}
