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
(checks, reading, writing) is :mod:`gigamil.folds`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.folds import FOLD_COLUMNS, check_folds

log = logging.getLogger(__name__)


# Objective weights: class balance first, then patient totals and strata, then slide counts.
W_LABEL = 100.0
W_TOTAL = 10.0
W_STRATUM = 10.0
W_LABEL_STRATUM = 5.0
W_SLIDES = 1.0
# Branch-and-bound node limit: keeps the solve deterministic (unlike a time limit) and fast.
MAX_NODES = 200
CUTS = False


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
    labels = sheet.groupby("patient_id", sort=True)["label"].unique()
    bad = labels[labels.map(len) > 1]
    if not bad.empty:
        raise GigamilError(
            f"patient {bad.index[0]!r} has slides with different labels {sorted(bad.iloc[0])} "
            "(if two cohorts reuse a patient_id for different people, prefix the ids per cohort)"
        )
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


def _most_frequent(values: pd.Series) -> str:
    """The most frequent value (as text); of equally frequent ones the first in sorted order."""
    counts = values.astype(str).value_counts()
    return str(min(counts.index[counts == counts.max()]))


def _class_bounds(
    n_cls: int, fractions: Sequence[float], min_per_class: Sequence[int]
) -> list[tuple[int, int]]:
    """(lowest, highest) number of a class's ``n_cls`` patients in each group: the floor and
    ceiling of its ideal share, the low raised to ``min_per_class`` (as far as the class has
    patients). Minimums that cannot all be met (a class with fewer patients than groups) are
    relaxed from the first group on, so later groups (e.g. train after val) keep their minimum.
    """
    n_groups = len(fractions)
    lows = [
        max(math.floor(n_cls * fractions[g] + 1e-9), min(min_per_class[g], n_cls))
        for g in range(n_groups)
    ]
    g = 0
    while sum(lows) > n_cls and g < n_groups:
        lows[g] = max(0, lows[g] - (sum(lows) - n_cls))
        g += 1
    return [
        (lows[g], max(math.ceil(n_cls * fractions[g] - 1e-9), lows[g])) for g in range(n_groups)
    ]


def _solve_counts(
    types: pd.DataFrame,
    fractions: Sequence[float],
    strata: Sequence[str],
    min_per_class: Sequence[int],
    time_limit: float = 60.0,
) -> np.ndarray:
    """Integer program: how many patients of each type go to each group.

    Args:
        types: one row per type with columns ``label``, ``n_slides``, ``n`` (patients of this
            type) and the ``strata`` columns.
        fractions: (G,) target share of each group, summing to 1.
        strata: stratification columns to balance besides the label.
        min_per_class: (G,) minimum number of patients of every class in each group (applied only
            as far as the class has patients).

    Returns:
        (T, G) int array of patient counts per type and group.
    """
    import pulp

    n_types, n_groups = len(types), len(fractions)
    prob = pulp.LpProblem("gigamil_folds", pulp.LpMinimize)

    def var(name: str, up: float | None = None, cat: str = "Continuous"):
        if hasattr(prob, "add_variable"):  # pulp >= 3.3
            return prob.add_variable(name, lowBound=0, upBound=up, cat=cat)
        return pulp.LpVariable(name, lowBound=0, upBound=up, cat=cat)

    y = {
        (t, g): var(f"y_{t}_{g}", int(types["n"].iat[t]), "Integer")
        for t in range(n_types)
        for g in range(n_groups)
    }
    for t in range(n_types):
        prob += pulp.lpSum(y[t, g] for g in range(n_groups)) == int(types["n"].iat[t]), f"all_{t}"

    objective = []

    def balance(name: str, members: np.ndarray, weight: float, size: np.ndarray | None = None):
        """Add |count in group - ideal| for the types in ``members`` (weighted by ``size``)."""
        if not members.any():
            return
        idx = np.flatnonzero(members)
        sizes = np.ones(n_types) if size is None else size
        total = float(sum(types["n"].iat[t] * sizes[t] for t in idx))
        for g in range(n_groups):
            ideal = total * fractions[g]
            expr = pulp.lpSum(float(sizes[t]) * y[t, g] for t in idx)
            dev = var(f"d_{name}_{g}")
            prob.addConstraint(dev >= expr - ideal, f"dp_{name}_{g}")
            prob.addConstraint(dev >= ideal - expr, f"dm_{name}_{g}")
            objective.append(weight * dev)

    labels = types["label"].to_numpy()
    for ci, cls in enumerate(sorted(set(labels))):
        members = labels == cls
        n_cls = int(types["n"].to_numpy()[members].sum())
        idx = np.flatnonzero(members)
        bounds = _class_bounds(n_cls, fractions, min_per_class)
        for g, (low, high) in enumerate(bounds):
            expr = pulp.lpSum(y[t, g] for t in idx)
            prob += expr >= low, f"lo_c{ci}_{g}"
            prob += expr <= high, f"hi_c{ci}_{g}"
        balance(f"c{ci}", members, W_LABEL)
        balance(f"s{ci}", members, W_SLIDES, size=types["n_slides"].to_numpy(dtype=float))
    balance("all", np.ones(n_types, dtype=bool), W_TOTAL)
    n_slides = types["n_slides"].to_numpy(float)
    balance("slides", np.ones(n_types, dtype=bool), W_SLIDES, size=n_slides)
    for si, col in enumerate(strata):
        values = types[col].to_numpy()
        for vi, value in enumerate(sorted(set(values))):
            balance(f"k{si}_{vi}", values == value, W_STRATUM)
            for ci, cls in enumerate(sorted(set(labels))):
                balance(f"k{si}_{vi}_c{ci}", (values == value) & (labels == cls), W_LABEL_STRATUM)
    prob += pulp.lpSum(objective)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pulp 3.3 announces the 4.0 API
        solver = pulp.PULP_CBC_CMD(
            msg=False, timeLimit=time_limit, threads=1, maxNodes=MAX_NODES, cuts=CUTS
        )
        status = prob.solve(solver)
    log.debug("fold program: %s, objective %.3f", pulp.LpStatus[status], pulp.value(prob.objective))
    counts = np.array(
        [[round(y[t, g].value() or 0) for g in range(n_groups)] for t in range(n_types)], dtype=int
    )
    if (
        pulp.LpStatus[status] not in ("Optimal", "Not Solved")
        or (counts.sum(axis=1) != types["n"].to_numpy()).any()
    ):
        raise GigamilError(f"cv: the fold assignment program failed ({pulp.LpStatus[status]})")
    return counts


def assign_groups(
    patients: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    stratify_by: Sequence[str] = (),
    min_per_class: Sequence[int] | None = None,
) -> np.ndarray:
    """Assign each patient to a group (fold, or val/train) with balanced counts.

    Args:
        patients: output of :func:`patient_table` (one row per patient).
        fractions: (G,) target shares of the groups.
        seed: seed of the order in which patients of one type are dealt to the groups.
        stratify_by: columns of ``patients`` to balance besides the label.
        min_per_class: (G,) minimum patients of each class per group (default 0).

    Returns:
        (P,) int group index per patient, aligned with ``patients`` rows.
    """
    keys = ["label", *stratify_by, "n_slides"]
    grouped = patients.groupby(keys, sort=True)
    types = grouped.size().rename("n").reset_index()
    type_of = grouped.ngroup().to_numpy()  # (P,) type index of each patient
    mins = list(min_per_class) if min_per_class is not None else [0] * len(fractions)
    counts = _solve_counts(types, fractions, stratify_by, mins)
    rng = np.random.default_rng(seed)
    group = np.full(len(patients), -1, dtype=int)
    for t in range(len(types)):
        members = np.flatnonzero(type_of == t)
        members = members[rng.permutation(len(members))]
        group[members] = np.repeat(np.arange(len(fractions)), counts[t])
    return group


MIN_PATIENTS_PER_CLASS = 3  # one each for a fold's test, training and validation parts


def feasible_folds(n_patients: int, validation: bool = True) -> list[int]:
    """The cv.folds values for which a class of ``n_patients`` can give every fold a test and a
    training patient, and a validation patient when ``validation``: K <= n and
    n - ceil(n / K) >= 2 (>= 1 without validation)."""
    need = 2 if validation else 1
    return [k for k in range(2, n_patients + 1) if n_patients - math.ceil(n_patients / k) >= need]


def _fold_advice(
    n_min: int, short: str | Sequence[str], folds: int, validation: bool = True
) -> str:
    """Advice that can be followed, for the smallest class (``n_min`` patients); ``short``: the
    class(es) to add patients to."""
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
        return f": add patients of {cls} (at least {least} per class)"
    if folds > max(ok):
        return f": lower cv.folds to at most {max(ok)} or add patients of {cls}"
    if folds < min(ok):
        return (
            f": raise cv.folds to {min(ok)} (smaller test parts leave more patients for "
            f"training and validation) or add patients of {cls}"
        )
    return f": add patients of {cls} or try another cv.seed"


def _check_fold_classes(
    patients: pd.DataFrame, role: np.ndarray, per_class: pd.Series, validation: bool = True
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
                        f"cv: fold {k}'s {name} part has no patient of class {cls!r} (that class "
                        f"has {int(per_class[cls])} patient(s), {n_test} in fold {k}'s test part)"
                        + _fold_advice(int(per_class.min()), cls, role.shape[0], validation)
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
    reruns through the patch stores)."""
    columns = ["cohort", "slide_id", "patient_id", "label", *extra_columns]
    table = pd.concat([df.reindex(columns=columns) for df in sheets], ignore_index=True)
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

    Returns:
        folds.csv table (long format, columns :data:`FOLD_COLUMNS`), checked for leakage.

    Raises:
        GigamilError: fewer patients of a class than folds, bad arguments, or unknown columns.
    """
    if folds < 2:
        raise GigamilError(f"cv.folds must be at least 2 (got {folds})")
    if not 0.0 <= val_fraction < 1.0:
        raise GigamilError(f"cv.val_fraction must be in [0, 1) (got {val_fraction})")
    validation = val_fraction > 0
    sheet = sheet.copy()
    for col in ("cohort", "slide_id", "patient_id", "label"):
        if col not in sheet.columns:
            raise GigamilError(f"cv: the sheet has no {col!r} column")
        sheet[col] = sheet[col].astype(str)
    dup = sheet.duplicated(["cohort", "slide_id"])
    if dup.any():
        raise GigamilError(f"cv: slide {sheet.loc[dup, 'slide_id'].iloc[0]!r} appears twice")

    patients = patient_table(sheet, stratify_by)
    per_class = patients["label"].value_counts()
    least = MIN_PATIENTS_PER_CLASS if validation else MIN_PATIENTS_PER_CLASS - 1
    few = per_class[per_class < max(folds, least)]
    if not few.empty:  # every short class in one message, the smallest first
        few = few.sort_values(kind="stable")
        counts = ", ".join(f"class {c!r} has {int(n)} patient(s)" for c, n in few.items())
        parts = "test, training and validation parts" if validation else "test and training parts"
        raise GigamilError(
            f"cv: {counts} but cv.folds is {folds}; every fold needs one "
            f"patient of each class in its {parts}"
            + _fold_advice(int(per_class.min()), list(few.index), folds, validation)
        )
    fold_of = assign_groups(patients, [1.0 / folds] * folds, seed, stratify_by, [1] * folds)

    role = np.empty((folds, len(patients)), dtype=object)
    for k in range(folds):
        role[k, fold_of == k] = "test"
        part = np.flatnonzero(fold_of != k)
        if not validation:
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

    _check_fold_classes(patients, role, per_class, validation)
    pid_index = {p: i for i, p in enumerate(patients["patient_id"])}
    rows = sheet[["cohort", "slide_id", "patient_id", "label"]]
    pidx = rows["patient_id"].map(pid_index).to_numpy()
    frames = []
    for k in range(folds):
        part = rows.copy()
        part.insert(0, "role", role[k, pidx])
        part.insert(0, "fold", k)
        frames.append(part)
    out = pd.concat(frames, ignore_index=True)[FOLD_COLUMNS]
    order = {r: i for i, r in enumerate(("train", "val", "test"))}
    out = out.sort_values(
        ["fold", "role", "cohort", "slide_id"],
        key=lambda s: s.map(order) if s.name == "role" else s,
    ).reset_index(drop=True)
    check_folds(out, sheet)
    return out
