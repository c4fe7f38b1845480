"""Ensemble of the fold models (rule ensemble): mean probabilities and mean attention.

On an external cohort every fold model predicts every slide; the ensemble probability of a slide is
the mean over the models. On a train cohort each slide is predicted only by the model of the fold
it was a test slide of, so the "ensemble" is exactly the out-of-fold prediction: the same code
gives the per-cohort out-of-fold evaluation.

A ``role: predict`` cohort (no labels) gets only the predictions (:func:`predict_cohort`):
``predictions.csv``, ``patient_predictions.csv``, ``predictions.html`` and a ``summary.json``
that says there are no metrics.

Outputs in ``out_dir`` (``results/eval/{experiment}/ensemble/{cohort}``): ``predictions.csv``,
``patient_predictions.csv`` (one row per patient: the mean of its slides' probabilities,
:func:`gigamil.evaluate.patients.patient_predictions`), ``metrics.csv`` (each fold model's metrics on the cohort, their mean and sd, the ensemble row and
its bootstrap CI; also as ``metrics.html``), ``summary.json``, ``roc.png``, ``confusion.png``.
With lesion masks (a ``lesion_mask`` column in the cohort's sheet), the localisation AUC of the
mean attention of the fold models goes into ``summary.json`` and ``predictions.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.evaluate.aggregate import (
    add_localization_columns,
    localization_block,
    metrics_table,
    model_records,
    pooled_metrics,
    summary_block,
    unscored_patients,
    write_report,
)
from gigamil.evaluate.localization import cohort_localization
from gigamil.evaluate.metrics import most_probable
from gigamil.evaluate.patients import write_patient_predictions
from gigamil.evaluate.predictions import (
    check_every_model_predicted_every_slide,
    check_one_file_per_model,
    check_slides_match_the_sheet,
    identical_models,
    missing_folds,
    read_predictions,
    split_unpredicted,
    unlabelled,
)
from gigamil.evaluate.predictions import shown as shown_ids
from gigamil.evaluate.tables import (
    FLOAT_FORMAT,
    out_of_fold,
    scored_by,
    write_json,
    write_predictions_html,
)
from gigamil.fileutil import atomic_write_csv
from gigamil.layout import PATIENT_PREDICTIONS

log = logging.getLogger(__name__)


def mean_probabilities(preds: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """One row per slide: mean ``prob_<class>`` over the models that predicted it.

    Args:
        preds: stacked prediction tables of several fold models (column ``fold``).

    Returns:
        cohort, slide_id, patient_id, label, prob_<class>..., pred, n_models (the models that
        predicted the slide), folds (theirs, ``;``-separated; empty for a slide no model could
        predict: no patches).
    """
    pcols = [f"prob_{c}" for c in classes]
    key = ["cohort", "slide_id"]
    ids = preds.groupby(key, sort=True)[["patient_id", "label"]].first()
    for col, what in (("label", "labels"), ("patient_id", "patient ids")):
        conflict = preds.groupby(key)[col].nunique()
        if (conflict > 1).any():
            cohort, slide = conflict.idxmax()
            raise GigamilError(f"slide {cohort}/{slide} has different {what} in the predictions")
    probs = preds.groupby(key, sort=True)[pcols].mean()  # NaN rows (no patches) are skipped
    predicted = preds.assign(ok=np.isfinite(preds[pcols].to_numpy(float)).all(axis=1))
    per_slide = predicted.groupby(key, sort=True)
    n_models = per_slide["ok"].sum()
    folds = per_slide[["fold", "ok"]].apply(
        lambda g: ";".join(map(str, sorted(g.loc[g["ok"], "fold"])))
    )
    out = ids.join(probs).join(n_models.rename("n_models")).join(folds.rename("folds"))
    out["pred"] = most_probable(out[pcols].to_numpy(dtype=float), classes)
    out = out.reset_index()
    return out[["cohort", "slide_id", "patient_id", "label", *pcols, "pred", "n_models", "folds"]]


NO_METRICS = "no labels: predictions only, no metrics"


def _no_metrics_note(ens: pd.DataFrame) -> str:
    """summary.json's note of a cohort predicted without metrics: :data:`NO_METRICS`, or, when
    some slides have labels (a ``role: predict`` sheet with a few), that they are not scored."""
    n = int((~unlabelled(ens)).sum())
    if not n:
        return NO_METRICS
    return (
        f"predictions only, no metrics: {n} of the {len(ens)} slides have a label, which is not "
        "scored (a cohort of role external, every slide labelled, gets metrics)"
    )


def has_labels(pred_csvs: Sequence[str | Path], cohort: str | None = None) -> bool:
    """Whether any row of the prediction CSVs (of ``cohort`` only, when given: a file of
    ``gigamil predict`` may hold several cohorts) has a label (else: a ``role: predict``
    cohort)."""
    for path in pred_csvs:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if cohort is not None and "cohort" in df.columns:
            df = df[df["cohort"] == str(cohort)]
        if not unlabelled(df).all():
            return True
    return False


def _cohort_predictions(
    pred_csvs: Sequence[str | Path],
    classes: Sequence[str],
    cohort: str,
    out_dir: Path,
    slides: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """``(fold predictions of the cohort, their mean per slide, caveats)``; the caveats (for
    summary.json, warned in the log) are ``missing_folds`` (the fold numbers missing among the
    files: :func:`missing_folds`), ``identical_models`` (pairs of files of one model:
    :func:`identical_models`), ``folds_not_learned`` and ``models`` (:func:`model_records`),
    each only when there are any; creates ``out_dir`` once they are checked."""
    every_cohort = [read_predictions([path], classes) for path in pred_csvs]
    per_file = [df[df["cohort"] == cohort] for df in every_cohort]
    check_one_file_per_model(per_file, pred_csvs, cohort)
    check_every_model_predicted_every_slide(per_file, pred_csvs, cohort)
    twins = identical_models(per_file, pred_csvs)
    for a, b in twins:
        log.warning(
            "cohort %s: %s and %s give every slide the same probabilities: the same model "
            "twice? (each fold's predictions come from its own model.pt)",
            cohort,
            a,
            b,
        )
    missing, given = missing_folds(every_cohort)
    if missing:
        log.warning(
            "cohort %s: no prediction file of fold(s) %s (given: folds %s): on a cohort no "
            "fold trained on, the mean lacks those models; on a train cohort, their test slides "
            "are missing. Give every fold model's prediction file",
            cohort,
            ", ".join(map(str, missing)),
            ", ".join(map(str, given)),
        )
    preds = pd.concat(per_file, ignore_index=True) if per_file else pd.DataFrame()
    if preds.empty:
        present = sorted({str(c) for df in every_cohort for c in df["cohort"].unique()})
        found = f" (they hold cohort(s) {', '.join(present)})" if present else ""
        raise GigamilError(
            f"cohort {cohort!r}: no predictions in {', '.join(map(str, pred_csvs))}{found}"
        )
    if slides is not None:
        check_slides_match_the_sheet(set(map(str, preds["slide_id"])), slides, cohort)
    caveats: dict[str, Any] = {"missing_folds": missing} if missing else {}
    if twins:
        caveats["identical_models"] = [list(pair) for pair in twins]
    caveats.update(model_records(preds, f"cohort {cohort}"))
    out_dir.mkdir(parents=True, exist_ok=True)  # not before: a refused input leaves no folder
    return preds, mean_probabilities(preds, classes), caveats


def predict_cohort(
    pred_csvs: Sequence[str | Path],
    classes: Sequence[str],
    out_dir: str | Path,
    cohort: str,
    experiment: str = "",
    slides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The fold models' ensemble on a cohort without labels (``role: predict``): the mean
    probabilities and no metrics. ``slides``: the sheet's slide ids, which the predictions must
    cover exactly (GigamilError naming the missing and extra ones); None: not checked.

    Writes ``predictions.csv`` (as :func:`mean_probabilities`), ``patient_predictions.csv``
    (:func:`gigamil.evaluate.patients.patient_predictions`), ``predictions.html`` and
    ``summary.json``: ``experiment``, ``cohort``, ``metrics: null``, ``note``, ``n_slides``,
    ``n_patients``, ``n_models``, ``models_per_slide`` ([min, max], :func:`models_per_slide`),
    ``n_unpredicted`` (slides without patches), ``predicted``
    (slides per predicted class) and, when fold files are missing, ``missing_folds``, and
    when two files are of one model, ``identical_models``.
    """
    out_dir = Path(out_dir)
    preds, ens, caveats = _cohort_predictions(pred_csvs, classes, cohort, out_dir, slides)
    atomic_write_csv(ens, out_dir / "predictions.csv", float_format=FLOAT_FORMAT)
    write_patient_predictions(ens, classes, out_dir / PATIENT_PREDICTIONS)
    title = f"{experiment}: {cohort} predictions" if experiment else f"{cohort} predictions"
    write_predictions_html(ens, classes, out_dir / "predictions.html", title, caveats, experiment)
    predicted = ens["pred"].astype(str)
    summary: dict[str, Any] = {
        "experiment": experiment or None,
        "cohort": cohort,
        "metrics": None,
        "note": _no_metrics_note(ens),
        "classes": list(classes),
        "n_slides": int(len(ens)),
        "n_patients": int(ens["patient_id"].nunique()),
        "n_models": int(preds["fold"].nunique()),
        "models_per_slide": models_per_slide(ens),
        "n_unpredicted": int((predicted == "").sum()),
        "predicted": {c: int((predicted == c).sum()) for c in classes},
        **caveats,
    }
    write_json(summary, out_dir / "summary.json")
    unscored = f", {summary['n_unpredicted']} without patches" if summary["n_unpredicted"] else ""
    log.info(
        "cohort %s: %d of %d slides predicted by %s (%s%s); no labels, no metrics",
        cohort,
        summary["n_slides"] - summary["n_unpredicted"],
        summary["n_slides"],
        _models_text(summary),
        ", ".join(f"{n} {c}" for c, n in summary["predicted"].items()),
        unscored,
    )
    return summary


def models_per_slide(ens: pd.DataFrame) -> list[int]:
    """[min, max] of the models that predicted a slide (``n_models`` of
    :func:`mean_probabilities`; slides without patches left out): [1, 1] for a train cohort,
    whose slides are each predicted by their out-of-fold model only."""
    n = ens.loc[ens["n_models"] > 0, "n_models"]
    return [int(n.min()), int(n.max())] if len(n) else [0, 0]


def _models_text(summary: Mapping[str, Any]) -> str:
    """``6 fold model(s), 1 per slide`` / ``6 fold model(s), 4-6 per slide``."""
    lo, hi = summary["models_per_slide"]
    per = f"{lo}" if lo == hi else f"{lo}-{hi}"
    return f"{summary['n_models']} fold model(s), {per} per slide"


def ensemble_cohort(  # noqa: PLR0913 - public API (script, CLI, tests)
    pred_csvs: Sequence[str | Path],
    classes: Sequence[str],
    out_dir: str | Path,
    cohort: str,
    experiment: str = "",
    n_boot: int = 1000,
    seed: int = 0,
    localization: Mapping[str, tuple[str | Path, Sequence[str | Path], str | Path]] | None = None,
    patient_overlap: Sequence[str] = (),
    slides: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Evaluate the fold-model ensemble on one cohort.

    Args:
        pred_csvs: the cohort's prediction CSV of every fold model.
        classes: class names in output order.
        out_dir: output directory (created).
        cohort: cohort name (rows of other cohorts are ignored).
        localization: ``{slide_id: (store, [attention .npy per fold model], lesion mask)}`` for
            slides with a ground-truth lesion mask; the mean of a slide's attention files is
            scored (:func:`gigamil.evaluate.localization.cohort_localization`).
        patient_overlap: patient ids of this cohort that are also in a train cohort (allowed by
            ``cohorts.<cohort>.allow_patient_overlap``): recorded in the summary as
            ``patient_overlap`` (count, ids and a note) and logged as a warning, since the fold
            models have seen those patients.
        slides: the cohort sheet's slide ids; the predictions must cover exactly these
            (GigamilError naming the missing and extra ones), so a slide no model predicted
            cannot drop out of the metrics unseen. None: not checked.

    Returns:
        The summary written to ``summary.json``: ``auc`` (+ ``auc_ci``), ``fold_auc`` (each fold
        model alone), ``fold_auc_mean``, ``fold_auc_sd``, ``balanced_accuracy``, ``macro_f1``,
        ``accuracy``, ``brier`` (+ CIs), ``patient_auc`` (+ ``patient_auc_ci``), ``per_class_recall``, ``confusion_matrix``,
        ``n_slides``, ``n_patients``, ``n_models``, ``models_per_slide``, ``n_unpredicted``, with masks the
        ``localization_*`` fields of :func:`gigamil.evaluate.aggregate.localization_block`, and
        ``missing_folds`` (:func:`missing_folds`) when fold files are missing,
        ``identical_models`` when two files are of one model, ``folds_not_learned`` when
        fold models did not learn, and ``models`` (each fold's model.pt SHA-256).
    """
    out_dir = Path(out_dir)
    preds, ens, caveats = _cohort_predictions(pred_csvs, classes, cohort, out_dir, slides)
    _check_every_label(ens, cohort)
    loc = cohort_localization(localization) if localization else None
    if loc is not None:
        add_localization_columns(ens, loc)
    atomic_write_csv(ens, out_dir / "predictions.csv", float_format=FLOAT_FORMAT)
    write_patient_predictions(ens, classes, out_dir / PATIENT_PREDICTIONS)
    valid, table, summary = _ensemble_metrics(
        ens, preds, classes, cohort, experiment, n_boot, seed, out_dir
    )
    if loc is not None:
        summary.update(localization_block(loc))
    if patient_overlap:
        summary["patient_overlap"] = _patient_overlap(cohort, patient_overlap)
    summary.update(caveats)  # warned; kept with the figures
    _write_ensemble_outputs(out_dir, table, valid, summary, classes, experiment)
    models, auc, n = _models_text(summary), summary["auc"], summary["n_slides"]
    log.info("cohort %s: %s, AUC %.3f on %d slides", cohort, models, auc, n)
    return summary


def _ensemble_metrics(
    ens: pd.DataFrame,
    preds: pd.DataFrame,
    classes: Sequence[str],
    cohort: str,
    experiment: str,
    n_boot: int,
    seed: int,
    out_dir: Path,
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The ensemble's slides with a prediction, its metrics table (the fold models alone, then
    the ensemble's pooled row and CIs, named ``ensemble``, or ``oof`` on a train cohort, whose
    slides are each predicted by one model, as in the cross-validation's metrics.csv; written
    to metrics.csv) and the summary's metrics.

    Raises:
        GigamilError: no slide of the cohort has a prediction.
    """
    valid, n_unpredicted = split_unpredicted(ens, classes)
    valid_folds, _ = split_unpredicted(preds, classes, warn=False)  # the same slides, per model
    if valid.empty:
        raise GigamilError(
            f"cohort {cohort!r}: no slide has a prediction: none of its {len(ens)} slide(s) "
            f"has patches (see results/qc/{cohort}.csv: tissue fraction and patches per slide; "
            "a wrong µm/px, e.g. the sheet's mpp column, can leave no tissue or no whole patch)"
        )
    pooled, ci = pooled_metrics(valid, classes, n_boot, seed)
    models = {"n_models": int(preds["fold"].nunique()), "models_per_slide": models_per_slide(ens)}
    kind = "oof" if out_of_fold(models) else "ensemble"  # a train cohort: oof, as in the CV
    table = metrics_table(valid_folds, classes, pooled, ci, kind)
    atomic_write_csv(table, out_dir / "metrics.csv", index=True, float_format=FLOAT_FORMAT)
    summary: dict[str, Any] = {"experiment": experiment or None, "cohort": cohort}
    summary.update(summary_block(valid, classes, pooled, ci, table, "auc"))
    summary.update(models)
    summary["n_unpredicted"] = n_unpredicted
    summary["n_patients_unscored"] = unscored_patients(ens, valid)
    return valid, table, summary


def _check_every_label(ens: pd.DataFrame, cohort: str) -> None:
    """GigamilError, before anything is written, when some slides of a labelled cohort have no
    label: the metrics need every slide's (a trial's half-labelled cohort failed with "label ''
    is not one of the classes" after writing predictions.csv)."""
    missing = unlabelled(ens)
    if missing.any():
        raise GigamilError(
            f"cohort {cohort!r}: {int(missing.sum())} of the {len(ens)} slides have no label "
            f"({shown_ids(list(ens.loc[missing, 'slide_id'].astype(str)))}) while the others "
            "have one: metrics need every slide's label. Give the missing labels, predict "
            "without metrics by leaving every label out, or evaluate the labelled slides' "
            "rows alone"
        )


def _patient_overlap(cohort: str, patient_overlap: Sequence[str]) -> dict[str, Any]:
    """The summary's ``patient_overlap``: count, sorted ids and a note; logs a warning."""
    block = {
        "n_patients": len(patient_overlap),
        "patient_ids": sorted(map(str, patient_overlap)),
        "note": (
            f"allowed by cohorts.{cohort}.allow_patient_overlap: fold models (one or more) "
            "trained or validated on these patients, so the metrics are optimistic"
        ),
    }
    log.warning(
        "cohort %s: %d patient(s) the fold models trained on (%s); metrics are optimistic",
        cohort,
        len(patient_overlap),
        ", ".join(sorted(map(str, patient_overlap))[:5]),
    )
    return block


def _write_ensemble_outputs(
    out_dir: Path,
    table: pd.DataFrame,
    valid: pd.DataFrame,
    summary: Mapping[str, Any],
    classes: Sequence[str],
    experiment: str,
) -> None:
    """Write metrics.html, roc.png, confusion.png and summary.json in ``out_dir``, titled
    ``{experiment}: {cohort} ensemble``, or ``... out-of-fold (1 model per slide)`` for a train
    cohort, whose slides are each scored by the one fold model that did not train on them."""
    what = scored_by(summary)
    what += " (1 model per slide)" if what == "out-of-fold" else ""
    title = f"cohort {summary['cohort']} {what}"
    title = f"{experiment}: {title}" if experiment else title
    write_report(out_dir, table, valid, summary, classes, title, auc_key="auc", roc_by=None)
