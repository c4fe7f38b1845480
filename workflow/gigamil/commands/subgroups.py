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
    from gigamil.evaluate.subgroups import format_table, report_subgroups

    classes = classes_from_predictions(args.predictions, args.classes)
    table = report_subgroups(
        args.predictions, args.sheet, args.by, classes, args.out, args.n_boot, args.seed
    )
    print(format_table(table).to_string(index=False))
    print("\n".join(str(Path(args.out) / f"subgroups.{ext}") for ext in ("csv", "html")))
    return 0
