"""Cohort sheets: reading one sheet (CSV) and checking its columns, rows, labels and files.

Every problem raises :class:`~gigamil.errors.ConfigError` with one message that names the file and
the line (a sheet's header is line 1). The checks across the cohorts of a configuration are in
:mod:`gigamil.cohorts`.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from gigamil.config import OPTIONAL_COLUMNS
from gigamil.errors import ConfigError, nearest_name
from gigamil.layout import lesion_masks
from gigamil.schemas import SchemaValidator, describe_value_error, load_schema
from gigamil.sheet_csv import raise_problems, read_sheet_csv


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
    loaded: dict[str, pd.DataFrame] | None = None,
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
        loaded: where given, the sheet's rows are put under ``loaded[cohort]`` once the file
            has been read, before its rows are checked (:func:`gigamil.cohorts.load_cohorts`
            checks across cohorts the rows of a sheet that has problems of its own).

    Returns:
        DataFrame with columns cohort, slide_id, patient_id, label, path, mpp (float or NaN) and any
        extra columns of the sheet, in sheet order.
    """
    path = Path(path)
    _check_sheet_file(path, cohort)
    df = read_sheet_csv(path, labels_required)
    if loaded is not None:
        loaded[cohort] = df
    checks = [
        lambda: _set_mpp(df, path, cohort_mpp),  # first: the schema check reads the floats
        lambda: _check_rows_against_schema(df, path, labels_required, classes),
        lambda: _check_unique_slides(df, path),
        lambda: _check_periodic_ids(df, path),
        lambda: _check_labels(df, path, classes),
        lambda: _check_patient_labels(df, path, classes),
    ]
    if check_files:
        checks.append(lambda: _check_slide_files(df, path, Path(base_dir)))
    if "cohort" in df.columns:  # the name is the config's: a sheet's own column would clash
        checks.append(_reserved_cohort_column)
    else:
        df.insert(0, "cohort", cohort)
    _run_all(checks, path)
    return df


def _check_sheet_file(path: Path, cohort: str) -> None:
    """ConfigError when the sheet ``path`` is a folder or not found (saying where a relative
    path was looked for)."""
    if path.is_dir():
        raise ConfigError(
            f"cohort {cohort!r}: sheet {path} is a folder, not a CSV file (one row per slide: "
            "slide_id, patient_id, label, path)"
        )
    if not path.is_file():
        where = (
            ""
            if path.is_absolute()
            else f" (looked for {path.resolve()}: relative paths are read from the working "
            "directory, snakemake's --directory, else where it runs)"
        )
        raise ConfigError(f"cohort {cohort!r}: sheet {path} not found{where}")


def _reserved_cohort_column() -> None:
    raise ConfigError(
        "column 'cohort' is gigamil's (the cohort's name in config.yaml, which the workflow "
        "adds to every row): rename the sheet's column, e.g. to hospital"
    )


def _run_all(checks: list[Callable[[], None]], path: Path) -> None:
    """Run every check; one :class:`ConfigError` with all their problems (a sheet with a
    duplicate id, a wrong label and a missing file is fixed in one round, not three)."""
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc).removeprefix(f"{path}: "))
    raise_problems(path, problems)


def sheet_line(df: pd.DataFrame, position: int) -> int:
    """The line of the sheet file where the row at 0-based ``position`` starts (the header is
    line 1); every error about a row names it so. Blank lines, which ``pd.read_csv`` skips, are
    counted: :func:`gigamil.sheet_csv.read_sheet_csv` keeps each row's line in ``df.attrs["sheet_lines"]``
    (without it, e.g. a frame built in code, the row after the header is line 2)."""
    lines = df.attrs.get("sheet_lines")
    return int(lines[position]) if lines is not None else position + 2


def _set_mpp(df: pd.DataFrame, path: Path, cohort_mpp: float | None) -> None:
    """``df["mpp"]`` as floats (NaN where empty or not a number), the cohort's MPP filling the
    gaps, in place; then ConfigError naming every value that is not a number. The column is set
    first, so the schema check still judges the other values (a ``-1`` beside an ``abc``)."""
    raw = df["mpp"] if "mpp" in df.columns else pd.Series("", index=df.index)
    mpp = pd.to_numeric(raw.replace("", None), errors="coerce").astype(float)
    mpp = mpp.where(mpp.abs() != float("inf"))  # 'inf', '1e400': not a resolution either
    bad = raw.ne("") & mpp.isna()
    df["mpp"] = mpp if cohort_mpp is None else mpp.fillna(float(cohort_mpp))
    if not bad.any():
        return
    rows = [
        f"line {sheet_line(df, row)}"
        + (f" (slide_id {df.at[row, 'slide_id']!r})" if "slide_id" in df.columns else "")
        + f": mpp {raw.iat[row]!r}"
        for row in [i for i, is_bad in enumerate(bad) if is_bad]
    ]
    hint = "(µm/px, e.g. 0.25; leave it empty to use the slide's own)"
    if len(rows) == 1:
        raise ConfigError(f"{path}: {rows[0]} is not a number {hint}")
    raise ConfigError(
        f"{path}: {len(rows)} mpp values are not numbers {hint}:"
        + "".join(f"\n  {r}" for r in listed(rows))
    )


def _check_rows_against_schema(
    df: pd.DataFrame, path: Path, labels_required: bool = True, classes: list[str] | None = None
) -> None:
    """Every row against the sheet schema; one :class:`ConfigError` naming each bad cell (up to
    :data:`MAX_LISTED`) with its line, so a sheet's cells are fixed in one round (an empty
    label with the ``classes`` to choose from)."""
    schema = load_schema("sheet")
    optional = OPTIONAL_COLUMNS
    if not labels_required:  # a predict cohort: an empty label is no label
        schema["required"] = [c for c in schema["required"] if c != "label"]
        optional = (*OPTIONAL_COLUMNS, "label")
    validator = SchemaValidator(schema)
    bad: list[str] = []
    for i, record in enumerate(df.to_dict(orient="records")):
        row = {k: _clean(v) for k, v in record.items() if not (k in optional and v in ("", None))}
        row = {k: v for k, v in row.items() if v is not None or k in OPTIONAL_COLUMNS}
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.path)):
            where = f"line {sheet_line(df, i)} (slide_id {record['slide_id']!r})"
            text = describe_value_error(err)
            if list(err.path) == ["label"] and err.validator == "minLength":
                text = (
                    f"label is empty: give one of the classes {classes} (a cohort only predicted, "
                    "without labels, takes role: predict)"
                )
            bad.append(f"{where}: {text}")
    if len(bad) == 1:
        raise ConfigError(f"{path}: {bad[0]}")
    if bad:
        raise ConfigError(
            f"{path}: {len(bad)} cells do not match the sheet's schema "
            "(workflow/schemas/sheet.schema.yaml):" + "".join(f"\n  {b}" for b in listed(bad))
        )


def near_label(value: str, classes: list[str]) -> str | None:
    """``'Lesion' -> 'lesion'`` for a label that differs from a class only in case or
    surrounding spaces, else the class :func:`difflib.get_close_matches` finds, as ``'x' -> 'y'``."""
    match = nearest_name(value, classes, cutoff=0.75)
    return None if match is None else f"{value!r} -> {match!r}"


def _near_file(full: Path) -> str:
    """A hint for the missing ``full``: a dangling symbolic link, or the one file beside it with
    its name but for letter case or Unicode form (a name typed as ``é`` against a macOS copy's
    ``e`` + accent, which print the same), else with its stem and another suffix (``S1.tif``
    for ``S1.tiff``); "" when there is none."""
    if full.is_symlink():
        return f"; it is a symbolic link to {os.readlink(full)}, which does not exist"
    try:
        names = os.listdir(full.parent)  # names only: a slide folder may hold thousands
    except OSError:
        return ""

    def key(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    def files(found: list[str]) -> list[str]:
        return [n for n in found if (full.parent / n).is_file()]

    same = files([n for n in names if key(n) == key(full.name)])
    if len(same) == 1:
        if unicodedata.normalize("NFC", same[0]) == unicodedata.normalize("NFC", full.name):
            return (
                f"; a file of this name in another Unicode form is there ({same[0]!a}; copies "
                "from macOS keep accents apart): rename the file by typing its name again"
            )
        return f"; did you mean {same[0]}?"
    stems = files([n for n in names if key(Path(n).stem) == key(full.stem) and n != full.name])
    return f"; did you mean {stems[0]}?" if len(stems) == 1 else ""


def _check_unique_slides(df: pd.DataFrame, path: Path) -> None:
    dup = df["slide_id"][df["slide_id"].duplicated()]
    if not dup.empty:
        lines = [str(sheet_line(df, i)) for i in df.index[df["slide_id"] == dup.iloc[0]]]
        raise ConfigError(f"{path}: duplicate slide_id {dup.iloc[0]!r} (lines {', '.join(lines)})")


# A wildcard value ending in one substring repeated 20 or more times is refused by Snakemake
# (PeriodicWildcardError: it takes it for a rule feeding on its own output), with a traceback
PERIODIC_SUFFIX = re.compile(r"(?P<unit>.+?)(?P=unit){19,}$")


def _check_periodic_ids(df: pd.DataFrame, path: Path) -> None:
    """ConfigError naming the first slide_id that Snakemake would refuse as periodic
    (:data:`PERIODIC_SUFFIX`, e.g. ``s_00000000000000000000``), with its line."""
    for i, slide_id in enumerate(df["slide_id"].astype(str)):
        if m := PERIODIC_SUFFIX.search(slide_id):
            raise ConfigError(
                f"{path}: line {sheet_line(df, i)} (slide_id {slide_id!r}): it ends in "
                f"{m.group('unit')!r} repeated {len(m.group(0)) // len(m.group('unit'))} times, "
                "which Snakemake refuses as a wildcard value (PeriodicWildcardError): shorten "
                "the repetition, e.g. rename the slide"
            )


def _check_labels(df: pd.DataFrame, path: Path, classes: list[str]) -> None:
    bad_label = ~df["label"].isin(classes) & df["label"].ne("")  # "" only in predict cohorts
    if bad_label.any():
        bad = [
            f"line {sheet_line(df, i)} (slide_id {df.at[i, 'slide_id']!r}): "
            f"label {df.at[i, 'label']!r}"
            for i, is_bad in enumerate(bad_label)
            if is_bad
        ]
        hints = sorted({h for v in df.loc[bad_label, "label"] if (h := near_label(v, classes))})
        if df.loc[bad_label, "label"].nunique() == 1 and len(hints) == 1:  # one misspelling
            hints = [hints[0].split(" -> ")[1]]  # "did you mean 'lesion'?"
        raise ConfigError(
            f"{path}: {bad[0] if len(bad) == 1 else f'{len(bad)} labels'} "
            f"{'is' if len(bad) == 1 else 'are'} not one of the classes {classes} of the "
            "configuration (its `classes:` list; without one, the demo's [normal, lesion])"
            + (f"; did you mean {', '.join(hints)}?" if hints else "")
            + ("".join(f"\n  {line}" for line in listed(bad)) if len(bad) > 1 else "")
        )


def _check_patient_labels(df: pd.DataFrame, path: Path, classes: list[str]) -> None:
    """One label per patient, among the valid labels (a misspelt one is its own problem; an
    empty patient_id is no patient: the schema check names it)."""
    known = df["label"].isin(classes) & df["patient_id"].ne("")
    labels_per_patient = df[known].groupby("patient_id")["label"].unique()
    conflicting = labels_per_patient[labels_per_patient.map(len) > 1]
    if not conflicting.empty:
        pid = conflicting.index[0]
        rows = [i for i, p in enumerate(df["patient_id"]) if p == pid]
        where = ", ".join(
            f"line {sheet_line(df, i)} {df['slide_id'].iloc[i]} {df['label'].iloc[i]}"
            for i in rows[:6]
        )
        more = f"; {len(conflicting) - 1} more such patient(s)" if len(conflicting) > 1 else ""
        raise ConfigError(
            f"{path}: patient {pid!r} has conflicting labels {sorted(conflicting.iloc[0])} "
            f"({where}){more}; all slides of a patient must share one label"
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
    folders: list[str] = []
    for i, slide_id, what, p in files:
        full = sheet_slide_path(p, base)
        if full.is_dir():
            folders.append(f"  line {sheet_line(df, i)} (slide_id {slide_id!r}): {what} {p}")
        elif not full.exists():
            where = "" if Path(p).is_absolute() else f" (looked for {full.resolve()})"
            where += _near_file(full) if len(missing) < MAX_LISTED else ""  # those shown
            missing.append(
                f"  line {sheet_line(df, i)} (slide_id {slide_id!r}): {what} {p} not found{where}"
            )
    parts = []  # both kinds in one message: fixed in one round
    if missing:
        parts.append(
            f"{path}: {len(missing)} file(s) not found (relative paths are read from the "
            "working directory: snakemake's --directory, else where it runs):\n"
            + "\n".join(listed(missing))
        )
    if folders:
        parts.append(
            f"{path}: {len(folders)} path(s) are folders, not files (name the slide file: for "
            "MIRAX the .mrxs beside its folder, for DICOM one .dcm file of the series):\n"
            + "\n".join(listed(folders))
        )
    if parts:
        raise ConfigError("\n".join(parts))
