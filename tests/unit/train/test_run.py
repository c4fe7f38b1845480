"""train_fold / predict_slides on small synthetic zarr bags: learning, outputs, resume, options."""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gigamil.data.bags import ZarrBag
from gigamil.errors import ConfigError, GigamilError
from gigamil.train import checkpoint as checkpoint_mod
from gigamil.train import fold_data
from gigamil.train import loop as loop_mod
from gigamil.train import monitor as monitor_mod
from gigamil.train import run as run_mod
from gigamil.train import trainer as trainer_mod
from gigamil.train.checkpoint import load_model
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold


def _record_epochs(monkeypatch) -> list[int]:
    """The epochs trained from now on (the trainer's train_epoch, recorded)."""
    seen: list[int] = []

    def recording_train_epoch(*args, **kwargs):
        seen.append(kwargs["epoch"])
        return loop_mod.train_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_epoch", recording_train_epoch)
    return seen


def training(**kw: object) -> dict:
    cfg = {
        "device": "cpu",
        "seed": 0,
        "epochs": 6,
        "lr": 3e-3,
        "schedule": "cosine",
        "bags_per_step": 2,
        "max_instances_per_forward_pass": 8,
        "early_stopping": {"metric": "auc", "patience": 10},
        "augment": {"flips": True, "rot90": True, "color_jitter": 0.05},
    }
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def cohort(
    write_store, mil_bags, tmp_path_factory: pytest.TempPathFactory
) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("stores")
    train = mil_bags.cohort(root, 12, 0, "t")
    empty = write_store(root / "empty.zarr", np.zeros((0, mil_bags.px, mil_bags.px, 3), np.uint8))
    train = pd.concat(
        [
            train,
            pd.DataFrame(
                [
                    {
                        "cohort": "c",
                        "slide_id": "empty",
                        "patient_id": "pe",
                        "label": "normal",
                        "store": str(empty),
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    return train, mil_bags.cohort(root, 8, 1, "v")


def read_log(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_train_fold_learns_and_predicts(mil_bags, cohort, tmp_path: Path, caplog) -> None:
    train, val = cohort
    torch.set_num_threads(1)
    model_path = train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(), tmp_path / "fold0"
    )
    assert model_path == tmp_path / "fold0" / "model.pt"
    assert "empty has no patches" in caplog.text
    assert "did not learn" not in caplog.text  # its loss falls: no warning
    rows = read_log(tmp_path / "fold0" / "train_log.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert {"epoch", "train_loss", "val_loss", "val_auc", "lr", "seconds"} <= set(rows[0])
    # the chance level of two classes (ln 2) and the flag (0.9 ln 2) on every row, for the plot
    assert {(r["chance_loss"], r["flag_loss"]) for r in rows} == {("0.693147", "0.623832")}
    losses = [float(r["train_loss"]) for r in rows]
    assert (
        torch.load(model_path, weights_only=True)["learning"]
        == {  # travels with model.pt
            "final_train_loss": pytest.approx(sum(losses[-3:]) / 3, abs=1e-6),
            "chance_loss": pytest.approx(0.693147),
            "flag_loss": pytest.approx(0.623832),
            "learned": True,
        }
    )
    assert losses[-1] < 0.7 * losses[0]  # the loss falls
    assert max(float(r["val_auc"]) for r in rows) >= 0.8  # and validation is well above chance

    ckpt = torch.load(model_path, weights_only=True)
    assert {
        "state_dict",
        "model_config",
        "classes",
        "patch_px",
        "gigamil_version",
        "epoch",
        "metrics",
    } <= set(ckpt)
    assert ckpt["classes"] == mil_bags.classes and ckpt["patch_px"] == mil_bags.px
    assert ckpt["epoch"] == int(rows[-1]["best_epoch"])
    cal = ckpt["logit_calibration"]  # training.logit_calibration: class_means (the default)
    assert cal["method"] == "class_means" and cal["scale"] > 0
    fitted = pd.concat([train, val], ignore_index=True)
    fitted = fitted[fitted["slide_id"] != "empty"]
    assert cal["n_slides"] == len(fitted)
    ref = predict_slides(model_path, fitted, None, tmp_path / "att_ref", device="cpu")
    p = ref[f"prob_{mil_bags.classes[1]}"].clip(1e-12, 1 - 1e-12)
    z = np.log(p / (1 - p))  # calibrated logits: class means at -ln 9 / +ln 9
    is_pos = ref["label"] == mil_bags.classes[1]
    assert z[~is_pos].mean() == pytest.approx(-np.log(9), abs=1e-3)
    assert z[is_pos].mean() == pytest.approx(np.log(9), abs=1e-3)
    torch.load(tmp_path / "fold0" / "last.pt", weights_only=True)
    model, _ = load_model(model_path)
    assert not model.training

    slides = pd.concat([val, train.tail(1)], ignore_index=True)  # + the empty slide
    preds = predict_slides(
        model_path,
        slides,
        tmp_path / "p.csv",
        tmp_path / "att",
        device="cpu",
        max_instances_per_forward_pass=5,
    )
    assert (
        list(preds.columns)
        == [
            "slide_id",
            "patient_id",
            "cohort",
            "label",
            "prob_normal",
            "prob_lesion",
            "pred",
            "model_learned",  # model.pt's verdict: the evaluation pages warn of False
            "model_sha256",  # the file that predicted (summary.json's models)
        ]
        and preds["model_sha256"].eq(hashlib.sha256(model_path.read_bytes()).hexdigest()).all()
    )
    assert preds["model_learned"].all() and pd.read_csv(tmp_path / "p.csv").shape == preds.shape
    ok = preds.slide_id != "empty"
    assert np.allclose(preds.loc[ok, "prob_normal"] + preds.loc[ok, "prob_lesion"], 1.0)
    assert preds.loc[~ok, "prob_lesion"].isna().all()
    for sid, store in zip(slides.slide_id, slides.store, strict=True):
        att = np.load(tmp_path / "att" / f"{sid}.npy")
        assert att.dtype == np.float32
        assert len(att) == len(ZarrBag(store))
        if len(att):
            assert np.isclose(att.sum(), 1.0, atol=1e-5)
    # the predictions in eval mode do not depend on the chunk size
    again = predict_slides(
        model_path,
        slides,
        tmp_path / "p2.csv",
        tmp_path / "att2",
        device="cpu",
        max_instances_per_forward_pass=64,
    )
    assert np.allclose(again.loc[ok, "prob_lesion"], preds.loc[ok, "prob_lesion"], atol=1e-5)
    # out_csv=None returns the same table and writes no CSV (rule predict_fold writes it once,
    # with the fold column, through write_fold_predictions)
    unsaved = predict_slides(
        model_path,
        slides,
        None,
        tmp_path / "att3",
        device="cpu",
        max_instances_per_forward_pass=5,
    )
    pd.testing.assert_frame_equal(unsaved, preds)
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == ["p.csv", "p2.csv"]
    assert sorted(p.name for p in (tmp_path / "att3").iterdir()) == sorted(
        p.name for p in (tmp_path / "att").iterdir()
    )


def test_resume_after_kill_continues(
    mil_bags, cohort, tmp_path: Path, monkeypatch, train_killed
) -> None:
    train, val = cohort
    train, val = train.head(6), val.head(4)
    cfg = training(epochs=4, max_instances_per_bag=9)
    full = tmp_path / "full"
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, full)

    killed = tmp_path / "killed"  # killed during epoch 3, after epoch 2's checkpoint
    train_killed(3, train, val, mil_bags.classes, mil_bags.model, cfg, killed)
    assert [int(r["epoch"]) for r in read_log(killed / "train_log.csv")] == [1, 2]
    assert torch.load(killed / "last.pt", weights_only=True)["early_stopping"]["epoch"] == 2
    # the killed run's model.pt (its best epoch so far) is marked and refused, not predicted
    # with as if finished (a killed `gigamil train` left one that looked finished)
    assert torch.load(killed / "model.pt", weights_only=True)["training_finished"] is False
    with pytest.raises(GigamilError, match=r"model.pt: the training .* has not finished"):
        load_model(killed / "model.pt")
    finished = torch.load(full / "model.pt", weights_only=True)
    # marked finished only after the calibration that ends the training
    assert finished["training_finished"] is True and "logit_calibration" in finished
    (killed / "model.pt").unlink()  # Snakemake deletes the declared outputs of a failed job
    (killed / "train_log.csv").unlink()

    seen = _record_epochs(monkeypatch)
    # the resumed trainer takes over the whole early-stopping state (best score, tie-break,
    # epochs without improvement), not only the epoch: on this run every epoch after the kill
    # is a new best, so the logs alone would not show a lost best score
    saved = torch.load(killed / "last.pt", weights_only=True)["early_stopping"]
    assert saved["best_score"] is not None and saved["best_epoch"] == 2
    taken_over = []
    load_state = trainer_mod.EarlyStopping.load_state_dict

    def recording_load(self, state):
        load_state(self, state)
        taken_over.append(self.state_dict())

    monkeypatch.setattr(trainer_mod.EarlyStopping, "load_state_dict", recording_load)
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, killed, resume=True)
    assert seen == [3, 4]  # continued, not restarted
    assert taken_over == [saved]
    log_full, log_killed = read_log(full / "train_log.csv"), read_log(killed / "train_log.csv")
    assert [int(r["epoch"]) for r in log_killed] == [1, 2, 3, 4]
    for a, b in zip(log_full, log_killed, strict=True):
        assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), abs=1e-6)
    sa = torch.load(full / "last.pt", weights_only=True)["model"]
    sb = torch.load(killed / "last.pt", weights_only=True)["model"]
    for k in sa:
        assert torch.allclose(sa[k].float(), sb[k].float(), atol=1e-6), k
    best = torch.load(full / "model.pt", weights_only=True)
    again = torch.load(killed / "model.pt", weights_only=True)
    assert again["epoch"] == best["epoch"]
    assert all(
        torch.allclose(again["state_dict"][k].float(), v.float(), atol=1e-6)
        for k, v in best["state_dict"].items()
    )
    # a finished run is not redone (its deleted outputs come back); --no-resume starts over
    seen.clear()
    (killed / "model.pt").unlink()
    (killed / "train_log.csv").unlink()
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, killed, resume=True)
    assert seen == []
    assert (killed / "model.pt").is_file() and len(read_log(killed / "train_log.csv")) == 4
    load_model(killed / "model.pt")  # finished: marked so again
    train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(epochs=1), killed, resume=False
    )
    assert seen == [1] and len(read_log(killed / "train_log.csv")) == 1


def test_options_smabmil_focal_onecycle_amp(mil_bags, cohort, tmp_path: Path) -> None:
    train, val = cohort
    model = dict(mil_bags.model, pool="smabmil", batchnorm="train", dropout=0.1)
    cfg = training(
        epochs=2,
        loss="focal",
        schedule="onecycle",
        amp=True,
        bags_per_step=3,
        class_weights=None,
        max_instances_per_forward_pass=None,
        early_stopping={"metric": "loss", "patience": 1},
    )
    path = train_fold(train.head(5), val.head(3), mil_bags.classes, model, cfg, tmp_path / "o")
    rows = read_log(tmp_path / "o" / "train_log.csv")
    assert 1 <= len(rows) <= 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] < 3e-3  # one-cycle warm-up starts below the peak
    m, _ = load_model(path)
    assert m.attention_model.pool == "smabmil"
    # class_weights: null: the levels are those of a model predicting the training class prior
    from gigamil.train.learning import log_columns

    labels = [mil_bags.classes.index(y) for y in train.head(5)["label"]]
    expected = log_columns(2, "focal", unweighted_labels=labels)
    assert float(rows[-1]["chance_loss"]) == pytest.approx(expected["chance_loss"], abs=1e-6)
    assert (
        len(set(labels)) == 2 and expected["chance_loss"] < log_columns(2, "focal")["chance_loss"]
    )


def test_bad_labels_and_columns(mil_bags, cohort, tmp_path: Path) -> None:
    from gigamil.errors import ConfigError, GigamilError

    train, val = cohort
    bad = train.head(3).copy()
    bad.loc[0, "label"] = "tumour"
    with pytest.raises(ConfigError, match="tumour"):
        train_fold(bad, val, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "x")
    with pytest.raises(GigamilError, match="store"):
        train_fold(
            train.drop(columns="store"),
            val,
            mil_bags.classes,
            mil_bags.model,
            training(),
            tmp_path / "y",
        )


def _tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_resume_with_the_training_rows_reordered_starts_from_scratch(
    mil_bags, cohort, tmp_path: Path, monkeypatch, train_killed, caplog
) -> None:
    """The shuffle and each bag's seed follow the rows' order: a fold killed with one order and
    resumed with another (gigamil train --train-csv) ended as neither training, without a word.
    Rows in slide_id order (the workflow's) keep the signature of earlier runs."""
    train, val = cohort
    train, val = train.head(6).sort_values("slide_id"), val.head(4)
    cfg = training(epochs=3, max_instances_per_bag=9)
    killed = tmp_path / "killed"
    train_killed(3, train, val, mil_bags.classes, mil_bags.model, cfg, killed)
    saved = torch.load(killed / "last.pt", weights_only=True)["signature"]
    assert "train_order" not in saved and "val_order" not in saved
    (killed / "model.pt").unlink()
    (killed / "train_log.csv").unlink()
    seen = _record_epochs(monkeypatch)
    reordered = train.iloc[::-1].reset_index(drop=True)
    with caplog.at_level(logging.WARNING):
        train_fold(reordered, val, mil_bags.classes, mil_bags.model, cfg, killed, resume=True)
    assert seen == [1, 2, 3]  # from scratch, not from epoch 3
    assert "changed: the order of the training rows" in caplog.text


def test_tensorboard_events_match_the_csv_log_and_survive_a_resume(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    train, val = cohort
    train, val = train.head(4), val.head(4)
    cfg = training(epochs=3, tensorboard=True)
    real_save = checkpoint_mod.atomic_save
    saves = {"last": 0}

    def dying_save(obj, path):  # noqa: ANN001, ANN202
        if Path(path).name == "last.pt":
            saves["last"] += 1
            if saves["last"] == 2:  # killed after epoch 2's events, before its checkpoint
                raise KeyboardInterrupt
        return real_save(obj, path)

    monkeypatch.setattr(checkpoint_mod, "atomic_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "f")
    monkeypatch.setattr(checkpoint_mod, "atomic_save", real_save)
    assert [s for s, _ in _tb_scalars(tmp_path / "f" / "tensorboard")["val_auc"]] == [1, 2]
    assert torch.load(tmp_path / "f" / "last.pt", weights_only=True)["early_stopping"]["epoch"] == 1
    # the resumed run redoes epoch 2: its first events are purged, each epoch is drawn once
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "f", resume=True)
    rows = read_log(tmp_path / "f" / "train_log.csv")
    scalars = _tb_scalars(tmp_path / "f" / "tensorboard")
    assert set(monitor_mod.TB_SCALARS) <= set(scalars)
    for key in monitor_mod.TB_SCALARS:
        steps = [s for s, _ in scalars[key]]
        assert steps == [1, 2, 3], (key, steps)
        for (_, value), row in zip(scalars[key], rows, strict=True):
            assert value == pytest.approx(float(row[key]), rel=1e-5, abs=1e-6), key
    # switching TensorBoard off does not invalidate the finished run
    seen = []
    monkeypatch.setattr(trainer_mod, "train_epoch", lambda *a, **k: seen.append(k["epoch"]))
    train_fold(
        train,
        val,
        mil_bags.classes,
        mil_bags.model,
        training(epochs=3),
        tmp_path / "f",
        resume=True,
    )
    assert seen == [] and len(read_log(tmp_path / "f" / "train_log.csv")) == 3
    # without the package: a clear configuration error, before any training
    monkeypatch.setitem(__import__("sys").modules, "torch.utils.tensorboard", None)
    with pytest.raises(run_mod.ConfigError, match="needs the tensorboard package"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "g")
    assert not (tmp_path / "g" / "model.pt").exists()


def test_early_stopping_min_epochs_in_train_fold(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    train, val = cohort
    train, val = train.head(4), val.head(4)
    flat = {"auc": 0.5, "loss": 0.7, "balanced_accuracy": 0.5}  # never improves after epoch 1
    monkeypatch.setattr(trainer_mod, "validate", lambda *a, **k: dict(flat))
    for min_epochs, n_epochs in [(0, 2), (3, 3)]:
        es = {"metric": "auc", "patience": 1, "min_epochs": min_epochs}
        out = tmp_path / f"m{min_epochs}"
        train_fold(
            train, val, mil_bags.classes, mil_bags.model, training(epochs=5, early_stopping=es), out
        )
        assert len(read_log(out / "train_log.csv")) == n_epochs
        state = torch.load(out / "last.pt", weights_only=True)["early_stopping"]
        # warm-up epochs are each the best so far: the last one before min_epochs is kept
        assert state["finished"] and state["best_epoch"] == max(1, min_epochs - 1)


def test_predict_refuses_slide_ids_that_leave_the_attention_dir(
    mil_bags, cohort, write_store, tmp_path: Path
) -> None:
    train, val = cohort
    torch.set_num_threads(1)
    model_path = train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    for bad_id in ("../../x", "/tmp/abs", "..", "a/b"):
        slides = val.head(1).assign(slide_id=bad_id)
        with pytest.raises(ConfigError, match="not a safe file name"):
            predict_slides(model_path, slides, None, tmp_path / "att", device="cpu")
    assert not list(tmp_path.rglob("*.npy"))  # nothing written, anywhere
    # a slide listed twice: its second row would overwrite the first's attention file
    with pytest.raises(GigamilError, match=r"slide \S+ is listed twice"):
        predict_slides(model_path, pd.concat([val.head(1)] * 2), None, tmp_path / "att", "cpu")
    assert not list(tmp_path.rglob("*.npy"))
    # two slides given one store: the second would be predicted from the first's patches
    two = pd.concat([val.head(1), val.head(1).assign(slide_id="other")])
    with pytest.raises(GigamilError, match=r"slides \S+, other have the same store"):
        predict_slides(model_path, two, None, tmp_path / "att", "cpu")
    assert not list(tmp_path.rglob("*.npy"))
    # a store cut at another patch size second in the table: every store is checked before
    # the first prediction, so the first slide's attention file is not left behind
    other = write_store(tmp_path / "other.zarr", np.zeros((3, 8, 8, 3), np.uint8))
    bad = pd.concat([val.head(1), val.head(1).assign(slide_id="other", store=str(other))])
    with pytest.raises(GigamilError, match="slide other: patches are 8 px"):
        predict_slides(model_path, bad, None, tmp_path / "att", "cpu")
    assert not list(tmp_path.rglob("*.npy"))


def test_predict_warns_when_the_store_is_of_another_slide(
    mil_bags, cohort, tmp_path: Path, caplog
) -> None:
    train, val = cohort
    model_path = train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    row = val[val["store"].map(lambda p: "slide_id" in ZarrBag(p).attrs)].head(1)
    recorded = ZarrBag(row["store"].iloc[0]).attrs["slide_id"]
    with caplog.at_level("WARNING", logger="gigamil"):
        predict_slides(model_path, row, None, tmp_path / "att", device="cpu")
        assert "was extracted from slide" not in caplog.text
        predict_slides(model_path, row.assign(slide_id="renamed"), None, tmp_path / "a", "cpu")
    assert (
        f"slide renamed: its store {row['store'].iloc[0]} was extracted from slide {recorded}"
        in (caplog.text)
    )
    # two stores swapped: each slide would be predicted, and scored, as the other: an error
    two = val.head(2).copy()
    two["store"] = two["store"].iloc[::-1].to_numpy()
    with pytest.raises(GigamilError, match="was extracted from slide .* are stores swapped"):
        predict_slides(model_path, two, None, tmp_path / "b", device="cpu")
    assert not (tmp_path / "b").exists()


def test_training_refuses_swapped_stores(mil_bags, cohort, tmp_path: Path) -> None:
    """Prediction refused two stores swapped between slides of its table; training took them,
    each slide's patches under the other's label (a review of the data layer)."""
    train, val = cohort
    train = train.head(6).copy()
    train["store"] = np.r_[train["store"].iloc[1::-1], train["store"].iloc[2:]]  # first two
    with pytest.raises(GigamilError, match="slides to train on: .* are stores swapped"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path)


def test_model_records_its_slides_and_predict_names_those_it_has_seen(
    mil_bags, cohort, tmp_path: Path, caplog
) -> None:
    train, val = cohort
    model_path = train_fold(
        train, val.head(2), mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    seen = torch.load(model_path, weights_only=True)["training_slides"]
    given = pd.concat([train, val.head(2)])  # every slide given, "empty" (no patches) too
    assert seen == {
        "slides": [["c", s] for s in sorted(given["slide_id"])],
        "patient_ids": sorted(set(given["patient_id"])),
    }
    with caplog.at_level("WARNING", logger="gigamil"):
        predict_slides(model_path, val.iloc[2:], None, tmp_path / "a", device="cpu")
        assert "not a test of it" not in caplog.text  # other patients: no warning
        other = train.iloc[1:2].assign(slide_id="another_slide_of_a_training_patient")
        mixed = pd.concat([val.iloc[2:], train.iloc[:1], val.iloc[1:2], other])
        predict_slides(model_path, mixed, None, tmp_path / "b", device="cpu")
    ids = [train["slide_id"].iloc[0], val["slide_id"].iloc[1]]
    assert (
        f"of the {len(mixed)} slides to predict, 2 training or validation slide(s) "
        f"({', '.join(ids)}) and 1 slide(s) of patients it trained on "
        "(another_slide_of_a_training_patient) of this model" in caplog.text
    )
    assert "another institution's patients who only share the ids" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gigamil"):  # the same slides only: no id caveat
        predict_slides(model_path, train.iloc[:1], None, tmp_path / "d", device="cpu")
    assert "not a test of it" in caplog.text and "share the ids" not in caplog.text
    # a slide id of another cohort is another slide (a patient id names one patient)
    caplog.clear()
    with caplog.at_level("WARNING", logger="gigamil"):
        elsewhere = val.iloc[2:3].assign(slide_id=train["slide_id"].iloc[0], cohort="ext")
        predict_slides(model_path, elsewhere, None, tmp_path / "c", device="cpu")
    assert "not a test of it" not in caplog.text


def test_a_resumed_older_last_pt_gets_the_training_slides(
    mil_bags, cohort, tmp_path: Path, caplog
) -> None:
    """A fold whose last.pt predates training_slides: the restored model.pt records them."""
    from gigamil.train.checkpoint import atomic_save, load_checkpoint

    train, val = cohort
    out = tmp_path / "m"
    train_fold(train, val, mil_bags.classes, mil_bags.model, training(epochs=1), out)
    last = load_checkpoint(out / "last.pt")
    del last["best"]["training_slides"]  # as an older gigamil wrote it
    atomic_save(last, out / "last.pt")
    (out / "model.pt").unlink()  # Snakemake deletes a rerun job's outputs
    with caplog.at_level("INFO", logger="gigamil"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, training(epochs=1), out)
    assert "training already finished" in caplog.text
    seen = torch.load(out / "model.pt", weights_only=True)["training_slides"]
    assert ["c", train["slide_id"].iloc[0]] in seen["slides"]
    older = load_checkpoint(out / "model.pt")
    del older["training_slides"]
    atomic_save(older, tmp_path / "older" / "model.pt")
    with caplog.at_level("INFO", logger="gigamil"):
        predict_slides(tmp_path / "older" / "model.pt", train, None, tmp_path / "a", "cpu")
    assert "does not record its training slides (an older gigamil): not checked" in caplog.text


def test_a_finished_last_pt_of_other_labels_or_stores_is_not_returned(
    mil_bags, cohort, write_store, tmp_path: Path, caplog
) -> None:
    """A changed sheet (labels) or re-extracted stores make Snakemake rerun train_fold; its
    finished last.pt (not a declared output, so kept) handed back the old model as finished."""
    import shutil

    train, val = cohort
    classes, done, cfg = mil_bags.classes, tmp_path / "done", training(epochs=1)
    train_fold(train, val, classes, mil_bags.model, cfg, done)
    flipped = train.assign(label=[classes[1 - classes.index(v)] for v in train["label"]])
    fewer = train.copy()
    first = ZarrBag(train["store"].iloc[0])
    fewer.loc[fewer.index[0], "store"] = str(
        write_store(tmp_path / "re.zarr", first.read(0, len(first))[:-1], target_mpp=0.5)
    )
    for name, changed in {"same": train, "labels": flipped, "stores": fewer}.items():
        out = tmp_path / name
        shutil.copytree(done, out)
        for file in ("model.pt", "train_log.csv"):  # Snakemake deletes a rerun job's outputs
            (out / file).unlink()
        caplog.clear()
        with caplog.at_level("INFO", logger="gigamil"):
            train_fold(changed, val, classes, mil_bags.model, cfg, out)
        assert ("training already finished" in caplog.text) == (name == "same"), name
        assert ("starting from scratch" in caplog.text) == (name != "same"), name
    # renamed patients, the same slides and labels: the same model, with the sheet's patients
    renamed, out = train.assign(patient_id="new_" + train["patient_id"]), tmp_path / "renamed"
    shutil.copytree(done, out)
    (out / "model.pt").unlink()
    caplog.clear()
    with caplog.at_level("INFO", logger="gigamil"):
        train_fold(renamed, val, classes, mil_bags.model, cfg, out)
    assert "training already finished" in caplog.text
    seen = torch.load(out / "model.pt", weights_only=True)["training_slides"]["patient_ids"]
    assert set(renamed["patient_id"]) <= set(seen) and not set(train["patient_id"]) & set(seen)


def attr_slides(
    mil_bags, write_store, folder: Path, prefix: str, attrs: list[dict]
) -> pd.DataFrame:
    """A slides table of one store per entry of ``attrs`` (its attributes), classes
    alternating, 12 patches each (seeded by the prefix)."""
    rng = np.random.default_rng(sum(map(ord, prefix)))
    rows = []
    for i, a in enumerate(attrs):
        sid = f"{prefix}{i}"
        store = write_store(folder / f"{sid}.zarr", mil_bags.slide(rng, i % 2, 12), **a)
        label = mil_bags.classes[i % 2]
        rows.append(
            {"cohort": "c", "slide_id": sid, "patient_id": sid, "label": label, "store": store}
        )
    return pd.DataFrame(rows)


def test_model_records_patch_mpp_and_refuses_other_resolutions(
    mil_bags, write_store, tmp_path: Path
) -> None:
    """Training on a mix of resolutions, and predicting stores of another µm/px than the
    model's, are errors naming the slides (issue 15, item 12)."""

    def slides(prefix: str, mpps: list[float]) -> pd.DataFrame:
        attrs = [{"effective_mpp": m} for m in mpps]
        return attr_slides(mil_bags, write_store, tmp_path, prefix, attrs)

    torch.set_num_threads(1)
    train = slides("a", [1.0, 1.0, 1.005, 1.0])  # within 1 %
    model_path = train_fold(
        train, train.iloc[:0], mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    assert torch.load(model_path, weights_only=True)["patch_mpp"] == pytest.approx(1.0)
    mixed = slides("b", [1.0, 2.0, 1.0, 2.0])
    with pytest.raises(GigamilError, match=r"different resolutions: slide b0 at 1 µm/px, slide b1"):
        train_fold(mixed, mixed.iloc[:0], mil_bags.classes, mil_bags.model, training(), tmp_path)
    other = slides("c", [2.0])
    with pytest.raises(
        GigamilError, match=r"slide c0: patches are at 2 µm/px but the model .* 1 µm"
    ):
        predict_slides(model_path, other, None, tmp_path / "att", device="cpu")
    predict_slides(model_path, train, None, tmp_path / "att", device="cpu")  # same µm/px: fine


def test_model_records_stain_normalization_and_refuses_other_stores(
    mil_bags, write_store, tmp_path: Path
) -> None:
    """Training on stores of different stain normalisations, and predicting stores normalised
    otherwise than the model's, are errors naming the slides; a store without the attribute
    (written before gigamil recorded it) counts as ``none``."""

    def slides(prefix: str, stains: list[str | None]) -> pd.DataFrame:
        attrs = [{} if st is None else {"stain_normalization": st} for st in stains]
        return attr_slides(mil_bags, write_store, tmp_path, prefix, attrs)

    torch.set_num_threads(1)
    train = slides("a", ["macenko"] * 4)
    model_path = train_fold(
        train, train.iloc[:0], mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    assert torch.load(model_path, weights_only=True)["stain_normalization"] == "macenko"
    mixed = slides("b", ["macenko", None, "macenko", "macenko"])
    with pytest.raises(
        GigamilError, match=r"different stain normalisations \(slide b0 'macenko', "
    ):
        train_fold(mixed, mixed.iloc[:0], mil_bags.classes, mil_bags.model, training(), tmp_path)
    with pytest.raises(
        GigamilError, match=r"slide b1: patches with stain normalisation 'none' but the model"
    ):
        predict_slides(model_path, mixed.iloc[1:2], None, tmp_path / "att", device="cpu")
    predict_slides(model_path, train, None, tmp_path / "att", device="cpu")  # the same: fine


def _preprocessing_warnings(caplog, model_path, slides, attention_dir) -> list[str]:
    """Predict ``slides`` with ``model_path``; the "other preprocessing" warnings caplog holds."""
    predict_slides(model_path, slides, None, attention_dir, device="cpu")
    return [r.getMessage() for r in caplog.records if "other preprocessing" in r.getMessage()]


def test_model_records_the_preprocessing_and_predict_warns_about_other_stores(
    mil_bags, write_store, tmp_path: Path, caplog
) -> None:
    """model.pt records the preprocessing its training stores agree on (min_tissue, codec, the
    computed tissue mask's settings; a key they differ on is left out), and predicting stores
    cut otherwise is one warning naming the key, the values and the slides, before any
    prediction; stores cut alike, or that record nothing, are not warned about."""
    mask = {"mask_file": "/x.png", "mask_mpp": 8.0, "threshold": "otsu", "close_um": 32.0}

    def slides(prefix: str, attrs: list[dict]) -> pd.DataFrame:
        return attr_slides(mil_bags, write_store, tmp_path, prefix, attrs)

    torch.set_num_threads(1)
    same = {"min_tissue": 0.5, "stride_px": 16, "codec": "zstd", "jpeg_quality": None}
    same["mask_params"] = mask
    other_close = {**same, "mask_params": {**mask, "close_um": 16.0}}
    train = slides("a", [same, same, same, other_close])
    model_path = train_fold(
        train, train.iloc[:0], mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    assert torch.load(model_path, weights_only=True)["preprocessing"] == {
        "preprocessing.patches.min_tissue": 0.5,
        "preprocessing.patches.stride_px": 16,
        "preprocessing.patches.codec": "zstd",
        "preprocessing.tissue.mask_mpp": 8.0,
        "preprocessing.tissue.threshold": "otsu",
    }
    jpeg = {**same, "codec": "jpeg", "jpeg_quality": 80}
    overlapping = {**same, "stride_px": 8}  # a trial's stride-48 store: P 0.41 became 0.13
    new = slides(
        "n",
        [{**same, "min_tissue": 0.25}, jpeg, same, {}, {**jpeg, "min_tissue": 0.25}, overlapping],
    )
    caplog.set_level(logging.WARNING)
    warned = _preprocessing_warnings(caplog, model_path, new, tmp_path / "att")
    assert len(warned) == 1, warned
    assert "4 of the 6 slides to predict were cut with other preprocessing" in warned[0]
    assert "stride_px 8 (1 slide(s): n5) where the training patches had 16" in warned[0]
    assert (
        "preprocessing.patches.min_tissue 0.25 (2 slide(s): n0, n4) where the training patches "
        "had 0.5" in warned[0]
    )
    assert "preprocessing.patches.codec 'jpeg' (2 slide(s): n1, n4) where" in warned[0]
    caplog.clear()
    assert not _preprocessing_warnings(caplog, model_path, train, tmp_path / "att")


def test_training_without_every_class_is_an_error(mil_bags, cohort, tmp_path: Path) -> None:
    train, val = cohort
    one = train[train["label"] == mil_bags.classes[0]]
    with pytest.raises(GigamilError, match=r"no training slide \(with patches\) of class 'lesion'"):
        train_fold(one, val, mil_bags.classes, mil_bags.model, training(), tmp_path)
    three = [*mil_bags.classes, "other"]  # a class the training slides lack
    with pytest.raises(GigamilError, match=r"of class 'other'; a fold must train on every class"):
        train_fold(train, val, three, mil_bags.model, training(), tmp_path)
    # the class's only training slide has no patches: named, with what to do (a new user's
    # fold failed hours in, the slide named only in a warning far up the log)
    lesion_and_empty = train[(train["label"] == "lesion") | (train["slide_id"] == "empty")]
    with pytest.raises(
        GigamilError,
        match=r"of class 'normal'; its training slide\(s\) empty of that class have no patches "
        r"\(no tissue found, or no patch reaches preprocessing.patches.min_tissue at this "
        r"patch_px: the QC table says which, results/qc/c.csv\): remove",
    ):
        train_fold(lesion_and_empty, val, mil_bags.classes, mil_bags.model, training(), tmp_path)
    # no slide has patches (a trial's mask_mpp typo): where to look, not only that it failed
    with pytest.raises(
        GigamilError,
        match=r"^no training slide has patches \(no tissue found, or no patch reaches "
        r"preprocessing.patches.min_tissue at this patch_px: the QC table says which, "
        r"results/qc/c.csv\); nothing to train on$",
    ):
        only_empty = train[train["slide_id"] == "empty"]
        train_fold(only_empty, val, mil_bags.classes, mil_bags.model, training(), tmp_path)


def test_a_fold_the_splits_never_give_is_an_error(mil_bags, cohort, tmp_path: Path) -> None:
    train, val = cohort
    args = (mil_bags.classes, mil_bags.model, training(), tmp_path)
    with pytest.raises(GigamilError, match=r"is listed twice \(training and validation slides\)"):
        train_fold(train, pd.concat([val, train.iloc[:1]]), *args)
    renamed = train.iloc[:1].assign(slide_id="other_slide")  # one slide's patches, two ids
    with pytest.raises(GigamilError, match=r"slides \S+, other_slide have the same store .*"):
        train_fold(train, pd.concat([val, renamed]), *args)
    copy = tmp_path / "copy.zarr"  # a training patient's second slide
    shutil.copytree(train["store"].iloc[0], copy)
    leak = renamed.assign(store=str(copy))
    with pytest.raises(GigamilError, match=r"has training and validation slides"):
        train_fold(train, pd.concat([val, leak]), *args)
    flipped = leak.assign(label=[c for c in mil_bags.classes if c != leak["label"].iloc[0]][0])
    with pytest.raises(GigamilError, match=r"has slides with different labels"):
        train_fold(pd.concat([train, flipped]), val, *args)


def test_training_and_prediction_log_lines_name_fold_epoch_and_progress(
    mil_bags, cohort, tmp_path: Path, log_lines
) -> None:
    train, val = cohort
    n_train = len(train) - 1  # the empty slide is skipped
    model_path = train_fold(
        train,
        val,
        mil_bags.classes,
        mil_bags.model,
        training(epochs=2),
        tmp_path / "fold3",
        fold=3,
        log_every_s=0,  # a progress line after every bag
    )
    lines = [ln for ln in log_lines() if "gigamil.train" in ln]
    assert lines and all("[fold3" in ln for ln in lines), lines
    for epoch in (1, 2):
        tag = f"[fold3 epoch {epoch}/2] gigamil.train.loop: "
        train_lines = [ln.split(tag)[1] for ln in lines if tag + "training:" in ln]
        assert [t.split(",")[0] for t in train_lines] == [
            f"training: {i}/{n_train} bags" for i in range(1, n_train + 1)
        ]
        assert all(" bags/s, loss so far " in t for t in train_lines)
        assert sum(tag + "validation:" in ln for ln in lines) == len(val)
        done = [ln for ln in lines if f"[fold3 epoch {epoch}/2] gigamil.train.run: done:" in ln]
        assert len(done) == 1 and "train_loss" in done[0] and "val_auc" in done[0]
    # a fold name by default: the output directory's; nothing logged within an epoch at 30 s
    train_fold(train, val, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "fold4")
    later = [ln for ln in log_lines() if "gigamil.train" in ln][len(lines) :]
    assert later and all("[fold4" in ln for ln in later)
    assert not any("gigamil.train.loop: training:" in ln for ln in later)
    # prediction: one line per slide, in the context of the model's directory and the cohort
    predict_slides(model_path, val, None, tmp_path / "att", device="cpu")
    pred_lines = [ln for ln in log_lines() if "gigamil.train.predict" in ln]
    seen = [ln for ln in pred_lines if "training or validation slide(s)" in ln]  # val: seen
    assert len(seen) == 1 and f"of the {len(val)} slides to predict" in seen[0]
    pred_lines = [ln for ln in pred_lines if ln not in seen]
    assert len(pred_lines) == len(val)
    for i, (ln, sid) in enumerate(zip(pred_lines, val.slide_id, strict=True), start=1):
        assert f"[fold3 predict {val.cohort.iloc[0]}]" in ln
        assert f"slide {i}/{len(val)} {sid}: " in ln and "P(lesion)" in ln


def test_progress_lines_at_most_every_interval(caplog) -> None:
    import logging

    now = [0.0]
    progress = loop_mod.ProgressLog("training", 10, every_s=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="gigamil.train.loop"):
        for done in range(1, 11):
            now[0] += 7.0  # a bag every 7 s: a line at 35 s, 70 s (not at 7-28, 42-63 s)
            progress.update(done, 0.5)
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == [
        "training: 5/10 bags, 0.14 bags/s, loss so far 0.5000",
        "training: 10/10 bags, 0.14 bags/s, loss so far 0.5000",
    ]
    silent = loop_mod.ProgressLog("training", 3, every_s=None)
    caplog.clear()
    silent.update(3)
    assert not caplog.records


def test_bf16_compile_fallback_and_decode_threads(
    mil_bags, cohort, tmp_path: Path, caplog, monkeypatch
) -> None:
    """training.amp: bf16 on CPU, training.compile: true whose compiler fails (the log says so and
    training goes on uncompiled), bags decoded by 2 threads; prediction with 2 decoding threads
    matches prediction with one (to rounding: torch also gets 2 threads)."""

    def broken_compile(fn, **kw):  # noqa: ANN001, ANN202
        def call(*a, **k):  # noqa: ANN002, ANN003, ANN202
            raise RuntimeError("inductor: no working C++ compiler")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    train, val = cohort
    cfg = training(epochs=1, amp="bf16", compile=True)
    with caplog.at_level("INFO"):
        path = train_fold(
            train.head(6),
            val.head(3),
            mil_bags.classes,
            mil_bags.model,
            cfg,
            tmp_path / "b",
            threads=2,
        )
    assert "mixed precision: bf16" in caplog.text
    assert "torch.compile of the encoder (SmallCNN) failed" in caplog.text  # not the augmentation
    assert "inductor: no working C++ compiler" in caplog.text
    rows = read_log(tmp_path / "b" / "train_log.csv")
    assert np.isfinite(float(rows[0]["train_loss"]))
    one = predict_slides(path, val, None, tmp_path / "att1", device="cpu", threads=1)
    two = predict_slides(path, val, None, tmp_path / "att2", device="cpu", threads=2)
    pd.testing.assert_frame_equal(one, two)
    for sid in val["slide_id"]:
        assert np.allclose(  # torch's 2 CPU threads round differently, to 1e-7
            np.load(tmp_path / "att1" / f"{sid}.npy"), np.load(tmp_path / "att2" / f"{sid}.npy")
        )


def test_train_fold_without_validation(mil_bags, cohort, tmp_path: Path) -> None:
    """cv.val_fraction 0: no validation slides; model.pt is the epoch of the lowest training loss."""
    train, val = cohort
    out = tmp_path / "noval"
    path = train_fold(
        train, val.iloc[0:0], mil_bags.classes, mil_bags.model, training(epochs=3), out
    )
    rows = read_log(out / "train_log.csv")
    assert len(rows) == 3 and all(r["n_val_bags"] == "0" for r in rows)
    losses = [float(r["train_loss"]) for r in rows]
    best = int(torch.load(path, weights_only=True)["epoch"])
    assert best == 1 + int(np.argmin(losses))


def test_weights_that_diverge_stop_the_training_by_epoch(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    """A step that writes NaN into the weights (lr far too high, in fp32 or bf16) stopped
    nothing: only 'non-finite loss' warnings, then NaN predictions for the fold."""
    real = trainer_mod.train_epoch

    def diverging(model, *args, epoch, **kwargs):
        loss = real(model, *args, epoch=epoch, **kwargs)
        if epoch == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return loss

    monkeypatch.setattr(trainer_mod, "train_epoch", diverging)
    train, val = cohort
    out = tmp_path / "nan"
    with pytest.raises(GigamilError, match=r"training diverged in epoch 2 .* hold NaN or inf"):
        train_fold(train, val.iloc[0:0], mil_bags.classes, mil_bags.model, training(epochs=3), out)
    assert len(read_log(out / "train_log.csv")) == 1  # epoch 1 is kept, epoch 2 is not logged


def test_ema_decay_saves_the_averaged_weights_and_resumes_them(
    mil_bags, cohort, tmp_path: Path, train_killed
) -> None:
    train, val = cohort
    train, val = train.head(6), val.head(4)
    cfg = training(epochs=3, ema_decay=0.9, early_stopping={"metric": "auc", "min_epochs": 3})
    full = tmp_path / "full"
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, full)
    last = torch.load(full / "last.pt", weights_only=True)
    best = torch.load(full / "model.pt", weights_only=True)
    assert best["epoch"] == 3  # min_epochs: the last epoch is the best
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items()}
    trained = last["model"]
    differs = [
        k for k, v in best["state_dict"].items() if not torch.equal(v.float(), trained[k].float())
    ]
    assert differs  # model.pt holds the moving average, not the last step's weights
    for k, v in best["state_dict"].items():
        assert torch.equal(v, averaged[k]), k
    # killed after epoch 2: the resumed run continues the same average
    killed = tmp_path / "killed"
    train_killed(3, train, val, mil_bags.classes, mil_bags.model, cfg, killed)
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, killed, resume=True)
    again = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    for k, v in best["state_dict"].items():
        assert torch.allclose(again[k].float(), v.float(), atol=1e-6), k


def test_encoder_lr_trains_the_encoder_at_its_own_rate(mil_bags, cohort, tmp_path: Path) -> None:
    """training.encoder_lr: the encoder's parameters move at their own rate, the head's at lr."""
    train, val = cohort
    train, val = train.head(6), val.head(4)

    def weights(name: str, **kw: object) -> tuple[dict, dict]:
        cfg = training(epochs=2, early_stopping={"metric": "auc", "min_epochs": 2}, **kw)
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / name)
        sd = torch.load(tmp_path / name / "model.pt", weights_only=True)["state_dict"]
        floats = {k: v.float() for k, v in sd.items() if v.is_floating_point()}
        encoder = {k: v for k, v in floats.items() if k.startswith("feature_encoder.")}
        learned = {k: v for k, v in encoder.items() if "running_" not in k}
        head = {k: v for k, v in floats.items() if k not in encoder}
        return learned, head

    def largest_change(a: dict, b: dict) -> float:
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    slow, head = weights("slow", encoder_lr=1e-9)
    slow_fast_head, fast_head = weights("slow_fast_head", encoder_lr=1e-9, lr=3e-2)
    full, _ = weights("full")
    assert slow and head
    assert largest_change(slow, slow_fast_head) < 1e-6  # both still at the initial weights
    assert largest_change(head, fast_head) > 1e-3  # while the head learns at lr
    assert largest_change(slow, full) > 1e-3  # at lr, the encoder learns too


def test_head_first_epochs_hold_the_encoder_then_train_it(
    mil_bags, cohort, tmp_path: Path, train_killed
) -> None:
    """training.head_first_epochs 1: after epoch 1 the encoder is where it started (the same
    whatever the head's learning rate) and AdamW holds no moments for it (it had no gradient),
    and it learns in the epochs after."""
    train, val = cohort
    args = (train.head(6), val.head(4), mil_bags.classes, mil_bags.model)

    def cfg(**kw: object) -> dict:
        stop = {"metric": "auc", "min_epochs": 3}
        return training(epochs=3, head_first_epochs=1, early_stopping=stop, **kw)

    def encoder(state: dict) -> dict:
        return {
            k: v.float()
            for k, v in state.items()
            if k.startswith("feature_encoder.") and v.is_floating_point() and "running_" not in k
        }

    train_killed(2, *args, cfg(), tmp_path / "a")  # killed after epoch 1
    train_killed(2, *args, cfg(lr=3e-2), tmp_path / "b")
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    last_b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    held_a, held_b = encoder(last_a), encoder(last_b)
    assert held_a and all(torch.equal(held_a[k], held_b[k]) for k in held_a)
    heads_differ = [k for k in last_a if k not in held_a and not torch.equal(last_a[k], last_b[k])]
    assert heads_differ  # the head learned, at its own rate
    optimizer = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["optimizer"]
    head_ids, encoder_ids = (g["params"] for g in optimizer["param_groups"])
    assert set(optimizer["state"]) == set(head_ids)  # moments for the head's group only
    assert encoder_ids
    train_fold(*args, cfg(), tmp_path / "a", resume=True)
    final = encoder(torch.load(tmp_path / "a" / "model.pt", weights_only=True)["state_dict"])
    assert max(float((final[k] - held_a[k]).abs().max()) for k in final) > 1e-3


def test_ema_decay_with_strategy_em_is_a_config_error(mil_bags, cohort, tmp_path: Path) -> None:
    train, val = cohort
    with pytest.raises(ConfigError, match="ema_decay"):
        train_fold(
            train.head(4),
            val.head(2),
            mil_bags.classes,
            mil_bags.model,
            training(strategy="em", ema_decay=0.9),
            tmp_path / "em",
        )


def test_train_fold_with_bag_mixing(mil_bags, cohort, tmp_path: Path) -> None:
    train, val = cohort
    out = tmp_path / "mix"
    train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(epochs=2, bag_mixing=1.0), out
    )
    rows = read_log(out / "train_log.csv")
    assert len(rows) == 2 and all(np.isfinite(float(r["train_loss"])) for r in rows)


def test_predict_with_nan_weights_is_an_error_not_a_row_of_nan(
    mil_bags, cohort, tmp_path: Path
) -> None:
    """NaN probabilities are the mark of a slide without patches; a model that gives them for a
    bag with patches (here: a model.pt whose weights are NaN, with a valid checksum) must not
    write a row that the evaluation leaves out as 'no patches' (nor a ``pred`` of argmax NaN)."""
    train, val = cohort
    torch.set_num_threads(1)
    model_path = train_fold(
        train, val, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path / "m"
    )
    ckpt = checkpoint_mod.load_checkpoint(model_path)
    ckpt["state_dict"]["attention_model.classifier.weight"] = torch.full_like(
        ckpt["state_dict"]["attention_model.classifier.weight"], float("nan")
    )
    bad = checkpoint_mod.atomic_save(ckpt, tmp_path / "bad" / "model.pt")
    out = tmp_path / "pred.csv"
    with pytest.raises(GigamilError, match=r"bad/model.pt: the model's weights hold NaN or inf"):
        predict_slides(bad, val, out, tmp_path / "att", device="cpu")
    assert not out.exists()


def test_bags_are_decoded_once_per_fold_and_train_the_same(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    """Patch bags stay in memory after their first read (run.DECODED_BAGS_BYTES): three epochs
    read the stores as often as one, and train exactly the model the re-reading trainer does."""
    train, val = cohort
    reads: list[str] = []
    original = ZarrBag._read

    def counting(self, selection):  # noqa: ANN001, ANN202
        reads.append(self.path.name)
        return original(self, selection)

    monkeypatch.setattr(ZarrBag, "_read", counting)
    cfg = training(epochs=3, early_stopping={"metric": "loss", "patience": 10})
    args = (train, val, mil_bags.classes, mil_bags.model)
    train_fold(*args, training(epochs=1), tmp_path / "one")
    once = len(reads)
    reads.clear()
    kept = train_fold(*args, cfg, tmp_path / "kept")
    assert len(reads) == once
    monkeypatch.setattr(fold_data, "DECODED_BAGS_BYTES", 0)
    reads.clear()
    reread = train_fold(*args, cfg, tmp_path / "reread")
    assert len(reads) > 2 * once  # every epoch reads every bag again
    a = torch.load(kept, weights_only=True)["state_dict"]
    b = torch.load(reread, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recalibrate_every_recomputes_the_statistics_before_every_nth_epoch(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    """training.recalibrate_every: 2 calibrates before epoch 1 (the fresh start) and again before
    epochs 3 and 5, each from its own sample (seed + epoch); the key enters the resume signature
    only when set, so folds trained before it existed are not retrained."""
    from gigamil.settings import TrainingConfig

    train, val = cohort
    seeds = []
    original = trainer_mod.calibrate_model

    def spy(model, bags, **kw):
        seeds.append(kw["seed"])
        return original(model, bags, **kw)

    monkeypatch.setattr(trainer_mod, "calibrate_model", spy)
    cfg = training(epochs=5, recalibrate_every=2, calibration_patches=64)
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "r")
    assert seeds == [0, 3, 5]
    assert "recalibrate_every" not in TrainingConfig.from_dict({}).resume_signature()
    assert TrainingConfig.from_dict(cfg).resume_signature()["recalibrate_every"] == 2


def test_predict_says_when_a_store_records_no_mpp(caplog) -> None:
    """A store without µm/px attributes (e.g. written by another tool) passed the model's
    resolution check without a word."""
    from types import SimpleNamespace

    from gigamil.train.predict import _check_mpp

    with caplog.at_level("WARNING", logger="gigamil"):
        _check_mpp("s1", SimpleNamespace(attrs={"effective_mpp": 0.5}), 0.5)
        _check_mpp("s1", SimpleNamespace(attrs={}), None)  # neither side knows: nothing to say
        assert caplog.text == ""
        _check_mpp("s1", SimpleNamespace(attrs={}), 0.5)
    assert "slide s1: its store records no µm/px; not checked against the model's 0.5" in (
        caplog.text
    )
    with pytest.raises(GigamilError, match="patches are at 1 µm/px but the model was trained"):
        _check_mpp("s1", SimpleNamespace(attrs={"target_mpp": 1.0}), 0.5)


def test_the_chunk_size_does_not_change_the_trained_model(mil_bags, tmp_path: Path) -> None:
    """The calibration before the first epoch ran in batches of the chunk size, and BatchNorm's
    train-mode statistics depend on the batch: k=4, 16 and a full-bag pass trained three
    different models although the chunk size is no param and not in the resume signature."""
    train = mil_bags.cohort(tmp_path, 6, 0, "t")
    val = mil_bags.cohort(tmp_path, 4, 1, "v")
    losses, weights = {}, {}
    for k in (4, 16, None):
        cfg = training(epochs=2, max_instances_per_forward_pass=k)
        out = tmp_path / f"k{k}"
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, out)
        losses[k] = [float(r["train_loss"]) for r in read_log(out / "train_log.csv")]
        weights[k] = torch.load(out / "last.pt", weights_only=True)["model"]
    for k in (4, 16):
        assert losses[k] == pytest.approx(losses[None], rel=1e-5), k
        for name, value in weights[None].items():
            assert torch.allclose(weights[k][name].float(), value.float(), atol=1e-4), (k, name)


def test_predict_names_the_size_and_the_mpp_mismatch_together(write_store, tmp_path) -> None:
    """A store cut at other settings gave 'patches are 224 px but the model was trained on 96
    px'; after re-cutting at 96 px, the µm/px mismatch came next: two runs for one mistake."""
    from types import SimpleNamespace

    from gigamil.train.predict import _open_slide

    patches = np.zeros((3, 16, 16, 3), np.uint8)
    store = write_store(tmp_path / "s.zarr", patches, target_mpp=1.0, effective_mpp=1.0)
    row = SimpleNamespace(slide_id="s", store=str(store))
    dev = torch.device("cpu")
    with pytest.raises(GigamilError) as err:
        _open_slide(row, {"patch_px": 32, "patch_mpp": 0.5}, 1, dev)
    assert "patches are at 1 µm/px but the model was trained at 0.5 µm/px" in str(err.value)
    assert "; and they are 16 px but the model was trained on 32 px" in str(err.value)
    # what to do, for the pipeline and for the command line
    assert (
        "preprocessing.patches.mpp within 1 % of it, e.g. the training config's (a single slide: gigamil patches --mpp 0.5)"
        in str(err.value)
    )
    assert "(patch_px: 32; gigamil patches --patch-px 32)" in str(err.value)
    with pytest.raises(GigamilError, match="slide s: patches are 16 px but the model was trained"):
        _open_slide(row, {"patch_px": 32, "patch_mpp": 1.0}, 1, dev)
    _open_slide(row, {"patch_px": 16, "patch_mpp": 1.0}, 1, dev)


def test_a_one_class_validation_set_says_auc_cannot_choose_the_epoch(
    mil_bags, cohort, tmp_path: Path, caplog
) -> None:
    """val_auc was nan every epoch and the loss chose the epoch, without a word."""
    train, val = cohort
    one = val[val["label"] == val["label"].iloc[0]]
    with caplog.at_level("WARNING", logger="gigamil"):
        train_fold(train, one, mil_bags.classes, mil_bags.model, training(epochs=1), tmp_path)
    assert f"validation slides of class {one['label'].iloc[0]} only: their AUC is undefined" in (
        caplog.text
    )


def test_a_store_recut_with_other_pixels_of_the_same_count_trains_again(
    mil_bags, cohort, tmp_path: Path, monkeypatch, caplog
) -> None:
    """A slide replaced by another of the same patch count (or patches re-encoded as JPEG):
    Snakemake reruns the fold, and its finished last.pt matched on slide ids, labels and patch
    counts, so the old model came back for the new patches. The stores' pixel digests differ."""
    from gigamil.data.store import read_store
    from gigamil.data.store_writer import StoreWriter

    train, val = cohort
    train, val = train.head(4).copy(), val.head(2)
    cfg = training(epochs=1)
    out = tmp_path / "f"
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, out)
    patches, coords, grid, attrs = read_store(train.iloc[0]["store"])
    recut = tmp_path / "recut.zarr"
    with StoreWriter(recut, len(coords), patches.shape[1], coords, grid) as writer:
        writer.append(255 - np.asarray(patches))  # other pixels, the same patches
        writer.commit(dict(attrs))
    assert ZarrBag(recut).attrs["patches_sha256"] != attrs["patches_sha256"]
    seen = _record_epochs(monkeypatch)
    (out / "model.pt").unlink()  # Snakemake deletes the job's outputs before it reruns it
    train.loc[train.index[0], "store"] = str(recut)
    with caplog.at_level("WARNING"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, out, resume=True)
    changed = "(changed: the training slides (ids, labels, patch counts or patches)); starting"
    assert seen == [1] and changed in caplog.text
    seen.clear()  # the same pixels again: resumed, nothing to train
    (out / "model.pt").unlink()
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, out, resume=True)
    assert seen == []


def test_features_of_a_store_recut_with_other_pixels_train_again(
    mil_bags, tmp_path: Path, monkeypatch
) -> None:
    """The same on cached features: a feature store recorded no digest of its patch store, so
    a fold resumed on the features of a re-cut store (Snakemake reruns extract_features, then
    the fold) returned the finished model of the old features. The digest is copied over."""
    from gigamil.data.feature_extract import extract_features
    from gigamil.data.store import read_store
    from gigamil.data.store_writer import StoreWriter

    model_cfg = {**mil_bags.model, "trainable_blocks": 0}
    patch_cfg = {"mpp": 0.5, "patch_px": mil_bags.px}
    train = mil_bags.cohort(tmp_path / "p", 4, 0, "t")
    feats = [
        str(extract_features(s, tmp_path / "f" / f"{i}.zarr", model_cfg, patch_cfg, device="cpu"))
        for i, s in enumerate(train["store"])
    ]
    ftrain = train.assign(store=feats)
    cfg = training(epochs=1)
    out = tmp_path / "fold"
    train_fold(ftrain, ftrain.iloc[:0], mil_bags.classes, model_cfg, cfg, out)
    patches, coords, grid, attrs = read_store(train["store"].iloc[0])
    with StoreWriter(train["store"].iloc[0], len(coords), patches.shape[1], coords, grid) as w:
        w.append(255 - np.asarray(patches))  # other pixels, the same patches
        w.commit(dict(attrs))
    extract_features(train["store"].iloc[0], feats[0], model_cfg, patch_cfg, device="cpu")
    seen = _record_epochs(monkeypatch)
    (out / "model.pt").unlink()  # Snakemake deletes the job's outputs before it reruns it
    train_fold(ftrain, ftrain.iloc[:0], mil_bags.classes, model_cfg, cfg, out, resume=True)
    assert seen == [1]


def test_a_fold_that_does_not_learn_says_so(mil_bags, cohort, tmp_path: Path, caplog) -> None:
    """A learning rate too small to move the weights: the training loss stays at the chance
    level (ln 2), and the fold's log says that the model did not learn (issue 18: 'nothing
    says so'); with two members, each is named."""
    train, val = cohort
    torch.set_num_threads(1)
    cfg = training(epochs=3, lr=1e-12, replicates=2)
    with caplog.at_level("WARNING", logger="gigamil"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "fold3")
    for member in (0, 1):
        said = re.search(
            f"fold3 replicate{member} did not learn: its training loss ended at ([0-9.]+) "
            r"\(chance level 0.693: a model predicting every class equally likely; flagged at "
            r">= 0.624\)",
            caplog.text,
        )
        assert said and float(said.group(1)) >= 0.9 * np.log(2)
    # and the fold's model.pt records it per member, for those the model is shared with
    members = torch.load(tmp_path / "fold3" / "model.pt", weights_only=True)["replicates"]
    for member in members:
        assert member["learning"]["learned"] is False
        assert member["learning"]["chance_loss"] == pytest.approx(0.693147)
        assert member["learning"]["final_train_loss"] >= member["learning"]["flag_loss"]
    # and its predictions carry the verdict, which the evaluation pages warn of
    preds = predict_slides(tmp_path / "fold3" / "model.pt", val, None, tmp_path / "att")
    assert preds["model_learned"].tolist() == [False] * len(val)


def test_a_three_class_fold_is_judged_by_the_chance_level_of_three_classes(
    mil_bags, cohort, tmp_path: Path
) -> None:
    """The levels on each log row and in model.pt are those of the fold's classes: ln 3 =
    1.099 for three (flag 0.989), not ln 2's (flag 0.624), by which a three-class model at
    0.7, well below its chance level, would be recorded as not learned."""
    train, val = (
        df.assign(label=[(*mil_bags.classes, "other")[i % 3] for i in range(len(df))])
        for df in cohort
    )
    torch.set_num_threads(1)
    classes = [*mil_bags.classes, "other"]
    train_fold(train, val, classes, mil_bags.model, training(epochs=1), tmp_path / "fold0")
    rows = read_log(tmp_path / "fold0" / "train_log.csv")
    assert {(r["chance_loss"], r["flag_loss"]) for r in rows} == {("1.098612", "0.988751")}
    record = torch.load(tmp_path / "fold0" / "model.pt", weights_only=True)["learning"]
    assert (record["chance_loss"], record["flag_loss"]) == (1.098612, 0.988751)


def test_a_focal_loss_fold_is_judged_for_learning_by_the_focal_chance_level(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    """Focal loss at chance is (1 - 1/2)^2 ln 2 = 0.173, far below ln 2: a fold trained with it
    is judged against that level (against ln 2, no focal model would ever be said not to
    learn)."""
    train, val = cohort
    torch.set_num_threads(1)
    judged = []
    monkeypatch.setattr(run_mod, "warn_if_unlearned", lambda *args: judged.append(args))
    cfg = training(epochs=1, loss="focal")
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "fold0")
    assert [(Path(log).name, chance) for log, chance, _, _ in judged] == [
        ("train_log.csv", pytest.approx(0.25 * np.log(2), abs=1e-6))  # the log's 6 decimals
    ]
    p = 2**-0.9  # the flag: the focal loss of a true-class probability of 2^-0.9 = 0.536
    assert judged[0][3] == pytest.approx((1 - p) ** 2 * -np.log(p), abs=1e-6)


def test_a_focal_model_that_did_not_learn_is_said_too(
    mil_bags, cohort, tmp_path: Path, caplog
) -> None:
    """A mutation audit's reproducer: with weights that do not move, the focal loss falls to
    87 % of its chance level from the random initialisation's small separation (cross-entropy:
    93 %), so 0.9 x chance let it pass; the flag of one true-class probability catches both.
    The log's rows (for the plot) and model.pt's record (for those it is shared with) carry the
    focal levels too: with ln 2's, this model would be drawn far below chance and recorded as
    learned."""
    train, val = cohort
    torch.set_num_threads(1)
    cfg = training(epochs=3, lr=1e-12, loss="focal")
    with caplog.at_level("WARNING", logger="gigamil"):
        train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "fold5")
    assert "fold5 did not learn" in caplog.text and "(chance level 0.173: " in caplog.text
    assert "flagged at >= 0.134)" in caplog.text  # the flag, not the chance level, decides
    p = 2**-0.9  # the levels as the log writes them (6 decimals)
    focal = tuple(pytest.approx(v, abs=1e-6) for v in (0.25 * np.log(2), (1 - p) ** 2 * -np.log(p)))
    for row in read_log(tmp_path / "fold5" / "train_log.csv"):
        assert (float(row["chance_loss"]), float(row["flag_loss"])) == focal
    record = torch.load(tmp_path / "fold5" / "model.pt", weights_only=True)["learning"]
    assert (record["chance_loss"], record["flag_loss"]) == focal
    assert record["learned"] is False


def test_a_label_smoothed_fold_is_judged_against_the_smoothed_flag(
    mil_bags, cohort, tmp_path: Path, monkeypatch
) -> None:
    """training.label_smoothing reaches the flag of the fold's log rows and of its warning:
    with 0.9 ln 2 a perfect model trained with ε 0.65 would be called unlearnt."""
    from gigamil.train.learning import flag_loss

    train, val = cohort
    torch.set_num_threads(1)
    judged = []
    monkeypatch.setattr(run_mod, "warn_if_unlearned", lambda *args: judged.append(args))
    cfg = training(epochs=1, label_smoothing=0.65)
    train_fold(train, val, mil_bags.classes, mil_bags.model, cfg, tmp_path / "fold0")
    flag = flag_loss(2, "ce", label_smoothing=0.65)  # 0.671, above the best reachable 0.631
    assert [round(args[3], 6) for args in judged] == [round(flag, 6)]
    assert {r["flag_loss"] for r in read_log(tmp_path / "fold0" / "train_log.csv")} == {
        f"{flag:.6f}"
    }


def test_weak_patch_labels_are_not_judged_and_an_instance_loss_raises_the_levels(
    mil_bags, cohort, tmp_path: Path, caplog
) -> None:
    """A screen's finding: with model.pool: instance every patch trains toward its slide's
    label, and the normal-looking patches of positive slides keep the loss near ln 2 however
    well the patches are told apart, so every such model was called 'DID NOT LEARN'. Its log
    now has no flag and nothing says it did not learn, even at a learning rate that moves
    nothing; model.instance_loss w adds its term to both levels."""
    train, val = cohort
    torch.set_num_threads(1)
    model = dict(mil_bags.model, pool="instance")
    with caplog.at_level("WARNING", logger="gigamil"):
        train_fold(
            train, val, mil_bags.classes, model, training(epochs=3, lr=1e-12), tmp_path / "i"
        )
    assert "did not learn" not in caplog.text and "DID NOT LEARN" not in caplog.text
    assert {
        (r["chance_loss"], r["flag_loss"]) for r in read_log(tmp_path / "i" / "train_log.csv")
    } == {("0.693147", "")}
    record = torch.load(tmp_path / "i" / "model.pt", weights_only=True)["learning"]
    assert record["learned"] is None and record["flag_loss"] is None
    assert (
        predict_slides(tmp_path / "i" / "model.pt", val, None, tmp_path / "a")["model_learned"]
        .isna()
        .all()
    )
    model = dict(mil_bags.model, instance_loss=0.5)
    train_fold(train, val, mil_bags.classes, model, training(epochs=1), tmp_path / "w")
    rows = read_log(tmp_path / "w" / "train_log.csv")
    assert {(r["chance_loss"], r["flag_loss"]) for r in rows} == {("1.039721", "0.935749")}


def test_predicting_feature_stores_warns_about_patches_cut_otherwise(
    mil_bags, write_store, tmp_path: Path, caplog
) -> None:
    """Feature stores recorded only their patch store's codec: a model trained on cached
    features recorded no min_tissue, stride or tissue-mask settings, and predicting the features
    of patches cut otherwise gave no warning (``gigamil predict`` on patch stores does). The
    feature store now copies them from its patch store."""
    from gigamil.data.feature_extract import extract_features

    mask = {"mask_file": "/x.png", "mask_mpp": 8.0, "threshold": "otsu", "close_um": 32.0}
    same = {"min_tissue": 0.5, "stride_px": 16, "codec": "zstd", "mask_params": mask}
    model_cfg = {**mil_bags.model, "trainable_blocks": 0}
    patch_cfg = {"mpp": 0.5, "patch_px": mil_bags.px}

    def features(prefix: str, attrs: list[dict]) -> pd.DataFrame:
        slides = attr_slides(mil_bags, write_store, tmp_path / "p", prefix, attrs)
        stores = [
            str(extract_features(s, tmp_path / "f" / Path(s).name, model_cfg, patch_cfg, "cpu"))
            for s in slides["store"]
        ]
        return slides.assign(store=stores)

    torch.set_num_threads(1)
    train = features("a", [same] * 4)
    out = tmp_path / "m"
    model_path = train_fold(train, train.iloc[:0], mil_bags.classes, model_cfg, training(), out)
    recorded = torch.load(model_path, weights_only=True)["preprocessing"]
    assert recorded["preprocessing.patches.min_tissue"] == 0.5
    assert recorded["preprocessing.tissue.close_um"] == 32.0
    new = features("n", [{**same, "min_tissue": 0.25}, same, {**same, "stride_px": 8}])
    caplog.set_level(logging.WARNING)
    warned = _preprocessing_warnings(caplog, model_path, new, tmp_path / "att")
    assert len(warned) == 1, warned
    assert "2 of the 3 slides to predict were cut with other preprocessing" in warned[0]
    assert "min_tissue 0.25 (1 slide(s): n0) where the training patches had 0.5" in warned[0]
    assert "stride_px 8 (1 slide(s): n2) where the training patches had 16" in warned[0]
    caplog.clear()
    assert not _preprocessing_warnings(caplog, model_path, train, tmp_path / "att")
