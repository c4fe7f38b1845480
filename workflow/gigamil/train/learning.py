"""Did a fold model learn? Its training loss against the chance level: a model that ends where
a model predicting every class equally likely starts has learnt nothing from its slides, and
its predictions and heatmaps mean nothing (on real tissue this happened on one cohort in two
before 2026-12: docs/real_tissue.md). Said after training (train_fold's log) and at the end of
the run (:mod:`gigamil.evaluate.run_summary`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

CHANCE_FRACTION = 0.9  # not learned: the true class's probability at or below K^-0.9, i.e. a
# cross-entropy at or above 0.9 × ln K (the same probability gives focal loss its own bound)
LAST_EPOCHS = 3  # the training loss judged: the mean of the last 3 epochs (one is noisy)


def chance_loss(n_classes: int, loss: str = "ce", gamma: float = 2.0) -> float:
    """The bag loss of a model that predicts 1 / n_classes for every class: ln K for
    cross-entropy (with or without label smoothing, and with balanced class weights, whose mean
    over the bags is 1), (1 − 1/K)^γ ln K for focal loss (:class:`gigamil.nn.losses.BagLoss`)."""
    ce = math.log(n_classes)
    return ce * (1 - 1 / n_classes) ** gamma if loss == "focal" else ce


def flag_loss(
    n_classes: int, loss: str = "ce", gamma: float = 2.0, label_smoothing: float = 0.0
) -> float:
    """The training loss at or above which a model has not learned: the loss of a model giving
    the true class the probability p = K^-0.9 (0.536 for two classes) and the others an equal
    share, against the training target (one-hot, or with ``label_smoothing`` ε (1 - ε) one-hot
    + ε / K, :class:`gigamil.nn.losses.BagLoss`): 0.9 ln K for cross-entropy without smoothing
    (0.624 for two classes) and (1 - p)^γ · 0.9 ln K for focal loss. One probability for both
    losses: focal loss falls faster than cross-entropy for a small separation (at random
    initialisation, to 87 % of its chance level where cross-entropy stays at 93 %), so 0.9 ×
    its chance level would let a focal model that learned nothing pass. With smoothing the
    target itself keeps the loss up (a perfect two-class model ends at 0.61 with ε 0.6), so
    0.9 ln K would call every model unlearnt from ε ≈ 0.65; against the smoothed target the
    flag stays between the best reachable loss and chance (for ε up to about 0.95)."""
    k = n_classes
    p = k**-CHANCE_FRACTION
    q = [p] + [(1 - p) / (k - 1)] * (k - 1)  # the predicted probabilities, true class first
    t = [1 - label_smoothing + label_smoothing / k] + [label_smoothing / k] * (k - 1)
    weight = (lambda x: (1 - x) ** gamma) if loss == "focal" else (lambda x: 1.0)
    return float(sum(tc * weight(qc) * -math.log(qc) for tc, qc in zip(t, q, strict=True)))


def log_columns(
    n_classes: int,
    loss: str = "ce",
    label_smoothing: float = 0.0,
    *,
    instance_loss: float = 0.0,
    weak_patch_labels: bool = False,
    unweighted_labels: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """The ``chance_loss`` and ``flag_loss`` (:func:`chance_loss`, :func:`flag_loss`) of a model
    of ``n_classes`` trained with ``loss``: written on every row of train_log.csv, so its
    training curves can draw the chance level and name a model that did not learn
    (:func:`gigamil.viz.plots.plot_training_curves`) from the log alone.

    The levels are those of the loss the model trains with: ``instance_loss`` w > 0
    (``model.instance_loss``, weak labels of selected patches beside the bag loss) adds w ln K to
    the chance level and w × 0.9 ln K to the flag (its cross-entropy at the same probabilities).
    ``weak_patch_labels`` (``model.pool: instance``: every patch trained toward its slide's
    label, no bag loss): chance ln K and no flag (None: not judged), since the normal-looking
    patches of positive slides keep even a perfect patch classifier's loss near chance (with
    10 % tumour patches in positive slides its best loss is 0.657, chance 0.693).
    ``unweighted_labels``: the training bags' class indices when the loss does not weigh the
    classes (``training.class_weights: null``): both levels are scaled by
    :func:`prior_ratio`, as a model that learned only the class prior ends below ln K."""
    if weak_patch_labels:
        return {"chance_loss": round(math.log(n_classes), 6), "flag_loss": None}
    extra = instance_loss * math.log(n_classes)  # the instance term at the same probabilities
    flag = flag_loss(n_classes, loss, label_smoothing=label_smoothing) + CHANCE_FRACTION * extra
    r = 1.0 if unweighted_labels is None else prior_ratio(unweighted_labels, n_classes)
    return {
        "chance_loss": round(r * (chance_loss(n_classes, loss) + extra), 6),
        "flag_loss": round(r * flag, 6),
    }


def prior_ratio(labels: Sequence[int], n_classes: int) -> float:
    """H(π) / ln K, π the class shares of ``labels`` (class indices), K ``n_classes``: the
    cross-entropy of a model that predicts the class prior for every bag, the lowest a model
    reaches without telling bags apart when the loss does not weigh the classes, over that of
    uniform predictions (1 for balanced classes; 0.811 at 75 / 25 %). Scaling the chance and
    flag levels by it makes them exact for cross-entropy (chance H(π), flag 0.9 H(π)) and
    proportional for focal loss, label smoothing and the instance loss. 1 without labels."""
    counts = [sum(1 for y in labels if int(y) == c) for c in range(n_classes)]
    n = sum(counts)
    if n == 0 or n_classes < 2:
        return 1.0
    entropy = -sum(c / n * math.log(c / n) for c in counts if c)
    return entropy / math.log(n_classes)


def log_levels(train_log: pd.DataFrame) -> tuple[float, float | None] | None:
    """``(chance_loss, flag_loss)`` recorded in a train_log.csv (:func:`log_columns`; those of its
    last row that has them; the flag None where the log says the loss is not judged), or None
    for a log written before gigamil recorded them."""
    if "chance_loss" not in train_log.columns:
        return None
    chance = pd.to_numeric(train_log["chance_loss"], errors="coerce").dropna()
    if chance.empty:
        return None
    flags = train_log.get("flag_loss", pd.Series(dtype=float))
    flag = pd.to_numeric(flags, errors="coerce").reindex(chance.index).iloc[-1]
    return float(chance.iloc[-1]), None if pd.isna(flag) else float(flag)


LEARNING_KEY = "learning"  # model.pt's record of its training loss against chance


def learning_record(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What model.pt records of whether its model learned, from its train_log.csv ``rows``
    (:class:`gigamil.train.checkpoint.CheckpointSaver`): ``final_train_loss`` (the mean of the
    last :data:`LAST_EPOCHS` epochs), ``chance_loss``, ``flag_loss`` and ``learned`` (the final
    loss below the flag; None where the log has no flag: not judged, :func:`log_columns`);
    None for rows without the levels (a log from before 2026-12-06).
    Travels with a shared model: ``gigamil model-info`` and ``trained_models`` say it."""
    table = pd.DataFrame(list(rows))
    levels = log_levels(table) if "train_loss" in table else None
    if levels is None:
        return None
    final = float(finite_losses(table["train_loss"]).tail(LAST_EPOCHS).mean())
    chance, flag = levels
    return {
        "final_train_loss": round(final, 6),
        "chance_loss": chance,
        "flag_loss": flag,
        "learned": None if flag is None else bool(final < flag),  # None: not judged
    }


def recorded_verdicts(header: Mapping[str, Any]) -> list[tuple[int | None, dict[str, Any]]]:
    """``(replicate or None, learning record)`` of each model of a model.pt ``header`` that
    records one (:func:`learning_record`; members in ``replicates``)."""
    members = header.get("replicates")
    if members:
        pairs = [(r, m.get(LEARNING_KEY)) for r, m in enumerate(members)]
    else:
        pairs = [(None, header.get(LEARNING_KEY))]
    return [(r, rec) for r, rec in pairs if rec]


LEARNED_COLUMN = "model_learned"  # of the prediction CSVs (predict_slides)


def model_learned(header: Mapping[str, Any]) -> bool | None:
    """Whether the model(s) of a model.pt ``header`` recorded that they learned
    (:func:`recorded_verdicts`): False when any did not (a replicate ensemble's mean is then
    partly noise), None when none records a verdict (a model.pt from before 2026-12-06, or
    not judged: :func:`log_columns`). What
    ``predict_slides`` writes in the :data:`LEARNED_COLUMN` of its predictions."""
    verdicts = [r["learned"] for _, r in recorded_verdicts(header) if r["learned"] is not None]
    return all(verdicts) if verdicts else None


def unlearned_folds(preds: pd.DataFrame) -> list[int]:
    """The ``fold`` numbers of prediction rows whose model did not learn (:data:`LEARNED_COLUMN`
    False); none for files without the column (written before 2026-12-06) or with it empty."""
    if LEARNED_COLUMN not in preds or "fold" not in preds:
        return []
    said = preds[LEARNED_COLUMN].astype(str).str.strip().str.lower()
    return sorted({int(f) for f in preds.loc[said == "false", "fold"]})


def verdict_phrase(record: Mapping[str, Any]) -> str:
    """``training loss ended at 0.210 (mean of the last 3 epochs; chance level 0.693, ...):
    learned``, ``...: DID NOT LEARN``
    or, for a loss that is not judged (:func:`log_columns`), ``...: not judged (...)``."""
    head = (
        f"training loss ended at {record['final_train_loss']:.3f} (mean of the last "
        f"{LAST_EPOCHS} epochs; chance level "
    )
    if record["learned"] is None:
        return head + (
            f"{record['chance_loss']:.3f}): not judged (weak patch labels, model.pool: "
            "instance: a model that learned ends near chance too)"
        )
    return (
        head
        + f"{record['chance_loss']:.3f}, flagged at >= {record['flag_loss']:.3f}): "
        + ("learned" if record["learned"] else "DID NOT LEARN")
    )


def unlearned_models(
    train_log: pd.DataFrame, chance: float, flag: float | None = None
) -> list[tuple[int | None, float]]:
    """``(replicate, final training loss)`` of each model of a fold's ``train_log.csv`` (one
    per ``replicate``; None without that column) whose training loss, the mean of its last
    :data:`LAST_EPOCHS` epochs, ended at or above ``flag`` (:func:`flag_loss`; None:
    :data:`CHANCE_FRACTION` × ``chance``, the cross-entropy rule)."""
    flag = CHANCE_FRACTION * chance if flag is None else flag
    if "train_loss" not in train_log or train_log.empty:
        return []
    members = (
        train_log.groupby("replicate", sort=True)
        if "replicate" in train_log
        else [(None, train_log)]
    )
    found = []
    for member, rows in members:
        final = float(finite_losses(rows["train_loss"]).tail(LAST_EPOCHS).mean())
        if final >= flag:
            found.append((None if member is None else int(member), final))
    return found


def finite_losses(losses: pd.Series) -> pd.Series:
    """A log's losses without the epochs whose loss is not a finite number: an epoch with one
    overflowing bag (inf; its step skipped by the fp16 scaler, the weights finite) made a
    model that learned "not learned", while the same epoch as NaN was left out."""
    values = pd.to_numeric(losses, errors="coerce")
    return values[values.map(math.isfinite)]


def learning_warnings(
    train_logs: Mapping[str, str | Path], chance: float, flag: float | None = None
) -> list[str]:
    """One sentence per fold model (``train_logs``: the fold's name, e.g. ``fold2``, → its
    ``train_log.csv``; missing or unreadable files are skipped) whose training loss ended near
    chance (at or above the flag, :func:`unlearned_models`): the levels the log records
    (:func:`log_levels`, which its plot and model.pt's record use), else ``chance`` and
    ``flag`` (a log from before 2026-12-06)."""
    flag = CHANCE_FRACTION * chance if flag is None else flag
    out = []
    for fold_name, path in train_logs.items():
        try:
            table = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        recorded = log_levels(table)  # the log's own, as its plot and model.pt's record use
        if recorded is not None and recorded[1] is None:
            continue  # the log says its loss is not judged (log_columns)
        level, at = recorded or (chance, flag)
        for member, final in unlearned_models(table, level, at):
            name = fold_name + ("" if member is None else f" replicate{member}")
            out.append(
                f"{name} did not learn: its training loss ended at {final:.3f} (chance level "
                f"{level:.3f}: a model predicting every class equally likely; flagged at >= "
                f"{at:.3f}); its predictions mean nothing (README, 'When a fold does not "
                "learn')"
            )
    return out


def warn_if_unlearned(
    train_log: str | Path, chance: float, fold_name: str, flag: float | None = None
) -> None:
    """Log :func:`learning_warnings` of one fold's ``train_log.csv`` as warnings."""
    for warning in learning_warnings({fold_name: train_log}, chance, flag):
        log.warning("%s", warning)
