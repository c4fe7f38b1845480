"""``gigamil evaluate``: cross-validation metrics from per-fold out-of-fold predictions."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE, NON_NEGATIVE_INT

NAME = "evaluate"
HELP = "summarise cross-validation predictions: summary.json, metrics.csv, ROC, confusion"


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
        "--classes",
        nargs="+",
        metavar="CLASS",
        help="class order (default: the prob_<class> columns' order)",
    )
    parser.add_argument("--experiment", default="", help="name shown in titles and summary")
    parser.add_argument(
        "--localization",
        metavar="CSV",
        help="CSV with slide_id, store, attention, mask for localisation AUC",
    )
    parser.add_argument(
        "--n-boot", type=AT_LEAST_ONE, default=1000, help="bootstrap resamples (1000)"
    )
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="bootstrap seed (0)")


def classes_from_predictions(path: str) -> list[str]:
    """Class names from the ``prob_<class>`` columns of a prediction CSV, in column order."""
    import pandas as pd

    from gigamil.errors import GigamilError

    cols = [c[len("prob_") :] for c in pd.read_csv(path, nrows=0).columns if c.startswith("prob_")]
    if len(cols) < 2:
        raise GigamilError(f"{path}: no prob_<class> columns; give --classes")
    return cols


def run(args: argparse.Namespace) -> int:
    import json

    import pandas as pd

    from gigamil.evaluate.aggregate import aggregate_cv

    classes = args.classes or classes_from_predictions(args.predictions[0])
    loc = None
    if args.localization:
        t = pd.read_csv(args.localization, dtype=str)
        loc = {r.slide_id: (r.store, r.attention, r.mask) for r in t.itertuples(index=False)}
    summary = aggregate_cv(
        args.predictions,
        args.folds,
        classes,
        args.out,
        args.experiment,
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
    )
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1))
    return 0
