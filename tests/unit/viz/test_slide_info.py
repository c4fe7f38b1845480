"""A heatmap's slide prediction: the mean over the fold models whose CSVs hold the slide."""

from __future__ import annotations

import pandas as pd
import pytest

from gigamil.errors import GigamilError
from gigamil.evaluate.predictions import write_fold_predictions
from gigamil.viz.slide_info import SlidePrediction, read_slide_prediction


def test_read_slide_prediction_averages_the_fold_models(tmp_path):
    paths = []
    for fold, p in enumerate((0.9, 0.7, 0.8)):
        df = pd.DataFrame(
            {
                "slide_id": ["e1", "e2"],
                "patient_id": ["p1", "p2"],
                "cohort": "ext",
                "label": ["lesion", "normal"],
                "prob_normal": [1 - p, 0.99],
                "prob_lesion": [p, 0.01],
                "pred": ["lesion", "normal"],
            }
        )
        write_fold_predictions(df, fold, tmp_path / f"f{fold}.csv")
        paths.append(tmp_path / f"f{fold}.csv")
    pred = read_slide_prediction(paths, "e1")  # classes from the prob_ columns
    assert pred.n_models == 3 and pred.folds == (0, 1, 2)
    assert pred.probability == pytest.approx(0.8) and pred.positive == "lesion"
    assert (pred.label, pred.pred, pred.cohort) == ("lesion", "lesion", "ext")
    assert "mean of 3 fold models" in pred.title()
    one = read_slide_prediction(paths[1:2], "e2", ["normal", "lesion"])
    assert one.models_text() == "1 fold model (fold 1)"
    assert "P(lesion) = 0.01" in one.title() and "predicted: normal" in one.title()
    with pytest.raises(GigamilError, match="slide nope: in none of the prediction files"):
        read_slide_prediction(paths, "nope")


def test_more_than_two_classes_and_no_patches():
    three = SlidePrediction(
        slide_id="s",
        cohort="c",
        label="a",
        pred="",
        probability=float("nan"),
        positive="not normal",
        n_models=2,
    )
    assert "predicted: none (no patches), P(not normal) = n/a" in three.title()


def test_three_class_probability_is_not_the_first_class(tmp_path):
    df = pd.DataFrame(
        [
            {
                "slide_id": "s",
                "patient_id": "p",
                "cohort": "c",
                "label": "b",
                "prob_normal": 0.1,
                "prob_a": 0.3,
                "prob_b": 0.6,
                "pred": "b",
            }
        ]
    )
    write_fold_predictions(df, 0, tmp_path / "p.csv")
    pred = read_slide_prediction([tmp_path / "p.csv"], "s")
    assert pred.positive == "not normal" and pred.probability == pytest.approx(0.9)
    # the title names the predicted class's own probability first: one number per class
    assert pred.pred_probability == pytest.approx(0.6)
    assert (
        "predicted: b, P(b) = 0.600, P(not normal) = 0.900 · 1 fold model (fold 0)" in pred.title()
    )


def test_slide_without_label_says_so(tmp_path):
    # a role: predict cohort's prediction CSV has an empty label column
    df = pd.DataFrame(
        {
            "slide_id": ["n1"],
            "patient_id": ["p1"],
            "cohort": "new",
            "label": [None],
            "prob_benign": [0.7],
            "prob_metastasis": [0.3],
            "pred": ["benign"],
        }
    )
    write_fold_predictions(df, 0, tmp_path / "f0.csv")
    pred = read_slide_prediction([tmp_path / "f0.csv"], "n1")
    assert pred.label == ""
    assert pred.title().splitlines()[1].startswith("no label · predicted: benign, P(metastasis)")
    assert "true:" not in pred.title()


def test_a_slide_without_patches_is_predicted_by_no_fold_model(tmp_path):
    """Its rows hold NaN in every fold's CSV: the title said "mean of 2 fold models" while
    predictions.csv says n_models 0."""
    row = {"slide_id": "s", "patient_id": "p", "cohort": "c", "label": "lesion"}
    nan = {"prob_normal": float("nan"), "prob_lesion": float("nan"), "pred": ""}
    paths = [tmp_path / f"f{k}.csv" for k in range(2)]
    for k, path in enumerate(paths):
        write_fold_predictions(pd.DataFrame([{**row, **nan}]), k, path)
    pred = read_slide_prediction(paths, "s")
    assert pred.n_models == 0 and pred.folds == ()
    assert pred.title().endswith("predicted: none (no patches), P(lesion) = n/a · no fold model")


def test_probability_str_keeps_three_significant_digits_in_titles_and_the_report():
    """One format for the heatmap titles and the report's heatmap list."""
    from gigamil.viz.slide_info import probability_str

    assert [probability_str(p) for p in (0.75, 0.0105, 1.0, 3e-6)] == [
        "0.750",
        "0.0105",
        "1.00",
        "3.00e-06",
    ]


def test_prediction_labels_of_an_unlabelled_slide_are_neither_right_nor_wrong(tmp_path):
    """The report's heatmap list: a slide of a ``role: predict`` cohort has no label, so
    ``correct`` is ``-``, not ``no``."""
    from gigamil.viz.slide_info import prediction_labels

    df = pd.DataFrame(
        {
            "slide_id": ["n1", "l1"],
            "patient_id": ["p1", "p2"],
            "cohort": "new",
            "label": [None, "benign"],
            "prob_benign": [0.7, 0.2],
            "prob_metastasis": [0.3, 0.8],
            "pred": ["benign", "metastasis"],
        }
    )
    write_fold_predictions(df, 0, tmp_path / "f0.csv")
    classes = ["benign", "metastasis"]
    assert prediction_labels([tmp_path / "f0.csv"], classes, "n1") == {
        "label": "-",
        "prediction": "benign",
        "P(metastasis)": "0.300",
        "correct": "-",
    }
    assert prediction_labels([tmp_path / "f0.csv"], classes, "l1")["correct"] == "no"
