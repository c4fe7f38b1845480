"""Cross-validation summary (rule aggregate_cv): out-of-fold metrics, tables, plots, localisation.

Outputs in ``out_dir`` (``results/eval/{experiment}``):

- ``summary.json``: headline numbers (see :func:`aggregate_cv` for the keys);
- ``metrics.csv``: one row per fold, ``mean`` and ``sd`` across folds, the pooled out-of-fold
  (``oof``) row and its bootstrap 95% CI (``oof_ci_low``, ``oof_ci_high``), then the same per
  patient (``oof_patient``: the mean probability of each patient's slides) and its CI rows;
- ``per_slide_predictions.csv``: every train-cohort slide's out-of-fold prediction (and its
  localisation AUC where a lesion mask exists);
- ``per_patient_predictions.csv``: every train-cohort patient, the mean probabilities of its
  slides (the score of the ``oof_patient`` rows; :mod:`gigamil.evaluate.patients`);
- ``roc.png``, ``confusion.png``; ``metrics.html`` (the table, for the HTML report).

The prediction files are read and checked by :mod:`gigamil.evaluate.predictions`, summary.json and
metrics.html written by :mod:`gigamil.evaluate.tables`; the ensemble (:mod:`gigamil.evaluate.ensemble`)
shares the metrics and summary blocks here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.evaluate import metrics as M
from gigamil.evaluate.localization import (  # noqa: F401 - localization_block: also here
    add_localization_columns,
    cohort_localization,
    localization_block,
)
from gigamil.evaluate.patients import write_patient_predictions
from gigamil.evaluate.predictions import oof_predictions, read_predictions, split_unpredicted
from gigamil.evaluate.tables import (
    FLOAT_FORMAT,
    MIN_PATIENTS_FOR_CI,
    write_json,
    write_metrics_html,
)
from gigamil.fileutil import atomic_write_csv
from gigamil.layout import PER_PATIENT

log = logging.getLogger(__name__)


def pooled_metrics(
    preds: pd.DataFrame, classes: Sequence[str], n_boot: int, seed: int
) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """Metrics of all rows together and their patient-level bootstrap CIs. ``pooled`` also holds
    the same metrics per patient, on the mean probability of each patient's slides
    (:func:`gigamil.evaluate.metrics.patient_level`): ``patient`` (the metrics, ``n`` = patients)
    and ``patient_ci`` (their bootstrap CIs, resampling patients), with ``patient_auc`` and
    ``patient_auc_ci`` for the summary."""
    y, p = M.labels_and_probs(preds, classes)
    pooled = M.classification_metrics(y, p, classes)
    ci = M.bootstrap_ci(
        y, p, classes, groups=preds["patient_id"].to_numpy(), n_boot=n_boot, seed=seed
    )
    yp, pp = M.labels_and_probs(M.patient_level(preds, classes), classes)
    pooled["patient"] = M.classification_metrics(yp, pp, classes)
    pooled["patient_ci"] = M.bootstrap_ci(yp, pp, classes, n_boot=n_boot, seed=seed)
    pooled["patient_auc"] = pooled["patient"]["auc"]
    pooled["patient_auc_ci"] = pooled["patient_ci"]["auc"]
    return pooled, ci


def unscored_patients(preds: pd.DataFrame, scored: pd.DataFrame) -> int:
    """Patients of ``preds`` none of whose slides is in ``scored`` (every slide without
    patches): they are missing from the metrics' patient counts."""
    return int(len(set(preds["patient_id"]) - set(scored["patient_id"])))


def metrics_table(
    preds: pd.DataFrame,
    classes: Sequence[str],
    pooled: Mapping[str, Any],
    ci: Mapping[str, tuple[float, float]],
    pooled_name: str,
) -> pd.DataFrame:
    """Per-fold rows, mean, sd, the pooled row and its CI rows, then the patient-level row
    ``{pooled_name}_patient`` (one mean probability per patient) and its CI rows."""
    table = M.fold_table(preds, classes)
    n_patients = int(preds["patient_id"].nunique())
    rows = [(pooled_name, pooled, ci)]
    if "patient" in pooled:
        rows.append((f"{pooled_name}_patient", pooled["patient"], pooled["patient_ci"]))
    for name, metrics, intervals in rows:
        row = {k: metrics[k] for k in table.columns if k in metrics}
        row["n_slides"], row["n_patients"] = pooled["n"], n_patients
        table.loc[name] = pd.Series(row)
        for i, suffix in enumerate(("ci_low", "ci_high")):
            table.loc[f"{name}_{suffix}"] = pd.Series({k: v[i] for k, v in intervals.items()})
    return table


def summary_block(
    preds: pd.DataFrame,
    classes: Sequence[str],
    pooled: Mapping[str, Any],
    ci: Mapping[str, tuple[float, float]],
    table: pd.DataFrame,
    auc_key: str,
) -> dict[str, Any]:
    """The summary.json numbers shared by the CV summary and the ensemble summaries; with fewer
    than :data:`MIN_PATIENTS_FOR_CI` patients also ``ci_note`` (and a warning in the log)."""
    folds = table.loc[table.index.str.startswith("fold")]
    out: dict[str, Any] = {
        "classes": list(classes),
        "n_slides": int(len(preds)),
        "n_patients": int(preds["patient_id"].nunique()),
        auc_key: pooled["auc"],
        f"{auc_key}_ci": list(ci["auc"]),
        "fold_auc": folds["auc"].tolist(),
        "fold_n_slides": [int(n) for n in folds["n_slides"]],  # what each fold AUC is on
        "fold_auc_mean": float(folds["auc"].mean()),
        "fold_auc_sd": float(folds["auc"].std(ddof=1)) if len(folds) > 1 else float("nan"),
        "patient_auc": pooled["patient_auc"],
        "patient_auc_ci": list(pooled["patient_auc_ci"]),
    }
    for name in ("balanced_accuracy", "macro_f1", "accuracy", "brier"):
        out[name] = pooled[name]
        out[f"{name}_ci"] = list(ci[name])
        out[f"fold_{name}_mean"] = float(folds[name].mean())
        out[f"fold_{name}_sd"] = float(folds[name].std(ddof=1)) if len(folds) > 1 else float("nan")
    out["per_class_recall"] = {c: pooled[f"recall_{c}"] for c in classes}
    out["per_class_recall_ci"] = {c: list(ci[f"recall_{c}"]) for c in classes}
    if len(classes) > 2:  # the macro AUC's parts, and the classes it averages
        out["per_class_auc"] = {c: pooled[f"auc_{c}"] for c in classes}
        out["per_class_auc_ci"] = {c: list(ci[f"auc_{c}"]) for c in classes}
        _note_missing_classes(classes, out["per_class_auc"])
    out["confusion_matrix"] = pooled["confusion"]
    if "patient" in pooled:  # the same per patient (mean probability of its slides)
        pat, pat_ci = pooled["patient"], pooled["patient_ci"]
        out["patient_balanced_accuracy"] = pat["balanced_accuracy"]
        out["patient_balanced_accuracy_ci"] = list(pat_ci["balanced_accuracy"])
        out["patient_per_class_recall"] = {c: pat[f"recall_{c}"] for c in classes}
        out["patient_per_class_recall_ci"] = {c: list(pat_ci[f"recall_{c}"]) for c in classes}
        out["patient_confusion_matrix"] = pat["confusion"]
    out["ci_level"] = 0.95
    if not np.isfinite(out[auc_key]) and (auc_note := _auc_note(preds, classes)):
        out["auc_note"] = auc_note
        log.warning("%s", auc_note)
    note = _ci_note(out)
    if note:
        out["ci_note"] = note
        log.warning("%s", note)
    return out


def _auc_note(preds: pd.DataFrame, classes: Sequence[str]) -> str | None:
    """Why there is no AUC when the slides ``preds`` hold one class only (None otherwise)."""
    present = [c for c in classes if (preds["label"].astype(str) == c).any()]
    if len(present) != 1:
        return None
    return (
        f"no AUC: all {len(preds)} slide(s) with a prediction are {present[0]!r} (an AUC ranks "
        "slides of one class against another); the balanced accuracy is the recall of that class"
    )


def _note_missing_classes(classes: Sequence[str], aucs: Mapping[str, float]) -> None:
    """A warning when the macro AUC leaves out a class without an AUC (no slide of it)."""
    missing = [c for c in classes if not np.isfinite(aucs[c])]
    if missing:
        log.warning(
            "macro AUC over %s only: no AUC for %s (no slide of the class, or only its slides)",
            ", ".join(c for c in classes if c not in missing),
            ", ".join(missing),
        )


def _ci_note(summary: Mapping[str, Any]) -> str:
    """Why the intervals say less than they seem to: few patients (below
    :data:`MIN_PATIENTS_FOR_CI`), or an interval of zero width, e.g. patient AUC [1.0, 1.0]
    when every resample ranks perfectly (a percentile bootstrap cannot reach beyond the values
    it resamples); "" when neither."""
    n = summary["n_patients"]
    if n < MIN_PATIENTS_FOR_CI:
        return (
            f"the intervals resample only {n} patient(s): with so few they say "
            "little (an interval such as [1.0, 1.0] does not mean certainty)"
        )
    intervals = [
        (key.removesuffix("_ci"), v)
        for key, v in summary.items()
        if key.endswith("_ci") and not isinstance(v, Mapping)  # per_class_recall_ci: below
    ]
    for prefix in ("", "patient_"):
        recalls = summary.get(f"{prefix}per_class_recall_ci") or {}  # {class: [low, high]}
        intervals += [(f"{prefix}recall_{c}", v) for c, v in recalls.items()]
    flat = [
        f"{name} [{lo:.3g}, {hi:.3g}]"
        for name, value in intervals
        if len(value) == 2
        for lo, hi in [value]
        if np.isfinite(lo) and lo == hi
    ]
    if not flat:
        return ""
    return (
        f"zero-width interval(s) {', '.join(flat)}: every bootstrap resample of the {n} "
        "patients gave the same value; this does not mean certainty (a percentile bootstrap "
        "cannot reach beyond the values it resamples)"
    )


def aggregate_cv(
    pred_csvs: Sequence[str | Path],
    folds_csv: str | Path,
    classes: Sequence[str],
    out_dir: str | Path,
    experiment: str = "",
    localization: Mapping[str, tuple[str | Path, str | Path, str | Path]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise the cross-validation of the train cohorts.

    Args:
        pred_csvs: per-fold prediction CSVs of the train cohorts (``fold`` column included).
        folds_csv: the folds.csv the models were trained with.
        classes: class names in output order.
        out_dir: where summary.json, metrics.csv, per_slide_predictions.csv and the plots go.
        localization: ``{slide_id: (store, attention.npy, lesion_mask.png)}`` of slides with
            a lesion mask (attention of the slide's out-of-fold model).
        n_boot: bootstrap resamples (patients) for the 95% CIs.

    Returns:
        The summary: ``oof_auc`` (+ ``_ci``), ``fold_auc`` list, ``fold_auc_mean``, ``fold_auc_sd``,
        ``balanced_accuracy``, ``macro_f1``, ``accuracy``, ``brier`` (each with ``_ci`` and fold
        mean/sd), ``patient_auc``, ``per_class_recall``, ``confusion_matrix``, ``n_slides``,
        ``n_patients``, ``n_folds``, ``n_unpredicted``, with masks ``localization_auc`` (mean
        over slides where defined) and ``localization_auc_per_slide``, ``folds_not_learned``
        when a fold model did not learn and ``models`` (:func:`model_records`)."""
    from gigamil.folds import read_folds

    out_dir = Path(out_dir)
    folds = read_folds(folds_csv)
    preds = oof_predictions(read_predictions(pred_csvs, classes), folds)
    valid, n_unpredicted = split_unpredicted(preds, classes)
    if valid.empty:
        raise GigamilError("no slide has a prediction; nothing to evaluate")
    out_dir.mkdir(parents=True, exist_ok=True)  # not before: a refused input leaves no folder
    pooled, ci = pooled_metrics(valid, classes, n_boot, seed)
    table = metrics_table(valid, classes, pooled, ci, "oof")
    summary: dict[str, Any] = {"experiment": experiment or None}
    summary.update(summary_block(valid, classes, pooled, ci, table, "oof_auc"))
    summary["n_folds"], summary["n_unpredicted"] = int(folds["fold"].nunique()), n_unpredicted
    summary["n_patients_unscored"] = unscored_patients(preds, valid)
    summary["cohorts"] = sorted(folds["cohort"].unique().tolist())
    summary.update(model_records(preds, "cross-validation"))
    per_slide = _per_slide_table(preds, classes)
    if localization:
        loc = cohort_localization(localization)
        add_localization_columns(per_slide, loc)
        summary.update(localization_block(loc))
    _write_cv_outputs(out_dir, per_slide, valid, table, summary, classes, experiment)
    log.info(
        "out-of-fold AUC %.3f (95%% CI %.3f-%.3f), folds %.3f ± %.3f, %d slides",
        summary["oof_auc"],
        *summary["oof_auc_ci"],
        summary["fold_auc_mean"],
        summary["fold_auc_sd"] if summary["fold_auc_sd"] == summary["fold_auc_sd"] else 0.0,
        summary["n_slides"],
    )
    return summary


def model_records(preds: pd.DataFrame, where: str) -> dict[str, Any]:
    """What the prediction rows say of the fold models behind them, for summary.json:
    ``models`` (``{fold: model.pt's SHA-256}``, :func:`gigamil.train.model_info.model_digests`)
    and, when a fold model did not learn (:func:`gigamil.train.learning.unlearned_folds`;
    logged as a warning, shown in the pages' caveat rows), ``folds_not_learned``; each only
    when the files record it."""
    from gigamil.train.learning import unlearned_folds
    from gigamil.train.model_info import model_digests

    out: dict[str, Any] = {"models": digests} if (digests := model_digests(preds)) else {}
    folds = unlearned_folds(preds)
    if not folds:
        return out
    log.warning(
        "%s: the model(s) of fold(s) %s did not learn (their training loss ended near chance; "
        "model.pt records it): their predictions are in these figures but mean nothing "
        "(README, 'When a fold does not learn')",
        where,
        ", ".join(map(str, folds)),
    )
    return {**out, "folds_not_learned": folds}


def _per_slide_table(preds: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """A copy of the out-of-fold ``preds`` with ``pred`` (the most probable class, "" without
    probabilities) and ``correct`` (empty without probabilities: a slide without patches was
    not predicted, neither right nor wrong)."""
    per_slide = preds.copy()
    probs = per_slide[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    per_slide["pred"] = M.most_probable(probs, classes)
    right = (per_slide["pred"] == per_slide["label"]).astype("boolean")
    per_slide["correct"] = right.where(per_slide["pred"] != "")  # <NA>: an empty cell
    return per_slide


def _write_cv_outputs(
    out_dir: Path,
    per_slide: pd.DataFrame,
    valid: pd.DataFrame,
    table: pd.DataFrame,
    summary: Mapping[str, Any],
    classes: Sequence[str],
    experiment: str,
) -> None:
    """Write per_slide_predictions.csv, per_patient_predictions.csv
    (:func:`gigamil.evaluate.patients.patient_predictions`), metrics.csv, metrics.html, roc.png,
    confusion.png and summary.json in ``out_dir``."""
    pcols = [f"prob_{c}" for c in classes]
    cols = ["cohort", "slide_id", "patient_id", "label", "fold", *pcols, "pred", "correct"]
    extra = (
        "model_learned",
        "localization_auc",
        "patch_score_localization_auc",
        "n_lesion_patches",
    )
    cols += [c for c in extra if c in per_slide.columns]
    ordered = per_slide[cols].sort_values(["cohort", "slide_id"])
    atomic_write_csv(ordered, out_dir / "per_slide_predictions.csv", float_format=FLOAT_FORMAT)
    write_patient_predictions(per_slide, classes, out_dir / PER_PATIENT)
    atomic_write_csv(table, out_dir / "metrics.csv", index=True, float_format=FLOAT_FORMAT)
    title = f"{experiment}: out-of-fold" if experiment else "out-of-fold"
    write_report(out_dir, table, valid, summary, classes, title, auc_key="oof_auc", roc_by="fold")


def write_report(
    out_dir: Path,
    table: pd.DataFrame,
    valid: pd.DataFrame,
    summary: Mapping[str, Any],
    classes: Sequence[str],
    title: str,
    *,
    auc_key: str,
    roc_by: str | None,
) -> None:
    """Write roc.png (one curve per ``roc_by`` group, or one), confusion.png, metrics.html (the
    headline rows of ``summary`` with ``auc_key`` first, the two plots and the reliability
    diagram embedded, the ``table``) and summary.json in ``out_dir``, each titled ``title``."""
    from gigamil.viz.calibration import plot_calibration
    from gigamil.viz.plots import plot_confusion, plot_roc

    plot_roc(valid, classes, out_dir / "roc.png", f"{title} ROC", by=roc_by)
    plot_confusion(valid, classes, out_dir / "confusion.png", f"{title} confusion")
    calibration = plot_calibration(valid, classes, f"{title} calibration")
    figures = [out_dir / "roc.png", out_dir / "confusion.png", calibration]
    write_metrics_html(
        table, out_dir / "metrics.html", f"{title} metrics", summary, auc_key, figures
    )
    write_json(summary, out_dir / "summary.json")
