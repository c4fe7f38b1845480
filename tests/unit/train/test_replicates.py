"""training.replicates: N models per fold in one model.pt (gigamil.train.replicates,
gigamil.models.ensemble)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gigamil.errors import GigamilError
from gigamil.models.ensemble import ReplicateEnsemble
from gigamil.settings import TrainingConfig
from gigamil.train.checkpoint import atomic_save, load_checkpoint, load_model
from gigamil.train.predict import predict_slides
from gigamil.train.replicates import combine_replicates, replicate_config, rotated_validation
from gigamil.train.run import train_fold


def training(**kw: object) -> dict:
    cfg = {
        "device": "cpu",
        "seed": 3,
        "epochs": 3,
        "lr": 3e-3,
        "bags_per_step": 2,
        "max_instances_per_forward_pass": 8,
        "early_stopping": {"metric": "auc", "patience": 10},
    }
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def cohort(mil_bags, tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, ...]:
    root = tmp_path_factory.mktemp("stores")
    return mil_bags.cohort(root, 8, 0, "t"), mil_bags.cohort(root, 4, 1, "v")


def _logit(p: pd.Series) -> np.ndarray:
    p = p.clip(1e-12, 1 - 1e-12).to_numpy()
    return np.log(p / (1 - p))


def test_member_config_and_signature() -> None:
    tcfg = TrainingConfig.from_dict({"seed": 5, "replicates": 3})
    member = replicate_config(tcfg, 2)
    assert (member.seed, member.replicates) == (7, 1)
    # one model per fold: the signature of folds trained before the key existed
    assert member.resume_signature() == TrainingConfig.from_dict({"seed": 7}).resume_signature()
    assert "replicates" not in TrainingConfig().resume_signature()
    assert tcfg.resume_signature()["replicates"] == 3


def test_replicates_train_members_and_predict_their_mean(
    mil_bags, cohort, tmp_path: Path, log_lines
) -> None:
    train, val = cohort
    torch.set_num_threads(1)
    fold = tmp_path / "fold0"
    path = train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(replicates=2), fold, fold=0
    )
    assert path == fold / "model.pt"
    lines = [ln for ln in log_lines() if "gigamil.train" in ln]
    assert any("[fold0 replicate1 epoch 3/3] gigamil.train.run: done:" in ln for ln in lines)
    # numbered as the folders and train_log.csv number them
    assert any("[fold0 replicate0]" in ln and "(1 of 2, seed 3)" in ln for ln in lines)
    ckpt = load_checkpoint(path)
    assert "state_dict" not in ckpt and [m["seed"] for m in ckpt["replicates"]] == [3, 4]
    assert ckpt["classes"] == mil_bags.classes and ckpt["patch_px"] == mil_bags.px
    a, b = (load_checkpoint(fold / f"replicate{r}" / "model.pt") for r in (0, 1))
    for member, own in zip(ckpt["replicates"], (a, b), strict=True):
        assert member["epoch"] == own["epoch"]
        assert member["logit_calibration"] == own["logit_calibration"] is not None
        assert all(torch.equal(member["state_dict"][k], v) for k, v in own["state_dict"].items())
    assert any(
        not torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]
    )  # different seeds, different models
    log = pd.read_csv(fold / "train_log.csv")
    assert list(log.columns)[0] == "replicate" and sorted(set(log.replicate)) == [0, 1]
    member_log = pd.read_csv(fold / "replicate1" / "train_log.csv")
    pd.testing.assert_frame_equal(
        log[log.replicate == 1].drop(columns="replicate").reset_index(drop=True), member_log
    )
    text = (fold / "train_log.csv").read_text().splitlines()  # the members' cells verbatim
    member_text = (fold / "replicate1" / "train_log.csv").read_text().splitlines()
    assert text[0] == "replicate," + member_text[0]
    assert [ln for ln in text if ln.startswith("1,")] == ["1," + ln for ln in member_text[1:]]
    model, _ = load_model(path)
    assert isinstance(model, ReplicateEnsemble) and not model.training

    # member 0 is exactly the one-model fold trained with the same seed
    single = train_fold(train, val, mil_bags.classes, mil_bags.model, training(), tmp_path / "one")
    one = load_checkpoint(single)
    assert all(torch.equal(one["state_dict"][k], v) for k, v in a["state_dict"].items())

    # the fold's prediction is the mean of the members' calibrated logits and attention
    slides = pd.concat([train, val], ignore_index=True)
    pos = f"prob_{mil_bags.classes[1]}"
    ens = predict_slides(path, slides, None, tmp_path / "att", device="cpu")
    parts = [
        predict_slides(fold / f"replicate{r}" / "model.pt", slides, None, tmp_path / f"att{r}")
        for r in (0, 1)
    ]
    expected = (_logit(parts[0][pos]) + _logit(parts[1][pos])) / 2
    assert np.allclose(_logit(ens[pos]), expected, atol=1e-4)
    assert not np.allclose(_logit(parts[0][pos]), _logit(parts[1][pos]), atol=1e-3)
    sid = slides.slide_id[0]
    att = [np.load(tmp_path / d / f"{sid}.npy") for d in ("att", "att0", "att1")]
    assert np.allclose(att[0], (att[1] + att[2]) / 2, atol=1e-6)
    assert np.isclose(att[0].sum(), 1.0, atol=1e-5)

    # growing to three members trains only the new one
    n_lines = len(log_lines())
    before = (fold / "replicate0" / "model.pt").stat().st_mtime_ns
    train_fold(train, val, mil_bags.classes, mil_bags.model, training(replicates=3), fold)
    assert sum("training already finished" in ln for ln in log_lines()[n_lines:]) == 2
    assert (fold / "replicate0" / "model.pt").stat().st_mtime_ns == before
    assert [m["seed"] for m in load_checkpoint(path)["replicates"]] == [3, 4, 5]


def test_combine_refuses_missing_or_mismatched_members(mil_bags, cohort, tmp_path: Path) -> None:
    train, val = cohort
    torch.set_num_threads(1)
    dirs = [tmp_path / "r0", tmp_path / "r1"]
    for r, d in enumerate(dirs):
        train_fold(train, val, mil_bags.classes, mil_bags.model, training(epochs=1, seed=r), d)
    with pytest.raises(GigamilError, match="member model missing"):
        combine_replicates([dirs[0], tmp_path / "nowhere"], [0, 1], tmp_path)
    other = load_checkpoint(dirs[1] / "model.pt")
    # a member of an earlier gigamil (no stain_normalization key) combines with a new one
    older = {k: v for k, v in other.items() if k != "stain_normalization"}
    atomic_save(older, dirs[1] / "model.pt")
    assert other["stain_normalization"] == "none"
    assert load_checkpoint(combine_replicates(dirs, [0, 1], tmp_path / "c"))["replicates"]
    atomic_save({**other, "stain_normalization": "macenko"}, dirs[1] / "model.pt")
    with pytest.raises(GigamilError, match="differs .* in \\['stain_normalization'\\]"):
        combine_replicates(dirs, [0, 1], tmp_path)
    atomic_save({**other, "patch_px": other["patch_px"] * 2}, dirs[1] / "model.pt")
    with pytest.raises(GigamilError, match="differs .* in \\['patch_px'\\]"):
        combine_replicates(dirs, [0, 1], tmp_path)
    assert not (tmp_path / "model.pt").exists()


def _split(n_train_patients: int, n_val_patients: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A fold's (train, val) tables: patients of alternating class, two slides each."""

    def table(prefix: str, n: int) -> pd.DataFrame:
        rows = [
            {"slide_id": f"{prefix}{i}_s{k}", "patient_id": f"{prefix}{i}", "label": "ab"[i % 2]}
            for i in range(n)
            for k in (1, 2)
        ]
        return pd.DataFrame(rows)

    return table("t", n_train_patients), table("v", n_val_patients)


def test_rotated_validation_cycles_over_the_non_test_patients() -> None:
    train, val = _split(8, 2)  # per class: 4 training patients, 1 validation patient
    assert rotated_validation(train, val, 0, seed=1) == (train, val)
    seen = []
    for r in range(5):
        m_train, m_val = rotated_validation(train, val, r, seed=1)
        # whole patients move; as many of each class; nothing lost or added
        assert sorted([*m_train.slide_id, *m_val.slide_id]) == sorted(
            [*train.slide_id, *val.slide_id]
        )
        assert set(m_train.patient_id).isdisjoint(m_val.patient_id)
        assert sorted(m_val.groupby("patient_id").label.first()) == ["a", "b"]
        assert len(m_val) == len(val)
        seen.append(frozenset(m_val.patient_id))
    # five members: every one of the ten patients validates exactly once
    assert len(set().union(*seen)) == 10 and sum(map(len, seen)) == 10
    # deterministic for a seed, another order for another seed
    again = [frozenset(rotated_validation(train, val, r, seed=1)[1].patient_id) for r in range(5)]
    assert again == seen
    other = [frozenset(rotated_validation(train, val, r, seed=2)[1].patient_id) for r in range(5)]
    assert other != seen
    # no validation slides: nothing to rotate
    m_train, m_val = rotated_validation(train, val.iloc[:0], 3, seed=1)
    assert m_train is train and m_val.empty


def test_rotate_trains_members_on_other_validation_patients(
    mil_bags, cohort, tmp_path: Path, log_lines
) -> None:
    train, val = cohort
    torch.set_num_threads(1)
    fold = tmp_path / "fold0"
    cfg = training(replicates=2, replicate_validation="rotate", epochs=1)
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, fold, fold=0)
    lines = [ln for ln in log_lines() if "validation patients:" in ln]
    assert len(lines) == 2 and "[fold0 replicate1]" in lines[1]
    assert lines[0].endswith(", ".join(val.patient_id))  # member 0: the fold's own
    expected = rotated_validation(train, val, 1, seed=3)[1]
    assert lines[1].endswith(", ".join(expected.patient_id))
    assert set(expected.patient_id) != set(val.patient_id)
    # member 0 trained on the fold's own split: the signature of a fixed member
    member0 = replicate_config(TrainingConfig.from_dict(cfg), 0)
    assert (
        member0.resume_signature()
        == replicate_config(
            TrainingConfig.from_dict({**cfg, "replicate_validation": "fixed"}), 0
        ).resume_signature()
    )
    assert "replicate_validation" in TrainingConfig.from_dict(cfg).resume_signature()
    assert "replicate_validation" not in TrainingConfig().resume_signature()
