"""Early stopping on a validation metric (after Lightning's ``EarlyStopping`` callback)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gigamil.settings import EarlyStoppingConfig

TOLERANCE = 1e-12


def scalar_metric(metrics: Mapping[str, float], name: str, train_loss: float) -> float:
    """Higher-is-better score of ``metrics[name]``. Falls back to -val_loss when the metric is
    undefined (e.g. AUC of a one-class validation set), and to -train_loss without validation."""
    value = metrics.get(name, float("nan"))
    if name == "loss":
        value = -value
    if not math.isfinite(value):
        value = -metrics.get("loss", float("nan"))
    if not math.isfinite(value):
        value = -train_loss
    return float(value)


@dataclass
class EarlyStopping:
    """Tracks the best epoch by ``metric`` (ties: the lower validation loss wins) and stops after
    ``patience`` epochs without improvement.

    Epochs before ``min_epochs`` are a warm-up: each in turn is the best so far (so model.pt
    always exists) whatever its score, and patience starts counting at ``min_epochs``. A small
    validation set can score a barely trained model perfectly (AUC 1.0 on 4 slides at epoch 1,
    measured on real tissue); without the warm-up that epoch would be kept for good. The last
    warm-up epoch, ``min_epochs - 1``, sets the score later epochs must beat and stays the best
    if none beats it.

    ``finished`` is set when training should not continue: stopped early, or ``max_epochs``
    reached. The state (``state_dict()``) is what ``last.pt`` keeps under ``early_stopping``.
    """

    metric: str = "auc"
    patience: int = 5
    min_epochs: int = 0
    max_epochs: int | None = None
    best_score: float | None = None
    best_tiebreak: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    epoch: int = 0
    finished: bool = False

    STATE_KEYS = ("best_score", "best_tiebreak", "best_epoch", "bad_epochs", "epoch", "finished")

    @classmethod
    def from_config(cls, cfg: EarlyStoppingConfig, max_epochs: int | None = None) -> EarlyStopping:
        return cls(cfg.metric, cfg.patience, cfg.min_epochs, max_epochs)

    @property
    def should_stop(self) -> bool:
        """Too many epochs without improvement (and ``min_epochs`` reached)."""
        return self.bad_epochs >= self.patience and self.epoch >= self.min_epochs

    def _improves(self, score: float, tiebreak: float) -> bool:
        """Whether ``score`` beats the best so far (the first epoch always does, so model.pt
        exists); a NaN score never beats one, and any finite score beats a NaN best (an epoch
        whose loss was NaN, e.g. fp16 steps skipped by the gradient scaler, must not hold
        model.pt for the rest of the training)."""
        best, best_tb = self.best_score, self.best_tiebreak
        if best is None:
            return True
        if not math.isfinite(score):
            return False
        if not math.isfinite(best) or score > best + TOLERANCE:
            return True
        tie = abs(score - best) <= TOLERANCE
        return tie and best_tb is not None and tiebreak > best_tb + TOLERANCE

    def update(self, epoch: int, metrics: Mapping[str, float], train_loss: float) -> bool:
        """Record epoch ``epoch``'s validation ``metrics``; returns whether it is the new best."""
        score = scalar_metric(metrics, self.metric, train_loss)
        tiebreak = scalar_metric(metrics, "loss", train_loss)  # equal AUC: lower loss wins
        improved = epoch < self.min_epochs or self._improves(score, tiebreak)
        if improved:
            self.best_score, self.best_tiebreak = score, tiebreak
            self.best_epoch, self.bad_epochs = epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch = epoch
        self.finished = self.should_stop or epoch == self.max_epochs
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE_KEYS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key in self.STATE_KEYS:
            if key in state:
                setattr(self, key, state[key])


# logged when a finished last.pt is found: the same settings and patches give the same model
FINISHED = (
    "training already finished (%s) with these settings and patches; nothing to do (delete %s "
    "to train it again)"
)
