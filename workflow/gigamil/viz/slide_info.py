"""What a heatmap states about its slide: cohort, true label, predicted class and probability,
and the fold models that made it (rule heatmap, ``gigamil heatmap --predictions``).

The predictions are the fold models' CSVs (``results/predictions/{experiment}/fold{k}/{cohort}.csv``,
docs/architecture.md): a train-cohort slide is in the CSV of the fold it was a test slide of only,
an external slide in every fold's, so the rows found for a slide are the models whose attention
the heatmap averages. Their probabilities are averaged as in the ensemble
(:func:`gigamil.evaluate.ensemble.mean_probabilities`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError, csv_read_errors


def probability_str(p: float) -> str:
    """A probability as heatmap titles and the report's heatmap list write it: 3 significant
    digits, trailing zeros kept (``0.750``, ``0.0105``, ``1.00``, ``3.00e-06``)."""
    return f"{p:#.3g}"


class SlideNotPredicted(GigamilError):
    """None of the prediction files has a row of the slide (another id, or another cohort)."""


@dataclass(frozen=True, kw_only=True)
class SlidePrediction:
    """A slide's prediction as a heatmap states it.

    ``probability`` is P(``positive``): for two classes the second class's probability; for more,
    1 - P(first class), the probability of "not ``classes[0]``" (the first class is the
    negative/normal one, as for the AUC), and ``pred_probability`` that of the predicted class
    (NaN with two classes, where the title shows only P(positive)). NaN when the slide has no
    patches (nothing predicted).
    """

    slide_id: str
    cohort: str
    label: str
    pred: str
    probability: float
    positive: str
    n_models: int
    folds: tuple[int, ...] = ()
    pred_probability: float = math.nan

    def models_text(self) -> str:
        """``mean of 6 fold models`` / ``1 fold model (fold 3)`` / ``1 model`` (predictions
        without a fold) / ``no fold model`` (a slide without patches: nothing was predicted)."""
        if self.n_models == 0:
            return "no fold model"
        if self.n_models == 1:
            if not self.folds:  # gigamil predict without --fold: a model of no fold
                return "1 model"
            return f"1 fold model (fold {self.folds[0]})"
        return f"mean of {self.n_models} fold models"

    def probability_text(self) -> str:
        """``P(lesion) = 0.973`` (:func:`probability_str`: 3 significant digits, so 3e-06 stays
        3.00e-06); with more than two
        classes the predicted class's first: ``P(lesion_a) = 0.358, P(not normal) = 0.694``."""
        p = "n/a" if not math.isfinite(self.probability) else probability_str(self.probability)
        text = f"P({self.positive}) = {p}"
        if self.pred and math.isfinite(self.pred_probability):
            text = f"P({self.pred}) = {probability_str(self.pred_probability)}, {text}"
        return text

    def title(self) -> str:
        """Two lines: ``cohort / slide_id`` and ``true: x · predicted: y, P(y) = p · models``
        (``no label · ...`` for a slide without one, e.g. of a ``role: predict`` cohort)."""
        pred = self.pred or "none (no patches)"
        truth = f"true: {self.label}" if self.label else "no label"
        return (
            f"{self.cohort} / {self.slide_id}\n"
            f"{truth} · predicted: {pred}, {self.probability_text()} · "
            f"{self.models_text()}"
        )


def prediction_classes(path: str | Path) -> list[str]:
    """The classes of a prediction CSV, in output order, from its ``prob_<class>`` columns."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except csv_read_errors() as exc:
        raise GigamilError(f"{path}: not a prediction CSV ({type(exc).__name__})") from exc
    classes = [str(c)[len("prob_") :] for c in header if str(c).startswith("prob_")]
    if len(classes) < 2:
        raise GigamilError(f"{path}: not a prediction CSV (fewer than two prob_<class> columns)")
    return classes


def read_slide_prediction(
    pred_csvs: Sequence[str | Path], slide_id: str, classes: Sequence[str] | None = None
) -> SlidePrediction:
    """The mean prediction of ``slide_id`` over the fold models whose CSVs hold it.

    Args:
        pred_csvs: prediction CSVs of fold models (rows of other slides are ignored), or of
            one model (``gigamil predict`` without ``--fold``: no ``fold`` column).
        slide_id: the slide.
        classes: class names in output order (None: read from the first CSV's columns).

    Raises:
        SlideNotPredicted: no CSV holds the slide.
        GigamilError: no CSV, or one that is not a prediction CSV.
    """
    from gigamil.evaluate.ensemble import mean_probabilities
    from gigamil.evaluate.predictions import NO_FOLD, read_predictions

    if not pred_csvs:
        raise GigamilError(f"slide {slide_id}: no prediction files given")
    names = [str(c) for c in (classes or prediction_classes(pred_csvs[0]))]
    preds = read_predictions(pred_csvs, names, need_fold=False)
    preds = preds[preds["slide_id"] == str(slide_id)]
    if preds.empty:
        raise SlideNotPredicted(
            f"slide {slide_id}: in none of the prediction files {', '.join(map(str, pred_csvs))}"
        )
    row = mean_probabilities(preds, names).iloc[0]
    predicted = np.isfinite(preds[[f"prob_{c}" for c in names]].to_numpy(float)).all(axis=1)
    probs = np.array([row[f"prob_{c}"] for c in names], dtype=float)
    pred_probability = math.nan
    if len(names) == 2:
        probability, positive = float(probs[1]), names[1]
    else:
        probability, positive = float(1.0 - probs[0]), f"not {names[0]}"
        if str(row["pred"]) in names:
            pred_probability = float(probs[names.index(str(row["pred"]))])
    return SlidePrediction(
        slide_id=str(slide_id),
        cohort=str(row["cohort"]),
        label="" if pd.isna(row["label"]) else str(row["label"]),
        pred=str(row["pred"]),
        probability=probability,
        positive=positive,
        n_models=int(predicted.sum()),  # as predictions.csv's n_models: NaN rows do not count
        folds=tuple(sorted(int(f) for f in preds.loc[predicted, "fold"] if f != NO_FOLD)),
        pred_probability=pred_probability,
    )


def prediction_labels(
    pred_csvs: Sequence[str | Path], classes: Sequence[str], slide_id: str
) -> dict[str, str]:
    """What the report lists beside a slide's heatmap: its ``label`` (``-`` when unlabelled),
    the ensemble's ``prediction`` and a probability, from the prediction CSVs of the fold models
    (mean over those that predicted the slide, as the heatmap averages their attention; a
    train-cohort slide has one, its out-of-fold model). With two classes the probability is that
    of the positive (second) class, under the key ``P(<class>)``, the number the heatmap's title
    shows, written as it does (:func:`gigamil.viz.slide_info.probability_str`); with more, ``P(predicted)``:
    that of the predicted class, which the title shows first.
    ``correct``: yes / no, or ``-`` without a label or a prediction. Read as the heatmap's title
    reads them (:func:`gigamil.viz.slide_info.read_slide_prediction`).
    """
    key = f"P({classes[1]})" if len(classes) == 2 else "P(predicted)"
    found = [p for p in pred_csvs if Path(p).is_file()]
    try:
        slide = read_slide_prediction(found, slide_id, classes) if found else None
    except SlideNotPredicted:
        slide = None
    if slide is None:
        return {"label": "?", "prediction": "?", key: "?", "correct": "-"}
    label = slide.label or "-"
    if not slide.pred:
        return {"label": label, "prediction": "none (no patches)", key: "", "correct": "-"}
    prob = slide.probability if len(classes) == 2 else slide.pred_probability
    correct = "-" if label == "-" else ("yes" if label == slide.pred else "no")
    return {
        "label": label,
        "prediction": slide.pred,
        key: probability_str(prob),
        "correct": correct,
    }
