"""The folds.csv table of :func:`gigamil.splits.make_folds`: leakage checks, reading, writing,
the slides of one fold and a per-fold summary.

folds.csv is long: one row per (fold, slide) with columns :data:`FOLD_COLUMNS`; ``role`` is one of
:data:`ROLES`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError, csv_read_errors

log = logging.getLogger(__name__)

FOLD_COLUMNS = ["fold", "role", "cohort", "slide_id", "patient_id", "label"]
ROLES = ("train", "val", "test")


def check_folds(folds: pd.DataFrame, sheet: pd.DataFrame | None = None) -> None:
    """Fail loudly on leakage or an incomplete split.

    Checks: the columns; roles in train/val/test; every slide once per fold; a patient has exactly
    one role in each fold; every slide is ``test`` in exactly one fold; with ``sheet``, the split
    covers exactly the sheet's slides.

    Raises:
        GigamilError: naming the patient, slide or fold at fault.
    """
    missing = [c for c in FOLD_COLUMNS if c not in folds.columns]
    if missing:
        raise GigamilError(f"folds.csv: missing column(s) {', '.join(missing)}")
    if folds.empty:
        raise GigamilError("folds.csv: no rows")
    bad_role = ~folds["role"].isin(ROLES)
    if bad_role.any():
        raise GigamilError(f"folds.csv: unknown role {folds.loc[bad_role, 'role'].iloc[0]!r}")
    key = folds["cohort"].astype(str) + "/" + folds["slide_id"].astype(str)
    dup = folds.assign(key=key).duplicated(["fold", "key"])
    if dup.any():
        raise GigamilError(f"folds.csv: slide {key[dup].iloc[0]} appears twice in one fold")
    roles = folds.groupby(["fold", "patient_id"])["role"].nunique()
    leak = roles[roles > 1]
    if not leak.empty:
        fold, pid = leak.index[0]
        sel = (folds["fold"] == fold) & (folds["patient_id"] == pid)
        found = " and ".join(sorted(folds.loc[sel, "role"].unique()))
        raise GigamilError(f"folds.csv: leakage: patient {pid!r} is {found} in fold {fold}")
    slides_per_fold = folds.assign(key=key).groupby("fold")["key"].apply(frozenset)
    if slides_per_fold.nunique() != 1:
        raise GigamilError("folds.csv: the folds do not all cover the same slides")
    n_test = folds.assign(key=key).loc[folds["role"] == "test"].groupby("key").size()
    all_keys = slides_per_fold.iloc[0]
    never = sorted(all_keys - set(n_test.index))
    if never:
        raise GigamilError(f"folds.csv: slide {never[0]} is never a test slide")
    twice = n_test[n_test > 1]
    if not twice.empty:
        raise GigamilError(
            f"folds.csv: leakage: slide {twice.index[0]} is a test slide in several folds"
        )
    if sheet is not None:
        expected = set(sheet["cohort"].astype(str) + "/" + sheet["slide_id"].astype(str))
        if expected != set(all_keys):
            diff = sorted(expected.symmetric_difference(all_keys))
            raise GigamilError(f"folds.csv: does not match the sheets (e.g. slide {diff[0]})")


def write_folds(folds: pd.DataFrame, path: str | Path) -> None:
    """Check and write folds.csv atomically (temporary file + rename)."""
    check_folds(folds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise GigamilError(f"{path}: is a folder; give the path of the folds.csv file to write")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".folds.", suffix=".csv")
    os.close(fd)
    try:
        folds[FOLD_COLUMNS].to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # after a failure; renamed away after success


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read folds.csv (string ids, int fold) and check it."""
    path = Path(path)
    if not path.is_file():
        raise GigamilError(
            f"{path}: folds file not found (run `gigamil splits` or rule make_splits)"
        )
    try:
        folds = pd.read_csv(path, dtype=str, keep_default_na=False)
    except csv_read_errors() as exc:  # empty, binary, UTF-16: one line, not a traceback
        raise GigamilError(
            f"{path}: cannot be read as a folds CSV ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())}); write it again with `gigamil splits` (rule "
            "make_splits)"
        ) from exc
    if "fold" not in folds.columns:
        raise GigamilError(f"{path}: missing column fold")
    fold = pd.to_numeric(folds["fold"], errors="coerce")
    bad = fold.isna() | ~np.isfinite(fold) | (fold != fold.round()) | (fold < 0)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise GigamilError(
            f"{path}: row {row + 2}: fold {folds['fold'].iloc[row]!r} is not a fold number "
            "(0, 1, ...); the file was edited or damaged: write it again with `gigamil splits` "
            "(rule make_splits)"
        )
    folds["fold"] = fold.astype(int)
    check_folds(folds)
    return folds


def fold_slides(
    folds: pd.DataFrame, fold: int, role: str, cohort: str | None = None
) -> pd.DataFrame:
    """Rows of one fold and role (cohort, slide_id, patient_id, label), of ``cohort`` only if
    given."""
    sel = folds[(folds["fold"] == fold) & (folds["role"] == role)]
    if cohort is not None:
        sel = sel[sel["cohort"] == cohort]
    return sel[["cohort", "slide_id", "patient_id", "label"]].reset_index(drop=True)


def slide_keys(table: pd.DataFrame) -> list[str]:
    """``cohort/slide_id`` of every row: a slide's key across cohorts."""
    return [f"{c}/{s}" for c, s in zip(table["cohort"], table["slide_id"], strict=True)]


def split_report(folds: pd.DataFrame) -> pd.DataFrame:
    """Patients and slides per fold, role and label (for logs and the CLI), and per stratum
    when ``folds`` comes from :func:`gigamil.splits.make_folds` with ``stratify_by`` (its
    ``attrs["strata"]``), so the balance of e.g. the sites over the folds shows."""
    strata = folds.attrs.get("strata", {})
    keys = pd.Series(slide_keys(folds), index=folds.index)
    folds = folds.assign(  # an empty cell shown as gigamil subgroups shows it
        **{c: keys.map(m).replace("", "(empty)") for c, m in strata.items() if c not in folds}
    )
    counts = (
        folds.groupby(["fold", "role", "label", *(c for c in strata if c != "label")], dropna=False)
        .agg(slides=("slide_id", "size"), patients=("patient_id", "nunique"))
        .reset_index()
    )
    return counts


def fold_slides_with_stores(
    path: str | Path, fold: int, roles: Sequence[str], stores: str | Path
) -> list[pd.DataFrame]:
    """For each of ``roles`` (train, val or test), the slides of fold ``fold`` of the folds.csv
    at ``path`` (cohort, slide_id, patient_id, label; the file read once) with the column
    ``store`` = ``stores/{cohort}/{slide_id}.zarr``: the layout the workflow writes patch stores
    in (``results/patches``) and feature stores in (``results/features/{encoder_id}``). Used by
    ``gigamil train`` / ``predict --folds``.

    Raises:
        GigamilError: folds.csv missing or not valid, no fold ``fold`` in it, or a slide
            without its store (naming the first three).
    """
    folds = read_folds(path)
    known = sorted(set(folds["fold"]))
    if fold not in known:
        raise GigamilError(f"{path}: no fold {fold}; it has folds {known[0]} to {known[-1]}")
    out = []
    for role in roles:
        slides = fold_slides(folds, fold, role)
        pairs = zip(slides["cohort"], slides["slide_id"], strict=True)
        slides["store"] = [str(Path(stores) / c / f"{s}.zarr") for c, s in pairs]
        out.append(slides)
    every = [s for slides in out for s in slides["store"]]
    missing = [s for s in every if not Path(s).exists()]
    if missing:
        raise GigamilError(
            f"{path}: fold {fold}: {len(missing)} of its {len(every)} {' and '.join(roles)} "
            f"slides have no store under {stores} ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}); --stores names the folder that holds "
            "<cohort>/<slide_id>.zarr (gigamil patches --out writes them)"
        )
    return out
