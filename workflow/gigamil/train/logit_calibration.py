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
it outvote the other fold models of an ensemble. Such a model's scale is, below that cap, the
slope its training logits support: ``gap / sd²`` (``sd²``: their pooled within-class variance),
the log-odds slope of two Gaussian classes of equal variance (linear discriminant analysis;
Hastie, Tibshirani & Friedman, *The Elements of Statistical Learning*, 4.3), so a model whose
classes overlap on its own slides predicts near 0.5 instead of 0 and 1 (one-epoch models of four
real-tissue draws: out-of-fold probabilities within 0.13-0.81 instead of 0.000-1.000; no member
of 14 well-trained runs was at the cap: ``benchmarks/calibration_scale_probe.py``).
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
from gigamil.train.loop import PROGRESS_EVERY_S, ProgressLog

__all__ = ["apply_calibration", "calibrate_fold_model", "capped", "fit_class_means", "lda_slope"]

log = logging.getLogger(__name__)

TARGET_LOGIT = math.log(9.0)  # class means -> probability 0.1 / 0.9
MIN_GAP = 1e-6
MAX_SCALE = 20.0  # the demo's fold models: 0.8-1.9


def capped(gap: float) -> bool:
    """Whether class means ``gap`` apart would need more than ``MAX_SCALE`` to reach ∓ln 9."""
    return bool(MAX_SCALE * gap < 2 * TARGET_LOGIT)


def lda_slope(logits: np.ndarray, labels: np.ndarray) -> float:
    """``gap / sd²`` of binary logits (n,) with labels (n,) in {0, 1}: the class-mean gap over
    the pooled within-class variance (n - 2 degrees of freedom), the log-odds slope of two
    Gaussian classes of equal variance (linear discriminant analysis); inf without spread."""
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    m0, m1 = z[y == 0].mean(), z[y == 1].mean()
    resid = np.concatenate([z[y == 0] - m0, z[y == 1] - m1])
    var = float((resid**2).sum()) / max(1, len(z) - 2)
    return float(m1 - m0) / var if var > 0 else math.inf


def fit_class_means(logits: Sequence[float], labels: Sequence[int]) -> dict[str, Any] | None:
    """The affine map ``{"method", "offset", "scale", "class_mean_logits", "n_slides"}`` of the
    binary bag logits (n,) of reference slides with labels (n,) in {0, 1} (scale
    ``2 ln 9 / gap``; above ``MAX_SCALE``, ``min(MAX_SCALE, gap / sd²)``: module docstring);
    None (logits kept)
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
    scale = 2 * TARGET_LOGIT / gap
    if capped(gap):  # barely separated: the slope the overlapping classes support
        scale = min(MAX_SCALE, lda_slope(z, y))
    return {
        "method": "class_means",
        "offset": (m0 + m1) / 2,
        "scale": scale,
        "class_mean_logits": [m0, m1],
        "n_slides": int(len(z)),
    }


def calibrate_fold_model(
    model_path: str | Path,
    bags: Sequence[Any],
    labels: Sequence[int],
    chunk: int | None,
    device: str | torch.device = "cpu",
    log_every_s: float | None = PROGRESS_EVERY_S,
) -> dict[str, Any] | None:
    """Fit :func:`fit_class_means` on the bag logits of ``model_path``'s model (eval mode) for
    ``bags`` (the fold's training and validation bags) with class indices ``labels`` and
    record it in model.pt (key ``logit_calibration``, rewritten atomically). Idempotent: a
    model.pt that has the key is left as it is. Models with more than two classes are left
    uncalibrated. Returns the map (None when none was fitted). A progress line (slides
    scored) at most every ``log_every_s`` seconds: the pass is a forward over every training
    and validation patch."""
    # one read (and digest check) of model.pt, which the training marks finished afterwards
    model, ckpt = load_model(model_path, device, unfinished=True)
    if "logit_calibration" in ckpt:
        return ckpt["logit_calibration"]
    if len(ckpt["classes"]) != 2:
        log.info("logit calibration: %d classes, logits left as they are", len(ckpt["classes"]))
        return None
    zs, ys = _bag_logits(model, bags, labels, chunk, log_every_s)
    cal = fit_class_means(zs, ys)
    if cal is None:
        log.warning(
            "logit calibration: the model does not separate its %d training/validation slides "
            "(class-mean logits not ordered); its logits are left as they are",
            len(zs),
        )
    elif capped(np.diff(cal["class_mean_logits"])[0]):
        m0, m1 = cal["class_mean_logits"]
        s = cal["scale"]
        log.warning(
            "logit calibration: the model barely separates its %d training/validation slides "
            "(class-mean logits %.3f / %.3f): scaled by %.3g only, to %+.3f / %+.3f (not to "
            "∓ln 9)",
            cal["n_slides"],
            m0,
            m1,
            s,
            (m0 - cal["offset"]) * s,
            (m1 - cal["offset"]) * s,
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


def _bag_logits(
    model: torch.nn.Module,
    bags: Sequence[Any],
    labels: Sequence[int],
    chunk: int | None,
    log_every_s: float | None,
) -> tuple[list[float], list[int]]:
    """The binary bag logits of ``model`` on ``bags`` with patches, and their labels."""
    progress = ProgressLog("logit calibration", len(bags), log_every_s, unit="slides", logger=log)
    zs, ys = [], []
    with torch.inference_mode():
        for i, (bag, y) in enumerate(zip(bags, labels, strict=True)):
            if len(bag):
                logits, _ = model(bag, max_instances_per_forward_pass=chunk)
                zs.append(float(logits.float().reshape(-1)[0]))
                ys.append(int(y))
            progress.update(i + 1)
    return zs, ys
