"""``gigamil subgroups``: metrics per value of sheet columns (site, scanner, ...) from
per-slide predictions (:mod:`gigamil.evaluate.subgroups`)."""

from __future__ import annotations

import argparse

from gigamil.commands.evaluate import add_metric_arguments

NAME = "subgroups"
HELP = "metrics per value of sheet columns (e.g. site): AUC, balanced accuracy, Brier, with CIs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions",
        required=True,
        metavar="CSV",
        help="per-slide predictions: results/eval/<experiment>/per_slide_predictions.csv "
        "(out of fold) or results/eval/<experiment>/ensemble/<cohort>/predictions.csv",
    )
    parser.add_argument(
        "--sheet",
        nargs="+",
        action="extend",
        default=[],
        metavar="SHEET.csv",
        help="the cohort sheet(s) holding the --by columns (joined on slide_id); not needed "
        "for a column of the predictions (cohort)",
    )
    parser.add_argument(
        "--by",
        required=True,
        nargs="+",
        metavar="COLUMN",
        help="sheet column(s), e.g. site, or cohort",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="writes subgroups.csv/.html")
    add_metric_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gigamil.commands.evaluate import classes_from_predictions
    from gigamil.evaluate.predictions import read_predictions
    from gigamil.evaluate.subgroups import (
        format_table,
        join_columns,
        subgroup_metrics,
        write_subgroups,
    )
    from gigamil.sheet_csv import read_sheet_csv

    classes = classes_from_predictions(args.predictions, args.classes)
    preds = read_predictions([args.predictions], classes, need_fold=False)
    sheets = [read_sheet_csv(Path(p), labels_required=False) for p in args.sheet]
    table = subgroup_metrics(
        join_columns(preds, sheets, args.by), classes, args.by, args.n_boot, args.seed
    )
    cohorts = ", ".join(sorted(set(preds["cohort"].astype(str))))
    title = f"subgroups of cohort(s) {cohorts} ({args.predictions})"
    paths = write_subgroups(table, args.out, title)
    print(format_table(table).to_string(index=False))
    print("\n".join(map(str, paths)))
    return 0
