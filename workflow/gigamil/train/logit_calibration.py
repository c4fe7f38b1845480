"""Fold-level logit calibration (``training.logit_calibration``): one scale for all fold models.

Why (``benchmarks/fold_calibration_probe.py``, docs/real_tissue.md): each fold model of a
cross-validation on a few tens of slides ranks its own test slides well, but its logits have an
offset and a scale of their own, so pooling the folds' out-of-fold predictions mixes scales (on
one real-tissue draw five of six fold models ranked their test slides perfectly and the pooled
AUC was 0.85). After training, the fold's best model scores its own training and validation
slides (never the test slides) and the bag logit ``z`` of a binary model is mapped to
``(z - m) * s`` with ``m`` the midpoint of the two class-mean logits and ``s = 2 ln 9 / gap``
(``gap`` = positive-class mean minus negative-class mean), i.e. the mean training slide of each
class gets probability 0.1 / 0.9. Monotone per model: a fold's own ranking is unchanged.
``s`` is at most ``MAX_SCALE`` (20): a model whose class means lie less than 2 ln 9 / 20 = 0.22
apart barely separates its own training slides (e.g. after one epoch: 0.005 apart, ``s`` would be
880), and stretching the noise of its logits would push its predictions to exactly 0 and 1 and let
it outvote the other fold models of an ensemble; its class means then map inside ∓ln 9.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigamil.models.ensemble import apply_calibration
from gigamil.train.checkpoint import atomic_save, load_model

__all__ = ["apply_calibration", "calibrate_fold_model", "fit_class_means"]

log = logging.getLogger(__name__)

TARGET_LOGIT = math.log(9.0)  # class means -> probability 0.1 / 0.9
MIN_GAP = 1e-6
MAX_SCALE = 20.0  # the demo's fold models: 0.8-1.9


def fit_class_means(logits: Sequence[float], labels: Sequence[int]) -> dict[str, Any] | None:
    """The affine map ``{"method", "offset", "scale", "class_mean_logits", "n_slides"}`` of the
    binary bag logits (n,) of reference slides with labels (n,) in {0, 1} (scale at most
    ``MAX_SCALE``); None (logits kept)
    when a class has no slide, a logit is not finite, or the positive class's mean logit is not
    above the negative's (a model that does not separate its own training slides)."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.shape != y.shape or not np.isfinite(z).all():
        return None
    if not ((y == 0).any() and (y == 1).any()):
        return None
    m0, m1 = float(z[y == 0].mean()), float(z[y == 1].mean())
    gap = m1 - m0
    if gap < MIN_GAP:
        return None
    return {
        "method": "class_means",
        "offset": (m0 + m1) / 2,
        "scale": min(2 * TARGET_LOGIT / gap, MAX_SCALE),
        "class_mean_logits": [m0, m1],
        "n_slides": int(len(z)),
    }


def calibrate_fold_model(
    model_path: str | Path,
    bags: Sequence[Any],
    labels: Sequence[int],
    chunk: int | None,
    device: str | torch.device = "cpu",
) -> dict[str, Any] | None:
    """Fit :func:`fit_class_means` on the bag logits of ``model_path``'s model (eval mode) for
    ``bags`` (the fold's training and validation bags) with class indices ``labels`` and
    record it in model.pt (key ``logit_calibration``, rewritten atomically). Idempotent: a
    model.pt that has the key is left as it is. Models with more than two classes are left
    uncalibrated. Returns the map (None when none was fitted)."""
    model, ckpt = load_model(model_path, device)  # one read (and digest check) of model.pt
    if "logit_calibration" in ckpt:
        return ckpt["logit_calibration"]
    if len(ckpt["classes"]) != 2:
        log.info("logit calibration: %d classes, logits left as they are", len(ckpt["classes"]))
        return None
    zs, ys = [], []
    with torch.inference_mode():
        for bag, y in zip(bags, labels, strict=True):
            if len(bag) == 0:
                continue
            logits, _ = model(bag, max_instances_per_forward_pass=chunk)
            zs.append(float(logits.float().reshape(-1)[0]))
            ys.append(int(y))
    cal = fit_class_means(zs, ys)
    if cal is None:
        log.warning(
            "logit calibration: the model does not separate its %d training/validation slides "
            "(class-mean logits not ordered); its logits are left as they are",
            len(zs),
        )
    elif cal["scale"] == MAX_SCALE:
        m0, m1 = cal["class_mean_logits"]
        log.warning(
            "logit calibration: the model barely separates its %d training/validation slides "
            "(class-mean logits %.3f / %.3f): scaled by %g only, to %+.3f / %+.3f (not to ∓ln 9)",
            cal["n_slides"],
            m0,
            m1,
            MAX_SCALE,
            (m0 - cal["offset"]) * MAX_SCALE,
            (m1 - cal["offset"]) * MAX_SCALE,
        )
    else:
        log.info(
            "logit calibration on %d training/validation slides: class-mean logits %.3f / %.3f "
            "-> -ln 9 / +ln 9",
            cal["n_slides"],
            *cal["class_mean_logits"],
        )
    atomic_save({**ckpt, "logit_calibration": cal}, model_path)
    return cal
