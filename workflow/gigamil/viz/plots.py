"""Evaluation plots: ROC curves, confusion matrices, training curves (matplotlib, Agg
backend; reliability diagrams: :mod:`gigamil.viz.calibration`)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gigamil.evaluate.metrics import (
    confusion_matrix,
    labels_and_probs,
    roc_auc,
    roc_band,
    roc_curve,
)


def _wrap(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (a title that fits its figure)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width=width)) or text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (for pages that embed it); the figure stays open."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


BAND_LABEL = "pooled: 95% band (bootstrap over patients)"
OPERATING_POINT = "predicted class (most probable: P > 0.5)"


def plot_roc(
    preds: pd.DataFrame,
    classes: Sequence[str],
    path: str | Path,
    title: str,
    by: str | None = "fold",
) -> dict[str, Any]:
    """ROC curves of slide predictions; returns ``{"operating_point": (fpr, tpr) | None}``.

    Binary: the pooled curve (thick, black) with its pointwise 95 % bootstrap band, resampling
    patients (``patient_id``; rows when there is no such column;
    :func:`gigamil.evaluate.metrics.roc_band`), and, when ``by`` names a column with several
    values, one thin curve per value (e.g. per fold; curves that coincide, such as several folds
    at AUC 1.0, overlap: the legend gives each one's AUC and slide counts), and a ring at the
    operating point of the predicted classes (the most probable class: P(positive) > 0.5).
    Multi-class: one pooled one-vs-rest curve per class.
    """
    plt = _pyplot()
    y, p = labels_and_probs(preds, classes)
    fig, ax = plt.subplots(figsize=(4.8, 4.5), dpi=120)
    point = None
    if len(classes) == 2:
        point = _binary_roc(ax, preds, classes, by)
    else:
        for c, name in enumerate(classes):
            if 0 < (y == c).sum() < y.size:
                fpr, tpr = roc_curve(y == c, p[:, c])
                auc = roc_auc((y == c).astype(int), np.c_[1 - p[:, c], p[:, c]])
                ax.plot(fpr, tpr, lw=1.8, label=f"{name} vs rest (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey")
    ax.set_xlim(-0.02, 1.02)  # curves along the edges (AUC 1.0) stay visible
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(_wrap(title, 48), fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    else:  # one class only (e.g. an all-normal external cohort): no curve to draw
        ax.text(0.5, 0.5, "one class only: no ROC curve", ha="center", va="center", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return {"operating_point": point}


def _binary_roc(
    ax: Any, preds: pd.DataFrame, classes: Sequence[str], by: str | None
) -> tuple[float, float] | None:
    """The binary curves of :func:`plot_roc` on ``ax``; returns the operating point. The
    per-``by`` curves are drawn over the pooled one (a fold at AUC 1.0 runs along the axes, where
    the pooled curve hid it), and identical curves once, with one legend entry naming them all."""
    if by is not None and by in preds.columns and preds[by].nunique() > 1:
        for i, (values, (fpr, tpr), auc, counts) in enumerate(_part_curves(preds, classes, by)):
            label = f"{by} {values[0]} (AUC {auc:.3f}; {counts})"
            if len(values) > 1:  # two lines: the legend stays inside the axes
                label = (
                    f"{by}s {', '.join(values)}: identical curves\n(AUC {auc:.3f}; {counts} each)"
                )
            ax.plot(fpr, tpr, lw=1.2, label=label, color=f"C{i % 10}", zorder=2.5)
    y, p = labels_and_probs(preds, classes)
    if not 0 < (y == 1).sum() < y.size:
        return None
    groups = preds["patient_id"].to_numpy() if "patient_id" in preds.columns else None
    grid, low, high = roc_band(y == 1, p[:, 1], groups)
    ax.fill_between(grid, low, high, step="post", color="0.6", alpha=0.35, lw=0, label=BAND_LABEL)
    fpr, tpr = roc_curve(y == 1, p[:, 1])
    ax.plot(fpr, tpr, lw=2.2, color="k", label=f"pooled (AUC {roc_auc(y, p):.3f})")
    called = p.argmax(axis=1) == 1
    point = (float(called[y == 0].mean()), float(called[y == 1].mean()))
    ax.plot(*point, "o", ms=8, mfc="none", mec="crimson", mew=1.6, label=OPERATING_POINT)
    return point


def _part_curves(
    preds: pd.DataFrame, classes: Sequence[str], by: str
) -> list[tuple[list[str], tuple[np.ndarray, np.ndarray], float, str]]:
    """The ROC curve of each value of ``by`` with both classes, identical curves (and counts)
    merged: ``[(values, (fpr, tpr), auc, counts)]`` in the order of the first value."""
    merged: dict[tuple, tuple[list[str], tuple[np.ndarray, np.ndarray], float, str]] = {}
    for value, part in preds.groupby(by, sort=True):
        yk, pk = labels_and_probs(part, classes)
        n_pos = int((yk == 1).sum())
        if 0 < n_pos < yk.size:
            fpr, tpr = roc_curve(yk == 1, pk[:, 1])
            counts = f"{n_pos} {classes[1]} / {yk.size - n_pos} {classes[0]}"
            key = (tuple(np.round(fpr, 12)), tuple(np.round(tpr, 12)), counts)
            entry = merged.setdefault(key, ([], (fpr, tpr), roc_auc(yk, pk), counts))
            entry[0].append(str(value))
    return list(merged.values())


def plot_confusion(
    preds: pd.DataFrame, classes: Sequence[str], path: str | Path, title: str
) -> None:
    """Confusion matrix (counts and row-normalised %), rows = true class."""
    plt = _pyplot()
    y, p = labels_and_probs(preds, classes)
    cm = confusion_matrix(y, p.argmax(axis=1), len(classes))
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    frac = cm / rows
    size = 1.2 + 0.9 * len(classes)
    fig, ax = plt.subplots(figsize=(size + 1.0, size), dpi=120)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            colour = "white" if frac[i, j] > 0.6 else "black"
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * frac[i, j]:.0f}%",
                ha="center",
                va="center",
                color=colour,
                fontsize=9,
            )
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted (most probable class)")
    ax.set_ylabel("true")
    ax.set_title(_wrap(title, 24 + 8 * len(classes)), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


CURVE_COLOURS = {
    "train_loss": "tab:blue",
    "val_loss": "tab:orange",
    "val_auc": "tab:green",
    "encoder_loss": "tab:red",
}

# the legend's names: the two losses are not on one scale (a gap is not by itself overfitting):
# the training loss on augmented patches in train mode while the weights change, weighted by
# training.class_weights; the validation loss after the epoch, in eval mode, unweighted
CURVE_LABELS = {
    "train_loss": "train (augmented, train mode)",
    "val_loss": "val (eval mode)",
}


def plot_training_curves(log_csv: str | Path, path: str | Path, title: str) -> dict[str, Any]:
    """Training curves of one fold from its ``train_log.csv``: training and validation loss
    (left; the legend says how each is taken, ``CURVE_LABELS``) and validation AUC (right)
    against the epoch, the best epoch (the one model.pt holds, the log's last ``best_epoch``)
    marked by a dashed line and a star on each curve. A log of
    ``training.strategy: em`` (rows = rounds) also draws the E-step's pseudo-label loss
    (``encoder_loss``) on the left. A log with a ``replicate`` column (``training.replicates``
    > 1) draws each member's curves in the same colours, member r with its own line style. A
    log without validation (``cv.val_fraction: 0``: its validation columns are empty) draws each
    member's training loss in its own colour, the learning rate (``lr``) on the right, and says in
    the title that there were no validation slides and which epoch model.pt keeps. A log that
    records the model's chance level (``chance_loss``, ``flag_loss``:
    :func:`gigamil.train.learning.log_columns`) draws it as a dotted red line and the flag as a
    dashed one, and a member
    whose training loss ended at or above ``flag_loss`` is named in red over the loss panel
    ("DID NOT LEARN": README, 'When a fold does not learn').

    Returns ``{"epochs": rows of the longest member (epochs or EM rounds), "epochs_per_model":
    [per member], "best_epoch": member 0's, "best_epochs": [per member], "curves": [drawn],
    "chance_loss": the level or None, "not_learned": [one phrase per member not learned]}``."""
    log = _read_train_log(log_csv)
    members = list(log.groupby("replicate", sort=True)) if "replicate" in log else [(None, log)]
    plt = _pyplot()
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(8.0, 3.4), dpi=120)
    validated = bool(log["val_loss"].notna().any() or log["val_auc"].notna().any())
    losses = ["train_loss", "val_loss"] if validated else ["train_loss"]
    if "encoder_loss" in log.columns and log["encoder_loss"].notna().any():
        losses.append("encoder_loss")
    scores = ["val_auc"] if validated else []
    bests = [
        _draw_member(ax_loss, ax_auc, rows, losses, scores, i, member, by_member=not validated)
        for i, (member, rows) in enumerate(members)
    ]
    if not validated:  # cv.val_fraction: 0 (no validation slides): the schedule, not empty axes
        scores = _learning_rate_panel(ax_auc, members[0][1])
        title += "\n" + _wrap(NO_VALIDATION, TITLE_CHARS)
    chance, not_learned = _chance_level(ax_loss, log)
    if not_learned:
        warning = _wrap(f"DID NOT LEARN: {'; '.join(not_learned)}", TITLE_CHARS // 2)
        ax_loss.set_title(warning, fontsize=7, color="firebrick", loc="left")  # over its curves
    _label_axes(ax_loss, ax_auc, validated, small_legend=len(members) > 1)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return {
        "epochs": max(len(rows) for _, rows in members),
        "epochs_per_model": [len(rows) for _, rows in members],
        "best_epoch": bests[0],
        "best_epochs": bests,
        "curves": [*losses, *scores],
        "chance_loss": chance,
        "not_learned": not_learned,
    }


def _label_axes(ax_loss: Any, ax_auc: Any, validated: bool, small_legend: bool) -> None:
    """Epoch ticks, labels, grid and legends of the two training-curve panels."""
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_auc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6 if small_legend else 7, loc="best")
    ax_loss.set_ylabel("loss (mean per bag)")
    if validated:
        ax_auc.set_ylabel("validation AUC")
        ax_auc.set_ylim(-0.02, 1.02)


def _read_train_log(log_csv: str | Path) -> pd.DataFrame:
    """A fold's train_log.csv with at least one epoch and the columns the curves need; raises
    GigamilError naming the file otherwise."""
    from gigamil.errors import GigamilError

    log = pd.read_csv(log_csv)
    missing = {"epoch", "train_loss", "val_loss", "val_auc", "best_epoch"} - set(log.columns)
    if missing:
        raise GigamilError(f"{log_csv}: missing column(s) {', '.join(sorted(missing))}")
    if log.empty:
        raise GigamilError(f"{log_csv}: no epoch logged")
    return log


LINE_STYLES = ["-", "--", ":", "-."]  # one per replicate (member) of a fold
NO_VALIDATION = (
    "no validation slides (cv.val_fraction: 0): model.pt keeps each model's epoch of lowest"
    " training loss once the warm-up is over (from the last warm-up epoch,"
    " training.early_stopping.min_epochs - 1, on)"
)
TITLE_CHARS = 100  # characters per line of the training curves' 8-inch-wide title (9 pt)


def _chance_level(ax: Any, log: pd.DataFrame) -> tuple[float | None, list[str]]:
    """The chance level recorded in ``log`` (:func:`gigamil.train.learning.log_levels`) as a
    dotted line on the loss panel and its did-not-learn flag as a dashed one (with focal loss
    an unlearnt model falls a little below chance, not below the flag); returns the chance level
    (None for a log without it) and one phrase per
    member whose training loss ended at or above the log's ``flag_loss``
    (:func:`gigamil.train.learning.unlearned_models`)."""
    from gigamil.train.learning import LAST_EPOCHS, log_levels, unlearned_models

    levels = log_levels(log)
    if levels is None:
        return None, []
    chance, flag = levels
    ax.axhline(chance, ls=":", lw=1.2, color="firebrick", label=f"chance level {chance:.3f}")
    if flag is None:  # not judged (weak patch labels: gigamil.train.learning.log_columns)
        return chance, []
    ax.axhline(flag, ls="--", lw=0.8, color="salmon", label=f"did not learn at >= {flag:.3f}")
    return chance, [
        ("" if member is None else f"replicate{member} ")
        + f"training loss ended at {final:.3f} (mean of the last {LAST_EPOCHS} epochs; "
        f"flagged at >= {flag:.3f}, chance {chance:.3f})"
        for member, final in unlearned_models(log, chance, flag)
    ]


def _learning_rate_panel(ax: Any, rows: pd.DataFrame) -> list[str]:
    """The learning rate per epoch of ``rows`` (one member: the schedule is the members')."""
    ax.plot(rows["epoch"], rows["lr"], color="0.3", lw=1.2, label="lr")
    ax.set_ylim(0.0, 1.05 * max(float(rows["lr"].max()), 1e-12))
    ax.set_ylabel("learning rate")
    return ["lr"]


def _draw_member(  # noqa: PLR0913 - the two panels, the member's rows and what to draw
    ax_loss: Any,
    ax_auc: Any,
    rows: pd.DataFrame,
    losses: list[str],
    scores: list[str],
    i: int,
    member: Any,
    by_member: bool = False,
) -> int:
    """Draw one member's curves (its own line style; ``by_member``: its own colour too), a star
    at its best epoch on each and a vertical line there; returns the best epoch."""
    best = int(rows["best_epoch"].iloc[-1])
    at_best = rows.loc[rows["epoch"] == best]
    suffix = "" if member is None else f" replicate{int(member)}"
    style = LINE_STYLES[i % len(LINE_STYLES)]
    for ax, cols in ((ax_loss, losses), (ax_auc, scores)):
        for col in cols:
            colour = f"C{i % 10}" if by_member else CURVE_COLOURS[col]
            ax.plot(
                rows["epoch"],
                rows[col],
                marker=".",
                ms=4 if member is None else 2,
                lw=1.4 if member is None else 1.0,
                ls=style,
                color=colour,
                label=CURVE_LABELS.get(col, col) + suffix,
            )
            if not at_best.empty and pd.notna(at_best[col].iloc[0]):
                ax.plot(best, at_best[col].iloc[0], marker="*", ms=12, color=colour, ls="none")
        where = f" ({suffix.strip()})" if suffix else ""  # "best epoch 47 (replicate0)"
        ax.axvline(best, ls=style, lw=1, color="grey", label=f"best epoch {best}{where}")
    return best
