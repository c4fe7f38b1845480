"""benchmarks/head_probe.py: the per-fold head training it measures (the probe is run by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _cohort(n_slides: int = 12, seed: int = 0):
    """Slides of 20 patches with 6 features; positive slides have 5 patches shifted by 6 on feature 0."""
    rng = np.random.default_rng(seed)
    feats, labels, rows = {}, {}, []
    for i in range(n_slides):
        s, y = f"s{i}", i % 2
        x = rng.normal(size=(20, 6)).astype(np.float32)
        if y:
            x[:5, 0] += 6.0
        feats[s], labels[s] = x, y
    for fold in range(3):
        for i in range(n_slides):
            role = "test" if i // 4 == fold else "train"
            rows.append({"fold": fold, "role": role, "slide_id": f"s{i}"})
    return feats, labels, pd.DataFrame(rows)


@pytest.mark.parametrize("head", ["abmil", "instance_top_0.2"])
def test_heads_learn_a_separable_cohort_out_of_fold(bench, head) -> None:
    feats, labels, folds = _cohort()
    auc = bench.head_oof_auc(feats, labels, folds, bench.HEADS[head], seed=0, epochs=100)
    assert auc >= 0.9


def test_labels_do_not_leak_into_test_scores(bench) -> None:
    feats, labels, folds = _cohort()
    permuted = np.random.default_rng(1).permutation(list(labels.values()))
    shuffled = dict(zip(labels, permuted, strict=True))
    # slide labels unrelated to the features: the out-of-fold AUC is no longer near 1
    auc = bench.head_oof_auc(feats, shuffled, folds, bench.HEADS["instance_top_0.2"], 0, 100)
    assert auc < 0.9
