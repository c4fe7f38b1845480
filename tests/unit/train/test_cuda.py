"""train_fold and predict_slides on CUDA (marked gpu: ``pytest -m gpu`` on a CUDA machine)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gigamil.data.bags import ZarrBag
from gigamil.train.accel import prepare_model
from gigamil.train.amp import bf16_supported
from gigamil.train.checkpoint import load_model
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold

pytestmark = pytest.mark.gpu


def training(**kw: object) -> dict:
    cfg = {
        "device": "cuda",
        "seed": 0,
        "epochs": 3,
        "lr": 3e-3,
        "bags_per_step": 2,
        "max_instances_per_forward_pass": 8,
        "early_stopping": {"metric": "loss", "patience": 10},
        "augment": {"flips": True, "rot90": True, "color_jitter": 0.05},
    }
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def cohort(mil_bags, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("stores")
    return mil_bags.cohort(root, 10, 0, "t"), mil_bags.cohort(root, 6, 1, "v")


def test_pinned_chunks_and_non_blocking_copy(mil_bags, cohort) -> None:
    train, _ = cohort
    bag = ZarrBag(train.store.iloc[0], workers=4, pin_memory=True)
    chunks = list(bag.chunks(5))
    assert all(c.is_pinned() for c in chunks)
    on_gpu = torch.cat([c.to("cuda", non_blocking=True) for c in chunks])
    torch.cuda.synchronize()
    assert torch.equal(on_gpu.cpu(), bag.load())


@pytest.mark.parametrize("amp", ["auto", "fp16", False])
def test_train_fold_and_predict_on_cuda_then_on_cpu(
    mil_bags, cohort, tmp_path: Path, caplog, amp
) -> None:
    """End to end on CUDA (decoding threads, pinned memory, channels-last), every precision;
    the CUDA checkpoint loads and predicts on a CPU the same (to float32 rounding, TF32 off)."""
    train, val = cohort
    with caplog.at_level(logging.INFO):
        path = train_fold(
            train,
            val,
            mil_bags.classes,
            mil_bags.model,
            training(amp=amp),
            tmp_path / "f",
            threads=4,
        )
    auto = "bf16" if bf16_supported(torch.device("cuda")) else "off"
    expected = {"auto": auto, "fp16": "fp16"}
    assert f"mixed precision: {expected.get(amp, 'off')}" in caplog.text
    with open(tmp_path / "f" / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # IEEE fp32
    try:
        gpu = predict_slides(path, val, None, tmp_path / "att_gpu", device="cuda", threads=4)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    cpu = predict_slides(path, val, None, tmp_path / "att_cpu", device="cpu", threads=1)
    probs = [c for c in gpu.columns if c.startswith("prob_")]
    assert np.isfinite(gpu[probs].to_numpy()).all()
    assert np.allclose(gpu[probs].to_numpy(), cpu[probs].to_numpy(), atol=1e-3)
    for sid in val.slide_id:
        a = np.load(tmp_path / "att_gpu" / f"{sid}.npy")
        b = np.load(tmp_path / "att_cpu" / f"{sid}.npy")
        assert a.shape == b.shape and np.allclose(a, b, rtol=1e-3, atol=1e-6)
    model, _ = load_model(path, "cpu")  # a CPU model from the CUDA checkpoint, plain layout
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_resume_on_cuda_continues(
    mil_bags, cohort, tmp_path: Path, monkeypatch, train_killed
) -> None:
    """A run killed after epoch 1 resumes from last.pt written on CUDA (optimizer, fp16 gradient
    scaler, CUDA RNG) with epoch 2, and ends like the uninterrupted run."""
    from gigamil.train import loop as loop_mod
    from gigamil.train import trainer as trainer_mod

    train, val = cohort
    cfg = training(epochs=3, amp="fp16")
    full = tmp_path / "full"
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, full)
    killed = tmp_path / "killed"  # killed in epoch 2, after epoch 1's checkpoint
    train_killed(2, train, val, mil_bags.classes, mil_bags.model, cfg, killed)
    last = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)
    assert "scaler" in last and "cuda" in last["rng"]
    seen = []

    def recording(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs["epoch"])
        return loop_mod.train_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_epoch", recording)
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, killed, resume=True)
    assert seen == [2, 3]  # continued, not restarted
    for path in (full, killed):
        with open(path / "train_log.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with open(full / "train_log.csv") as a, open(killed / "train_log.csv") as b:
        for ra, rb in zip(csv.DictReader(a), csv.DictReader(b), strict=True):
            assert float(ra["train_loss"]) == pytest.approx(float(rb["train_loss"]), rel=1e-2)


def test_compile_on_cuda_trains_or_falls_back(mil_bags, cohort, tmp_path: Path, caplog) -> None:
    train, val = cohort
    with caplog.at_level(logging.WARNING):
        train_fold(
            train.head(4),
            val.head(2),
            mil_bags.classes,
            mil_bags.model,
            training(epochs=1, compile=True),
            tmp_path / "c",
        )
    with open(tmp_path / "c" / "train_log.csv") as fh:
        assert np.isfinite(float(next(csv.DictReader(fh))["train_loss"]))
    assert (tmp_path / "c" / "model.pt").exists()
    fell_back = "torch.compile of the encoder" in caplog.text
    print("torch.compile on this machine:", "fell back to eager" if fell_back else "compiled")


def test_channels_last_on_cuda(mil_bags) -> None:
    from gigamil.models.factory import build_mil_model

    model = build_mil_model({"encoder": "resnet18"}, 2, 64).cuda()
    prepare_model(model, torch.device("cuda"))
    conv = model.feature_encoder[1].conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, device="cuda")
    with torch.no_grad():
        feats = model.eval().feature_encoder(x)
    assert feats.shape == (4, 512) and torch.isfinite(feats).all()
