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
