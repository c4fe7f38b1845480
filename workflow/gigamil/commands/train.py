"""``gigamil train``: train one model end to end (encoder included) on zarr patch bags."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE, NON_NEGATIVE_INT

NAME = "train"
HELP = "train an attention-MIL model end to end with the accumulating trainer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        metavar="CONFIG.yaml",
        help="config file: `classes`, `model:` and `training:` are used",
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--train-csv",
        metavar="CSV",
        help="training slides: cohort, slide_id, patient_id, label, store",
    )
    src.add_argument(
        "--folds",
        metavar="FOLDS.csv",
        help="instead of --train-csv / --val-csv: the training and validation slides of fold "
        "--fold K of this folds.csv (gigamil splits), their stores under --stores",
    )
    parser.add_argument(
        "--val-csv",
        metavar="CSV",
        help="validation slides (same columns; may have no rows). Default: none, as with "
        "cv.val_fraction: 0 (model.pt keeps the epoch of lowest training loss from epoch "
        "min_epochs - 1 on)",
    )
    add_fold_arguments(parser, "with --folds: the fold to train (also names it in the log)")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory: model.pt, last.pt, train_log.csv",
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from DIR/last.pt if present (default: --resume)",
    )
    parser.add_argument(
        "--threads",
        type=AT_LEAST_ONE,
        default=1,
        metavar="N",
        help="torch CPU threads, and threads decoding patches (default 1)",
    )


def add_fold_arguments(parser: argparse.ArgumentParser, fold_help: str) -> None:
    """``--fold K`` and ``--stores DIR``, the companions of ``--folds FOLDS.csv``."""
    parser.add_argument("--fold", type=NON_NEGATIVE_INT, metavar="K", help=fold_help)
    parser.add_argument(
        "--stores",
        metavar="DIR",
        help="with --folds: the folder of the stores, DIR/<cohort>/<slide_id>.zarr (default "
        "results/patches, where the workflow writes them; results/features/<encoder_id> for "
        "cached features)",
    )


def check_fold_flags(args: argparse.Namespace, listed: str) -> None:
    """GigamilError for ``--stores`` without ``--folds`` (``listed``: the option whose CSV names
    every store itself: it would be ignored) and for ``--folds`` without ``--fold``."""
    from gigamil.errors import GigamilError

    if args.stores is not None and args.folds is None:
        raise GigamilError(f"--stores goes with --folds FOLDS.csv ({listed} names each store)")
    if args.folds is not None and args.fold is None:
        raise GigamilError("--folds needs --fold K (the fold's number in FOLDS.csv)")


def fold_slides(args: argparse.Namespace, *roles: str) -> list:
    """The slides of each of ``roles`` in fold ``--fold`` of ``--folds``, with their ``--stores``
    (default results/patches; :func:`gigamil.folds.fold_slides_with_stores`)."""
    from gigamil.folds import fold_slides_with_stores

    return fold_slides_with_stores(args.folds, args.fold, roles, args.stores or "results/patches")


def read_slides_csv(path: str, labels: bool = True):  # noqa: ANN201 - pandas imported lazily
    """Read a slides CSV (columns cohort, slide_id, patient_id, label, store). With
    ``labels=False`` (slides to predict) the ``label`` column is optional: missing or empty
    labels become ``""``. Values are read as written (``NA`` is an id), spaces around names and
    values dropped; a column spelt with other case or spaces (``Label``), a missing column (the
    error lists those found), an empty id, store or (with ``labels``) label, and a store that
    is missing or a file are a GigamilError naming the column, line or store."""
    from pathlib import Path

    import pandas as pd

    from gigamil.errors import GigamilError, csv_read_errors
    from gigamil.sheet_csv import column_renames, rename_problems

    if not Path(path).exists() or Path(path).is_dir():  # a pipe (<(...)) is fine
        raise GigamilError(f"{path}: file not found")
    try:
        # ids as written: "NA" or "None" is an id, not a missing value (as folds.csv reads them)
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except csv_read_errors() as exc:
        raise GigamilError(f"{path}: not a readable CSV ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]  # "cohort, slide_id, ..." as README lists
    renames = column_renames(list(df.columns), SLIDES_COLUMNS)
    if renames:  # a "Label" column would be dropped and every label read as empty
        raise GigamilError(f"{path}: {'; '.join(rename_problems(renames))}")
    written = list(df.columns)  # before an empty label column is added
    if not labels and "label" not in df.columns:
        df["label"] = ""
    missing = [c for c in SLIDES_COLUMNS if c not in df.columns]
    if missing:
        raise GigamilError(_missing_message(path, missing, written))
    df = df.apply(lambda col: col.str.strip())  # " stores/a.zarr" is stores/a.zarr
    for col in ("cohort", "slide_id", "patient_id", "store", *(["label"] * labels)):
        empty = df.index[df[col] == ""]
        if len(empty):
            raise GigamilError(f"{path}: line {empty[0] + 2} has no {col}")
    _resolve_stores(df, path)
    return df


SLIDES_COLUMNS = ("cohort", "slide_id", "patient_id", "label", "store")


def _missing_message(path: str, missing: list[str], columns: list[str]) -> str:
    """The error for a slides CSV without ``missing`` columns: what it has, a close spelling
    among its other columns (``stores`` for store), and for a cohort sheet (``path``, no
    ``store``) what a store is."""
    import difflib

    others = [c for c in columns if c not in SLIDES_COLUMNS]
    hints = [
        f"{near[0]!r} -> {c}"
        for c in missing
        if (near := difflib.get_close_matches(c, others, n=1, cutoff=0.6))
    ]
    sheet = (
        "; this looks like a cohort sheet (slides by path): a slides CSV names each slide's patch "
        "store (the .zarr folder gigamil patches writes) in its store column"
        if "store" in missing and "path" in columns
        else ""
    )
    return (
        f"{path}: missing column(s) {', '.join(missing)} (a slides CSV has "
        f"{', '.join(SLIDES_COLUMNS)}; its columns: {', '.join(columns)})"
        + (f"; did you mean {', '.join(hints)}?" if hints else "")
        + sheet
    )


def _resolve_stores(df, path: str) -> None:  # noqa: ANN001 - a pandas DataFrame, imported lazily
    """Each relative ``store`` found from the working directory if it exists there (kept as
    typed), else made absolute from the CSV's folder; GigamilError for a store that does not
    exist or is a file."""
    from pathlib import Path

    from gigamil.errors import GigamilError

    base = Path(path).resolve().parent
    given = df["store"].tolist()
    df["store"] = [str(p if Path(p).is_absolute() or Path(p).exists() else base / p) for p in given]
    for typed, store in zip(given, df["store"], strict=True):
        if Path(store).is_file():
            raise GigamilError(
                f"{path}: store {typed} is a file, not a patch store (the .zarr folder that "
                "gigamil patches writes from a slide)"
            )
        if not Path(store).exists():
            where = (
                f"{store}"
                if Path(typed).is_absolute()
                else f"{typed} (looked for {Path(typed).resolve()} and {store})"
            )
            raise GigamilError(f"{path}: patch store {where} does not exist")


def load_cli_config(path: str) -> dict:
    """:func:`gigamil.config.load_config` for a command: a configuration without ``cohorts``
    (the command reads none) is an error that says what to add."""
    from pathlib import Path

    from gigamil.config import load_config, read_yaml, validate_config
    from gigamil.errors import ConfigError

    if not Path(path).is_file():
        return load_config(path)  # raises its "config file not found"
    raw = read_yaml(path) or {}  # load_config's two steps, to see what the file holds
    try:
        return validate_config(raw, source=str(path))
    except ConfigError as exc:
        if not isinstance(raw, dict) or "cohorts" in raw:
            raise
        raise ConfigError(
            f"{exc}: the command reads classes, model, training and preprocessing from it but "
            "checks it whole, as the pipeline does; add a cohorts entry (its sheet is not read), "
            "e.g. cohorts: {main: {sheet: sheet.csv, role: train}}"
        ) from None


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from gigamil.config import config_warnings
    from gigamil.errors import GigamilError
    from gigamil.train.run import train_fold

    check_fold_flags(args, "--train-csv")  # the command line's own mistakes first
    if args.folds is None and args.fold is not None:
        raise GigamilError("--fold goes with --folds FOLDS.csv (--train-csv lists the slides)")
    cfg = load_cli_config(args.config)
    for warning in config_warnings(cfg):  # as the workflow prints them, once, at the start
        print(f"gigamil: warning: {warning}", file=sys.stderr)
    if args.folds is not None:
        if args.val_csv:
            raise GigamilError("--val-csv goes with --train-csv; --folds reads the fold's own")
        train, val = fold_slides(args, "train", "val")
    else:
        train = read_slides_csv(args.train_csv)
        if train.empty:
            raise GigamilError(f"{args.train_csv}: no slides (a header only)")
        val = read_slides_csv(args.val_csv) if args.val_csv else train.iloc[:0]
    model_path = train_fold(
        train,
        val,
        cfg["classes"],
        cfg["model"],
        cfg["training"],
        Path(args.out),
        resume=args.resume,
        threads=args.threads,
        fold=args.fold,
    )
    print(model_path)
    return 0
