"""The fold models' prediction CSVs (``results/predictions/{experiment}/fold{k}/{cohort}.csv``):
writing them, reading and checking them (a damaged or hand-edited row is an error, not data),
leaving out slides without patches, the out-of-fold selection with its leakage checks, and the
checks an ensemble makes of its files (:func:`check_one_file_per_model`,
:func:`check_every_model_predicted_every_slide`, :func:`check_slides_match_the_sheet`).

A file holds the id columns :data:`PRED_ID_COLUMNS`, ``fold``, ``prob_<class>``... and ``pred``;
a slide without patches has empty probabilities and an empty ``pred``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError, csv_read_errors
from gigamil.evaluate.patch_score import attention_of
from gigamil.fileutil import atomic_write_csv, csv_cut_short

log = logging.getLogger(__name__)

PRED_ID_COLUMNS = ["slide_id", "patient_id", "cohort", "label"]


def write_fold_predictions(preds: pd.DataFrame, fold: int, path: str | Path) -> pd.DataFrame:
    """Write one fold model's predictions (``predict_slides``'s table) as the CSV rule
    predict_fold declares: the id columns, ``fold``, ``prob_<class>``..., ``pred``.

    Returns the table written.
    """
    missing = [c for c in PRED_ID_COLUMNS if c not in preds.columns]
    if missing:
        raise GigamilError(f"predictions lack column(s) {', '.join(missing)}")
    out = preds.drop(columns=["fold"], errors="ignore")
    out.insert(len(PRED_ID_COLUMNS), "fold", int(fold))
    atomic_write_csv(out, path)  # a kill mid-write leaves no file cut short
    return out


NO_FOLD = -1  # the fold of a prediction CSV without one (a single model's, gigamil predict)


def read_predictions(
    paths: Sequence[str | Path], classes: Sequence[str], *, need_fold: bool = True
) -> pd.DataFrame:
    """Concatenate prediction CSVs (string ids, int ``fold``) and check their columns.

    ``need_fold=False`` also reads a CSV without a ``fold`` column (``gigamil predict`` without
    ``--fold``: one model), its rows given fold -1 (:data:`NO_FOLD`)."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise GigamilError(f"{path}: prediction file not found")
        try:
            df = pd.read_csv(
                path,
                dtype={
                    c: str for c in [*PRED_ID_COLUMNS, "pred", "model_sha256"]
                },  # hex, not a number
                keep_default_na=False,
                na_values={f"prob_{c}": ["", "nan", "NaN"] for c in classes},
            )
        except csv_read_errors() as exc:
            raise GigamilError(f"{path}: not a prediction CSV ({type(exc).__name__})") from exc
        if csv_cut_short(path):  # its last row's missing cells would be read as empty
            raise GigamilError(f"{path}: cut short (its last row lacks cells); write it again")
        if not need_fold and "fold" not in df.columns:
            df["fold"] = NO_FOLD
        need = PRED_ID_COLUMNS + ["fold"] + [f"prob_{c}" for c in classes]
        missing = [c for c in need if c not in df.columns]
        if missing:
            hint = (
                " (gigamil predict writes it with --fold K, K the fold model's number; the "
                "pipeline's results/predictions/{experiment}/fold{k}/{cohort}.csv have it)"
                if missing == ["fold"]
                else ""
            )
            raise GigamilError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
        _check_prediction_rows(df, path, classes)
        frames.append(df)
    if not frames:
        raise GigamilError("no prediction files given")
    out = pd.concat(frames, ignore_index=True)
    out["fold"] = out["fold"].astype(int)
    return out


PROB_SUM_TOLERANCE = 1e-3  # the files hold full float precision; this allows rounded copies


def _check_prediction_rows(df: pd.DataFrame, path: Path, classes: Sequence[str]) -> None:
    """Refuse rows a prediction file cannot hold: a fold that is not an integer, probabilities
    that are not numbers in [0, 1] summing to 1, or only some of them missing, or a ``pred`` that
    disagrees with them (empty exactly when all are missing: a slide without patches). A file cut
    short or edited by hand would otherwise be read as other predictions or as 'no patches'.

    Raises:
        GigamilError: naming the file, the slide and what is wrong.
    """
    cols = [f"prob_{c}" for c in classes]
    fold = pd.to_numeric(df["fold"], errors="coerce")
    probs = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    unparsed = np.isnan(probs) & ~df[cols].isna().to_numpy()  # read_csv's NaN: "", nan, NaN
    missing = np.isnan(probs)
    finite = np.isfinite(probs).all(axis=1)
    bad_sum = finite & (np.abs(probs.sum(axis=1) - 1.0) > PROB_SUM_TOLERANCE)
    out_of_range = finite & ((probs < 0) | (probs > 1)).any(axis=1)
    has_pred = "pred" in df.columns
    pred = df["pred"].fillna("").astype(str).to_numpy() if has_pred else None
    for i in range(len(df)):
        why = None
        if not (np.isfinite(fold.iloc[i]) and float(fold.iloc[i]).is_integer()):
            why = f"fold {df['fold'].iloc[i]!r} is not an integer"
        elif unparsed[i].any():
            why = f"{', '.join(np.asarray(cols)[unparsed[i]])} not a number"
        elif missing[i].any() and not missing[i].all():
            why = f"only some probabilities given ({', '.join(np.asarray(cols)[missing[i]])} empty)"
        elif not finite[i] and not missing[i].all():
            why = "a probability is infinite"
        elif out_of_range[i]:
            why = "a probability outside [0, 1]"
        elif bad_sum[i]:
            why = f"probabilities sum to {probs[i].sum():.4g}, not 1"
        elif pred is not None and missing[i].all() and pred[i]:
            why = f"pred {pred[i]!r} without probabilities"
        elif pred is not None and finite[i] and pred[i] not in classes:
            why = f"pred {pred[i]!r} is not one of the classes"
        if why:
            raise GigamilError(
                f"{path}: row {i + 2} (slide {df['slide_id'].iloc[i]}): {why}; the file is "
                "damaged or was edited: delete it and rerun to predict again"
            )


def split_unpredicted(
    preds: pd.DataFrame, classes: Sequence[str], warn: bool = True
) -> tuple[pd.DataFrame, int]:
    """Drop rows with non-finite probabilities (slides without patches); return (rest, count);
    ``warn``: log the slides dropped, each named once."""
    probs = preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    ok = np.isfinite(probs).all(axis=1)
    if warn and (~ok).any():  # an ensemble's stacked files: one row per fold model, named once
        slides = list(dict.fromkeys(map(str, preds.loc[~ok, "slide_id"])))
        log.warning(
            "%d slide(s) have no prediction (no patches), left out of the metrics: %s",
            len(slides),
            ", ".join(slides[:10])
            + (f", ... ({len(slides) - 10} more)" if len(slides) > 10 else ""),
        )
    return preds.loc[ok].reset_index(drop=True), int((~ok).sum())


def oof_predictions(preds: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Out-of-fold predictions: each train-cohort slide predicted by the fold it is a test slide of.

    Raises:
        GigamilError: a test slide without a prediction, or predicted by a model that trained on it.
    """
    test = folds.loc[folds["role"] == "test", ["fold", "cohort", "slide_id"]]
    key = ["fold", "cohort", "slide_id"]
    dup = preds.duplicated(key)
    if dup.any():
        r = preds.loc[dup].iloc[0]
        raise GigamilError(
            f"slide {r['cohort']}/{r['slide_id']} is predicted twice by fold {r['fold']}"
        )
    merged = test.merge(preds, on=key, how="left", indicator=True)
    missing = merged[merged["_merge"] == "left_only"]
    if not missing.empty:
        r = missing.iloc[0]
        others = sorted(set(map(str, preds["cohort"])) - set(map(str, test["cohort"])))
        hint = (
            f"; the predictions are of cohort(s) {', '.join(others)}, not of the folds' "
            "test slides: evaluate a cohort the fold models did not train on with gigamil "
            "ensemble"
            if others and not set(map(str, preds["cohort"])) & set(map(str, test["cohort"]))
            else ""
        )
        absent = sorted(set(test["fold"]) - set(preds["fold"]))
        if not hint and absent:  # e.g. one fold's CSV given for a whole cross-validation
            hint = (
                f"; the predictions have no fold {', '.join(map(str, absent))}: give every fold "
                "model's predictions of its test slides (one CSV per fold, e.g. --predictions "
                "fold*/<cohort>.csv)"
            )
        raise GigamilError(
            f"slide {r['cohort']}/{r['slide_id']} (test slide of fold {r['fold']}) "
            f"has no prediction{hint}"
        )
    seen = preds.merge(folds[key + ["role"]], on=key, how="left")
    leaked = seen[seen["role"].isin(["train", "val"])]
    if not leaked.empty:
        r = leaked.iloc[0]
        raise GigamilError(
            f"slide {r['cohort']}/{r['slide_id']} is predicted by fold {r['fold']}, whose model "
            f"used it for {r['role']}; it cannot count as out-of-fold"
        )
    _check_split_columns(folds, merged)
    return merged.drop(columns="_merge").reset_index(drop=True)


def _check_split_columns(folds: pd.DataFrame, merged: pd.DataFrame) -> None:
    """The test slides' ``label`` and ``patient_id`` in the predictions (``merged``) are those
    of folds.csv: the metrics count the predictions' labels and the patient-level figures their
    patients, so an edited or mixed-up predictions file would score silently wrong.

    Raises:
        GigamilError: naming the first differing slide and how many differ.
    """
    key = ["fold", "cohort", "slide_id"]
    for col in ("label", "patient_id"):
        if col not in folds.columns or col not in merged.columns:
            continue
        truth = merged[key].merge(folds[key + [col]], on=key, how="left")[col]
        differ = truth.astype(str).to_numpy() != merged[col].astype(str).to_numpy()
        if differ.any():
            r, want = merged.loc[differ].iloc[0], truth[differ].iloc[0]
            raise GigamilError(
                f"slide {r['cohort']}/{r['slide_id']} has {col} {r[col]!r} in the predictions "
                f"of fold {r['fold']} but {want!r} in folds.csv ({int(differ.sum())} test "
                f"slide(s) differ): the predictions are of other sheets than the folds (or "
                "were edited); predict again from the same sheets"
            )


def unlabelled(table: pd.DataFrame) -> pd.Series:
    """The rows without a label (no ``label`` column, or an empty, blank or missing cell): the
    slides of a ``role: predict`` cohort, which metrics cannot score."""
    if "label" not in table.columns:
        return pd.Series(True, index=table.index)
    return table["label"].astype(object).fillna("").astype(str).str.strip().eq("")


def shown(ids: Sequence[str]) -> str:
    return ", ".join(ids[:5]) + (f", ... ({len(ids)} in all)" if len(ids) > 5 else "")


def check_slides_match_the_sheet(predicted: set[str], slides: Sequence[str], cohort: str) -> None:
    """The fold models together predicted exactly the sheet's slides: a slide missing from every
    file would be left out of the metrics without a word, a slide not in the sheet is another
    cohort's or a stale one."""
    expected = set(map(str, slides))
    missing, extra = sorted(expected - predicted), sorted(predicted - expected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} slide(s) of the sheet have no prediction ({shown(missing)})")
    if extra:
        parts.append(f"{len(extra)} predicted slide(s) are not in the sheet ({shown(extra)})")
    if parts:
        raise GigamilError(
            f"cohort {cohort!r}: {'; '.join(parts)}; the prediction files are stale or "
            "incomplete: delete them and rerun"
        )


def check_one_file_per_model(
    per_file: Sequence[pd.DataFrame], pred_csvs: Sequence[str | Path], cohort: str
) -> None:
    """A file given twice, two files of one fold model, or a slide in two rows of one file,
    would count that model twice in the mean (``gigamil evaluate`` refuses the same)."""
    given: set[Path] = set()
    fold_file: dict[str, str] = {}  # fold -> the file that predicted it
    for path, df in zip(pred_csvs, per_file, strict=True):
        if Path(path).resolve() in given:
            raise GigamilError(f"cohort {cohort!r}: {path} is given twice")
        given.add(Path(path).resolve())
        twice = sorted(set(map(str, df.loc[df["slide_id"].duplicated(), "slide_id"])))
        if twice:  # a hand-edited or appended file: that model would vote twice
            raise GigamilError(
                f"cohort {cohort!r}: {path} predicts slide(s) {shown(twice)} more than once; "
                "one row per slide: delete the file and rerun"
            )
        folds = {str(f) for f in df["fold"].dropna().astype(str)} - {""} if "fold" in df else set()
        for fold in sorted(folds):
            other = fold_file.setdefault(fold, str(path))
            if other != str(path):
                raise GigamilError(
                    f"cohort {cohort!r}: fold {fold} is predicted by both {other} and {path}; "
                    "give each fold model's prediction file once"
                )


def missing_folds(per_file: Sequence[pd.DataFrame]) -> tuple[list[int], list[int]]:
    """``(missing, given)``: the fold numbers below the highest given one that no file
    predicts (fold 3 of files of folds 0, 1, 2, 4, 5: one model fewer in the mean than the
    cross-validation trained), and the given ones. ``per_file``: each file's whole table (every
    cohort). Both empty when a fold is not a whole number (2.0 is one), or a file has no rows (its fold is
    unknown: e.g. a fold without test slides of a train cohort)."""
    given: set[int] = set()
    if any(len(df) == 0 for df in per_file):
        return [], []
    for df in per_file:
        for value in df["fold"].dropna() if "fold" in df else ():
            try:  # 2, "2" and 2.0 (a float column of a Python caller's table) are fold 2
                number = float(str(value).strip())
            except ValueError:
                return [], []
            if not number.is_integer():
                return [], []
            given.add(int(number))
    if not given:
        return [], []
    return sorted(set(range(max(given) + 1)) - given), sorted(given)


def check_every_model_predicted_every_slide(
    per_file: Sequence[pd.DataFrame], pred_csvs: Sequence[str | Path], cohort: str
) -> None:
    """On a cohort no fold model trained on (a slide in more than one file) every fold model
    predicts every slide: a file that lacks some of them is incomplete, and averaging over the
    models that remain would quietly make another ensemble for those slides. (On a train cohort
    each slide is in one file only, its out-of-fold model's.)"""
    sets = [set(map(str, df["slide_id"])) for df in per_file]
    every = set().union(*sets)
    if not any(sum(s in ids for ids in sets) > 1 for s in every):
        return
    for path, ids in zip(pred_csvs, sets, strict=True):
        lacking = sorted(every - ids)
        if lacking:
            raise GigamilError(
                f"cohort {cohort!r}: {path} lacks the prediction of {len(lacking)} slide(s) that "
                f"the other fold models predicted ({shown(lacking)}); every fold model predicts every slide "
                "of a cohort it did not train on, so the file is incomplete: delete it and rerun"
            )


def identical_models(
    per_file: Sequence[pd.DataFrame], pred_csvs: Sequence[str | Path]
) -> list[tuple[str, str]]:
    """Pairs of prediction files whose probabilities agree exactly on every slide both predict
    (at least two, with probabilities): one model given twice (e.g. ``gigamil predict --fold 1``
    with fold 0's model.pt), which the ensemble would count as two. Distinct fold models on the
    same slides never agree to the last digit."""

    def probabilities(df: pd.DataFrame) -> pd.DataFrame:
        cols = [c for c in df.columns if str(c).startswith("prob_")]
        return df.assign(slide_id=df["slide_id"].astype(str)).set_index("slide_id")[cols].dropna()

    tables = [probabilities(df) for df in per_file]
    pairs = []
    for i in range(len(tables)):
        for j in range(i + 1, len(tables)):
            both = tables[i].index.intersection(tables[j].index)
            if len(both) >= 2 and tables[i].loc[both].equals(tables[j].loc[both]):
                pairs.append((str(pred_csvs[i]), str(pred_csvs[j])))
    return pairs


def predictions_of(attention: str | Path) -> Path:
    """The predictions CSV written with an attention file of the workflow's layout
    (``fold{k}/attention/{cohort}/{slide_id}.npy`` -> ``fold{k}/{cohort}.csv``)."""
    cohort_dir = attention_of(attention).parent  # a patch-logit file: its attention's
    return cohort_dir.parent.parent / f"{cohort_dir.name}.csv"


def redo_hint(attention: str | Path) -> str:
    """How to have the prediction that writes ``attention`` run again: in the workflow, delete
    its predictions CSV (rule predict_fold then writes both again)."""
    csv = predictions_of(attention)
    if not csv.is_file():
        return "rerun the prediction that wrote it"
    return f"delete {csv} and run snakemake again (its prediction writes both anew)"


def check_attention_present(paths: Sequence[str | Path], slide_id: str) -> None:
    """GigamilError when an attention file of ``slide_id`` among ``paths`` is missing although
    the predictions CSV written with it lists the slide (every predicted slide gets one, an
    empty array without patches): a deleted or lost file would otherwise drop a fold model
    from an ensemble's mean attention, or the slide from the localisation AUC, unseen. A file
    whose fold did not predict the slide (a train cohort's other folds) may be missing."""
    for path in paths:
        csv = predictions_of(path)
        if Path(path).is_file() or not csv.is_file():
            continue
        stat = csv.stat()
        listed = _listed_slides(str(csv), stat.st_mtime_ns, stat.st_size)
        if listed is not None and str(slide_id) in listed:
            raise GigamilError(
                f"slide {slide_id}: attention file {path} is missing, but {csv} lists the "
                f"slide: {redo_hint(path)}"
            )


@functools.lru_cache(maxsize=64)
def _listed_slides(csv: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    """The slide ids of a predictions CSV, read once per version of the file (a cohort's
    localisation asks for every slide; ``mtime_ns`` and ``size`` key the version); None for a
    CSV that cannot be read (its own reader reports it)."""
    try:
        ids = pd.read_csv(csv, usecols=["slide_id"], dtype=str, keep_default_na=False)
        return frozenset(ids["slide_id"])  # "NA" is an id, as read_predictions reads it
    except (*csv_read_errors(), ValueError):
        return None
