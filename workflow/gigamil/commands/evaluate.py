"""``gigamil evaluate``: cross-validation metrics from per-fold out-of-fold predictions."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gigamil.commands._argtypes import AT_LEAST_ONE, NON_NEGATIVE_INT

if TYPE_CHECKING:  # pandas is imported when a command runs, not when the CLI parses
    import pandas as pd

NAME = "evaluate"
HELP = (
    "summarise cross-validation predictions: summary.json, metrics.csv/.html, "
    "per_slide_predictions.csv, per_patient_predictions.csv, ROC, confusion"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--folds", required=True, metavar="FOLDS.csv", help="the folds.csv used")
    parser.add_argument(
        "--predictions",
        required=True,
        nargs="+",
        metavar="CSV",
        help="per-fold prediction CSVs (with a fold column)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--experiment",
        help="name shown in titles and summary.json (default: the {experiment} of the "
        "predictions' paths when all are results/predictions/{experiment}/fold<k>/..., "
        "else none)",
    )
    parser.add_argument(
        "--localization",
        metavar="CSV",
        help="CSV with slide_id, store, attention, mask for localisation AUC",
    )
    add_metric_arguments(parser)


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    """``--classes``, ``--n-boot`` and ``--seed``: the options of every command that computes
    metrics from prediction CSVs (evaluate, ensemble, subgroups)."""
    parser.add_argument(
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="class order (default: the prob_<class> columns' order)",
    )
    parser.add_argument(
        "--n-boot", type=AT_LEAST_ONE, default=1000, help="bootstrap resamples (1000)"
    )
    parser.add_argument(
        "--seed",
        type=NON_NEGATIVE_INT,
        default=0,
        help="bootstrap seed (default 0; the workflow uses cv.seed)",
    )


def experiment_name(given: str | None, predictions: list[str]) -> str:
    """``--experiment`` when given, else the experiment the prediction CSVs' paths name when
    every one is ``.../predictions/{experiment}/fold<k>/<cohort>.csv`` (the workflow's layout)
    and they agree, else ``""`` (no name in the titles and summary.json)."""
    if given:
        return given
    from pathlib import Path

    names = set()
    for p in predictions:
        parts = Path(p).parts
        if len(parts) < 4 or parts[-4] != "predictions" or not parts[-2].startswith("fold"):
            return ""
        names.add(parts[-3])
    return names.pop() if len(names) == 1 else ""


def _prob_classes(path: str) -> list[str]:
    """The classes of the ``prob_<class>`` columns of prediction CSV ``path``, in column order."""
    import pandas as pd

    from gigamil.errors import GigamilError, csv_read_errors

    try:
        header = pd.read_csv(path, nrows=0).columns
    except FileNotFoundError:
        raise GigamilError(f"{path}: prediction file not found") from None
    except csv_read_errors() as exc:
        raise GigamilError(f"{path}: not a prediction CSV ({type(exc).__name__})") from None
    return [c[len("prob_") :] for c in header if c.startswith("prob_")]


def classes_from_predictions(
    path: str, given: list[str] | None = None, others: Sequence[str] = ()
) -> list[str]:
    """The class order: ``given`` (``--classes``), else the ``prob_<class>`` columns of the
    prediction CSV ``path`` in column order. Raises GigamilError for an unreadable file, fewer
    than two classes, a class named twice, ``given`` classes other than the file's, or one of
    the ``others`` (the command's other prediction files) with other classes than ``path``'s
    (a model trained on another class set: naming both files' classes)."""
    from gigamil.errors import GigamilError

    cols = _prob_classes(path)
    for other in others:
        if (theirs := _prob_classes(other)) and cols and set(theirs) != set(cols):
            raise GigamilError(
                f"the prediction files are of models of other classes: {path} has "
                f"{', '.join(cols)}, {other} has {', '.join(theirs)}; give the predictions of "
                "models trained on one class set"
            )
    if given is None:
        if len(cols) < 2:
            raise GigamilError(f"{path}: no prob_<class> columns; give --classes")
        return cols
    if len(set(given)) != len(given) or len(given) < 2:
        raise GigamilError(f"--classes {' '.join(given)}: give at least two distinct classes")
    if cols and set(cols) != set(given):
        raise GigamilError(
            f"--classes {' '.join(given)}: {path} has probabilities of "
            f"{', '.join(cols)} (its prob_<class> columns); give those classes"
        )
    return list(given)


def read_localization(path: str) -> pd.DataFrame:
    """The ``--localization`` CSV (string cells) with columns slide_id, store, attention and
    mask; GigamilError for a missing or unreadable file or a missing column."""
    import pandas as pd

    from gigamil.errors import GigamilError, csv_read_errors

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise GigamilError(f"{path}: localisation CSV not found") from None
    except csv_read_errors() as exc:
        raise GigamilError(f"{path}: not a CSV ({type(exc).__name__})") from None
    need = ("slide_id", "store", "attention", "mask")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise GigamilError(
            f"{path}: missing column(s) {', '.join(missing)} (one row per slide and model: "
            f"{', '.join(need)})"
        )
    return table


def cv_localization(path: str) -> dict[str, tuple[str, str, str]]:
    """``{slide_id: (store, attention, mask)}`` of ``gigamil evaluate --localization``: one row
    per slide, its out-of-fold model's attention. GigamilError for a slide in several rows
    (e.g. ``gigamil ensemble``'s table, one row per fold model): one of them was scored
    silently, perhaps the attention of a model that trained on the slide."""
    from gigamil.errors import GigamilError

    t = read_localization(path)
    if (twice := t["slide_id"].duplicated()).any():
        sid = t.loc[twice, "slide_id"].iloc[0]
        raise GigamilError(
            f"{path}: slide {sid} is in {int((t['slide_id'] == sid).sum())} rows: the "
            "cross-validation scores one attention file per slide, that of the fold model that "
            "held it out; give one row per slide (the mean attention of several fold models "
            "is gigamil ensemble's --localization)"
        )
    return {r.slide_id: (r.store, r.attention, r.mask) for r in t.itertuples(index=False)}


def run(args: argparse.Namespace) -> int:
    from gigamil.evaluate.aggregate import aggregate_cv
    from gigamil.evaluate.tables import json_text

    classes = classes_from_predictions(args.predictions[0], args.classes, args.predictions[1:])
    loc = cv_localization(args.localization) if args.localization else None
    summary = aggregate_cv(
        args.predictions,
        args.folds,
        classes,
        args.out,
        experiment_name(args.experiment, args.predictions),
        localization=loc,
        n_boot=args.n_boot,
        seed=args.seed,
    )
    keys = (
        "oof_auc",
        "oof_auc_ci",
        "fold_auc_mean",
        "fold_auc_sd",
        "balanced_accuracy",
        "macro_f1",
        "n_slides",
        "n_patients",
        "localization_auc",
        "patch_score_localization_auc",
    )
    print(json_text({k: summary[k] for k in keys if k in summary}, indent=1))  # NaN: null
    return 0
