"""Patient-level cross-validation folds balanced by an integer program (pulp + CBC).

Patients (not slides) are assigned to folds, so all slides of a patient share one role in every
fold. Patients are grouped into *types* (label x stratification values x number of slides); an
integer program chooses how many patients of each type go to each fold so that every fold's
per-class patient count, total patient count, per-stratum counts and per-class slide count are as
close as possible to their ideal share. The patients of a type are then dealt to the folds in an
order shuffled by the seed. Working on types instead of single patients keeps the program tiny for
any cohort size (thousands of patients) and makes the result deterministic for a seed.

A validation subset is carved out of each fold's training part by the same program with two groups
(val, train) of target fractions ``val_fraction`` and ``1 - val_fraction``. The folds.csv table
(checks, reading, writing) is :mod:`gigamil.folds`; the program itself is
:mod:`gigamil.split_program`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.folds import FOLD_COLUMNS, check_folds, slide_keys
from gigamil.split_program import assign_groups


def patient_table(sheet: pd.DataFrame, stratify_by: Sequence[str] = ()) -> pd.DataFrame:
    """One row per patient: patient_id, label, n_slides and one column per stratification key.

    Args:
        sheet: slides with at least ``patient_id``, ``label`` and the ``stratify_by`` columns.
        stratify_by: extra columns to balance (a patient's value is its most frequent one; of
            equally frequent ones the first in sorted order, so the row order does not matter).

    Raises:
        GigamilError: missing column, or a patient with slides of different labels.
    """
    for col in ["patient_id", "label", *stratify_by]:
        if col not in sheet.columns:
            raise GigamilError(
                f"cv: column {col!r} is not in the train cohorts' sheets "
                f"(columns: {', '.join(map(str, sheet.columns))})"
            )
    sheet = _strata_filled(sheet, stratify_by)
    labels = labels_per_patient(sheet)
    grouped = sheet.groupby("patient_id", sort=True)
    out = pd.DataFrame(
        {
            "patient_id": labels.index.astype(str),
            "label": [v[0] for v in labels.to_numpy()],
            "n_slides": grouped.size().to_numpy(),
        }
    )
    for col in stratify_by:
        out[col] = grouped[col].agg(_most_frequent).to_numpy()
    return out


def _strata_filled(sheet: pd.DataFrame, stratify_by: Sequence[str]) -> pd.DataFrame:
    """``sheet`` with missing values of the ``stratify_by`` columns as empty text (an empty cell
    is a value of its own); GigamilError when a cohort has none of a column's values: its sheet
    lacks the column, which the pooled train sheets then hold for the other cohorts only."""
    for col in stratify_by:
        missing = sheet[col].isna()
        if not missing.any():
            continue
        cohorts = sheet.groupby(sheet.get("cohort", pd.Series("", index=sheet.index)))
        lacking = sorted(str(c) for c, part in cohorts if part[col].isna().all())
        if lacking:
            raise GigamilError(
                f"cv: column {col!r} is not in the sheet of cohort(s) {', '.join(lacking)}; "
                "add it to every train cohort's sheet (an empty cell is a value of its own)"
            )
        sheet = sheet.assign(**{col: sheet[col].where(~missing, "")})
    return sheet


def labels_per_patient(sheet: pd.DataFrame) -> pd.Series:
    """The labels of each patient's slides (by ``patient_id``, sorted); GigamilError naming the
    first patient whose slides carry more than one."""
    labels = sheet.groupby("patient_id", sort=True)["label"].unique()
    bad = labels[labels.map(len) > 1]
    if not bad.empty:
        raise GigamilError(
            f"patient {bad.index[0]!r} has slides with different labels {sorted(bad.iloc[0])} "
            "(if two cohorts reuse a patient_id for different people, prefix the ids per cohort)"
        )
    return labels


def _most_frequent(values: pd.Series) -> str:
    """The most frequent value (as text); of equally frequent ones the first in sorted order."""
    counts = values.astype(str).value_counts()
    return str(min(counts.index[counts == counts.max()]))


MIN_PATIENTS_PER_CLASS = 3  # one each for a fold's test, training and validation parts


@dataclass(frozen=True)
class SplitTerms:
    """How the user sets each split option, so that an error's advice can be followed as
    written: ``cv.folds`` in a config (:data:`CONFIG_TERMS`), ``--folds`` on ``gigamil splits``
    (each option on its own: a flag may override one key of a config)."""

    folds: str = "cv.folds"
    val_fraction: str = "cv.val_fraction"
    seed: str = "cv.seed"

    def setting(self, option: str, value: object) -> str:
        """``option`` (a field name, e.g. ``"val_fraction"``) set to ``value``, as written:
        ``--val-fraction 0`` for a flag, ``cv.val_fraction: 0`` for a config key."""
        name = getattr(self, option)
        return f"{name} {value}" if name.startswith("-") else f"{name}: {value}"


CONFIG_TERMS = SplitTerms()


def feasible_folds(n_patients: int, validation: bool = True) -> list[int]:
    """The cv.folds values for which a class of ``n_patients`` can give every fold a test and a
    training patient, and a validation patient when ``validation``: K <= n and
    n - ceil(n / K) >= 2 (>= 1 without validation)."""
    need = 2 if validation else 1
    return [k for k in range(2, n_patients + 1) if n_patients - math.ceil(n_patients / k) >= need]


def _fold_advice(
    n_min: int,
    short: str | Sequence[str],
    folds: int,
    validation: bool = True,
    terms: SplitTerms = CONFIG_TERMS,
) -> str:
    """Advice that can be followed, for the smallest class (``n_min`` patients); ``short``: the
    class(es) to add patients to; options named as ``terms``."""
    names = [short] if isinstance(short, str) else list(short)
    quoted = [repr(str(c)) for c in names]
    cls = (
        f"class {quoted[0]}"
        if len(quoted) == 1
        else f"classes {', '.join(quoted[:-1])} and {quoted[-1]}"
    )
    ok = feasible_folds(n_min, validation)
    if not ok:
        least = MIN_PATIENTS_PER_CLASS if validation else MIN_PATIENTS_PER_CLASS - 1
        need = next(
            n for n in range(least, 2 * folds + least) if folds in feasible_folds(n, validation)
        )
        if need > least:  # adding `least` alone would meet the next error (cv.folds 2: 4)
            other = "lowered" if folds > least else "raised"
            return (
                f": add patients of {cls} (at least {need} per class for {terms.folds} "
                f"{folds}; with {terms.folds} {other} to {least}, at least {least})"
            ) + _without_validation(n_min, folds, validation, terms)
        return f": add patients of {cls} (at least {least} per class)" + _without_validation(
            n_min, folds, validation, terms
        )
    if folds > max(ok):
        return f": lower {terms.folds} to at most {max(ok)} or add patients of {cls}"
    if folds < min(ok):
        return (
            f": raise {terms.folds} to {min(ok)} (smaller test parts leave more patients for "
            f"training and validation) or add patients of {cls}"
        )
    return f": add patients of {cls} or try another {terms.seed}"


def _without_validation(n_min: int, folds: int, validation: bool, terms: SplitTerms) -> str:
    """``, or set cv.val_fraction: 0 ...`` where that alone makes ``folds`` folds of a smallest
    class of ``n_min`` patients possible, else ""."""
    if not validation or folds not in feasible_folds(n_min, validation=False):
        return ""
    return (
        f", or set {terms.setting('val_fraction', 0)} (no validation patients; "
        f"{max(folds, MIN_PATIENTS_PER_CLASS - 1)} per class then suffice)"
    )


def _check_fold_classes(
    patients: pd.DataFrame,
    role: np.ndarray,
    per_class: pd.Series,
    validation: bool = True,
    terms: SplitTerms = CONFIG_TERMS,
) -> None:
    """Every fold's training and (with ``validation``) validation parts hold a patient of every
    class (else a fold trains on one class, or validates on one, and its AUC means nothing)."""
    labels = patients["label"].to_numpy()
    for k in range(role.shape[0]):
        for part in ("train", "val") if validation else ("train",):
            for cls in per_class.index:
                if not np.any((role[k] == part) & (labels == cls)):
                    n_test = int(np.sum((role[k] == "test") & (labels == cls)))
                    name = "training" if part == "train" else "validation"
                    raise GigamilError(
                        f"cv: fold {k}'s {name} part has no patient of class "
                        f"{cls!r} (that class has {int(per_class[cls])} patient(s), {n_test} in "
                        f"fold {k}'s test part)"
                        + _fold_advice(int(per_class.min()), cls, role.shape[0], validation, terms)
                    )


def split_digest(sheets: Sequence[pd.DataFrame], cv: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of what the folds depend on: the ``cohort``, ``slide_id``, ``patient_id`` and
    ``label`` of every row of the train cohorts' sheets, plus the ``cv.stratify_by`` columns,
    sorted by cohort and slide (the folds do not depend on the order of the rows, so neither
    does the digest). Rule ``make_splits`` takes it as a parameter instead of the sheet files as
    inputs, so sorting a sheet or editing a column the folds do not read (``path``,
    ``lesion_mask``, ``mpp``, a note) retrains nothing, while a changed label, patient or slide
    reruns the split and everything after it (Snakemake's ``params`` rerun trigger)."""
    return sheet_digest(sheets, cv.get("stratify_by") or ())


def sheet_digest(sheets: Sequence[pd.DataFrame], extra_columns: Sequence[str] = ()) -> str:
    """SHA-256 (hex) of the ``cohort``, ``slide_id``, ``patient_id`` and ``label`` (and
    ``extra_columns``) of every row of ``sheets``, sorted by cohort and slide: what a prediction
    or split reads from a sheet, independent of the row order and of the other columns. Rule
    ``predict_fold`` takes it for an external or predict cohort instead of the sheet file as an
    input, so touching or sorting that sheet re-predicts nothing (a changed ``path`` or ``mpp``
    reruns through the patch stores). No sheets: the digest of the header alone."""
    columns = list(dict.fromkeys(["cohort", "slide_id", "patient_id", "label", *extra_columns]))
    table = pd.concat(
        [pd.DataFrame(columns=columns), *(df.reindex(columns=columns) for df in sheets)],
        ignore_index=True,
    )  # no sheets (no train cohort: trained_models): the digest of an empty table
    table = table.astype(str).sort_values(["cohort", "slide_id"], kind="stable")
    text = table.to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()


def make_cv_folds(sheets: Sequence[pd.DataFrame], cv: Mapping[str, Any]) -> pd.DataFrame:
    """:func:`make_folds` of the train cohorts' sheets (concatenated) with a validated config's
    ``cv`` section (``folds``, ``val_fraction``, ``seed``, ``stratify_by``). The workflow calls it
    when it parses the config, so a cohort that cannot be split fails before any job runs, and
    in rule ``make_splits``, which writes the result.

    Raises:
        GigamilError: as :func:`make_folds`.
    """
    return make_folds(
        pd.concat(list(sheets), ignore_index=True),
        folds=int(cv["folds"]),
        val_fraction=float(cv["val_fraction"]),
        seed=int(cv["seed"]),
        stratify_by=list(cv.get("stratify_by") or []),
    )


def make_folds(
    sheet: pd.DataFrame,
    folds: int,
    val_fraction: float = 0.2,
    seed: int = 0,
    stratify_by: Sequence[str] = (),
    terms: SplitTerms = CONFIG_TERMS,
) -> pd.DataFrame:
    """Patient-level K-fold split with a validation subset per fold.

    Args:
        sheet: slides of the train cohorts, columns cohort, slide_id, patient_id, label (+ the
            ``stratify_by`` columns).
        folds: K >= 2.
        val_fraction: share of each training part's patients used for validation (0 <= f < 1;
            0: no validation part, every fold model trains on all its non-test patients).
        seed: makes the assignment reproducible; another seed gives another balanced split.
        stratify_by: sheet columns (e.g. ``site`` or ``cohort``) to balance across folds.
        terms: how the errors name the options (config keys by default).

    Returns:
        folds.csv table (long format, columns :data:`FOLD_COLUMNS`), checked for leakage.

    Raises:
        GigamilError: fewer patients of a class than folds, bad arguments, or unknown columns.
    """
    validation = _check_fold_arguments(folds, val_fraction, terms)
    sheet = _slide_table(sheet)
    patients = patient_table(sheet, stratify_by)
    per_class = patients["label"].value_counts()
    _check_class_sizes(per_class, folds, validation, terms)
    fold_of = assign_groups(patients, [1.0 / folds] * folds, seed, stratify_by, [1] * folds)
    role = _fold_roles(patients, fold_of, folds, val_fraction, seed, stratify_by)
    _check_fold_classes(patients, role, per_class, validation, terms)
    out = _folds_table(sheet, patients, role)
    check_folds(out, sheet)
    out.attrs["strata"] = {  # for split_report: each slide's value of each stratify_by column
        c: dict(zip(slide_keys(sheet), sheet[c].astype(str), strict=True))
        for c in dict.fromkeys(stratify_by)
    }
    return out


def _check_fold_arguments(folds: int, val_fraction: float, terms: SplitTerms) -> bool:
    """GigamilError unless folds >= 2 and 0 <= val_fraction < 1; whether folds have a
    validation part (``val_fraction > 0``)."""
    if folds < 2:
        raise GigamilError(f"{terms.folds} must be at least 2 (got {folds})")
    if not 0.0 <= val_fraction < 1.0:
        raise GigamilError(f"{terms.val_fraction} must be in [0, 1) (got {val_fraction})")
    return val_fraction > 0


def _slide_table(sheet: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``sheet`` with its cohort, slide_id, patient_id and label columns as text;
    GigamilError if one is missing or a (cohort, slide) appears twice."""
    sheet = sheet.copy()
    for col in ("cohort", "slide_id", "patient_id", "label"):
        if col not in sheet.columns:
            raise GigamilError(f"cv: the sheet has no {col!r} column")
        sheet[col] = sheet[col].astype(str)
    dup = sheet.duplicated(["cohort", "slide_id"])
    if dup.any():
        raise GigamilError(f"cv: slide {sheet.loc[dup, 'slide_id'].iloc[0]!r} appears twice")
    return sheet


def _check_class_sizes(
    per_class: pd.Series, folds: int, validation: bool, terms: SplitTerms
) -> None:
    """GigamilError naming every class (smallest first) with too few patients (``per_class``:
    patients per label) for one in each fold's test, training and validation parts."""
    least = MIN_PATIENTS_PER_CLASS if validation else MIN_PATIENTS_PER_CLASS - 1
    few = per_class[per_class < max(folds, least)]
    if not few.empty:  # every short class in one message, the smallest first
        few = few.sort_values(kind="stable")
        counts = ", ".join(f"class {c!r} has {int(n)} patient(s)" for c, n in few.items())
        parts = "test, training and validation parts" if validation else "test and training parts"
        raise GigamilError(
            f"cv: {counts} but {terms.folds} is {folds}; every fold needs one "
            f"patient of each class in its {parts}"
            + _fold_advice(int(per_class.min()), list(few.index), folds, validation, terms)
        )


def _fold_roles(
    patients: pd.DataFrame,
    fold_of: np.ndarray,
    folds: int,
    val_fraction: float,
    seed: int,
    stratify_by: Sequence[str],
) -> np.ndarray:
    """(K, P) object array of each patient's role (train, val, test) in each fold: test in its
    fold ``fold_of``, the rest split into val and train by :func:`assign_groups` (seed
    ``seed + 7919 * (k + 1)``), or all train when ``val_fraction`` is 0."""
    role = np.empty((folds, len(patients)), dtype=object)
    for k in range(folds):
        role[k, fold_of == k] = "test"
        part = np.flatnonzero(fold_of != k)
        if not val_fraction > 0:
            role[k, part] = "train"
            continue
        sub = patients.iloc[part].reset_index(drop=True)
        val_of = assign_groups(
            sub,
            [val_fraction, 1.0 - val_fraction],
            seed + 7919 * (k + 1),
            stratify_by,
            [1, 1],
        )
        role[k, part] = np.where(val_of == 0, "val", "train")
    return role


def _folds_table(sheet: pd.DataFrame, patients: pd.DataFrame, role: np.ndarray) -> pd.DataFrame:
    """The long folds.csv table: one row per (fold, slide) with the slide's patient's role,
    sorted by fold, role (train, val, test), cohort and slide."""
    pid_index = {p: i for i, p in enumerate(patients["patient_id"])}
    rows = sheet[["cohort", "slide_id", "patient_id", "label"]]
    pidx = rows["patient_id"].map(pid_index).to_numpy()
    frames = []
    for k in range(role.shape[0]):
        part = rows.copy()
        part.insert(0, "role", role[k, pidx])
        part.insert(0, "fold", k)
        frames.append(part)
    out = pd.concat(frames, ignore_index=True)[FOLD_COLUMNS]
    order = {r: i for i, r in enumerate(("train", "val", "test"))}
    return out.sort_values(
        ["fold", "role", "cohort", "slide_id"],
        key=lambda s: s.map(order) if s.name == "role" else s,
    ).reset_index(drop=True)
