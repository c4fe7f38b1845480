"""Patch scores: where the attention looked and how much each neighbourhood looks positive.

Prediction writes, beside each slide's attention array ``ATTENTION_DIR/{slide_id}.npy``, the
slide's patch logits ``ATTENTION_DIR/patch_logits/{slide_id}.npy`` (float32 (N,), the store's
row order: the bag classifier applied to each patch, smoothed over the patch grid;
:meth:`gigamil.models.mil.MILModel.forward_patches`). A slide's *patch score* (N,) is the mean
of the percentile ranks (in (0, 1], ties averaged) of its attention and of its patch logits:
a patch scores high where the model looked *and* its neighbourhood looks positive. Attention
alone is relative and peaked (it picks the most telling patches, not every lesion patch), the
patch logits alone miss what the attention pool learnt to select; the ranks put the two on one
scale. Percentile ranks are how CLAM's heatmaps show attention (Lu et al. 2021, Nat Biomed Eng
5:555). Measured on real tissue in docs/real_tissue.md, "Patch scores".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError

PATCH_LOGITS_DIR = "patch_logits"
log = logging.getLogger(__name__)


def patch_logit_file(attention: str | Path) -> Path:
    """The patch-logit array written with the attention array ``attention``
    (``DIR/{slide_id}.npy`` -> ``DIR/patch_logits/{slide_id}.npy``)."""
    attention = Path(attention)
    return attention.parent / PATCH_LOGITS_DIR / attention.name


def attention_of(path: str | Path) -> Path:
    """The attention array a patch-logit file was written with (:func:`patch_logit_file`
    backwards, for the workflow's ``attention/{cohort}/patch_logits/``); any other path as is."""
    path = Path(path)
    folder = path.parent
    if folder.name == PATCH_LOGITS_DIR and folder.parent.parent.name == "attention":
        return folder.parent / path.name
    return path


def patch_logit_files(attention: Sequence[str | Path]) -> list[Path] | None:
    """The patch-logit files of several attention files (fold models of one slide), or None
    when one is missing (predictions written before gigamil wrote patch logits; a warning
    when others have theirs: the slide then has no patch score)."""
    files = [patch_logit_file(a) for a in attention]
    missing = [str(f) for f in files if not f.is_file()]
    if missing and len(missing) < len(files):
        log.warning(
            "no patch score for a slide: its attention files have patch logits but %s is "
            "missing (predicted before gigamil wrote them?); predict again to have one",
            ", ".join(missing),
        )
    return None if missing else files


def mean_patch_logits(files: Sequence[str | Path], n_patches: int) -> np.ndarray:
    """The mean (N,) of one slide's patch-logit ``files`` (:func:`patch_logit_files`), which
    must have the ``n_patches`` values of the attention beside them.

    Raises:
        GigamilError: a file that is damaged (:func:`~gigamil.evaluate.localization.
            mean_attention`), or patch logits of another length than the attention (a file
            written by another prediction, or of another store): names them and the redo.
    """
    from gigamil.evaluate.localization import mean_attention
    from gigamil.evaluate.predictions import redo_hint

    logits = mean_attention(files)
    if logits.shape != (n_patches,):
        raise GigamilError(
            f"patch logits {', '.join(map(str, files))} have {logits.shape[0]} values but the "
            f"attention beside them has {n_patches} (not written by the same prediction): "
            f"{redo_hint(files[0])}"
        )
    return logits


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Percentile ranks (N,) in (0, 1] of ``x`` (N,): rank / N, ties given their mean rank."""
    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return np.zeros(0)
    return pd.Series(x).rank(method="average").to_numpy() / x.size


def patch_score(attention: np.ndarray, patch_logits: np.ndarray) -> np.ndarray:
    """The mean (N,) of the percentile ranks of ``attention`` (N,) and ``patch_logits`` (N,).

    Raises:
        ValueError: the two arrays have different shapes.
    """
    attention, patch_logits = np.asarray(attention), np.asarray(patch_logits)
    if attention.shape != patch_logits.shape:
        raise ValueError(
            f"attention {attention.shape} and patch logits {patch_logits.shape} differ in shape"
        )
    return (percentile_rank(attention) + percentile_rank(patch_logits)) / 2


def heatmap_weights(
    attention_files: Sequence[str | Path], weights: str, weight: str
) -> tuple[np.ndarray, str]:
    """The per-patch weights (N,) a heatmap draws and their name for its labels.

    ``attention_files``: the fold models' attention files of one slide; ``weights``: config
    ``heatmaps.weights`` (``attention`` or ``patch_score``); ``weight``: the name of the
    attention (:func:`gigamil.viz.heatmap.weight_name`). ``attention``: the mean attention
    (:func:`gigamil.evaluate.localization.mean_attention`), named ``weight``. ``patch_score``:
    the :func:`patch_score` of the mean attention and mean patch logits, divided by its sum,
    named ``patch score``; attention, with a warning, where a file has no patch logits.

    Raises:
        ValueError: ``weights`` is neither.
    """
    from gigamil.evaluate.localization import mean_attention

    if weights not in ("attention", "patch_score"):
        raise ValueError(f"heatmap weights must be attention or patch_score, got {weights!r}")
    attention = mean_attention(attention_files)
    if weights == "attention" or not len(attention):
        return attention, weight
    logit_files = patch_logit_files(attention_files)  # warns when only some are missing
    if logit_files is None:
        if any(patch_logit_file(a).is_file() for a in attention_files):
            return attention, weight
        log.warning(
            "no patch logits beside %s (predicted before 2026-12-07?): drawing the %s, not the "
            "patch score; predict again for the patch score",
            ", ".join(map(str, attention_files)),
            weight,
        )
        return attention, weight
    score = patch_score(attention, mean_patch_logits(logit_files, len(attention)))
    log.info("drawing the patch score (heatmaps.weights: patch_score), not the %s", weight)
    return (score / score.sum()).astype(np.float32), "patch score"
