"""``gigamil splits``: patient-level cross-validation folds balanced by an integer program."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import NON_NEGATIVE_INT

NAME = "splits"
HELP = "make patient-level cross-validation folds (folds.csv) from cohort sheets"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--config",
        metavar="CONFIG.yaml",
        help="use the train cohorts, classes and cv section of this config (relative sheet "
        "paths are read from the current directory, as snakemake reads them from its --directory)",
    )
    src.add_argument(
        "--sheet",
        action="append",
        metavar="SHEET.csv",
        help="a cohort sheet (repeatable; cohort name = file stem)",
    )
    parser.add_argument("--out", required=True, metavar="FOLDS.csv", help="output folds.csv")
    parser.add_argument("--folds", type=int, help="number of folds (default: config, else 5)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="validation share of each training part (default: config, else 0.2)",
    )
    parser.add_argument("--seed", type=NON_NEGATIVE_INT, help="seed (default: config, else 0)")
    parser.add_argument(
        "--stratify-by",
        nargs="*",
        metavar="COLUMN",
        help="extra sheet columns to balance, e.g. site (default: config)",
    )


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from gigamil.cohorts import check_patient_spellings
    from gigamil.config import check_stratify_by, load_config
    from gigamil.folds import split_report, write_folds
    from gigamil.schemas import load_schema
    from gigamil.splits import SplitTerms, make_folds

    keys = load_schema("config")["properties"]["cv"]["properties"]
    cv = {key: keys[key]["default"] for key in ("folds", "val_fraction", "seed", "stratify_by")}
    if args.config:
        cfg = load_config(args.config)
        cv.update(cfg.get("cv", {}))
        sheets = _config_sheets(cfg)
    else:
        sheets = _flag_sheets(args.sheet)
    if args.stratify_by is not None:  # a config's list was checked as it loaded
        check_stratify_by(args.stratify_by, "--stratify-by")
    for key, value in (
        ("folds", args.folds),
        ("val_fraction", args.val_fraction),
        ("seed", args.seed),
        ("stratify_by", args.stratify_by),
    ):
        if value is not None:
            cv[key] = value
    # one person under two spellings (P1, p1) would be two patients, in two roles of a fold
    check_patient_spellings(pd.concat(sheets, ignore_index=True))
    # a split error's advice in the terms the value came from: the flag when given (or without
    # --config), else the config's key
    given = {"folds": args.folds, "val_fraction": args.val_fraction, "seed": args.seed}
    terms = SplitTerms(
        **{
            key: f"--{key.replace('_', '-')}"
            if value is not None or not args.config
            else f"cv.{key}"
            for key, value in given.items()
        }
    )
    folds = make_folds(
        pd.concat(sheets, ignore_index=True),
        folds=int(cv["folds"]),
        val_fraction=float(cv["val_fraction"]),
        seed=int(cv["seed"]),
        stratify_by=list(dict.fromkeys(cv["stratify_by"] or [])),  # `--stratify-by site site`
        terms=terms,
    )
    write_folds(folds, args.out)
    print(split_report(folds).to_string(index=False))
    return 0


def _config_sheets(cfg: dict) -> list:
    """The train cohorts' sheets of a loaded config (files not checked)."""
    from gigamil.errors import GigamilError
    from gigamil.sheets import load_sheet

    classes = list(cfg["classes"])
    train = [name for name, c in cfg["cohorts"].items() if c["role"] == "train"]
    if not train:
        raise GigamilError(
            "--config: no cohort has role: train, so there is nothing to split into folds "
            "(the folds are made of the train cohorts' patients)"
        )
    return [
        load_sheet(cfg["cohorts"][name]["sheet"], cohort=name, classes=classes, check_files=False)
        for name in train
    ]


def _flag_sheets(paths: list[str]) -> list:
    """The ``--sheet`` files, each a cohort named by its file stem, classes from its labels;
    GigamilError when two files would be one cohort."""
    from pathlib import Path

    import pandas as pd

    from gigamil.errors import GigamilError
    from gigamil.sheet_csv import read_sheet_csv
    from gigamil.sheets import load_sheet

    stems = [Path(path).stem for path in paths]
    same = sorted({stem for stem in stems if stems.count(stem) > 1})
    if same:  # one cohort name for two sheets: their rows would merge under it
        raise GigamilError(
            f"--sheet: {', '.join(p for p in paths if Path(p).stem in same)} would all be "
            f"cohort {same[0]!r} (the cohort name is the file name without .csv): rename the "
            "files, or use --config with named cohorts"
        )
    sheets, spellings = [], {}
    for path in paths:
        raw = read_sheet_csv(Path(path), labels_required=False)  # one-line errors, stripped
        labels = raw["label"] if "label" in raw.columns else pd.Series(dtype=str)
        classes = sorted(set(labels) - {""})  # as load_sheet reads them: stripped
        for label in classes:
            spellings.setdefault(label.casefold(), {}).setdefault(label, path)
        sheets.append(load_sheet(path, cohort=Path(path).stem, classes=classes, check_files=False))
    for found in spellings.values():  # without a config, the labels are the classes
        if len(found) > 1:
            raise GigamilError(
                "--sheet: labels "
                + " and ".join(f"{label!r} ({where})" for label, where in found.items())
                + " differ only in case, so they would be two classes: write one spelling, or "
                "use --config, whose classes: names them"
            )
    return sheets
