"""Cross-validation summary (rule aggregate_cv): out-of-fold metrics, tables, plots, localisation.

Outputs in ``out_dir`` (``results/eval/{experiment}``):

- ``summary.json``: headline numbers (see :func:`aggregate_cv` for the keys);
- ``metrics.csv``: one row per fold, ``mean`` and ``sd`` across folds, the pooled out-of-fold
  (``oof``) row and its bootstrap 95% CI (``oof_ci_low``, ``oof_ci_high``);
- ``per_slide_predictions.csv``: every train-cohort slide's out-of-fold prediction (and its
  localisation AUC where a lesion mask exists);
- ``roc.png``, ``confusion.png``; ``metrics.html`` (the table, for the HTML report).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.evaluate import metrics as M
from gigamil.evaluate.localization import cohort_localization

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(path, index=False)
    return out


def read_predictions(paths: Sequence[str | Path], classes: Sequence[str]) -> pd.DataFrame:
    """Concatenate prediction CSVs (string ids, int ``fold``) and check their columns."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise GigamilError(f"{path}: prediction file not found")
        df = pd.read_csv(
            path,
            dtype={c: str for c in PRED_ID_COLUMNS + ["pred"]},
            keep_default_na=False,
            na_values={f"prob_{c}": ["", "nan", "NaN"] for c in classes},
        )
        need = PRED_ID_COLUMNS + ["fold"] + [f"prob_{c}" for c in classes]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise GigamilError(f"{path}: missing column(s) {', '.join(missing)}")
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


def split_unpredicted(preds: pd.DataFrame, classes: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """Drop rows with non-finite probabilities (slides without patches); return (rest, count)."""
    probs = preds[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
    ok = np.isfinite(probs).all(axis=1)
    if (~ok).any():
        log.warning(
            "%d slide(s) have no prediction (no patches), left out of the metrics: %s",
            int((~ok).sum()),
            ", ".join(preds.loc[~ok, "slide_id"].head(10)),
        )
    return preds.loc[ok].reset_index(drop=True), int((~ok).sum())


def _clean(value: Any) -> Any:
    """JSON-safe: nan/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def write_json(data: Mapping[str, Any], path: str | Path) -> None:
    """Write ``data`` as strict JSON (NaN written as null)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_clean(dict(data)), indent=2, allow_nan=False) + "\n")


def _fmt(v: Any, digits: int = 3) -> str:
    """A number for a table cell ("" when undefined)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{float(v):.{digits}f}"


def _with_ci(summary: Mapping[str, Any], key: str) -> str:
    value, ci = _fmt(summary.get(key)), summary.get(f"{key}_ci") or []
    if value and len(ci) == 2 and all(_fmt(c) for c in ci):
        level = round(100 * float(summary.get("ci_level", 0.95)))
        return f"{value} ({level}% CI {_fmt(ci[0])}–{_fmt(ci[1])})"
    return value


def _mean_sd(mean: Any, sd: Any) -> str:
    m, s = _fmt(mean), _fmt(sd)
    return f"{m} ± {s}" if m and s else m


def summary_rows(summary: Mapping[str, Any], auc_key: str) -> list[tuple[str, str]]:
    """The headline numbers of a CV or ensemble ``summary`` as (name, text) rows: slide AUC with
    its CI, fold AUC mean ± sd, patient AUC, balanced accuracy, macro F1 and accuracy with CIs,
    the localisation AUC (with lesion masks) and the counts."""
    who = "ensemble" if auc_key == "auc" else "out-of-fold"
    folds = summary.get("fold_auc") or []
    rows = [
        (f"slide AUC ({who})", _with_ci(summary, auc_key)),
        (
            f"fold AUC, mean ± sd over {len(folds)}",
            _mean_sd(summary.get("fold_auc_mean"), summary.get("fold_auc_sd")),
        ),
        ("patient AUC (mean probability per patient)", _with_ci(summary, "patient_auc")),
        ("balanced accuracy", _with_ci(summary, "balanced_accuracy")),
        ("macro F1", _with_ci(summary, "macro_f1")),
        ("accuracy", _with_ci(summary, "accuracy")),
    ]
    if "localization_auc" in summary:
        loc = _mean_sd(summary.get("localization_auc"), summary.get("localization_auc_sd"))
        n = summary.get("localization_n_slides", 0)
        rows.append(("localisation AUC of the attention (lesion masks)", f"{loc} ({n} slides)"))
    rows.append(("slides / patients", f"{summary.get('n_slides')} / {summary.get('n_patients')}"))
    if summary.get("n_unpredicted"):
        rows.append(("slides without patches (not scored)", str(summary["n_unpredicted"])))
    return rows


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin-bottom:14px}"
    "td,th{padding:3px 9px;text-align:right;border-bottom:1px solid #ddd}"
    "table.summary td:first-child{text-align:left}"
)


def html_page(title: str, body: str) -> str:
    """A small standalone HTML page (the Snakemake report shows such files inline)."""
    import html

    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_HTML_STYLE}</style></head><body><h3>{html.escape(title)}</h3>{body}"
        "</body></html>\n"
    )


def write_metrics_html(
    table: pd.DataFrame,
    path: str | Path,
    title: str,
    summary: Mapping[str, Any] | None = None,
    auc_key: str = "oof_auc",
) -> None:
    """The headline numbers of ``summary`` (:func:`summary_rows`) and the metrics table as a
    small standalone HTML page, which the Snakemake report shows inline."""
    import html

    def cell(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return f"{int(v)}" if col.startswith("n_") else f"{float(v):.3f}"

    shown = pd.DataFrame(
        {c: [cell(c, v) for v in table[c]] for c in table.columns}, index=table.index
    )
    body = ""
    if summary is not None:
        body += (
            "<table class='summary'>"
            + "".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                for k, v in summary_rows(summary, auc_key)
            )
            + "</table>"
        )
    body += shown.to_html(border=0, classes="metrics")
    Path(path).write_text(html_page(title, body))


def pooled_metrics(
    preds: pd.DataFrame, classes: Sequence[str], n_boot: int, seed: int
) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """Metrics of all rows together and their patient-level bootstrap CIs; ``pooled`` also holds
    ``patient_auc``, the AUC of the mean probability per patient
    (:func:`gigamil.evaluate.metrics.patient_level`), and ``patient_auc_ci``, its bootstrap CI
    (resampling patients)."""
    y, p = M.labels_and_probs(preds, classes)
    pooled = M.classification_metrics(y, p, classes)
    ci = M.bootstrap_ci(
        y, p, classes, groups=preds["patient_id"].to_numpy(), n_boot=n_boot, seed=seed
    )
    yp, pp = M.labels_and_probs(M.patient_level(preds, classes), classes)
    pooled["patient_auc"] = M.roc_auc(yp, pp)
    pooled["patient_auc_ci"] = M.bootstrap_ci(yp, pp, classes, n_boot=n_boot, seed=seed)["auc"]
    return pooled, ci


def metrics_table(
    preds: pd.DataFrame,
    classes: Sequence[str],
    pooled: Mapping[str, Any],
    ci: Mapping[str, tuple[float, float]],
    pooled_name: str,
) -> pd.DataFrame:
    """Per-fold rows, mean, sd, the pooled row and its CI rows."""
    table = M.fold_table(preds, classes)
    row = {k: pooled[k] for k in table.columns if k in pooled}
    row["n_slides"] = pooled["n"]
    row["n_patients"] = int(preds["patient_id"].nunique())
    table.loc[pooled_name] = pd.Series(row)
    for i, suffix in enumerate(("ci_low", "ci_high")):
        table.loc[f"{pooled_name}_{suffix}"] = pd.Series({k: v[i] for k, v in ci.items()})
    return table


# below this many patients the summary records ``ci_note``: a percentile bootstrap over few
# patients has few distinct resamples and intervals that are too narrow (Efron & Tibshirani
# 1993, ch. 13)
MIN_PATIENTS_FOR_CI = 10


def summary_block(
    preds: pd.DataFrame,
    classes: Sequence[str],
    pooled: Mapping[str, Any],
    ci: Mapping[str, tuple[float, float]],
    table: pd.DataFrame,
    auc_key: str,
) -> dict[str, Any]:
    """The summary.json numbers shared by the CV summary and the ensemble summaries; with fewer
    than :data:`MIN_PATIENTS_FOR_CI` patients also ``ci_note`` (and a warning in the log)."""
    folds = table.loc[table.index.str.startswith("fold")]
    out: dict[str, Any] = {
        "classes": list(classes),
        "n_slides": int(len(preds)),
        "n_patients": int(preds["patient_id"].nunique()),
        auc_key: pooled["auc"],
        f"{auc_key}_ci": list(ci["auc"]),
        "fold_auc": folds["auc"].tolist(),
        "fold_auc_mean": float(folds["auc"].mean()),
        "fold_auc_sd": float(folds["auc"].std(ddof=1)) if len(folds) > 1 else float("nan"),
        "patient_auc": pooled["patient_auc"],
        "patient_auc_ci": list(pooled["patient_auc_ci"]),
    }
    for name in ("balanced_accuracy", "macro_f1", "accuracy"):
        out[name] = pooled[name]
        out[f"{name}_ci"] = list(ci[name])
        out[f"fold_{name}_mean"] = float(folds[name].mean())
        out[f"fold_{name}_sd"] = float(folds[name].std(ddof=1)) if len(folds) > 1 else float("nan")
    out["per_class_recall"] = {c: pooled[f"recall_{c}"] for c in classes}
    out["confusion_matrix"] = pooled["confusion"]
    out["ci_level"] = 0.95
    if out["n_patients"] < MIN_PATIENTS_FOR_CI:
        out["ci_note"] = (
            f"the intervals resample only {out['n_patients']} patient(s): with so few they say "
            "little (an interval such as [1.0, 1.0] does not mean certainty)"
        )
        log.warning("%s", out["ci_note"])
    return out


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
        raise GigamilError(
            f"slide {r['cohort']}/{r['slide_id']} (test slide of fold {r['fold']}) "
            "has no prediction"
        )
    seen = preds.merge(folds[key + ["role"]], on=key, how="left")
    leaked = seen[seen["role"].isin(["train", "val"])]
    if not leaked.empty:
        r = leaked.iloc[0]
        raise GigamilError(
            f"slide {r['cohort']}/{r['slide_id']} is predicted by fold {r['fold']}, whose model "
            f"used it for {r['role']}; it cannot count as out-of-fold"
        )
    return merged.drop(columns="_merge").reset_index(drop=True)


def add_localization_columns(table: pd.DataFrame, loc: Mapping[str, Mapping[str, float]]) -> None:
    """Add ``localization_auc`` and ``n_lesion_patches`` (by ``slide_id``) to ``table``."""
    table["localization_auc"] = table["slide_id"].map(
        {s: v["localization_auc"] for s, v in loc.items()}
    )
    table["n_lesion_patches"] = table["slide_id"].map(
        {s: v["n_lesion_patches"] for s, v in loc.items()}
    )


def localization_block(loc: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Summary fields of per-slide localisation results (``{slide_id: slide_localization()}``):
    ``localization_auc`` (mean over the slides where it is defined, i.e. with lesion and normal
    patches), ``localization_auc_sd``, ``localization_n_slides``, ``localization_auc_per_slide``."""
    values = {s: v["localization_auc"] for s, v in loc.items()}
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    log.info(
        "localisation AUC: mean %.3f over %d slides",
        float(np.mean(finite)) if finite else float("nan"),
        len(finite),
    )
    return {
        "localization_auc": float(np.mean(finite)) if finite else float("nan"),
        "localization_auc_sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "localization_n_slides": len(finite),
        "localization_auc_per_slide": {
            s: v for s, v in sorted(values.items()) if v is not None and math.isfinite(v)
        },
    }


def aggregate_cv(
    pred_csvs: Sequence[str | Path],
    folds_csv: str | Path,
    classes: Sequence[str],
    out_dir: str | Path,
    experiment: str = "",
    localization: Mapping[str, tuple[str | Path, str | Path, str | Path]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Summarise the cross-validation of the train cohorts.

    Args:
        pred_csvs: per-fold prediction CSVs of the train cohorts (``fold`` column included).
        folds_csv: the folds.csv the models were trained with.
        classes: class names in output order.
        out_dir: where summary.json, metrics.csv, per_slide_predictions.csv and the plots go.
        localization: ``{slide_id: (store, attention.npy, lesion_mask.png)}`` for slides with a
            ground-truth lesion mask (attention from the slide's out-of-fold model).
        n_boot: bootstrap resamples (patients) for the 95% CIs.

    Returns:
        The summary: ``oof_auc`` (+ ``_ci``), ``fold_auc`` list, ``fold_auc_mean``,
        ``fold_auc_sd``, ``balanced_accuracy``, ``macro_f1``, ``accuracy`` (each with ``_ci`` and
        fold mean/sd), ``patient_auc``, ``per_class_recall``, ``confusion_matrix``, ``n_slides``,
        ``n_patients``, ``n_folds``, ``n_unpredicted`` and, with masks, ``localization_auc``
        (mean over slides where it is defined) and ``localization_auc_per_slide``.
    """
    from gigamil.folds import read_folds
    from gigamil.viz.plots import plot_confusion, plot_roc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folds = read_folds(folds_csv)
    preds = oof_predictions(read_predictions(pred_csvs, classes), folds)
    valid, n_unpredicted = split_unpredicted(preds, classes)
    if valid.empty:
        raise GigamilError("no slide has a prediction; nothing to evaluate")
    pooled, ci = pooled_metrics(valid, classes, n_boot, seed)
    table = metrics_table(valid, classes, pooled, ci, "oof")
    summary: dict[str, Any] = {"experiment": experiment}
    summary.update(summary_block(valid, classes, pooled, ci, table, "oof_auc"))
    summary["n_folds"] = int(folds["fold"].nunique())
    summary["n_unpredicted"] = n_unpredicted
    summary["cohorts"] = sorted(folds["cohort"].unique().tolist())

    per_slide = preds.copy()
    pcols = [f"prob_{c}" for c in classes]
    probs = per_slide[pcols].to_numpy(dtype=float)
    ok = np.isfinite(probs).all(axis=1)
    pred_idx = np.where(ok, np.nan_to_num(probs, nan=-1.0).argmax(axis=1), -1)
    per_slide["pred"] = [classes[i] if i >= 0 else "" for i in pred_idx]
    per_slide["correct"] = np.where(ok, per_slide["pred"] == per_slide["label"], False)
    if localization:
        loc = cohort_localization(localization)
        add_localization_columns(per_slide, loc)
        summary.update(localization_block(loc))
    cols = ["cohort", "slide_id", "patient_id", "label", "fold", *pcols, "pred", "correct"]
    cols += [c for c in ("localization_auc", "n_lesion_patches") if c in per_slide.columns]
    per_slide[cols].sort_values(["cohort", "slide_id"]).to_csv(
        out_dir / "per_slide_predictions.csv", index=False
    )
    table.to_csv(out_dir / "metrics.csv", float_format="%.6g")
    title = f"{experiment}: out-of-fold" if experiment else "out-of-fold"
    write_metrics_html(table, out_dir / "metrics.html", f"{title} metrics", summary, "oof_auc")
    plot_roc(valid, classes, out_dir / "roc.png", f"{title} ROC", by="fold")
    plot_confusion(valid, classes, out_dir / "confusion.png", f"{title} confusion")
    write_json(summary, out_dir / "summary.json")
    log.info(
        "out-of-fold AUC %.3f (95%% CI %.3f-%.3f), folds %.3f ± %.3f, %d slides",
        summary["oof_auc"],
        *summary["oof_auc_ci"],
        summary["fold_auc_mean"],
        summary["fold_auc_sd"] if summary["fold_auc_sd"] == summary["fold_auc_sd"] else 0.0,
        summary["n_slides"],
    )
    return summary
