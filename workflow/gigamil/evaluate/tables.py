"""Writing evaluation summaries: strict JSON (summary.json), the headline rows of a CV or
ensemble summary and the metrics table as a small standalone HTML page (metrics.html, which the
Snakemake report shows inline; :func:`html_page` also serves the QC table)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.fileutil import atomic_write_bytes


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


def json_text(data: Mapping[str, Any], indent: int = 2) -> str:
    """``data`` as strict JSON text (NaN and infinities as null, numpy scalars as numbers)."""
    return json.dumps(_clean(dict(data)), indent=indent, allow_nan=False)


def write_json(data: Mapping[str, Any], path: str | Path) -> None:
    """Write ``data`` as strict JSON (NaN written as null)."""
    atomic_write_bytes(path, (json_text(data) + "\n").encode("utf-8"))  # never cut short


# the evaluation's CSVs: 9 significant digits, in which a float32 probability reads back exactly,
# so a table read again (gigamil subgroups, a user's own analysis) ranks the slides as the run
# did; 6 digits tied probabilities near 1 (0.99999994 and 0.9999999 both "1") and could move an
# AUC read from the file (a review, 2026-12-06). 17 digits of a float64 mean only look precise.
FLOAT_FORMAT = "%.9g"


def _fmt(v: Any, digits: int = 3) -> str:
    """A number for a table cell ("" when undefined)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return f"{float(v):.{digits}f}"


# below this many patients the summaries record ``ci_note`` and the pages and the end-of-run
# lines show no intervals: a percentile bootstrap over few patients has few distinct resamples
# and intervals that are too narrow (Efron & Tibshirani 1993, ch. 13); "no 95% CI: every
# resample gave 1.000" over two patients reads as certainty
MIN_PATIENTS_FOR_CI = 10


def few_patients(summary: Mapping[str, Any]) -> bool:
    """Fewer patients than :data:`MIN_PATIENTS_FOR_CI` in ``summary`` (``n_patients``)."""
    n = summary.get("n_patients")
    return isinstance(n, int) and n < MIN_PATIENTS_FOR_CI


def with_ci(summary: Mapping[str, Any], key: str) -> str:
    """``summary[key]`` with its CI (``{key}_ci``): "0.972 (95% CI 0.906–1.000)"; without a CI,
    or with fewer than :data:`MIN_PATIENTS_FOR_CI` patients (:func:`few_patients`), the value
    alone; "" when undefined."""
    ci = None if few_patients(summary) else summary.get(f"{key}_ci")
    return _value_ci(summary.get(key), ci, summary.get("ci_level", 0.95))


def _value_ci(value: Any, ci: Any, level: Any) -> str:
    """``value`` and its ``ci`` ([low, high] at ``level``) as :func:`with_ci` writes them."""
    text, ci = _fmt(value), ci or []
    if text and len(ci) == 2 and all(_fmt(c) for c in ci):
        if float(ci[0]) == float(ci[1]):  # every resample gave the same value: no interval
            return f"{text} (no {round(100 * float(level))}% CI: every resample gave {_fmt(ci[0])})"
        return f"{text} ({round(100 * float(level))}% CI {_fmt(ci[0])}–{_fmt(ci[1])})"
    return text


def mean_sd(mean: Any, sd: Any) -> str:
    """ "0.870 ± 0.103" (the mean alone without an sd; "" when undefined)."""
    m, s = _fmt(mean), _fmt(sd)
    return f"{m} ± {s}" if m and s else m


def localisation_figure(summary: Mapping[str, Any], key: str = "localization_auc") -> str:
    """The localisation AUC of a summary (``key``: or ``patch_score_localization_auc``) as the
    pages and the end-of-run line write it: mean ± sd over its lesion-masked slides, one
    slide's AUC alone (no spread); "" when undefined."""
    one = summary.get("localization_n_slides") == 1
    return mean_sd(summary.get(key), None if one else summary.get(f"{key}_sd"))


def out_of_fold(summary: Mapping[str, Any]) -> bool:
    """Whether an ensemble ``summary`` scores each slide by one of several fold models (a train
    cohort: each slide by the model that held it out), from its ``models_per_slide`` and
    ``n_models``; one model scoring a whole cohort (``gigamil ensemble`` with one file) is
    not out of fold."""
    n_models = summary.get("n_models")
    per_slide = summary.get("models_per_slide") or [0, 0]
    return per_slide[1] <= 1 and (n_models is None or int(n_models) > 1)


def scored_by(summary: Mapping[str, Any]) -> str:
    """What scored an ensemble ``summary``'s slides, as its pages name it: ``out-of-fold``
    (:func:`out_of_fold`), ``1 model`` (one model scoring the whole cohort) or ``ensemble``."""
    if out_of_fold(summary):
        return "out-of-fold"
    return "1 model" if summary.get("n_models") == 1 else "ensemble"


def summary_rows(summary: Mapping[str, Any], auc_key: str) -> list[tuple[str, str]]:
    """The headline numbers of a CV or ensemble ``summary`` as (name, text) rows: slide AUC with
    its CI, fold AUC mean ± sd, patient AUC, balanced accuracy, macro F1, accuracy and the Brier
    score with CIs, each class's recall with its counts and CI (with two classes named
    sensitivity and specificity), the patient balanced accuracy and recalls, the localisation AUC (with lesion masks) and the counts."""
    # an ensemble summary of a train cohort scores each slide by its out-of-fold model only
    who = scored_by(summary) if auc_key == "auc" else "out-of-fold"
    if len(summary.get("classes") or []) > 2:
        who += "; macro one-vs-rest" + _macro_classes(summary)
    rows = _overlap_rows(summary) + _caveat_rows(summary)  # caveats on all below: first
    where = " in this cohort" if auc_key == "auc" else ""  # a patient's other cohorts: not here
    rows += [
        (f"slide AUC ({who})", with_ci(summary, auc_key)),
        (
            _fold_auc_name(summary, who),
            mean_sd(summary.get("fold_auc_mean"), summary.get("fold_auc_sd")),
        ),
        (
            f"patient AUC (mean probability of each patient's slides{where})",
            with_ci(summary, "patient_auc"),
        ),
        ("balanced accuracy", with_ci(summary, "balanced_accuracy")),
        ("macro F1", with_ci(summary, "macro_f1")),
        ("accuracy", with_ci(summary, "accuracy")),
        *_brier_row(summary),
        *_recall_rows(summary),
        *_patient_balanced_accuracy_row(summary),
        *_recall_rows(summary, "patient_"),
    ]
    if "localization_auc" in summary:
        loc, n = localisation_figure(summary), summary.get("localization_n_slides", 0)
        if summary.get("localization_note") and not n:
            rows.append(
                (
                    "localisation AUC of the attention (lesion masks)",
                    "n/a: " + str(summary["localization_note"]),
                )
            )
        elif n == 1:
            rows.append(("localisation AUC of the attention (lesion mask)", f"{loc} (1 slide)"))
        else:
            what = "localisation AUC of the attention (lesion masks), mean ± sd"
            rows.append((what, f"{loc} ({n} slides)"))
        if score := localisation_figure(summary, "patch_score_localization_auc"):
            rows.append(("… of the patch score (attention and patch logits)", score))
    rows.append(("slides / patients", f"{summary.get('n_slides')} / {summary.get('n_patients')}"))
    if summary.get("n_unpredicted"):
        text = str(summary["n_unpredicted"])
        if summary.get("n_patients_unscored"):  # not in the patient count above
            text += f" ({summary['n_patients_unscored']} patient(s) with no scored slide)"
        rows.append(("slides without patches (not scored)", text))
    if summary.get("ci_note"):
        rows.append(("note on the 95 % intervals", str(summary["ci_note"])))
    return rows


def _macro_classes(summary: Mapping[str, Any]) -> str:
    """`` over a, b; no AUC for c``: the classes a macro AUC averages when it leaves out one
    without an AUC (no slide of it in the cohort); empty when it averages every class."""
    aucs = summary.get("per_class_auc") or {}
    missing = [c for c, v in aucs.items() if v is None or not math.isfinite(float(v))]
    if not missing or len(missing) == len(aucs):
        return ""
    kept = ", ".join(c for c in aucs if c not in missing)
    return f" over {kept}; no AUC for {', '.join(missing)}"


def _overlap_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An external cohort's patients that are also in training (``patient_overlap``, allowed by
    ``allow_patient_overlap``): the fold models trained on them, so every figure is optimistic."""
    overlap = summary.get("patient_overlap")
    if not overlap:
        return []
    ids = list(overlap.get("patient_ids") or [])
    shown = ", ".join(ids[:5]) + (f", ... ({len(ids) - 5} more)" if len(ids) > 5 else "")
    name = "WARNING: patients also in training (the figures below are optimistic)"
    return [(name, f"{overlap.get('n_patients', len(ids))}: {shown}")]


def _caveat_rows(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Fold numbers no prediction file was given for (``missing_folds``, ``gigamil ensemble``
    by hand): the figures are of fewer models than the cross-validation trained; fold models
    that did not learn (``folds_not_learned``); and pairs of files of one model
    (``identical_models``): of fewer models than they count."""
    missing = summary.get("missing_folds")
    rows = []
    if missing:
        name = "WARNING: no prediction file of fold(s) (the figures below lack those models)"
        rows.append((name, ", ".join(map(str, missing))))
    if unlearned := summary.get("folds_not_learned"):
        name = (
            "WARNING: fold model(s) that did not learn (training loss near chance: their "
            "predictions below mean nothing; README, 'When a fold does not learn')"
        )
        rows.append((name, ", ".join(map(str, unlearned))))
    if twins := summary.get("identical_models"):
        name = "WARNING: files with the same probabilities for every slide (one model twice?)"
        rows.append((name, "; ".join(" and ".join(map(str, pair)) for pair in twins)))
    return rows


def _brier_row(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The Brier score row (none in a summary written before it was added), naming what a
    constant uniform guess would score (1 - 1/C, halved for two classes)."""
    if "brier" not in summary:
        return []
    c = len(summary.get("classes") or []) or 2
    guess = 0.25 if c == 2 else 1 - 1 / c
    name = f"Brier score (probabilities; 0 is perfect, a constant 1/{c} scores {guess:.3f})"
    return [(name, with_ci(summary, "brier"))]


def _fold_auc_name(summary: Mapping[str, Any], who: str) -> str:
    """The fold-AUC row's name, saying what one fold's AUC is computed on: out of fold, each
    fold's few test slides (so it moves in large steps, and its sd is large); in an ensemble,
    all the cohort's slides, once per fold model."""
    aucs = list(summary.get("fold_auc") or [])
    k = len(aucs)
    n = int(summary.get("n_slides") or 0)
    defined = sum(a is not None and math.isfinite(float(a)) for a in aucs)
    folds = "1 fold" if k == 1 else f"{k} folds"
    if defined < k:  # a fold whose slides hold one class has no AUC: the mean leaves it out
        folds = f"{defined} of {folds} ({k - defined} without an AUC: one class only)"
    sizes = [int(v) for v in summary.get("fold_n_slides") or []]
    if who.startswith("out-of-fold") and k:
        each = f"~{round(n / k)}"  # a summary from before fold_n_slides: the mean
        if sizes:
            each = f"{min(sizes)}" if min(sizes) == max(sizes) else f"{min(sizes)}–{max(sizes)}"
        return f"fold AUC, mean ± sd over {folds} (each on its {each} test slides)"
    return f"each fold's model on all {n} slides: AUC mean ± sd over {folds}"


def _patient_balanced_accuracy_row(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The balanced accuracy per patient (``patient_balanced_accuracy``, on each patient's mean
    probability) with its CI, beside the patient recalls it averages; none without it."""
    if summary.get("patient_balanced_accuracy") is None:
        return []
    what = "patient balanced accuracy, mean probability per patient"
    return [(what, with_ci(summary, "patient_balanced_accuracy"))]


def _recall_rows(summary: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Each class's recall at the predicted class (the most probable one) as "9 / 12 = 0.750
    (95% CI ...)"; with two classes the second's is the sensitivity, the first's the
    specificity. ``prefix`` ``patient_``: the same per patient (``patient_per_class_recall``;
    none when the summary lacks it)."""
    classes = list(summary.get("classes") or [])
    cm = summary.get(f"{prefix}confusion_matrix") or []
    recall = summary.get(f"{prefix}per_class_recall") or {}
    ci = summary.get(f"{prefix}per_class_recall_ci") or {}
    names = {classes[-1]: "sensitivity", classes[0]: "specificity"} if len(classes) == 2 else {}
    rows = []
    for i, c in enumerate(classes):
        if c not in recall or i >= len(cm):
            continue
        interval = None if few_patients(summary) else ci.get(c)
        text = _value_ci(recall[c], interval, summary.get("ci_level", 0.95))
        counts = f"{cm[i][i]} / {sum(cm[i])} = " if text else ""
        what = f"{names[c]} (recall of {c})" if c in names else f"recall of {c}"
        what = f"patient {what}, mean probability per patient" if prefix else what
        rows.append((what, f"{counts}{text}"))
    return rows


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse;margin-bottom:14px}"
    "td,th{padding:3px 9px;text-align:right;border-bottom:1px solid #ddd}"
    "table.summary td:first-child{text-align:left} img{max-width:48%;margin:0 8px 14px 0}"
)


def html_page(title: str, body: str) -> str:
    """A small standalone HTML page (the Snakemake report shows such files inline)."""
    import html

    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_HTML_STYLE}</style></head><body><h3>{html.escape(title)}</h3>{body}"
        "</body></html>\n"
    )


def embedded_png(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG itself (base64), so the page stands alone and shows it
    inline in the Snakemake report too."""
    import base64
    import html

    data = base64.b64encode(png).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' alt='{html.escape(alt)}'>"


def write_metrics_html(
    table: pd.DataFrame,
    path: str | Path,
    title: str,
    summary: Mapping[str, Any] | None = None,
    auc_key: str = "oof_auc",
    figures: Sequence[str | Path | bytes] = (),
) -> None:
    """The headline numbers of ``summary`` (:func:`summary_rows`), the ``figures`` (PNG files or
    PNG bytes, embedded, so the page stands alone and shows them inline in the Snakemake report too) and
    the metrics table as a small standalone HTML page. With fewer patients than
    :data:`MIN_PATIENTS_FOR_CI` the table's interval rows (``*_ci_low``, ``*_ci_high``) are left
    out of the page, as the headline leaves out its intervals (metrics.csv has them)."""
    import html

    if summary is not None and few_patients(summary):
        table = table[~table.index.astype(str).str.contains(r"_ci_(?:low|high)$")]

    def cell(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return f"{int(v)}" if col.startswith("n_") else f"{float(v):.3f}"

    shown = pd.DataFrame(
        {c: [cell(c, v) for v in table[c]] for c in table.columns}, index=table.index
    )
    # the index's name (scope) in the header's corner: one header row, not a second empty one
    shown.columns.name, shown.index.name = table.index.name, None
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
    for fig in figures:  # the plots people would rather look at, beside the numbers
        png = fig if isinstance(fig, bytes) else Path(fig).read_bytes()
        body += embedded_png(png, "figure" if isinstance(fig, bytes) else Path(fig).name)
    body += shown.to_html(border=0, classes="metrics")
    Path(path).write_text(html_page(title, body))


# predictions.html of a cohort without labels: what its probabilities are worth (a new user's
# trial took P = 0.997 for a skin slide predicted by lymph-node models at face value)
LIKE_TRAINING = (
    "Each probability is the mean of the fold models'. It means something only for slides like "
    "their training slides (tissue, stain, scanner, µm/px): a slide of other tissue gets as "
    "confident a probability, and nothing here checks that it resembles them. "
)


def write_predictions_html(
    ens: pd.DataFrame,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    caveats: Mapping[str, Any] | None = None,
    experiment: str | None = None,
) -> None:
    """The ensemble's predictions as an HTML table (the report shows it inline), below the
    warnings of the ``caveats`` (summary.json's ``missing_folds`` and ``identical_models``,
    as :func:`summary_rows` shows them on metrics.html), and what the probabilities are worth
    (:data:`LIKE_TRAINING`, with the ``gigamil model-info`` command of ``experiment``'s
    models)."""
    import html

    cols = ["slide_id", "patient_id", "label", *[f"prob_{c}" for c in classes], "pred", "n_models"]
    cols = [c for c in cols if c in ens.columns]
    shown = ens[cols].copy()
    for c in classes:
        shown[f"prob_{c}"] = [f"{v:.3f}" if np.isfinite(v) else "" for v in shown[f"prob_{c}"]]
    if "label" in shown and not shown["label"].astype(str).ne("").any():
        shown = shown.drop(columns="label")
    counts = ens.loc[ens["pred"].astype(str) != "", "pred"].value_counts()
    note = ", ".join(f"{counts.get(c, 0)} {html.escape(c)}" for c in classes)
    missing = len(ens) - int(counts.sum())
    unscored = f"; {missing} without patches, not predicted" if missing else ""
    body = f"<p>{int(counts.sum())} of {len(ens)} slide(s) predicted: {note}{unscored}.</p>"
    models = f"results/models/{experiment or 'EXPERIMENT'}"  # none with trained_models:
    models = models if Path(models).is_dir() else "MODEL.pt (each file of trained_models)"
    body += f"<p>{html.escape(LIKE_TRAINING)}<code>gigamil model-info {html.escape(models)}</code>"
    body += " says what they were trained on.</p>"
    warnings = _caveat_rows(caveats or {})
    body = "".join(f"<p><b>{html.escape(k)}</b>: {html.escape(v)}</p>" for k, v in warnings) + body
    body += shown.to_html(border=0, index=False, classes="predictions", na_rep="")
    Path(path).write_text(html_page(title, body))
