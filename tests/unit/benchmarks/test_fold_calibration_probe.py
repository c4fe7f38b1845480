"""benchmarks/fold_calibration_probe.py: the per-fold standardisation it measures."""

from __future__ import annotations

import pandas as pd
import pytest


def _run(offsets: list[float]) -> pd.DataFrame:
    """Two folds whose models rank perfectly but on shifted, scaled logit scales: fold k's
    logits are ``offsets[k] + 3 * (k + 1) * (y - 0.5)`` plus a small slide-specific term."""
    rows = []
    for fold, off in enumerate(offsets):
        for role, n in (("train", 4), ("val", 2), ("test", 2)):
            for i in range(n):
                y = i % 2
                logit = off + 3 * (fold + 1) * (y - 0.5) + 0.01 * i
                rows.append(
                    {"fold": fold, "slide_id": f"f{fold}{role}{i}", "role": role, "y": y}
                    | {"logit": logit, "variant": "v", "run": "draw0", "seed": "seed0"}
                )
    return pd.DataFrame(rows)


def test_standardised_maps_class_means_to_plus_minus_half(bench) -> None:
    df = _run([5.0, -5.0])
    z = bench.standardised(df, ["train"])
    test = df.loc[z.index]
    assert z[test.y == 1].round(2).tolist() == pytest.approx([0.5, 0.5], abs=0.01)
    assert z[test.y == 0].round(2).tolist() == pytest.approx([-0.5, -0.5], abs=0.01)


def test_evaluate_standardisation_repairs_the_pooled_auc(bench, tmp_path) -> None:
    path = tmp_path / "predictions.csv"
    _run([5.0, -5.0]).to_csv(path, index=False)
    out = bench.evaluate(path)
    run = out["runs"][0]
    assert run["raw"] < 0.8  # fold 1's positives (-3.5) sit below fold 0's negatives (+3.5)
    assert run["mid_tr"] == 1.0
    assert run["shift_trv"] == 1.0
    assert out["summary"]["mid_tr"]["better_than_raw"] == 1
    assert out["n_runs"] == 1
