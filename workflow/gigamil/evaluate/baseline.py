"""A colour-histogram baseline for slide classification and lesion localisation.

A weak-label logistic regression on per-patch colour histograms: every patch of a training slide
inherits its slide's label; a slide's score is the mean of its top ``top_fraction`` (20 %) patch
scores; the patch scores themselves are scored against the lesion mask (localisation AUC, as for
gigamil's attention). It is trained on each fold's training slides (``train`` and ``val`` roles of
folds.csv) and scores the fold's ``test`` slides, so every slide is scored out of fold. An
end-to-end model that learns morphology should clearly beat it (benchmarks/real_tissue.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError
from gigamil.evaluate.metrics import binary_auc

BINS = 16  # histogram bins per RGB channel
TOP_FRACTION = 0.2  # a slide's score: the mean of its top 20 % patch scores


def colour_histograms(patches: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Per-channel RGB histograms of uint8 patches (N, H, W, 3): float32 (N, 3 * bins), each
    channel's bins summing to 1."""
    patches = np.asarray(patches)
    if patches.ndim != 4 or patches.shape[-1] != 3:
        raise GigamilError(f"patches must be (N, H, W, 3), got {patches.shape}")
    n, pixels = patches.shape[0], patches.shape[1] * patches.shape[2]  # n may be 0: no patches
    idx = (patches.reshape(n, pixels, 3).astype(np.int64) * bins) // 256  # (N, P, 3) bin a pixel
    out = np.zeros((n, 3, bins), dtype=np.float64)
    for c in range(3):
        np.add.at(out[:, c], (np.repeat(np.arange(n), idx.shape[1]), idx[:, :, c].ravel()), 1.0)
    out /= max(idx.shape[1], 1)
    return out.reshape(n, 3 * bins).astype(np.float32)


def fit_tile_classifier(
    features: Sequence[np.ndarray], labels: Sequence[int], c: float = 1.0, seed: int = 0
):
    """Logistic regression (standardised features, balanced class weights) on the patches of
    several slides, each patch labelled with its slide's label (0/1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([np.asarray(f) for f in features])
    y = np.concatenate([np.full(len(f), int(lab)) for f, lab in zip(features, labels, strict=True)])
    if len(np.unique(y)) < 2:
        raise GigamilError("the baseline needs training patches of both classes")
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=c, max_iter=2000, class_weight="balanced", random_state=seed),
    )
    return model.fit(x, y)


def tile_scores(model, features: np.ndarray) -> np.ndarray:
    """Positive-class probability (N,) of each patch; empty for a slide without patches."""
    if len(features) == 0:
        return np.zeros(0, dtype=np.float64)
    return model.predict_proba(np.asarray(features))[:, 1]


def slide_score(scores: np.ndarray, top_fraction: float = TOP_FRACTION) -> float:
    """Mean of the top ``ceil(top_fraction * N)`` patch scores (nan without patches)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if scores.size == 0:
        return float("nan")
    return float(scores[: max(1, math.ceil(top_fraction * scores.size))].mean())


def cross_validate(
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, int],
    folds: pd.DataFrame,
    top_fraction: float = TOP_FRACTION,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Out-of-fold baseline scores.

    Args:
        features: ``{slide_id: (N, F) patch features}`` of every slide in ``folds``.
        labels: ``{slide_id: 0/1}``.
        folds: folds.csv rows (``fold, role, slide_id``); ``train`` and ``val`` slides train a
            fold's model, its ``test`` slides are scored.

    Returns:
        ``(table, patch_scores)``: table with ``slide_id, fold, label, score`` (one row per test
        slide) and ``{slide_id: (N,) out-of-fold patch scores}``.
    """
    rows, patch_scores = [], {}
    for fold, part in folds.groupby("fold", sort=True):
        train = part.loc[part["role"].isin(["train", "val"]), "slide_id"].tolist()
        model = fit_tile_classifier(
            [features[s] for s in train], [labels[s] for s in train], seed=seed
        )
        for s in part.loc[part["role"] == "test", "slide_id"]:
            patch_scores[s] = tile_scores(model, features[s])
            rows.append(
                {
                    "slide_id": s,
                    "fold": int(fold),
                    "label": int(labels[s]),
                    "score": slide_score(patch_scores[s], top_fraction),
                }
            )
    return pd.DataFrame(rows, columns=["slide_id", "fold", "label", "score"]), patch_scores


def smooth_scores(scores: np.ndarray, grid: np.ndarray, alpha: float) -> np.ndarray:
    """Patch probabilities (N,) as log-odds smoothed over the patch grid (N, 2) by gigamil's Sm
    operator (:func:`gigamil.nn.pooling.smooth`, 10 fixed-point steps, 8-connectivity), as
    ``model.pool: smabmil`` smooths its attention scores with ``model.sm_alpha``: the same spatial
    prior (a lesion is a contiguous region) for the baseline."""
    import torch

    from gigamil.nn.pooling import grid_adjacency, smooth

    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-9, 1 - 1e-9)
    if p.size == 0:
        return p
    logit = torch.from_numpy(np.log(p / (1 - p)))
    adj = grid_adjacency(grid, dtype=torch.float64)
    return smooth(logit, adj, alpha).numpy()


def _summary(table: pd.DataFrame, score: str, loc: Mapping[str, float]) -> dict:
    """The AUCs of the slides that have a score (a slide without patches has none and is left
    out, as gigamil's metrics leave out a slide it could not predict) and the mean
    localisation AUC of the slides that have one."""
    table = table[np.isfinite(table[score].to_numpy(dtype=float))]
    finite = [v for v in loc.values() if np.isfinite(v)]
    return {
        "oof_auc": binary_auc(table["label"].to_numpy(), table[score].to_numpy()),
        "fold_auc": [
            binary_auc(p["label"].to_numpy(), p[score].to_numpy())
            for _, p in table.groupby("fold", sort=True)
        ],
        "localization_auc": float(np.mean(finite)) if finite else float("nan"),
        "localization_n_slides": len(finite),
    }


def evaluate_stores(  # noqa: PLR0913 - the data, then the baseline's settings
    stores: Mapping[str, str | Path],
    labels: Mapping[str, int],
    folds: pd.DataFrame,
    lesion_masks: Mapping[str, str | Path] | None = None,
    top_fraction: float = TOP_FRACTION,
    seed: int = 0,
    sm_alpha: float | None = None,
) -> dict:
    """The baseline on zarr patch stores (the patches gigamil trains on), out of fold.

    Returns ``oof_auc`` (pooled over all test slides), ``fold_auc``, ``localization_auc`` (mean
    over slides with a lesion mask and both lesion and other patches, patches with >= 50 % lesion
    count as lesion, as gigamil's attention is scored), ``localization_n_slides`` and
    ``per_slide`` (slide_id, fold, label, score, localization_auc). With ``sm_alpha`` also
    ``smoothed``: the same four figures with the patch scores smoothed over the patch grid first
    (:func:`smooth_scores`; the slide score the top-fraction mean of the smoothed log-odds), the
    baseline with the spatial prior gigamil's ``smabmil`` pool has.
    """
    from gigamil.data.store import read_store
    from gigamil.evaluate.localization import lesion_fraction, localization_auc

    features, geometry = {}, {}
    for s, path in stores.items():
        patches, coords, grid, attrs = read_store(path)
        features[s] = colour_histograms(patches[...])
        geometry[s] = (coords, grid, attrs)
    table, scores = cross_validate(features, labels, folds, top_fraction, seed)
    smoothed = {}
    if sm_alpha is not None:
        smoothed = {s: smooth_scores(v, geometry[s][1], sm_alpha) for s, v in scores.items()}
        table["score_smoothed"] = [slide_score(smoothed[s], top_fraction) for s in table.slide_id]
    loc, loc_sm = {}, {}
    for s, mask_path in (lesion_masks or {}).items():
        if s not in scores:
            continue
        coords, _, attrs = geometry[s]
        frac = lesion_fraction(coords, attrs, mask_path)  # as gigamil's evaluation reads it
        loc[s] = localization_auc(scores[s], frac)
        if smoothed:
            loc_sm[s] = localization_auc(smoothed[s], frac)
    table["localization_auc"] = table["slide_id"].map(loc)
    out = _summary(table, "score", loc)
    if smoothed:
        out["smoothed"] = {"sm_alpha": float(sm_alpha), **_summary(table, "score_smoothed", loc_sm)}
    return {**out, "per_slide": table.to_dict(orient="records")}
