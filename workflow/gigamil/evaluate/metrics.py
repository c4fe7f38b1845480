"""Classification metrics for slide-level predictions (numpy only; checked against scikit-learn).

Conventions: ``y`` is an int array (n,) of class indices into ``classes``; ``probs`` is a float
array (n, C) of class probabilities (rows sum to 1); the predicted class is ``argmax(probs)``.
Binary problems (C == 2) use ``probs[:, 1]`` as the score of the positive (second) class.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError

SCALAR_METRICS = ("auc", "balanced_accuracy", "macro_f1", "accuracy", "brier")


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for ``y`` in {0, 1} (Mann-Whitney U, ties count 1/2).

    Returns nan when ``y`` holds a single class.
    """
    y = np.asarray(y).astype(bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata  # here: scipy.stats takes about 1 s to import

    ranks = rankdata(np.asarray(score, dtype=float))  # average ranks for ties
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Binary AUC of the positive class, or the macro one-vs-rest AUC for C > 2 classes.

    The macro average runs over the classes present in ``y`` (a class with no slides has no AUC);
    nan when fewer than two classes are present.
    """
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[0] != y.shape[0]:
        raise GigamilError(f"probabilities of shape {probs.shape} do not match {y.shape[0]} labels")
    if probs.shape[1] == 2:
        return binary_auc(y == 1, probs[:, 1])
    return macro_auc(per_class_auc(y, probs))


def macro_auc(per_class: Sequence[float]) -> float:
    """The mean of the finite one-vs-rest AUCs ``per_class`` (:func:`per_class_auc`): the
    classes present; nan with fewer than two."""
    finite = [a for a in per_class if np.isfinite(a)]
    return float(np.mean(finite)) if len(finite) >= 2 else float("nan")


def brier_score(y: np.ndarray, probs: np.ndarray) -> float:
    """Brier score of class probabilities (Brier 1950): the mean over rows of the squared distance
    of ``probs`` (n, C) from the one-hot truth ``y`` (n,), halved for two classes, where it is
    the mean of (P(positive) - y)^2 (scikit-learn's ``brier_score_loss`` convention,
    ``scale_by_half="auto"``). 0 is perfect; a constant uniform guess scores 0.25 for two
    classes (1 - 1/C for C > 2); nan without rows. Lower is better; unlike the AUC it also
    penalises probabilities on the wrong scale (over- or under-confidence)."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if y.size == 0:
        return float("nan")
    onehot = np.eye(probs.shape[1])[y]
    total = float(((probs - onehot) ** 2).sum(axis=1).mean())
    return total / 2 if probs.shape[1] == 2 else total


def roc_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr), starting at (0, 0), one point per distinct threshold."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(-np.asarray(score, dtype=float), kind="mergesort")
    s = np.asarray(score, dtype=float)[order]
    yt = y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), yt.size - 1]  # last index of each threshold
    tp = np.cumsum(yt)[last]
    fp = np.cumsum(~yt)[last]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def roc_band(
    y: np.ndarray,
    score: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise bootstrap band of the ROC curve: (fpr grid (101,), tpr low, tpr high).

    Each resample of ``groups`` (patients: slides of one patient stay together; None: rows) gives
    a curve, read at every false positive rate of the grid as its true positive rate there
    (vertical averaging, Fawcett 2006, sec. 8.1: the highest TPR at an FPR <= the grid value);
    the band is the central ``level`` percentile interval per grid value. Resamples with one
    class only are skipped; with none left, the band is nan.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=float)
    grid = np.linspace(0.0, 1.0, 101)
    curves = []
    for idx in _group_resamples(y.size, groups, n_boot, seed):
        if 0 < y[idx].sum() < idx.size:
            fpr, tpr = roc_curve(y[idx], score[idx])
            curves.append(tpr[np.searchsorted(fpr, grid, side="right") - 1])
    if not curves:
        return grid, np.full(grid.shape, np.nan), np.full(grid.shape, np.nan)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(curves), [tail, 100.0 - tail], axis=0)
    return grid, low, high


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, C) counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y, dtype=int), np.asarray(pred, dtype=int)), 1)
    return cm


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """(C,) recall of each class; nan for a class without true samples."""
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean recall over the classes that have true samples."""
    recall = per_class_recall(cm)
    return float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan")


def macro_f1(cm: np.ndarray, over: np.ndarray | None = None) -> float:
    """Mean F1 over the classes present in truth or prediction (F1 = 0 where undefined), or over
    those of the bool mask ``over`` (C,) (a bootstrap resample: the whole set's classes)."""
    tp = np.diag(cm).astype(float)
    denom = cm.sum(axis=1) + cm.sum(axis=0)  # support + predicted
    present = denom > 0 if over is None else np.asarray(over, dtype=bool)
    if not present.any():
        return float("nan")
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean())


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """All slide-level metrics of one set of predictions.

    Returns:
        dict with ``auc``, ``balanced_accuracy``, ``macro_f1``, ``accuracy``, ``brier``
        (:func:`brier_score`), ``n``,
        ``recall_<class>`` for every class, with more than two classes ``auc_<class>`` (one
        vs rest) for every class, and ``confusion`` (list of lists, rows = truth).
    """
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(y, pred, len(classes))
    recall = per_class_recall(cm)
    per = per_class_auc(y, probs) if len(classes) > 2 else None  # the macro AUC's parts
    out = {
        "n": int(y.size),
        "auc": roc_auc(y, probs) if per is None else macro_auc(per),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "brier": brier_score(y, probs),
    }
    for c, name in enumerate(classes):
        out[f"recall_{name}"] = float(recall[c])
    if per is not None:  # each class against the rest
        for name, auc in zip(classes, per, strict=True):
            out[f"auc_{name}"] = auc
    out["confusion"] = cm.tolist()
    return out


def per_class_auc(y: np.ndarray, probs: np.ndarray) -> list[float]:
    """One-vs-rest AUC of every class (C,), the parts :func:`roc_auc` averages for C > 2; nan
    for a class with no slide or only its slides."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=float)
    return [
        binary_auc(y == c, probs[:, c]) if 0 < (y == c).sum() < y.size else float("nan")
        for c in range(probs.shape[1])
    ]


def bootstrap_ci(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals of the scalar metrics.

    Resamples ``groups`` (e.g. patients, so that slides of one patient stay together) with
    replacement; without groups, rows. A metric skips the resamples where it is not the set's
    quantity: the AUC those of one class (more than two: lacking a class the macro AUC averages),
    balanced accuracy and macro F1 (of the set's classes) those lacking a class of the set.

    Returns:
        {metric: (low, high)} for :data:`SCALAR_METRICS` and ``recall_<class>`` of every class
        (a resample without the class does not count for its recall; with more than two
        classes ``auc_<class>`` too); (nan, nan) if never defined.
    """
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(axis=1)
    recalls = [f"recall_{c}" for c in classes]
    aucs = [f"auc_{c}" for c in classes] if len(classes) > 2 else []
    values: dict[str, list[float]] = {m: [] for m in (*SCALAR_METRICS, *recalls, *aucs)}
    scored = np.isfinite(per_class_auc(y, probs)) if aucs else None  # the macro AUC's classes
    present = np.bincount(y, minlength=len(classes)) > 0
    f1_over = np.isin(np.arange(len(classes)), np.r_[y, pred])  # the set's macro F1 classes
    for idx in _group_resamples(y.size, groups, n_boot, seed):
        yb, pb = y[idx], pred[idx]
        cm = confusion_matrix(yb, pb, len(classes))
        # a class of the set missing: balanced accuracy and macro F1 would average other classes
        complete = bool((cm.sum(axis=1)[present] > 0).all())
        per = per_class_auc(yb, probs[idx]) if aucs else []
        values["auc"].append(  # C > 2: the macro over the same classes, else undefined
            roc_auc(yb, probs[idx]) if not aucs else _macro(np.asarray(per), scored)
        )
        values["balanced_accuracy"].append(balanced_accuracy(cm) if complete else float("nan"))
        values["macro_f1"].append(macro_f1(cm, f1_over) if complete else float("nan"))
        values["accuracy"].append(float((yb == pb).mean()) if idx.size else float("nan"))
        values["brier"].append(brier_score(yb, probs[idx]))
        for name, r in zip(recalls, per_class_recall(cm), strict=True):
            values[name].append(float(r))
        for name, a in zip(aucs, per, strict=True):
            values[name].append(a)
    return {m: _percentile_interval(vals, level) for m, vals in values.items()}


def _macro(per: np.ndarray, scored: np.ndarray) -> float:
    """The mean of the per-class AUCs ``per`` of the classes ``scored`` (those the whole set's
    macro AUC averages); nan when a resample lacks one of them (its macro would average other
    classes: not the same quantity)."""
    wanted = per[scored]
    return float(wanted.mean()) if wanted.size and np.isfinite(wanted).all() else float("nan")


def _group_resamples(
    n: int, groups: np.ndarray | None, n_boot: int, seed: int
) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap resamples of n rows as index arrays: the ``groups`` (rows of one
    group stay together; None: every row its own group) drawn with replacement."""
    groups = np.arange(n) if groups is None else np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(uniq.size)]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        pick = rng.integers(0, uniq.size, uniq.size)
        yield np.concatenate([members[g] for g in pick]) if uniq.size else np.array([], int)


def _percentile_interval(values: Sequence[float], level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of the finite ``values`` ((nan, nan): none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    return float(np.percentile(v, tail)), float(np.percentile(v, 100.0 - tail))


def paired_auc_difference(
    y: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    groups: np.ndarray | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float | list[float] | int]:
    """AUC(a) - AUC(b) of two scores of the same slides, with a paired bootstrap interval.

    ``y`` (n,) binary labels (0/1), ``score_a`` / ``score_b`` (n,) the two methods' scores of the
    same n slides (e.g. gigamil's and a baseline's out-of-fold probabilities). Resamples
    ``groups`` (patients: their slides stay together) with replacement and recomputes both AUCs on
    the same resample, so the interval reflects which slides the cohort happened to hold, shared
    by both methods (the paired percentile bootstrap, Efron & Tibshirani 1993, ch. 13). Resamples
    with one class only are skipped.

    Returns ``{"auc_a", "auc_b", "difference", "ci": [low, high], "p_a_better"}`` (the fraction
    of resamples in which a scores the higher AUC; ties count half), ``p_a_ahead`` and
    ``p_level`` (the fractions strictly ahead and tied: on a few slides ties are common, and
    half of them read as "ahead" overstates it) and ``n_boot`` used. Raises GigamilError for
    mismatched lengths or labels other than 0/1.
    """
    y = np.asarray(y)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    if not (y.shape == a.shape == b.shape) or y.ndim != 1:
        raise GigamilError(f"y, score_a, score_b must be (n,) alike: {y.shape} {a.shape} {b.shape}")
    if not np.isin(y, (0, 1)).all():
        raise GigamilError("paired_auc_difference needs binary labels 0/1")
    y = y.astype(int)
    d = np.asarray(
        [
            binary_auc(y[idx], a[idx]) - binary_auc(y[idx], b[idx])
            for idx in _group_resamples(y.size, groups, n_boot, seed)
            if np.unique(y[idx]).size == 2
        ]
    )
    auc_a, auc_b = binary_auc(y, a), binary_auc(y, b)
    return {
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": auc_a - auc_b,
        "ci": list(_percentile_interval(d, level)),
        "p_a_better": float(((d > 0) + 0.5 * (d == 0)).mean()) if d.size else float("nan"),
        "p_a_ahead": float((d > 0).mean()) if d.size else float("nan"),
        "p_level": float((d == 0).mean()) if d.size else float("nan"),
        "n_boot": int(d.size),
    }


def labels_and_probs(preds: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(y (n,), probs (n, C)) from a table with ``label`` and ``prob_<class>`` columns."""
    cols = [f"prob_{c}" for c in classes]
    missing = [c for c in cols + ["label"] if c not in preds.columns]
    if missing:
        raise GigamilError(f"predictions lack column(s) {', '.join(missing)}")
    index = {c: i for i, c in enumerate(classes)}
    labels = preds["label"].astype(str)
    unknown = ~labels.isin(list(index))
    if unknown.any():
        bad = labels[unknown].iloc[0]
        raise GigamilError(f"prediction label {bad!r} is not one of {list(classes)}")
    return labels.map(index).to_numpy(dtype=int), preds[cols].to_numpy(dtype=float)


def fold_table(preds: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Metrics per fold plus their ``mean`` and ``sd`` (sample SD, ddof=1) across folds.

    Args:
        preds: out-of-fold predictions with a ``fold`` column.

    Returns:
        DataFrame indexed by scope (``fold0``, ``fold1``, ..., ``mean``, ``sd``) with columns
        n_slides, n_patients, the scalar metrics and ``recall_<class>`` (with more than two
        classes also ``auc_<class>``, one vs rest). A fold lacking a class of ``preds`` has
        NaN AUC, balanced accuracy and macro F1 (``mean`` and ``sd`` leave it out).
    """
    rows = {}
    present = set(labels_and_probs(preds, classes)[0].tolist())
    for fold, part in preds.groupby("fold", sort=True):
        y, p = labels_and_probs(part, classes)
        m = classification_metrics(y, p, classes)
        m.pop("confusion")
        if set(y.tolist()) != present:  # not the other folds' quantity (3 classes: macro AUC)
            m["auc"] = m["balanced_accuracy"] = m["macro_f1"] = float("nan")
        m["n_slides"] = m.pop("n")
        m["n_patients"] = int(part["patient_id"].nunique())
        rows[f"fold{int(fold)}"] = m
    table = pd.DataFrame.from_dict(rows, orient="index")
    metric_cols = [c for c in table.columns if c not in ("n_slides", "n_patients")]
    table.loc["mean", metric_cols] = table[metric_cols].mean(axis=0, skipna=True)
    table.loc["sd", metric_cols] = (
        table.loc[table.index.str.startswith("fold"), metric_cols].std(axis=0, ddof=1)
        if len(rows) > 1
        else np.nan
    )
    table.index.name = "scope"
    cols = ["n_slides", "n_patients", *SCALAR_METRICS] + [f"recall_{c}" for c in classes]
    cols += [f"auc_{c}" for c in classes] if len(classes) > 2 else []  # one vs rest
    return table[cols]


def patient_level(preds: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Mean class probabilities per patient (one row per patient with its label); GigamilError
    for a patient whose slides have different labels (the sheets refuse them; prediction CSVs
    given to ``gigamil evaluate`` / ``ensemble`` by hand are checked here)."""
    labels = preds.groupby("patient_id")["label"].unique()
    if (mixed := labels[labels.map(len) > 1]).any():
        pid = mixed.index[0]
        raise GigamilError(
            f"patient {pid} has slides labelled {', '.join(sorted(map(str, mixed[pid])))} in the "
            "predictions: patient-level metrics need one label per patient (as the sheets do)"
        )
    cols = [f"prob_{c}" for c in classes]
    agg = {**{c: "mean" for c in cols}, "label": "first"}
    return preds.groupby("patient_id", sort=True).agg(agg).reset_index()


def most_probable(probs: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The predicted class of each row of ``probs`` (n, C): the most probable one, ``""`` for a
    row with a missing probability (a slide, or patient, without patches)."""
    ok = np.isfinite(probs).all(axis=1)
    best = np.nan_to_num(probs, nan=-1.0).argmax(axis=1)
    return [classes[i] if good else "" for i, good in zip(best, ok, strict=True)]
