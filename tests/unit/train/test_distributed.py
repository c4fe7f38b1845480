"""DDP: `gigamil train` under torchrun with 2 gloo processes on CPU gives the same parameters as
one process on the same bags (bags_per_step doubled so each optimizer step sees the same bags)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from gigamil.train.launch import torchrun_command, train_fold_torchrun
from gigamil.train.run import train_fold


def test_two_process_gloo_equals_one_process(mil_bags, tmp_path: Path, monkeypatch) -> None:
    train = mil_bags.cohort(tmp_path / "stores", 6, 3, "t")
    val = mil_bags.cohort(tmp_path / "stores", 2, 4, "v")
    train.to_csv(tmp_path / "train.csv", index=False)
    val.to_csv(tmp_path / "val.csv", index=False)
    training = {
        "device": "cpu",
        "seed": 3,
        "epochs": 2,
        "lr": 3e-3,
        "schedule": "cosine",
        "bags_per_step": 1,
        "max_instances_per_forward_pass": 7,
        "max_instances_per_bag": 12,
        "early_stopping": {"metric": "loss", "patience": 5},
        "augment": {"flips": True, "rot90": True, "color_jitter": 0.1},
    }
    model = dict(mil_bags.model, dropout=0.1)
    cfg = {
        "experiment": "ddp",
        "classes": mil_bags.classes,
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": model,
        "training": training,
    }
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the launcher the train_fold rule uses when a fold gets several GPUs
    model_pt = train_fold_torchrun(
        train, val, cfg, tmp_path / "ddp", nproc=2, threads=2, log_file=tmp_path / "ddp.log"
    )
    assert model_pt.is_file(), (tmp_path / "ddp.log").read_text()[-3000:]
    assert yaml.safe_load((tmp_path / "ddp" / "ddp" / "config.yaml").read_text()) == cfg

    single = dict(training, bags_per_step=2)
    train_fold(train, val, mil_bags.classes, model, single, tmp_path / "one")
    a = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    assert a["early_stopping"]["epoch"] == b["early_stopping"]["epoch"] == 2
    # AdamW hides a uniform scale of the gradients in the weights (averaging the ranks'
    # gradients instead of summing them moved them by 5.7e-4 only); its first moment, a running
    # mean of the gradients, shows it: the same within float noise (it was 0.5 so)
    moment = moment_ratio(a["optimizer"]["state"], b["optimizer"]["state"])
    assert abs(moment - 1.0) < 0.02, moment
    # Float32 sums in another order differ by ~1e-7; AdamW turns the noise of near-zero
    # gradients (e.g. the attention V bias, nearly cancelled by the softmax) into up to ~1e-4,
    # a few % of one step (lr = 3e-3). A wrong split of the bags moves parameters by ~lr.
    diff = max_param_diff(a["model"], b["model"])
    assert diff < 3e-4, diff
    wrong = dict(training, bags_per_step=1)  # one process, other bags per step
    train_fold(train, val, mil_bags.classes, model, wrong, tmp_path / "wrong")
    c = torch.load(tmp_path / "wrong" / "last.pt", weights_only=True)
    assert max_param_diff(c["model"], b["model"]) > 3e-3  # the check can tell them apart


def moment_ratio(a: dict, b: dict) -> float:
    """||exp_avg(a)|| / ||exp_avg(b)|| over all parameters of two AdamW states."""
    norm = [
        sum(float(st["exp_avg"].double().pow(2).sum()) for st in s.values()) ** 0.5 for s in (a, b)
    ]
    return norm[0] / norm[1]


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(
        float((a[k].double() - v.double()).abs().max())
        for k, v in b.items()
        if v.is_floating_point() and v.numel()
    )


def test_torchrun_command_splits_threads(tmp_path: Path) -> None:
    cmd = torchrun_command(tmp_path, tmp_path / "out", nproc=4, threads=8)
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert "--nproc_per_node=4" in cmd and cmd[cmd.index("--threads") + 1] == "2"
    assert cmd[cmd.index("--train-csv") + 1] == str(tmp_path / "train.csv")


def test_ranks_validate_one_set_of_batchnorm_statistics(mil_bags, tmp_path: Path, monkeypatch):
    """Under model.batchnorm: train each rank updated the running statistics on its own bags;
    the ranks then validated differently, one stopped early and the other failed waiting for it
    (this seed did). With two members, rank 1 also waits while rank 0 calibrates each one."""
    import re

    train = mil_bags.cohort(tmp_path / "stores", 6, 3, "t")
    val = mil_bags.cohort(tmp_path / "stores", 3, 4, "v")
    training = {
        "device": "cpu",
        "seed": 3,
        "epochs": 6,
        "lr": 3e-3,
        "max_instances_per_forward_pass": 5,
        "early_stopping": {"metric": "loss", "patience": 1},
        "replicates": 2,
    }
    cfg = {
        "experiment": "ddp",
        "classes": mil_bags.classes,
        "cohorts": {"c": {"sheet": "sheet.csv", "role": "train"}},
        "model": dict(mil_bags.model, batchnorm="train"),
        "training": training,
    }
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    log_file = tmp_path / "ddp.log"
    model_pt = train_fold_torchrun(
        train, val, cfg, tmp_path / "ddp", nproc=2, threads=2, log_file=log_file
    )
    text = log_file.read_text()
    assert model_pt.is_file(), text[-3000:]
    done = re.findall(r"rank (\d) (replicate\d epoch \d+)/6\].*done: .*(val_loss \S+)", text)
    by_rank = [sorted((epoch, loss) for rank, epoch, loss in done if rank == r) for r in "01"]
    assert by_rank[0] == by_rank[1] and len(by_rank[0]) >= 4


def test_train_fold_torchrun_refuses_to_nest_and_otherwise_launches_torchrun(
    tmp_path: Path, monkeypatch
) -> None:
    """Inside a torchrun process (WORLD_SIZE set), launching torchrun again would start
    nproc × nproc processes; one process is train_fold's job."""
    import pandas as pd

    from gigamil.train import launch

    calls: list[list[str]] = []
    monkeypatch.setattr(launch.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    slides = pd.DataFrame({"slide_id": ["a"], "label": ["x"]})
    with pytest.raises(ValueError, match="nproc >= 2"):
        train_fold_torchrun(slides, slides, {}, tmp_path / "one", nproc=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="already inside a torchrun process group"):
        train_fold_torchrun(slides, slides, {}, tmp_path / "nested", nproc=2)
    assert calls == []
    monkeypatch.delenv("WORLD_SIZE")
    out = train_fold_torchrun(slides, slides, {"seed": 1}, tmp_path / "f", nproc=2, threads=4)
    assert out == tmp_path / "f" / "model.pt"
    assert calls == [torchrun_command(tmp_path / "f" / "ddp", tmp_path / "f", 2, 4)]
    assert yaml.safe_load((tmp_path / "f" / "ddp" / "config.yaml").read_text()) == {"seed": 1}
