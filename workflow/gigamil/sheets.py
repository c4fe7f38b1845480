"""Cohort sheets: reading one sheet (CSV) and checking its columns, rows, labels and files.

Every problem raises :class:`~gigamil.errors.ConfigError` with one message that names the file and
the line (a sheet's header is line 1). The checks across the cohorts of a configuration are in
:mod:`gigamil.cohorts`.
"""

from __future__ import annotations

import csv
import difflib
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd

from gigamil.config import (
    OPTIONAL_COLUMNS,
    SHEET_COLUMNS,
    describe_value_error,
    load_schema,
)
from gigamil.errors import ConfigError, csv_read_errors
from gigamil.layout import lesion_masks

log = logging.getLogger(__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def load_sheet(  # noqa: PLR0913 - public API (rules, scripts, tests call it by keyword)
    path: str | Path,
    cohort: str,
    classes: list[str],
    cohort_mpp: float | None = None,
    check_files: bool = True,
    base_dir: str | Path = ".",
    labels_required: bool = True,
) -> pd.DataFrame:
    """Read and validate one cohort sheet.

    Args:
        path: the CSV file.
        cohort: cohort name (added as column ``cohort``).
        classes: allowed labels.
        cohort_mpp: the cohort's MPP override, used where a row has no ``mpp``.
        check_files: require every slide ``path`` to exist (False for generated demo slides).
        base_dir: directory relative slide paths are resolved against (the working directory).
        labels_required: False for a ``role: predict`` cohort: the ``label`` column may be
            missing (it is added, empty) and labels may be empty; given ones must still be
            among ``classes``.

    Returns:
        DataFrame with columns cohort, slide_id, patient_id, label, path, mpp (float or NaN) and any
        extra columns of the sheet, in sheet order.
    """
    path = Path(path)
    if not path.is_file():
        where = (
            ""
            if path.is_absolute()
            else f" (looked for {path.resolve()}: relative paths are read from the working "
            "directory, snakemake's --directory, else where it runs)"
        )
        raise ConfigError(f"cohort {cohort!r}: sheet {path} not found{where}")
    df = _read_sheet_csv(path, labels_required)
    df["mpp"] = _sheet_mpp(df, path, cohort_mpp)
    checks = [
        lambda: _check_rows_against_schema(df, path, labels_required),
        lambda: _check_unique_slides(df, path),
        lambda: _check_labels(df, path, classes),
        lambda: _check_patient_labels(df, path, classes),
    ]
    if check_files:
        checks.append(lambda: _check_slide_files(df, path, Path(base_dir)))
    _run_all(checks, path)
    df.insert(0, "cohort", cohort)
    return df


def _run_all(checks: list[Callable[[], None]], path: Path) -> None:
    """Run every check; one :class:`ConfigError` with all their problems (a sheet with a
    duplicate id, a wrong label and a missing file is fixed in one round, not three)."""
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc).removeprefix(f"{path}: "))
    if len(problems) == 1:
        raise ConfigError(f"{path}: {problems[0]}")
    if problems:
        raise ConfigError(
            f"{path}: {len(problems)} problems:" + "".join(f"\n- {p}" for p in problems)
        )


def _sheet_line(df: pd.DataFrame, position: int) -> int:
    """The line of the sheet file where the row at 0-based ``position`` starts (the header is
    line 1); every error about a row names it so. Blank lines, which ``pd.read_csv`` skips, are
    counted: :func:`_read_sheet_csv` keeps each row's line in ``df.attrs["sheet_lines"]``
    (without it, e.g. a frame built in code, the row after the header is line 2)."""
    lines = df.attrs.get("sheet_lines")
    return int(lines[position]) if lines is not None else position + 2


def read_sheet_frame(path: str | Path) -> pd.DataFrame:
    """A sheet CSV as strings, as written (no NA conversion). ``index_col=False``: rows with a
    trailing comma (a spreadsheet export) keep their columns; without it pandas makes the first
    column the index and shifts every value one column left. Call :func:`_check_field_counts`
    first: the extra fields it drops must be empty."""
    import warnings

    with warnings.catch_warnings():  # "loss of data": only empty trailing fields, checked
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        return pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)


def _check_field_counts(path: Path) -> None:
    """Raises ConfigError for a data row with more non-empty fields than the header has
    columns (e.g. an unquoted decimal comma, ``0,25``), naming its line; extra fields that are
    empty (a trailing comma) are allowed. Only comma-separated sheets (a header of one field is
    checked for other separators later); an unreadable file is left to pandas."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if len(header) < 2:
                return
            for record in reader:
                extra = [v for v in record[len(header) :] if v.strip()]
                if extra:
                    raise ConfigError(
                        f"{path}: line {reader.line_num} has {len(record)} fields but the header "
                        f"has {len(header)} ({', '.join(header)}); extra: {extra[:3]}. Quote a "
                        'value that holds a comma ("a, b"), and write numbers with a decimal '
                        "point (mpp 0.25, not 0,25)"
                    )
    except (csv.Error, UnicodeDecodeError, OSError):
        return


def _record_lines(path: Path) -> list[int] | None:
    """The file line each data record of a CSV starts on, skipping blank (or whitespace-only)
    lines as ``pd.read_csv`` does; None when the file cannot be read so."""
    starts: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            previous = 0
            for record in reader:
                if len(record) > 1 or (record and record[0].strip()):
                    starts.append(previous + 1)
                previous = reader.line_num
    except (csv.Error, UnicodeDecodeError):
        return None
    return starts[1:]  # the first record is the header


def _read_sheet_csv(path: Path, labels_required: bool = True) -> pd.DataFrame:
    """The sheet as strings, names and values stripped; it needs SHEET_COLUMNS (``label`` only
    when ``labels_required``; else an empty one is added) and a row. Blank lines and rows whose
    every cell is empty are skipped; ``df.attrs["sheet_lines"]`` keeps each row's file line."""
    _check_field_counts(path)
    try:
        df = read_sheet_frame(path)
    except csv_read_errors() as exc:
        raise ConfigError(f"{path}: cannot be read as CSV: {' '.join(str(exc).split())}") from exc
    df.columns = [c.strip() for c in df.columns]
    renames = _misspelt_columns(list(df.columns), path)  # {column as written: as gigamil reads it}
    header = str(df.columns[0]) if len(df.columns) == 1 else ""
    separator = next((name for sep, name in (("\t", "tabs"), (";", "';'")) if sep in header), "")
    needed = [c for c in SHEET_COLUMNS if labels_required or c != "label"]
    if not labels_required and "label" not in df.columns and "label" not in renames.values():
        df.insert(min(2, len(df.columns)), "label", "")
    missing = [c for c in needed if c not in df.columns and c not in renames.values()]
    problems = [
        f"column {col!r} means {name!r}; column names are read as spelt: rename it {name}"
        for col, name in renames.items()
    ]
    if missing:
        problems.append(
            f"missing column(s) {', '.join(missing)} "
            f"(a sheet needs {', '.join(needed)}; optional: "
            f"{', '.join(OPTIONAL_COLUMNS if labels_required else ['label', *OPTIONAL_COLUMNS])})"
            + (
                f"; its header is separated by {separator}: save the sheet as comma-separated CSV"
                if separator
                else ""
            )
        )
    if len(problems) == 1:
        raise ConfigError(f"{path}: {problems[0]}")
    if problems:  # the whole header fixed in one round
        raise ConfigError(
            f"{path}: {len(problems)} problems with the header:"
            + "".join(f"\n- {p}" for p in problems)
        )
    if df.empty:
        raise ConfigError(f"{path}: the sheet has no rows")
    df = df.apply(lambda col: col.str.strip())
    lines = _record_lines(path)
    if lines is None or len(lines) != len(df):
        lines = [i + 2 for i in range(len(df))]
    filled = df.ne("").any(axis=1).to_numpy()  # rows of empty cells (",,,"): a spreadsheet's
    df = df[filled].reset_index(drop=True)  # leftovers hold no data, like blank lines
    if df.empty:
        raise ConfigError(f"{path}: the sheet has no rows (only empty ones)")
    df.attrs["sheet_lines"] = [line for line, keep in zip(lines, filled, strict=True) if keep]
    return df


def _misspelt_columns(columns: list[str], path: Path) -> dict[str, str]:
    """Columns gigamil reads, spelt otherwise: ``{as written: as read}`` where only case, spaces
    or hyphens differ (``MPP``, ``Slide ID``: their values would be silently ignored; the caller
    stops the run); a warning for a near miss of an optional column (``lesion_masks``,
    ``mpp_um``): extra columns are kept as data and may be the user's own."""
    known = (*SHEET_COLUMNS, *OPTIONAL_COLUMNS)
    renames: dict[str, str] = {}
    for col in columns:
        if col in known:
            continue
        folded = re.sub(r"[\s-]+", "_", col.lower())
        if folded in known and folded not in columns:
            renames[col] = folded
            continue
        near = difflib.get_close_matches(folded, OPTIONAL_COLUMNS, n=1, cutoff=0.8) or [
            c for c in OPTIONAL_COLUMNS if folded.startswith(f"{c}_")
        ]
        if near and near[0] not in columns:
            log.warning(
                "%s: column %r is not read by gigamil (did you mean %s?); it is kept as data",
                path,
                col,
                near[0],
            )
    return renames


def _sheet_mpp(df: pd.DataFrame, path: Path, cohort_mpp: float | None) -> pd.Series:
    """The ``mpp`` column as floats (NaN where empty), the cohort's MPP filling the gaps."""
    if "mpp" in df.columns:
        mpp = pd.to_numeric(df["mpp"].replace("", None), errors="coerce")
        bad = df["mpp"].ne("") & mpp.isna()
        if bad.any():
            rows = [
                f"line {_sheet_line(df, row)}"
                + (f" (slide_id {df.at[row, 'slide_id']!r})" if "slide_id" in df.columns else "")
                + f": mpp {df.at[row, 'mpp']!r}"
                for row in [i for i, is_bad in enumerate(bad) if is_bad]
            ]
            what = (
                "is not a number" if len(rows) == 1 else f"{len(rows)} mpp values are not numbers"
            )
            hint = "(µm/px, e.g. 0.25; leave it empty to use the slide's own)"
            if len(rows) == 1:
                raise ConfigError(f"{path}: {rows[0]} {what} {hint}")
            raise ConfigError(f"{path}: {what} {hint}:" + "".join(f"\n  {r}" for r in listed(rows)))
        mpp = mpp.astype(float)
    else:
        mpp = pd.Series(float("nan"), index=df.index)
    if cohort_mpp is not None:
        mpp = mpp.fillna(float(cohort_mpp))
    return mpp


def _check_rows_against_schema(df: pd.DataFrame, path: Path, labels_required: bool = True) -> None:
    """Every row against the sheet schema; one :class:`ConfigError` naming each bad cell (up to
    :data:`MAX_LISTED`) with its line, so a sheet's cells are fixed in one round."""
    schema = load_schema("sheet")
    optional = OPTIONAL_COLUMNS
    if not labels_required:  # a predict cohort: an empty label is no label
        schema["required"] = [c for c in schema["required"] if c != "label"]
        optional = (*OPTIONAL_COLUMNS, "label")
    validator = jsonschema.Draft202012Validator(schema)
    bad: list[str] = []
    for i, record in enumerate(df.to_dict(orient="records")):
        row = {k: _clean(v) for k, v in record.items() if not (k in optional and v in ("", None))}
        row = {k: v for k, v in row.items() if v is not None or k in OPTIONAL_COLUMNS}
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.path)):
            where = f"line {_sheet_line(df, i)} (slide_id {record['slide_id']!r})"
            bad.append(f"{where}: {describe_value_error(err)}")
    if len(bad) == 1:
        raise ConfigError(f"{path}: {bad[0]}")
    if bad:
        raise ConfigError(
            f"{path}: {len(bad)} cells do not match the sheet's schema "
            "(workflow/schemas/sheet.schema.yaml):" + "".join(f"\n  {b}" for b in listed(bad))
        )


def _near_label(value: str, classes: list[str]) -> str | None:
    """``'Lesion' -> 'lesion'`` for a label that differs from a class only in case or
    surrounding spaces, else the class :func:`difflib.get_close_matches` finds, as ``'x' -> 'y'``."""
    folded = {c.strip().casefold(): c for c in classes}
    match = folded.get(str(value).strip().casefold())
    if match is None:
        near = difflib.get_close_matches(str(value), classes, n=1, cutoff=0.75)
        match = near[0] if near else None
    return None if match is None else f"{value!r} -> {match!r}"


def _other_suffix(full: Path) -> Path | None:
    """A file beside the missing ``full`` with its name but another suffix (``S1.tif`` for
    ``S1.tiff``, ``S1.SVS`` for ``S1.svs``), if there is exactly one."""
    try:
        same = [q for q in full.parent.glob(f"{full.stem}.*") if q.is_file() and q != full]
    except OSError:
        return None
    if len(same) != 1:
        return None
    return same[0]


def _check_unique_slides(df: pd.DataFrame, path: Path) -> None:
    dup = df["slide_id"][df["slide_id"].duplicated()]
    if not dup.empty:
        lines = [str(_sheet_line(df, i)) for i in df.index[df["slide_id"] == dup.iloc[0]]]
        raise ConfigError(f"{path}: duplicate slide_id {dup.iloc[0]!r} (lines {', '.join(lines)})")


def _check_labels(df: pd.DataFrame, path: Path, classes: list[str]) -> None:
    bad_label = ~df["label"].isin(classes) & df["label"].ne("")  # "" only in predict cohorts
    if bad_label.any():
        bad = [
            f"line {_sheet_line(df, i)} (slide_id {df.at[i, 'slide_id']!r}): "
            f"label {df.at[i, 'label']!r}"
            for i, is_bad in enumerate(bad_label)
            if is_bad
        ]
        hints = sorted({h for v in df.loc[bad_label, "label"] if (h := _near_label(v, classes))})
        raise ConfigError(
            f"{path}: {bad[0] if len(bad) == 1 else f'{len(bad)} labels'} "
            f"{'is' if len(bad) == 1 else 'are'} not one of the classes {classes} of the "
            "configuration (its `classes:` list; without one, the demo's [normal, lesion])"
            + (f"; did you mean {', '.join(hints)}?" if hints else "")
            + ("".join(f"\n  {line}" for line in listed(bad)) if len(bad) > 1 else "")
        )


def _check_patient_labels(df: pd.DataFrame, path: Path, classes: list[str]) -> None:
    """One label per patient, among the valid labels (a misspelt one is its own problem)."""
    labels_per_patient = df[df["label"].isin(classes)].groupby("patient_id")["label"].unique()
    conflicting = labels_per_patient[labels_per_patient.map(len) > 1]
    if not conflicting.empty:
        pid = conflicting.index[0]
        raise ConfigError(
            f"{path}: patient {pid!r} has conflicting labels {sorted(conflicting.iloc[0])}; "
            "all slides of a patient must share one label"
        )


def sheet_slide_path(path: str, base: str | Path) -> Path:
    """A sheet's slide ``path``, relative ones against ``base`` (the working directory)."""
    return Path(path) if Path(path).is_absolute() else Path(base) / path


MAX_LISTED = 10  # files or slides named in one error message; the rest are counted


def listed(lines: list[str], most: int = MAX_LISTED) -> list[str]:
    """The first ``most`` of ``lines``, plus a line counting the rest when there are more."""
    more = len(lines) - most
    return lines[:most] + ([f"  ... and {more} more"] if more > 0 else [])


def _check_slide_files(df: pd.DataFrame, path: Path, base: Path) -> None:
    """Every slide file (``path``) and lesion mask (the ``lesion_mask`` cells the workflow reads,
    :func:`gigamil.layout.lesion_masks`) exists; else one :class:`ConfigError` listing each
    missing file (up to :data:`MAX_LISTED`) with its line in the sheet and, for a relative path,
    where it was looked for."""
    masks = lesion_masks({}, df)
    ids = df["slide_id"].tolist()
    files = [(i, s, "slide file", p) for i, (s, p) in enumerate(zip(ids, df["path"], strict=True))]
    files += [(i, s, "lesion mask", masks[s]) for i, s in enumerate(ids) if s in masks]
    missing: list[str] = []
    for i, slide_id, what, p in files:
        full = sheet_slide_path(p, base)
        if not full.exists():
            where = "" if Path(p).is_absolute() else f" (looked for {full.resolve()})"
            other = _other_suffix(full)
            where += f"; did you mean {other.name}?" if other is not None else ""
            missing.append(
                f"  line {_sheet_line(df, i)} (slide_id {slide_id!r}): {what} {p} not found{where}"
            )
    if missing:
        raise ConfigError(
            f"{path}: {len(missing)} file(s) not found (relative paths are read from the "
            "working directory: snakemake's --directory, else where it runs):\n"
            + "\n".join(listed(missing))
        )
