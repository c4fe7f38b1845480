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
