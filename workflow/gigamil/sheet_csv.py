"""A cohort sheet's CSV file: reading it as text (:func:`read_sheet_frame`), and its header,
field counts and each row's line in the file (:func:`read_sheet_csv`). The checks of the rows,
labels and files are :mod:`gigamil.sheets`.
"""

from __future__ import annotations

import csv
import difflib
import logging
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from gigamil.config import OPTIONAL_COLUMNS, SHEET_COLUMNS
from gigamil.errors import ConfigError, csv_read_errors

log = logging.getLogger(__name__)


def raise_problems(path: Path | None, problems: list[str], what: str = "problems") -> None:
    """One :class:`ConfigError` for a sheet's ``problems`` (none: nothing): the problem itself,
    or ``{path}: N {what}:`` and one ``- problem`` item each (a problem's further lines indented
    under it), so a sheet is fixed in one round; ``path`` None: no ``{path}: `` prefix."""
    prefix = f"{path}: " if path is not None else ""
    if len(problems) == 1:
        raise ConfigError(prefix + problems[0])
    if problems:
        raise ConfigError(
            f"{prefix}{len(problems)} {what}:"
            + "".join("\n- " + p.replace("\n", "\n  ") for p in problems)
        )


def read_sheet_frame(path: str | Path) -> pd.DataFrame:
    """A sheet CSV as strings, as written (no NA conversion). Rows with a trailing comma (a
    spreadsheet export) keep their columns, whichever rows have one: ``index_col=False`` keeps
    pandas from making the first column the index (shifting every value one column left) when
    the first data row has it, and ``usecols`` keeps it from refusing a later row that has it
    ("Expected 4 fields in line 3, saw 5"). Call :func:`_check_field_counts` first: the extra
    fields dropped here must be empty."""
    import warnings

    with warnings.catch_warnings():  # "loss of data": only empty trailing fields, checked
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        return pd.read_csv(
            path, dtype=str, keep_default_na=False, index_col=False, usecols=lambda _: True
        )


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


def _separator_hint(header: str) -> str:
    """Why a sheet with the ``header`` line (no comma, but semicolons or tabs) lacks its
    columns or does not parse (a European spreadsheet's export: ';' between cells, decimal
    commas that then split a row); else ""."""
    name = next((n for sep, n in (("\t", "tabs"), (";", "';'")) if sep in header), "")
    if not name or "," in header:
        return ""
    return (
        f"; its header is separated by {name}: save the sheet as comma-separated CSV, with "
        "numbers written with a decimal point (mpp 0.25, not 0,25)"
    )


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where a sheet that is not UTF-8 first breaks, what the byte likely is (cp1252, the
    encoding Excel's plain "CSV" uses on Windows) and how to save it instead."""
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            byte = line[bad.start : bad.start + 1]
            guess = byte.decode("cp1252", errors="replace")
            return (
                f"line {number} is not UTF-8 text (byte 0x{byte.hex()} at column "
                f"{bad.start + 1}, {guess!r} in the Windows encoding cp1252): save the sheet as "
                "UTF-8 (Excel: Save As, 'CSV UTF-8 (Comma delimited)')"
            )
    return f"not UTF-8 text ({exc.reason}): save the sheet as UTF-8"


SAVE_AS = "save it as 'CSV UTF-8 (Comma delimited)' (Excel: Save As)"


def _not_csv_text(path: Path) -> str | None:
    """What a sheet file is when it is no CSV text that :func:`_not_utf8` could diagnose: empty,
    a workbook (.xlsx is a zip archive, .xls an OLE2 file), or UTF-16 text (a byte-order mark,
    or NUL bytes, which UTF-8 text never holds); None otherwise or when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if not head:
        return "the file is empty (0 bytes): a sheet needs a header line (slide_id,patient_id,label,path) and a row per slide"
    if head.startswith(b"PK\x03\x04"):
        return f"a zip archive such as an Excel workbook (.xlsx), not CSV text: {SAVE_AS}"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        return f"an Excel 97-2003 workbook (.xls), not CSV text: {SAVE_AS}"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        return f"UTF-16 text (e.g. Excel's 'Unicode Text'), not UTF-8: {SAVE_AS}"
    return None


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            return handle.readline()
    except OSError:
        return ""


def read_sheet_csv(path: Path, labels_required: bool = True) -> pd.DataFrame:
    """The sheet as strings, names and values stripped; it needs SHEET_COLUMNS (``label`` only
    when ``labels_required``; else an empty one is added) and a row. Blank lines and rows whose
    every cell is empty are skipped; ``df.attrs["sheet_lines"]`` keeps each row's file line."""
    if problem := _not_csv_text(path):
        raise ConfigError(f"{path}: {problem}")
    _check_field_counts(path)
    try:
        df = read_sheet_frame(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {_not_utf8(path, exc)}") from exc
    except csv_read_errors() as exc:
        raise ConfigError(
            f"{path}: cannot be read as CSV: {' '.join(str(exc).split())}"
            f"{_separator_hint(_first_line(path))}"
        ) from exc
    df.columns = [c.strip() for c in df.columns]
    renames = _misspelt_columns(list(df.columns), path)  # {column as written: as gigamil reads it}
    separator = _separator_hint(str(df.columns[0])) if len(df.columns) == 1 else ""
    needed = [c for c in SHEET_COLUMNS if labels_required or c != "label"]
    written = ", ".join(map(str, df.columns))  # before an empty label column is added
    if not labels_required and "label" not in df.columns and "label" not in renames.values():
        df.insert(min(2, len(df.columns)), "label", "")
    missing = [c for c in needed if c not in df.columns and c not in renames.values()]
    problems = _duplicate_columns(path) + rename_problems(renames)
    if missing:
        hints = [] if separator else [f"{got!r} -> {c}" for c in missing if (got := _near(c, df))]
        problems.append(
            f"missing column(s) {', '.join(missing)} "
            f"(a sheet needs {', '.join(needed)}; optional: "
            f"{', '.join(OPTIONAL_COLUMNS if labels_required else ['label', *OPTIONAL_COLUMNS])})"
            + ("" if separator else f"; its columns: {written}")
            + (f"; did you mean {', '.join(hints)}?" if hints else "")
            + separator
        )
    raise_problems(path, problems, "problems with the header")  # the header in one round
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


def _duplicate_columns(path: Path) -> list[str]:
    """Header problems: a name given twice (pandas would rename the second ``label.1`` and
    gigamil would read only the first). A column spelt like one gigamil reads beside that one
    (``MPP`` beside ``mpp``) is kept as data, with a warning: its values are not read."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = [c.strip() for c in next(csv.reader(handle), [])]
    except (csv.Error, UnicodeDecodeError, OSError):
        return []
    known = (*SHEET_COLUMNS, *OPTIONAL_COLUMNS)
    for col in dict.fromkeys(header):
        folded = re.sub(r"[\s-]+", "_", col.lower())
        if folded in known and folded != col and folded in header:
            log.warning(
                "%s: column %r is not read by gigamil (column %r is); it is kept as data",
                path,
                col,
                folded,
            )
    counts = Counter(c for c in header if c)
    return [f"column {c!r} is given {n} times: keep one" for c, n in counts.items() if n > 1]


# names a sheet's columns often have elsewhere, offered for a missing column
SYNONYMS = {
    "label": ("diagnosis", "class", "target", "outcome"),
    "path": ("file", "filename", "slide_path", "filepath", "image"),
}


def _near(column: str, df: pd.DataFrame) -> str | None:
    """A column of ``df`` gigamil does not read that is likely the missing ``column``:
    ``patient`` or ``Patient`` for patient_id, ``slide`` for slide_id, a :data:`SYNONYMS` name
    (``diagnosis`` for label), a close spelling."""
    known = (*SHEET_COLUMNS, *OPTIONAL_COLUMNS)
    others = {re.sub(r"[\s-]+", "_", str(c).lower()): str(c) for c in df.columns}
    others = {k: v for k, v in others.items() if v not in known}
    names = (column.removesuffix("_id"), *SYNONYMS.get(column, ()))
    near = [k for k in others if k in names] or difflib.get_close_matches(column, list(others), 1)
    return others[near[0]] if near else None


def column_renames(columns: list[str], known: tuple[str, ...]) -> dict[str, str]:
    """``{as written: as read}`` for the columns that spell a ``known`` name with other case,
    spaces or hyphens (``Label``, ``Slide ID``) while no column has that name: their values would
    be silently ignored."""
    renames = {}
    for col in columns:
        folded = re.sub(r"[\s-]+", "_", col.lower())
        if col not in known and folded in known and folded not in columns:
            renames[col] = folded
    return renames


def rename_problems(renames: dict[str, str]) -> list[str]:
    """One problem per column name gigamil reads that the header spells otherwise: rename the
    column, or, when several columns spell it, keep one of them under that name."""
    by_name: dict[str, list[str]] = {}
    for col, name in renames.items():
        by_name.setdefault(name, []).append(col)
    return [
        f"column {cols[0]!r} means {name!r}; column names are read as spelt: rename it {name}"
        if len(cols) == 1
        else f"columns {', '.join(map(repr, cols))} all mean {name!r}: keep one of them, named "
        f"{name}"
        for name, cols in by_name.items()
    ]


def _misspelt_columns(columns: list[str], path: Path) -> dict[str, str]:
    """Columns gigamil reads, spelt otherwise: ``{as written: as read}`` where only case, spaces
    or hyphens differ (``MPP``, ``Slide ID``: their values would be silently ignored; the caller
    stops the run); a warning for a near miss of an optional column (``lesion_masks``,
    ``mpp_um``): extra columns are kept as data and may be the user's own."""
    known = (*SHEET_COLUMNS, *OPTIONAL_COLUMNS)
    renames = column_renames(columns, known)
    for col in columns:
        if col in known or col in renames:
            continue
        folded = re.sub(r"[\s-]+", "_", col.lower())
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
