"""`gigamil features`: a new slide's feature store for a model trained on cached features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from gigamil.cli import main
from gigamil.data.bags import ZarrBag
from gigamil.data.feature_extract import extract_features
from gigamil.data.features import FeatureBag
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold


def test_features_cli_writes_the_store_a_feature_model_predicts(
    mil_bags, tmp_path: Path, capsys
) -> None:
    torch.set_num_threads(1)
    model_cfg = {**mil_bags.model, "trainable_blocks": 0}
    patch_cfg = {"mpp": 0.5, "patch_px": mil_bags.px}
    train = mil_bags.cohort(tmp_path / "p", 6, 0, "t")
    stores = []
    for row in train.itertuples(index=False):  # as rule extract_features writes them
        out = tmp_path / "f" / f"{row.slide_id}.zarr"
        stores.append(str(extract_features(row.store, out, model_cfg, patch_cfg, device="cpu")))
    training = {"device": "cpu", "epochs": 1, "max_instances_per_forward_pass": 8}
    ftrain = train.assign(store=stores)
    model = train_fold(
        ftrain, ftrain.iloc[:0], mil_bags.classes, model_cfg, training, tmp_path / "m"
    )
    cfg = {
        "classes": mil_bags.classes,
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": model_cfg,
        "preprocessing": {"patches": patch_cfg},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    new = mil_bags.cohort(tmp_path / "new", 1, 5, "n")  # a slide the model has not seen
    args = ["features", new.store.iloc[0], "--config", str(tmp_path / "config.yaml")]
    assert main([*args, "--out", str(tmp_path / "n0.zarr"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip().endswith("n0.zarr")
    assert FeatureBag(tmp_path / "n0.zarr").encoder_id == FeatureBag(stores[0]).encoder_id
    # --out may be an earlier feature store, never the patch store (it was replaced)
    assert main([*args, "--out", str(tmp_path / "n0.zarr"), "--device", "cpu"]) == 0
    assert main([*args, "--out", new.store.iloc[0], "--device", "cpu"]) == 2
    assert "exists and is not a feature store (a folder)" in capsys.readouterr().err
    assert ZarrBag(new.store.iloc[0]).attrs["patch_px"] == mil_bags.px
    preds = predict_slides(model, new.assign(store=str(tmp_path / "n0.zarr")), None, tmp_path / "a")
    assert np.isfinite(preds["prob_lesion"]).all()
    # the patch store itself is refused, and the error names the command that makes the other
    err = _predict_error(model, new, tmp_path)
    assert "gigamil features" in err and "--config" in err


def _predict_error(model: Path, slides, tmp_path: Path) -> str:
    from gigamil.errors import GigamilError

    try:
        predict_slides(model, slides, None, tmp_path / "b", device="cpu")
    except GigamilError as exc:
        return str(exc)
    raise AssertionError("a feature model predicted a patch store")


def test_features_cli_names_a_missing_cuda_as_the_option(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """--device cuda without CUDA is named as the option typed, before the store is read."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a GPU machine
    cfg = {
        "classes": ["a", "b"],
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": {"encoder": "smallcnn", "trainable_blocks": 0},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    args = ["features", str(tmp_path / "none.zarr"), "--config", str(tmp_path / "config.yaml")]
    assert main([*args, "--out", str(tmp_path / "f.zarr"), "--device", "cuda"]) == 2
    assert "--device: cuda requested but no CUDA device" in capsys.readouterr().err
