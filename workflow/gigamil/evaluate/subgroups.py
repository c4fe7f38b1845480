"""Subgroup analysis (``gigamil subgroups``): the metrics of each value of sheet columns such as
``site`` or ``scanner``, from a table of per-slide predictions.

A model's pooled AUC can hide a hospital or scanner it fails on; reporting performance in key
subgroups is what reporting guidelines for clinical prediction models ask for (TRIPOD+AI, Collins
et al., BMJ 2024). The predictions are those gigamil writes per slide: the out-of-fold
``results/eval/{experiment}/per_slide_predictions.csv`` or an ensemble's
``results/eval/{experiment}/ensemble/{cohort}/predictions.csv``; the columns to group by come from
the cohort sheets, joined on ``slide_id`` (ids are unique across cohorts, as the workflow checks).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError, nearest_name
from gigamil.evaluate import metrics as M
from gigamil.evaluate.predictions import shown, unlabelled
from gigamil.evaluate.tables import FLOAT_FORMAT, MIN_PATIENTS_FOR_CI, embedded_png, html_page
from gigamil.fileutil import atomic_write_csv

# the value shown for an empty cell of a grouping column
EMPTY = "(empty)"
# the metrics with bootstrap CIs in the table, in column order
SHOWN = ("auc", "balanced_accuracy", "brier")


def join_columns(
    preds: pd.DataFrame,
    sheets: Sequence[pd.DataFrame],
    by: Sequence[str],
    missing_as_empty: bool = False,
) -> pd.DataFrame:
    """``preds`` with the ``by`` columns it lacks taken from the sheets, joined on
    ``slide_id`` (a column of the predictions, e.g. ``cohort``, needs no sheet).
    ``missing_as_empty``: a column no sheet has puts every slide in the group ``(empty)``
    instead of an error (the workflow, whose configuration check found the column in another
    cohort's sheet).

    Raises:
        GigamilError: a ``by`` column that names no group (:data:`NO_GROUP`, a
            probability), one in neither the predictions nor a sheet (naming the
            sheets' columns), a slide in two sheet rows, or predicted slides no sheet lists
            (naming up to five).
    """
    if reserved := _reserved(by):
        raise GigamilError(f"--by {' '.join(reserved)}: group by a column such as site or cohort")
    wanted = [c for c in dict.fromkeys(by) if c not in preds.columns]
    if wanted:
        slides = preds["slide_id"].astype(str)
        preds = preds.assign(**_sheet_columns(slides, sheets, wanted, missing_as_empty))
    cells = {c: preds[c].astype(object).fillna("").astype(str) for c in by}  # NaN: empty
    return preds.assign(**{c: v.replace("", EMPTY) for c, v in cells.items()})


# columns that name no group: ids, the label, a slide's own files, the predictions' columns
NO_GROUP = ("slide_id", "patient_id", "label", "pred", "path", "lesion_mask")


def _reserved(by: Sequence[str]) -> list[str]:
    """The ``by`` columns that name no group (:data:`NO_GROUP`, ``prob_<class>``)."""
    return [c for c in by if c in NO_GROUP or str(c).startswith("prob_")]


def _sheet_columns(
    slides: pd.Series,
    sheets: Sequence[pd.DataFrame],
    wanted: list[str],
    missing_as_empty: bool = False,
) -> dict[str, np.ndarray]:
    """The ``wanted`` columns of the sheets for ``slides`` (slide ids), by column."""
    table = pd.concat(list(sheets), ignore_index=True) if sheets else pd.DataFrame()
    if missing_as_empty and sheets:
        table = table.assign(**{c: "" for c in wanted if c not in table.columns})
    if missing := [c for c in wanted if c not in table.columns]:
        where = (
            f"the sheets' columns: {', '.join(map(str, table.columns))}" if sheets else "no --sheet"
        )
        raise GigamilError(
            f"--by {' '.join(missing)}: not a column of the predictions or the sheets ({where})"
        )
    ids = table["slide_id"].astype(str)
    if ids.duplicated().any():
        raise GigamilError(f"slide {ids[ids.duplicated()].iloc[0]} is in two sheet rows")
    lookup = table.assign(slide_id=ids).set_index("slide_id")[wanted]
    if unknown := sorted(set(slides) - set(lookup.index)):
        raise GigamilError(
            f"{len(unknown)} predicted slide(s) are in no sheet given: {shown(unknown)}"
        )
    return {c: lookup.loc[slides, c].to_numpy() for c in wanted}


def _group_row(
    part: pd.DataFrame, classes: Sequence[str], n_boot: int, seed: int
) -> dict[str, object]:
    """Counts, metrics and patient-level bootstrap CIs of one subgroup."""
    row: dict[str, object] = {
        "n_slides": len(part),
        "n_patients": int(part["patient_id"].nunique()),
        **{f"n_{c}": int((part["label"].astype(str) == c).sum()) for c in classes},
    }
    y, p = M.labels_and_probs(part, classes)
    found = M.classification_metrics(y, p, classes)
    ci = M.bootstrap_ci(
        y, p, classes, groups=part["patient_id"].to_numpy(), n_boot=n_boot, seed=seed
    )
    for m in SHOWN:
        row[m] = found[m]
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = ci[m]
    present = [c for c in classes if row[f"n_{c}"]]
    notes = []
    if len(present) < 2:
        notes.append(f"only {', '.join(present)}: no AUC, balanced accuracy = its recall")
    elif len(present) < len(classes):  # a macro AUC and balanced accuracy of fewer classes
        absent = [c for c in classes if c not in present]
        notes.append(f"no {', '.join(absent)}: AUC and balanced accuracy over {', '.join(present)}")
    if row["n_patients"] < MIN_PATIENTS_FOR_CI:
        notes.append(f"{row['n_patients']} patient(s): the interval is not reliable")
    row["note"] = "; ".join(notes)
    return row


def subgroup_metrics(
    preds: pd.DataFrame,
    classes: Sequence[str],
    by: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """One row for all slides, then one per value of each ``by`` column of ``preds``.

    Args:
        preds: per-slide predictions with ``slide_id``, ``patient_id``, ``label``,
            ``prob_<class>`` and the ``by`` columns (:func:`join_columns`). Slides without a
            prediction (NaN probabilities: no patches) are left out and counted in their
            groups' ``n_unpredicted``.
        classes: class names, in the order of the model's outputs.
        n_boot: bootstrap resamples of patients for the 95 % CIs (percentile method).

    Returns:
        columns ``column``, ``value``, ``n_slides``, ``n_patients``, ``n_<class>``, ``auc``,
        ``balanced_accuracy`` and ``brier`` each with ``_ci_low`` / ``_ci_high``, ``note`` (a
        subgroup of one class has no AUC: NaN, and its balanced accuracy is that class's recall;
        one of fewer than 10 patients has an unreliable interval), ``n_unpredicted`` (its slides
        without a prediction; a group of those only has no row). Values sorted as text.
    """
    missing = unlabelled(preds)
    if missing.any():
        raise GigamilError(
            f"{int(missing.sum())} of the {len(preds)} slides have no label (e.g. "
            f"{preds.loc[missing, 'slide_id'].iloc[0]}; a role: predict cohort): metrics "
            "need the true class of every slide"
        )
    probs = preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    unpredicted = ~np.isfinite(probs).all(axis=1)
    scored = preds[~unpredicted]
    if scored.empty:
        raise GigamilError("no slide has a prediction (every probability is empty)")
    rows = [{"column": "all", "value": "all", **_group_row(scored, classes, n_boot, seed)}]
    rows[0]["n_unpredicted"] = int(unpredicted.sum())
    for column in dict.fromkeys(by):
        values = preds[column].astype(str)
        for value, part in scored.groupby(values[~unpredicted], sort=True):
            row = _group_row(part, classes, n_boot, seed)
            n_un = int((unpredicted & (values == value)).sum())
            rows.append({"column": column, "value": value, **row, "n_unpredicted": n_un})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: each metric ``0.912 (0.85-0.97)`` (the interval only for
    groups of at least :data:`MIN_PATIENTS_FOR_CI` patients, as metrics.html: a 2-patient
    group's ``1.000 (1.00-1.00)`` looked certain), counts, the slides without a prediction
    (``n_unpredicted``, when any group has them) and the note."""

    def cell(row: pd.Series, m: str) -> str:
        value, lo, hi = row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"]
        if not np.isfinite(value):
            return "-"
        shown_ci = np.isfinite(lo) and np.isfinite(hi) and row["n_patients"] >= MIN_PATIENTS_FOR_CI
        return f"{value:.3f}" + (f" ({lo:.2f}-{hi:.2f})" if shown_ci else "")

    counts = [c for c in table.columns if c.startswith("n_") and c != "n_unpredicted"]
    if "n_unpredicted" in table and table["n_unpredicted"].gt(0).any():
        counts.append("n_unpredicted")
    shown = table[["column", "value", *counts]].copy()
    for m in SHOWN:
        shown[m] = [cell(r, m) for _, r in table.iterrows()]
    shown["note"] = table["note"]
    return shown


def write_subgroups(table: pd.DataFrame, out_dir: str | Path, title: str) -> list[Path]:
    """``out_dir/subgroups.csv`` (every number) and ``subgroups.html`` (the bootstrap note, a
    forest plot of the AUCs, :func:`gigamil.viz.forest.forest_plot`, embedded, and
    :func:`format_table`); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv, page = out / "subgroups.csv", out / "subgroups.html"
    atomic_write_csv(table, csv, float_format=FLOAT_FORMAT)
    body = format_table(table).to_html(index=False, border=0, classes="metrics")
    note = (
        "<p>95 % intervals: percentile bootstrap over patients. A subgroup of a few patients "
        "has a wide interval; one of a single class has no AUC.</p>"
    )
    from gigamil.viz.forest import forest_plot

    plot = embedded_png(forest_plot(table, "auc", MIN_PATIENTS_FOR_CI), "AUC per subgroup")
    page.write_text(html_page(title, note + plot + body))
    return [csv, page]


def check_subgroup_columns(by: Sequence[str], sheets: Sequence[pd.DataFrame]) -> None:
    """Config-time check of the ``subgroups`` key: every column names a group (not
    one of :data:`NO_GROUP` or a probability) and is
    ``cohort`` or a column of at least one of ``sheets`` (the scored cohorts' sheets; a sheet
    without it puts its slides in the group ``(empty)``).

    Raises:
        GigamilError: naming the column, and the sheets' columns for an unknown one.
    """
    if reserved := _reserved(by):
        raise GigamilError(f"subgroups: {reserved[0]!r} names no group; list e.g. site or cohort")
    known = sorted(
        {str(c) for sheet in sheets for c in sheet.columns if _filled(sheet[c])} - set(NO_GROUP)
    )
    for column in by:
        if column != "cohort" and column not in known:
            near = nearest_name(column, known)
            columns = ", ".join(known) or "none but cohort: add one, e.g. site"
            raise GigamilError(
                f"subgroups: {column!r} is a column of no scored cohort's sheet"
                + (f"; did you mean {near}?" if near else "")
                + f" (their columns that can name groups: {columns})"
            )


def _filled(column: pd.Series) -> bool:
    """A sheet column with a value in some row: not one the sheet loader added empty (``mpp``
    for a sheet without it) nor a column left blank."""
    return bool(column.notna().any() and column.astype(str).str.strip().ne("").any())


def report_subgroups(
    predictions: str | Path,
    sheets: Sequence[str | Path],
    by: Sequence[str],
    classes: Sequence[str],
    out_dir: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    missing_as_empty: bool = False,
) -> pd.DataFrame:
    """:func:`subgroup_metrics` of a per-slide predictions CSV, written by
    :func:`write_subgroups` (``out_dir/subgroups.csv`` and ``.html``); the table is returned.
    The ``by`` columns come from the predictions (``cohort``) or the cohort ``sheets``
    (CSV paths; read without requiring labels), as :func:`join_columns` (with
    ``missing_as_empty``). Used by ``gigamil
    subgroups`` and the workflow's rules ``subgroups_cv`` / ``subgroups_cohort``.

    Raises:
        GigamilError: as :func:`join_columns` and :func:`subgroup_metrics`.
    """
    from gigamil.evaluate.predictions import read_predictions
    from gigamil.sheet_csv import read_sheet_csv

    preds = read_predictions([predictions], classes, need_fold=False)
    tables = [read_sheet_csv(Path(p), labels_required=False) for p in dict.fromkeys(sheets)]
    joined = join_columns(preds, tables, by, missing_as_empty)
    table = subgroup_metrics(joined, classes, by, n_boot, seed)
    cohorts = ", ".join(sorted(set(preds["cohort"].astype(str))))
    write_subgroups(table, out_dir, f"subgroups of cohort(s) {cohorts} ({predictions})")
    return table
