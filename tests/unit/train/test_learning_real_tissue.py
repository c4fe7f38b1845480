"""Training learns on real tissue: a small cohort of bags of real PatchCamelyon tiles (the
packaged CC0 subset), trained from random initialisation with the schema's default model and
training settings through ``train_fold`` (calibration included), then predicted on held-out bags.

Issue 18: before calibrated normalisation the training loss stayed at ln 2 on such cohorts.
"""

from __future__ import annotations

import pandas as pd
import pytest

from gigamil.demo_tiles import write_tile_bags
from gigamil.evaluate.metrics import roc_auc
from gigamil.tile_pool import read_tile_pool
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold

N_TRAIN, N_TEST = 24, 12  # bags, half of each class


@pytest.fixture(scope="module")
def tile_cohort(tmp_path_factory):
    """Bags of 16 real tiles (4 x 4); lesion bags hold 6-9 tumour tiles (the first rows)."""
    root = tmp_path_factory.mktemp("real_tiles")
    df = write_tile_bags(root, read_tile_pool(None), N_TRAIN + N_TEST, seed=7)
    return root, df.iloc[:N_TRAIN], df.iloc[N_TRAIN:]


@pytest.mark.slow
def test_training_on_real_tiles_moves_the_loss_and_separates_held_out_bags(tile_cohort):
    root, train, test = tile_cohort
    out = root / "fold"
    model_path = train_fold(
        train,
        train.iloc[:0],  # no validation: every epoch runs, the last (lowest train loss) is kept
        ["normal", "lesion"],
        {"encoder": "smallcnn", "pool": "abmil", "att_dim": 64},
        {
            "device": "cpu",
            "epochs": 20,
            "lr": 3e-4,
            "early_stopping": {"metric": "loss"},
            "augment": {"stain_jitter": 0.1},
        },
        out,
        threads=1,
    )
    log = pd.read_csv(out / "train_log.csv")
    assert len(log) == 20
    first, last = log["train_loss"].iloc[:3].mean(), log["train_loss"].iloc[-3:].mean()
    assert last < 0.5, f"training loss stayed near ln 2: {log['train_loss'].round(3).tolist()}"
    assert last < first - 0.15
    pred = predict_slides(model_path, test, root / "pred.csv", root / "att")
    y = (pred["label"] == "lesion").to_numpy().astype(int)
    prob = pred[["prob_normal", "prob_lesion"]].to_numpy()
    auc = roc_auc(y, prob)
    print(f"held-out AUC {auc:.3f}, train loss {first:.3f} -> {last:.3f}")
    assert auc >= 0.8  # held-out bags: better than chance by a wide margin
