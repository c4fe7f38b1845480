"""Patient-level predictions: one row per patient, the score the metrics' patient rows use.

A patient with several slides is classified by the mean class probabilities of the slides that
were predicted (:func:`gigamil.evaluate.metrics.patient_level`, the rows ``oof_patient`` and
``..._patient`` of metrics.csv); :func:`patient_predictions` writes that score out per patient,
beside the per-slide table, so a patient's call can be read, not only counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.evaluate.metrics import most_probable, patient_level
from gigamil.evaluate.predictions import unlabelled
from gigamil.evaluate.tables import FLOAT_FORMAT
from gigamil.fileutil import atomic_write_csv


def _joined(values: pd.Series) -> str:
    return ";".join(sorted({str(v) for v in values if pd.notna(v) and str(v) != ""}))


def patient_predictions(per_slide: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """One row per patient from a per-slide prediction table.

    Args:
        per_slide: one row per slide with ``patient_id``, ``slide_id``, ``cohort``,
            ``prob_<class>`` (NaN for a slide without patches) and optionally ``label`` and
            ``fold`` (out of fold: the fold that held the patient out).
        classes: class names in output order.

    Returns:
        Sorted by patient: ``patient_id``, ``cohort`` (``;``-joined when a patient is in
        several), ``label`` (empty without one), ``fold`` (when given), ``n_slides``,
        ``n_predicted`` (slides with a prediction), ``slide_ids`` (``;``-joined),
        ``prob_<class>`` (the mean over the predicted slides; empty when none was predicted),
        ``pred`` (the most probable class, empty without probabilities) and ``correct``
        (empty without a label or a prediction).
    """
    pcols = [f"prob_{c}" for c in classes]
    df = per_slide.copy()
    if "label" not in df.columns:
        df["label"] = ""
    df["label"] = df["label"].astype(object).where(~unlabelled(df), "").astype(str)
    df["_ok"] = np.isfinite(df[pcols].to_numpy(dtype=float)).all(axis=1)
    groups = df.groupby("patient_id", sort=True)
    out = pd.DataFrame(
        {
            "cohort": groups["cohort"].agg(_joined),
            "label": groups["label"].agg(_joined),
            **({"fold": groups["fold"].agg(_joined)} if "fold" in df.columns else {}),
            "n_slides": groups.size(),
            "n_predicted": groups["_ok"].sum().astype(int),
            "slide_ids": groups["slide_id"].agg(_joined),
        }
    )
    # the predicted slides' mean, as the metrics' patient rows score them (the rows they see)
    out = out.join(patient_level(df[df["_ok"]], classes).set_index("patient_id")[pcols])
    out["pred"] = most_probable(out[pcols].to_numpy(dtype=float), classes)
    judged = (out["pred"] != "") & (out["label"] != "")
    out["correct"] = pd.array(out["pred"] == out["label"], dtype="boolean")
    out.loc[~judged, "correct"] = pd.NA
    return out.reset_index()


def write_patient_predictions(
    per_slide: pd.DataFrame, classes: Sequence[str], path: str | Path
) -> pd.DataFrame:
    """:func:`patient_predictions` written as CSV at ``path`` (6 significant digits, empty
    cells for missing values); returns the table."""
    table = patient_predictions(per_slide, classes)
    atomic_write_csv(table, path, float_format=FLOAT_FORMAT)
    return table
