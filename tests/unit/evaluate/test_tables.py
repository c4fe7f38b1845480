"""gigamil.evaluate.tables: the metrics page the Snakemake report shows inline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gigamil.evaluate.tables import summary_rows, write_metrics_html


def test_metrics_page_has_one_header_row_with_the_scope_in_its_corner(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"n_slides": [4, 24], "auc": [1.0, float("nan")]},
        index=pd.Index(["fold0", "pooled"], name="scope"),
    )
    page = tmp_path / "metrics.html"
    write_metrics_html(table, page, "demo metrics")
    html = page.read_text()
    head = html[html.index("<thead>") : html.index("</thead>")]
    assert head.count("<tr") == 1  # not a second row holding only the index name
    assert "<th>scope</th>" in head and "<th>auc</th>" in head
    body = html[html.index("<tbody>") :]
    assert "<th>fold0</th>" in body and "<td>1.000</td>" in body and "<td>24</td>" in body


def test_the_fold_auc_row_says_what_one_fold_is_computed_on() -> None:
    """Out of fold, a fold's AUC comes from its few test slides (so its sd is large); in an
    external cohort's ensemble, from every slide, once per fold's model."""
    summary = {"n_slides": 24, "fold_auc": [1.0, 0.75, 0.875, 1.0], "fold_auc_mean": 0.906}
    summary["fold_auc_sd"] = 0.12
    rows = dict(summary_rows({**summary, "oof_auc": 0.9}, "oof_auc"))
    assert rows["fold AUC, mean ± sd over 4 folds (each on its ~6 test slides)"] == "0.906 ± 0.120"
    # with the folds' slide counts (summaries since 2026-12-06) the row says them exactly
    exact = {**summary, "oof_auc": 0.9, "fold_n_slides": [6, 6, 6, 6]}
    assert "fold AUC, mean ± sd over 4 folds (each on its 6 test slides)" in dict(
        summary_rows(exact, "oof_auc")
    )
    uneven = dict(summary_rows({**exact, "fold_n_slides": [5, 6, 7, 6]}, "oof_auc"))
    assert "fold AUC, mean ± sd over 4 folds (each on its 5–7 test slides)" in uneven
    external = {**summary, "auc": 0.9, "models_per_slide": [8, 8]}
    rows = dict(summary_rows(external, "auc"))
    assert rows["each fold's model on all 24 slides: AUC mean ± sd over 4 folds"] == "0.906 ± 0.120"
    # a fold whose test slides hold one class has no AUC: the mean is over the others, and said so
    rows = dict(summary_rows({**summary, "fold_auc": [1.0, None, 0.875, float("nan")]}, "auc"))
    name = "fold AUC, mean ± sd over 2 of 4 folds (2 without an AUC: one class only) (each on"
    assert any(row.startswith(name) for row in rows), list(rows)


def test_few_patients_get_no_interval_on_the_page_and_one_slide_no_sd() -> None:
    """Two patients: 'no 95% CI: every resample gave 1.000' read as certainty; the note row says
    why the intervals are left out. One lesion-masked slide: its AUC, not 'mean ± sd'."""
    summary = {"n_slides": 2, "n_patients": 2, "auc": 1.0, "auc_ci": [1.0, 1.0]}
    summary |= {"fold_auc": [1.0], "fold_auc_mean": 1.0, "fold_auc_sd": None}
    summary |= {"classes": ["normal", "lesion"], "confusion_matrix": [[1, 0], [1, 0]]}
    summary |= {"per_class_recall": {"normal": 1.0, "lesion": 0.0}}
    summary |= {"per_class_recall_ci": {"normal": [1.0, 1.0], "lesion": [0.0, 0.0]}}
    summary |= {"localization_auc": 0.875, "localization_n_slides": 1, "ci_note": "few"}
    rows = dict(summary_rows(summary, "auc"))
    assert rows["slide AUC (out-of-fold)"] == "1.000"
    assert rows["sensitivity (recall of lesion)"] == "0 / 1 = 0.000"
    assert rows["localisation AUC of the attention (lesion mask)"] == "0.875 (1 slide)"
    assert "fold AUC, mean ± sd over 1 fold (each on its ~2 test slides)" in rows
    assert rows["note on the 95 % intervals"] == "few"


def test_few_patients_leave_the_interval_rows_out_of_the_page_table(tmp_path: Path) -> None:
    """The headline shows no interval with fewer than 10 patients; nor does the table below it
    (an external cohort of 4 patients showed ensemble_ci_low / high 1.000 / 1.000)."""
    table = pd.DataFrame(
        {"auc": [1.0, 1.0, 1.0]},
        index=pd.Index(["ensemble", "ensemble_ci_low", "ensemble_ci_high"], name="scope"),
    )
    page = tmp_path / "metrics.html"
    summary = {"n_slides": 4, "n_patients": 4, "auc": 1.0, "auc_ci": [1.0, 1.0]}
    write_metrics_html(table, page, "ext metrics", summary, "auc")
    assert "<th>ensemble</th>" in page.read_text() and "_ci_" not in page.read_text()
    write_metrics_html(table, page, "ext metrics", {**summary, "n_patients": 12}, "auc")
    assert "<th>ensemble_ci_low</th>" in page.read_text()


def test_the_missing_fold_row_lists_every_missing_fold_and_only_when_one_is() -> None:
    """``missing_folds`` [2, 4]: the warning row names both, first; none or an empty list: no
    warning row."""
    summary = {"n_slides": 24, "auc": 0.9, "fold_auc": [1.0, 0.75], "fold_auc_mean": 0.875}
    rows = summary_rows({**summary, "missing_folds": [2, 4]}, "auc")
    name = "WARNING: no prediction file of fold(s) (the figures below lack those models)"
    assert rows[0] == (name, "2, 4")
    for missing in ([], None):
        rows = summary_rows({**summary, "missing_folds": missing}, "auc")
        assert not [r for r, _ in rows if r.startswith("WARNING")]


def test_the_patient_balanced_accuracy_is_on_the_page_beside_the_patient_recalls() -> None:
    """A new-user trial found patient recalls on metrics.html but their balanced accuracy only
    in summary.json and metrics.csv; summaries without it (older ones) show no row."""
    from gigamil.evaluate.tables import summary_rows

    summary = {
        "classes": ["normal", "lesion"],
        "n_patients": 12,
        "patient_balanced_accuracy": 0.9166,
        "patient_balanced_accuracy_ci": [0.75, 1.0],
        "patient_confusion_matrix": [[6, 0], [1, 5]],
        "patient_per_class_recall": {"normal": 1.0, "lesion": 5 / 6},
    }
    names = [name for name, _ in summary_rows(summary, "oof_auc")]
    row = "patient balanced accuracy, mean probability per patient"
    assert (
        names.index(row)
        == names.index("patient specificity (recall of normal), mean probability per patient") - 1
    )
    assert dict(summary_rows(summary, "oof_auc"))[row] == "0.917 (95% CI 0.750–1.000)"
    del summary["patient_balanced_accuracy"]
    assert row not in dict(summary_rows(summary, "oof_auc"))


def test_the_unlearned_fold_row_names_every_such_fold_and_only_when_there_is_one() -> None:
    """``folds_not_learned`` [1, 3]: one warning row naming both, after the missing-fold row
    (both above every figure); an empty list (no fold failed) shows no row."""
    summary = {"n_slides": 24, "auc": 0.9, "missing_folds": [4]}
    rows = summary_rows({**summary, "folds_not_learned": [1, 3]}, "auc")
    assert rows[0][0].startswith("WARNING: no prediction file of fold(s)")
    assert rows[1][0].startswith("WARNING: fold model(s) that did not learn")
    assert rows[1][1] == "1, 3"
    rows = summary_rows({**summary, "folds_not_learned": []}, "auc")
    assert not [name for name, _ in rows if "did not learn" in name]


def test_a_patient_balanced_accuracy_of_zero_is_shown() -> None:
    """A balanced accuracy of 0 (every patient called the other class) is a figure, not a
    missing one: its row is on the page."""
    summary = {"n_patients": 12, "patient_balanced_accuracy": 0.0}
    row = "patient balanced accuracy, mean probability per patient"
    assert dict(summary_rows(summary, "oof_auc"))[row].startswith("0.000")


def test_evaluation_csvs_keep_float32_probabilities_apart():
    """Two float32 probabilities near 1 read back tied at 6 significant digits ("1"), so an AUC
    computed from per_slide_predictions.csv (gigamil subgroups) could differ from the run's."""
    import io

    import numpy as np

    from gigamil.evaluate.tables import FLOAT_FORMAT

    probs = np.array([0.99999994, 0.9999999, 0.12345679], dtype=np.float32).astype(float)
    buf = io.StringIO()
    pd.DataFrame({"prob_lesion": probs}).to_csv(buf, index=False, float_format=FLOAT_FORMAT)
    back = pd.read_csv(io.StringIO(buf.getvalue()))["prob_lesion"].to_numpy()
    assert np.array_equal(back.astype(np.float32), probs.astype(np.float32))


def test_a_macro_auc_that_leaves_out_a_class_says_so_on_the_page() -> None:
    """A three-class external cohort without slides of one class: the macro AUC averages the
    other two (the log said so, the page called it the macro of every class)."""
    base = {"classes": ["a", "b", "c"], "auc": 0.8, "n_models": 3}
    for missing in (float("nan"), None):  # in memory / read back from summary.json
        summary = {**base, "per_class_auc": {"a": 0.9, "b": 0.7, "c": missing}}
        name = summary_rows(summary, "auc")[0][0]
        assert name.endswith("; macro one-vs-rest over a, b; no AUC for c)"), name
    every = {**base, "per_class_auc": {"a": 0.9, "b": 0.7, "c": 0.8}}
    assert summary_rows(every, "auc")[0][0].endswith("; macro one-vs-rest)")
