"""training.strategy: em (gigamil.train.em): MNIST-bags learned by EM through train_fold, a
killed run resuming at the next round; and the frozen strategy on patch stores (the encoder
stays as initialised)."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from gigamil.models.factory import build_mil_model
from gigamil.settings import ModelConfig
from gigamil.train import em as em_mod
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


# --- MNIST-bags through train_fold ----------------------------------------------------------

EM_MODEL = {"encoder": "smallcnn", "weights": None, "batchnorm": "frozen", "pool": "abmil"}
NO_AUGMENT = {"flips": False, "rot90": False, "color_jitter": 0.0}  # a flipped 9 is no 9


def _digit_bags(write_store, root: Path, images, digits, n: int, prefix: str, rng):
    """Bags of 16-px RGB digit patches (mean size 10, sd 2); label nine iff a 9 is inside."""
    rows, nines = [], {}
    for i in range(n):
        size = int(np.clip(round(rng.normal(10, 2)), 2, None))
        idx = rng.choice(len(images), size=size, replace=False)
        img = np.kron(images[idx] / 16.0, np.ones((2, 2)))  # 8x8 -> 16x16
        patches = np.repeat((255 * img)[..., None], 3, axis=-1).astype(np.uint8)
        sid = f"{prefix}{i}"
        store = write_store(root / f"{sid}.zarr", patches, chunk=16)
        is_nine = digits[idx] == 9
        label = "nine" if is_nine.any() else "other"
        rows.append(
            {"cohort": "c", "slide_id": sid, "patient_id": sid, "label": label, "store": store}
        )
        nines[sid] = is_nine
    return pd.DataFrame(rows), nines


def test_em_learns_mnist_bags_and_attends_to_nines(write_store, tmp_path: Path) -> None:
    t0 = time.time()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        d.images, d.target, test_size=0.4, stratify=d.target, random_state=0
    )
    train, _ = _digit_bags(write_store, tmp_path, x_tr, y_tr, 100, "t", rng)
    val, _ = _digit_bags(write_store, tmp_path, x_tr, y_tr, 30, "v", rng)
    test, nines = _digit_bags(write_store, tmp_path, x_te, y_te, 100, "e", rng)
    training = {
        "device": "cpu",
        "seed": 0,
        "lr": 3e-3,
        "strategy": "em",
        "max_instances_per_forward_pass": 64,
        "augment": NO_AUGMENT,
        "em": {"rounds": 4, "head_epochs": 10, "encoder_steps": 60, "instances_per_round": 1000},
    }
    out = tmp_path / "fold0"
    model_path = train_fold(train, val, ["other", "nine"], EM_MODEL, training, out)
    rows = read_log(out / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]  # one row per round
    assert rows[0]["encoder_loss"] == "" and all(float(r["encoder_loss"]) > 0 for r in rows[1:])
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "model.pt", "train_log.csv"]

    preds = predict_slides(model_path, test, None, tmp_path / "att", device="cpu")
    auc = roc_auc_score(preds.label == "nine", preds.prob_nine)
    top_is_nine, inst_auc = [], []
    for sid, label in zip(preds.slide_id, preds.label, strict=True):
        if label == "nine":
            att = np.load(tmp_path / "att" / f"{sid}.npy")
            top_is_nine.append(bool(nines[sid][att.argmax()]))
            if not nines[sid].all():
                inst_auc.append(roc_auc_score(nines[sid], att))
    assert auc >= 0.9, auc
    assert np.mean(top_is_nine) >= 0.8, np.mean(top_is_nine)  # the top patch is a 9
    assert np.mean(inst_auc) >= 0.9, np.mean(inst_auc)  # 9s ranked above the other digits
    # round 1 is the frozen strategy (random smallcnn features); EM's rounds improve on it
    assert max(float(r["val_auc"]) for r in rows[1:]) > float(rows[0]["val_auc"])
    assert time.time() - t0 < 60


# --- resume ---------------------------------------------------------------------------------


def test_killed_em_run_resumes_at_the_next_round(
    mil_bags, write_store, tmp_path: Path, monkeypatch
) -> None:
    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 6, 0, "t")
    val = mil_bags.cohort(tmp_path / "s", 4, 1, "v")
    training = {
        "device": "cpu",
        "lr": 3e-3,
        "strategy": "em",
        "max_instances_per_forward_pass": 8,
        "em": {
            "rounds": 3,
            "head_epochs": 2,
            "encoder_steps": 3,
            "instance_batch": 8,
            "pseudo_label": "attention",
            "temperature": 0.5,
            "threshold": 0.6,
        },
    }
    model = {**mil_bags.model, "pool": "smabmil"}
    full = tmp_path / "full"
    train_fold(train, val, mil_bags.classes, model, training, full)

    killed = tmp_path / "killed"
    real_e_step = em_mod.EMTrainer.e_step

    def dying_e_step(self, r, items):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # killed in round 2, after round 1's checkpoint

    monkeypatch.setattr(em_mod.EMTrainer, "e_step", dying_e_step)
    with pytest.raises(KeyboardInterrupt):
        train_fold(train, val, mil_bags.classes, model, training, killed)
    assert [int(r["epoch"]) for r in read_log(killed / "train_log.csv")] == [1]
    assert torch.load(killed / "last.pt", weights_only=True)["early_stopping"]["epoch"] == 1
    (killed / "model.pt").unlink()  # Snakemake deletes the declared outputs of a failed job
    (killed / "train_log.csv").unlink()

    seen, real_m_step = [], em_mod.EMTrainer.m_step

    def recording_m_step(self, r, items):  # noqa: ANN001, ANN202
        seen.append(r)
        return real_m_step(self, r, items)

    monkeypatch.setattr(em_mod.EMTrainer, "e_step", real_e_step)
    monkeypatch.setattr(em_mod.EMTrainer, "m_step", recording_m_step)
    train_fold(train, val, mil_bags.classes, model, training, killed)
    assert seen == [2, 3]  # continued at round 2, not restarted (round 1 not trained again)
    log_full, log_killed = read_log(full / "train_log.csv"), read_log(killed / "train_log.csv")
    assert [int(r["epoch"]) for r in log_killed] == [1, 2, 3]
    for a, b in zip(log_full, log_killed, strict=True):
        for key in ("train_loss", "val_loss", "encoder_loss"):
            assert a[key] == b[key] or float(a[key]) == pytest.approx(float(b[key]), abs=1e-6)
    best = torch.load(full / "model.pt", weights_only=True)
    again = torch.load(killed / "model.pt", weights_only=True)
    assert again["epoch"] == best["epoch"]
    for k, v in best["state_dict"].items():
        assert torch.allclose(again["state_dict"][k].float(), v.float(), atol=1e-6), k
    # the model is a whole MILModel (encoder + head), as end_to_end writes it
    assert any(k.startswith("feature_encoder.") for k in best["state_dict"])
    assert "features" not in best

    seen.clear()  # a finished run is not redone
    train_fold(train, val, mil_bags.classes, model, training, killed)
    assert seen == []


def test_em_rounds_record_the_chance_level_and_model_pt_whether_it_learned(
    mil_bags, tmp_path: Path
) -> None:
    """An EM fold's rows are rounds, written by its own trainer: they carry the chance and flag
    levels as an end-to-end fold's epochs do (the training curves draw and judge from them) and
    its model.pt records whether it learned (model-info, trained_models); without them an EM
    model that learned nothing would pass unremarked."""
    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 4, 0, "t")
    val = mil_bags.cohort(tmp_path / "s", 2, 1, "v")
    em = {"rounds": 2, "head_epochs": 1, "encoder_steps": 1, "instance_batch": 8}
    training = {"device": "cpu", "strategy": "em", "max_instances_per_forward_pass": 8, "em": em}
    train_fold(train, val, mil_bags.classes, mil_bags.model, training, tmp_path / "fold0")
    rows = read_log(tmp_path / "fold0" / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {(r["chance_loss"], r["flag_loss"]) for r in rows} == {("0.693147", "0.623832")}
    record = torch.load(tmp_path / "fold0" / "model.pt", weights_only=True)["learning"]
    losses = [float(r["train_loss"]) for r in rows]
    assert record["final_train_loss"] == pytest.approx(sum(losses) / 2, abs=1e-6)
    assert record["flag_loss"] == pytest.approx(0.623832)


def test_frozen_strategy_on_patch_stores_trains_the_head_only(
    mil_bags, tmp_path: Path, caplog
) -> None:
    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 6, 0, "t")
    val = mil_bags.cohort(tmp_path / "s", 4, 1, "v")
    training = {"device": "cpu", "lr": 3e-2, "epochs": 2, "strategy": "frozen"}
    path = train_fold(train, val, mil_bags.classes, mil_bags.model, training, tmp_path / "f")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model_config"]["trainable_blocks"] == 0  # what model.pt records
    torch.manual_seed(0)  # the trainer's initialisation (training.seed 0)
    cfg = ModelConfig.from_dict({**mil_bags.model, "trainable_blocks": 0})
    init = build_mil_model(cfg, 2, mil_bags.px).state_dict()
    trained = ckpt["state_dict"]
    weights = [k for k in init if k.startswith("feature_encoder.") and k.endswith(".weight")]
    assert weights and all(torch.equal(trained[k], init[k]) for k in weights)  # encoder frozen
    head = [k for k in init if k.startswith("attention_model.")]
    assert any(not torch.equal(trained[k], init[k]) for k in head)  # the head learned
    # the other spellings of a frozen encoder are the same training: its last.pt resumes
    # (a finished run is not redone; rule train_fold's params are the same for all three)
    (tmp_path / "f" / "model.pt").unlink()
    end_to_end = {**training, "strategy": "end_to_end"}
    for model in (
        {**mil_bags.model, "freeze_encoder": True},
        {**mil_bags.model, "trainable_blocks": 0},
    ):
        with caplog.at_level("INFO", logger="gigamil"):
            train_fold(train, val, mil_bags.classes, model, end_to_end, tmp_path / "f")
        assert "starting from scratch" not in caplog.text
        assert "already finished" in caplog.text or "resuming" in caplog.text
        assert torch.load(path, weights_only=True)["epoch"] == ckpt["epoch"]


# --- logs, TensorBoard, divergence, feature stores (a review of the em strategy) -------------

SMALL_EM = {"rounds": 2, "head_epochs": 1, "encoder_steps": 2, "instance_batch": 8}


def test_em_without_validation_slides_logs_rounds_without_val_fields_and_tensorboard_events(
    mil_bags, tmp_path: Path, caplog
) -> None:
    """README: without validation slides the ``done`` line has no ``val_`` fields (EM printed
    ``val_loss nan val_auc nan``), and ``training.tensorboard: true`` writes the rows' scalars
    (EM wrote no events, and every later run warned that folds trained from then on would)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 4, 0, "t")
    training = {"device": "cpu", "strategy": "em", "tensorboard": True, "em": SMALL_EM}
    with caplog.at_level("INFO", logger="gigamil"):
        train_fold(train, train.head(0), mil_bags.classes, mil_bags.model, training, tmp_path / "f")
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("done:")]
    assert len(done) == 2 and not any("val_" in line for line in done), done
    acc = EventAccumulator(str(tmp_path / "f" / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train_loss")] == [1, 2]  # a step per round
    assert [e.step for e in acc.Scalars("encoder_loss")] == [2]  # the E-step: round 2 on


@pytest.mark.parametrize(
    ("em", "lr", "step", "key"),
    [
        ({"encoder_lr": 1e6}, 1e-3, "E-step of round 2", "training.em.encoder_lr"),
        ({}, 1e30, "M-step of round 1", "training.lr"),
    ],
)
def test_a_diverged_em_round_is_named_not_blamed_on_the_patches(
    mil_bags, tmp_path: Path, em, lr, step, key
) -> None:
    """A round whose weights became NaN stops there, naming the step and its learning rate;
    the next round's encoding said the patch store's encoder gave NaN ("damaged or diverged
    weights?; nothing was cached"), naming a slide's patch store."""
    from gigamil.errors import GigamilError

    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 4, 0, "t")
    val = mil_bags.cohort(tmp_path / "s", 2, 1, "v")
    training = {"device": "cpu", "lr": lr, "strategy": "em", "em": {**SMALL_EM, **em}}
    with pytest.raises(GigamilError, match=f"diverged in the {step}.*lower {key}"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, training, tmp_path / "f")


def test_em_on_feature_stores_is_refused_without_saying_the_head_trains(
    mil_bags, tmp_path: Path, caplog
) -> None:
    """EM encodes patch stores itself: given feature stores it stops, and no warning before
    says that the head trains on them (it does not)."""
    from gigamil.data.feature_extract import extract_features
    from gigamil.errors import GigamilError

    torch.set_num_threads(1)
    frozen = {**mil_bags.model, "trainable_blocks": 0}
    frames = []
    for df in (
        mil_bags.cohort(tmp_path / "s", 4, 0, "t"),
        mil_bags.cohort(tmp_path / "s", 2, 1, "v"),
    ):
        stores = []
        for row in df.itertuples(index=False):
            out = tmp_path / "f" / f"{row.slide_id}.zarr"
            extract_features(row.store, out, frozen, {"mpp": 0.5, "patch_px": mil_bags.px}, "cpu")
            stores.append(str(out))
        frames.append(df.assign(store=stores))
    training = {"device": "cpu", "strategy": "em", "em": SMALL_EM}
    with (
        caplog.at_level("WARNING", logger="gigamil"),
        pytest.raises(GigamilError, match="em reads patch stores"),
    ):
        train_fold(*frames, mil_bags.classes, mil_bags.model, training, tmp_path / "em")
    assert "only the attention head trains" not in caplog.text


def test_a_finished_em_fold_is_not_retrained_when_keys_em_does_not_use_change(
    mil_bags, tmp_path: Path, monkeypatch, caplog
) -> None:
    """``training.epochs``, ``early_stopping.patience`` and ``min_epochs`` train nothing under
    strategy em (its rounds run to the end): a changed one made last.pt's signature differ, and
    the job that Snakemake reran for the changed params trained every round again."""
    torch.set_num_threads(1)
    train = mil_bags.cohort(tmp_path / "s", 4, 0, "t")
    val = mil_bags.cohort(tmp_path / "s", 4, 1, "v")
    training = {
        "device": "cpu",
        "strategy": "em",
        "max_instances_per_forward_pass": 8,
        "em": {"rounds": 2, "head_epochs": 1, "encoder_steps": 1, "instance_batch": 8},
    }
    out = tmp_path / "fold0"
    train_fold(train, val, mil_bags.classes, mil_bags.model, training, out)
    best = torch.load(out / "model.pt", weights_only=True)

    seen, real_m_step = [], em_mod.EMTrainer.m_step

    def recording_m_step(self, r, items):  # noqa: ANN001, ANN202
        seen.append(r)
        return real_m_step(self, r, items)

    monkeypatch.setattr(em_mod.EMTrainer, "m_step", recording_m_step)
    unused = {"epochs": 7, "early_stopping": {"patience": 2, "min_epochs": 3}}
    (out / "model.pt").unlink()  # Snakemake deletes the outputs of the job it reruns
    (out / "train_log.csv").unlink()
    with caplog.at_level("WARNING", logger="gigamil"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, {**training, **unused}, out)
    assert seen == []  # finished: restored from last.pt, no round trained again
    assert "starting from scratch" not in caplog.text
    again = torch.load(out / "model.pt", weights_only=True)
    for k, v in best["state_dict"].items():
        assert torch.equal(again["state_dict"][k], v), k
    assert [int(r["epoch"]) for r in read_log(out / "train_log.csv")] == [1, 2]

    # a key em does use still retrains: the early-stopping metric picks the kept round
    other = {**training, "early_stopping": {"metric": "loss"}}
    train_fold(train, val, mil_bags.classes, mil_bags.model, other, out)
    assert seen == [1, 2]
