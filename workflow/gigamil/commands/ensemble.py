"""``gigamil ensemble``: mean of the fold models' predictions on one cohort, with metrics (only
the predictions when no slide has a label: a ``role: predict`` cohort)."""

from __future__ import annotations

import argparse

from gigamil.commands.evaluate import add_metric_arguments

NAME = "ensemble"
HELP = "average the fold models' probabilities on a cohort and evaluate the ensemble"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions",
        required=True,
        nargs="+",
        metavar="CSV",
        help="the cohort's prediction CSV of every fold model",
    )
    parser.add_argument("--cohort", required=True, help="cohort name (rows of others ignored)")
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
        help="CSV with slide_id, store, attention, mask (one row per fold model's "
        "attention .npy) for the localisation AUC of the mean attention",
    )
    add_metric_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from gigamil.commands.evaluate import (
        classes_from_predictions,
        experiment_name,
        read_localization,
    )
    from gigamil.evaluate.ensemble import ensemble_cohort, has_labels
    from gigamil.evaluate.tables import json_text

    classes = classes_from_predictions(args.predictions[0], args.classes, args.predictions[1:])
    args.experiment = experiment_name(args.experiment, args.predictions)
    if not has_labels(args.predictions, args.cohort):
        from gigamil.evaluate.ensemble import predict_cohort

        summary = predict_cohort(args.predictions, classes, args.out, args.cohort, args.experiment)
        print(_predicted_line(summary, args.out))
        return 0
    loc = None
    if args.localization:
        t = read_localization(args.localization)
        loc = {
            sid: (g["store"].iloc[0], list(g["attention"]), g["mask"].iloc[0])
            for sid, g in t.groupby("slide_id", sort=False)
        }
    summary = ensemble_cohort(
        args.predictions,
        classes,
        args.out,
        args.cohort,
        args.experiment,
        n_boot=args.n_boot,
        seed=args.seed,
        localization=loc,
    )
    keys = (
        "auc",
        "auc_ci",
        "fold_auc_mean",
        "fold_auc_sd",
        "balanced_accuracy",
        "macro_f1",
        "n_slides",
        "n_models",
        "localization_auc",
        "patch_score_localization_auc",
    )
    print(json_text({k: summary[k] for k in keys if k in summary}, indent=1))  # NaN: null
    return 0


def _predicted_line(summary: dict, out: str) -> str:
    """What ``gigamil ensemble`` prints for a cohort without labels (summary.json is the
    record): the slides per predicted class, and where the files are."""
    counts = ", ".join(f"{n} {c}" for c, n in summary["predicted"].items())
    unscored = summary["n_unpredicted"]
    return (
        f"cohort {summary['cohort']}: {summary['n_slides'] - unscored} of {summary['n_slides']} "
        f"slide(s) predicted by {summary['n_models']} model(s): {counts}"
        + (f"; {unscored} without patches" if unscored else "")
        + f"; no labels, no metrics: {out}/predictions.csv, predictions.html, summary.json"
    )
