"""gigamil.train.checkpoint: checksummed checkpoints and safe writes (full disk, leftovers)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gigamil import fileutil
from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.settings import ModelConfig
from gigamil.train.checkpoint import (
    CheckpointSaver,
    atomic_save,
    load_checkpoint,
    load_model,
)
from gigamil.train.model_file import model_checkpoint, model_header

MARK = 1.2345678


def _flip_a_weight_bit(path: Path) -> None:
    """Flip one bit inside the stored tensor data (found by its distinctive float32 value)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(np.float32(MARK).tobytes())
    assert at > 0
    raw[at + 1] ^= 0x04
    path.write_bytes(bytes(raw))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_bit_flip_in_a_checkpoint_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    atomic_save({"epoch": 3, "state_dict": {"w": torch.full((64,), MARK)}}, path)
    assert load_checkpoint(path)["epoch"] == 3  # intact: loads, digest verified and removed
    assert "sha256" not in load_checkpoint(path)
    assert torch.load(path, weights_only=True)["epoch"] == 3  # still plain torch.load-able
    _flip_a_weight_bit(path)
    with pytest.raises(GigamilError, match=r"model\.pt: checkpoint is damaged \(checksum"):
        load_checkpoint(path)


def test_damaged_last_pt_says_what_to_do(tmp_path: Path) -> None:
    saver = CheckpointSaver(tmp_path / "f", {"s": 1})
    saver.save_last({"model": {"w": torch.full((64,), MARK)}})
    assert saver.load_last() is not None
    _flip_a_weight_bit(saver.last_path)
    with pytest.raises(GigamilError, match=r"last\.pt: checkpoint is damaged.*delete it and rerun"):
        CheckpointSaver(tmp_path / "f", {"s": 1}).load_last()


def test_a_file_that_is_no_model_is_named_without_a_delete_hint(tmp_path: Path) -> None:
    log = tmp_path / "train_log.csv"  # a user's slip: the fold's log given for its model
    log.write_text("epoch,train_loss\n1,0.69\n")
    with pytest.raises(GigamilError, match=r"train_log\.csv: not a gigamil model file") as err:
        load_checkpoint(log)
    assert "delete" not in str(err.value)
    broken = tmp_path / "model.pt"  # one train_fold wrote, cut short: delete and rerun
    broken.write_text("not a zip")
    with pytest.raises(GigamilError, match=r"model\.pt: not a readable gigamil checkpoint.*delete"):
        load_checkpoint(broken)


class _NotWeights:
    """A pickled object that torch's weights-only unpickler refuses."""


def test_refused_unpickling_does_not_repeat_torchs_weights_only_false_advice(
    tmp_path: Path,
) -> None:
    """torch suggests retrying with weights_only=False (arbitrary code): wrong for a damaged
    file; the error says what the file is and, for model.pt, how to have it written again."""
    path = tmp_path / "model.pt"
    torch.save({"epoch": 1, "x": _NotWeights()}, path)
    with pytest.raises(GigamilError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "does not load as plain weights: damaged, edited or not gigamil's" in message
    assert "weights_only" not in message and "False" not in message
    assert (
        "rerun snakemake: train_fold writes it again (from last.pt when "
        "that is intact, else by training the fold) and the fold is predicted again" in message
    )
    assert message.endswith(
        "from another project: ask for a fresh copy (compare its sha256 with the sender's)"
    )


def test_a_folder_of_fold_models_given_as_a_model_says_to_give_each_fold(tmp_path: Path) -> None:
    """``gigamil predict --model results/models/demo`` (a new user's trial): the folder of the
    fold models, named with one of them and what to do with the rest."""
    for k in (0, 1):
        (tmp_path / f"fold{k}").mkdir()
        (tmp_path / f"fold{k}" / "model.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(GigamilError) as err:
        load_checkpoint(tmp_path)
    first = tmp_path / "fold0" / "model.pt"
    assert (
        f"is a folder, not a checkpoint file (2 fold models: give one fold's model.pt, e.g. "
        f"{first}, once per fold; gigamil ensemble averages their predictions)"
    ) in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GigamilError, match=r"is a folder, not a checkpoint file$"):
        load_checkpoint(tmp_path / "empty")  # a folder without model files: no hint


def test_checkpoint_without_digest_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"epoch": 1}, path)  # written by an older gigamil
    assert load_checkpoint(path) == {"epoch": 1}


def test_full_disk_while_saving_last_pt_names_the_path_and_leaves_no_temporary(
    tmp_path: Path, monkeypatch
) -> None:
    saver = CheckpointSaver(tmp_path / "f", {"s": 1})
    saver.save_last({"epoch": 1})

    def full_disk(path: Path, data) -> None:
        Path(path).write_bytes(bytes(data)[:100])  # part of it, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileutil, "_write_file", full_disk)
    with pytest.raises(GigamilError, match=r"no space left on device: .*f/last\.pt"):
        saver.save_last({"epoch": 2, "model": {"w": torch.zeros(1000)}})
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["last.pt"]
    monkeypatch.undo()
    assert load_checkpoint(saver.last_path)["epoch"] == 1  # the previous one is intact


def test_temporaries_of_dead_processes_are_removed_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "f"
    out.mkdir()
    dead = out / f"last.pt.tmp-{_dead_pid()}"
    dead.write_bytes(b"partial")
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = out / f"last.pt.tmp-{live_proc.pid}"
        live.write_bytes(b"being written")
        CheckpointSaver(out, {}).save_last({"epoch": 1})
        assert not dead.exists() and live.exists()
    finally:
        live_proc.kill()
        live_proc.wait()


def test_a_model_file_cut_short_says_so(tmp_path: Path) -> None:
    """A truncated copy said only "[Errno 22] Invalid argument" or miniz's "failed finding
    central directory ... internal miniz error"."""
    import torch

    full = tmp_path / "full.pt"
    torch.save({"w": torch.zeros(1000)}, full)
    data = full.read_bytes()
    for n in (100, len(data) // 2, len(data) - 10):
        cut = tmp_path / "copy.pt"
        cut.write_bytes(data[:n])
        with pytest.raises(GigamilError, match=r"copy\.pt: not a readable .*damaged or cut short"):
            load_checkpoint(cut)


def test_train_log_writes_an_empty_cell_for_nan(tmp_path: Path) -> None:
    """Without validation slides every val_ column read "nan" in a spreadsheet."""
    from gigamil.train.checkpoint import write_train_log

    rows = [{"epoch": 1, "train_loss": 0.5, "val_loss": float("nan")}, {"epoch": 2}]
    write_train_log(tmp_path / "log.csv", rows, ["epoch", "train_loss", "val_loss"])
    assert (tmp_path / "log.csv").read_text() == "epoch,train_loss,val_loss\n1,0.5,\n2,,\n"


def _small_model_checkpoint() -> tuple[torch.nn.Module, dict]:
    cfg = ModelConfig.from_dict({"encoder": "smallcnn"})
    model = build_mil_model(cfg, 2, 32)
    header = model_header(cfg.to_dict(), ["neg", "pos"], 32)
    return model, model_checkpoint(model, header, 1, {"val_auc": 0.9})


def test_the_best_epoch_kept_for_last_pt_is_a_copy_not_the_training_weights(
    tmp_path: Path,
) -> None:
    """The saver keeps the best epoch in memory and writes it into every last.pt, from which a
    resumed run writes model.pt again: weights shared with the model in training would turn
    it into the latest epoch's weights."""
    model, ckpt = _small_model_checkpoint()
    saver = CheckpointSaver(tmp_path, {"s": 1})
    saver.save_best(ckpt)
    with torch.no_grad():  # the next epochs train on
        for p in model.parameters():
            p.add_(1.0)
    saver.save_last({"model": model.state_dict()})
    best = load_checkpoint(saver.model_path)["state_dict"]
    kept = load_checkpoint(saver.last_path)["best"]["state_dict"]
    assert best.keys() == kept.keys()
    assert all(torch.equal(best[k], kept[k]) for k in best)


def test_a_model_pt_whose_weights_do_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    """A state dict lacking a tensor (or holding another model's) must not load with the
    missing layers left at their random initialisation."""
    _, ckpt = _small_model_checkpoint()
    key = next(k for k in ckpt["state_dict"] if k.startswith("attention_model."))
    missing = {**ckpt, "state_dict": {k: v for k, v in ckpt["state_dict"].items() if k != key}}
    with pytest.raises(GigamilError, match=f"lacks {key}"):
        load_model(atomic_save(missing, tmp_path / "a" / "model.pt"))
    extra = {**ckpt, "state_dict": {**ckpt["state_dict"], "attention_model.extra": torch.ones(1)}}
    with pytest.raises(GigamilError, match="has unexpected attention_model.extra"):
        load_model(atomic_save(extra, tmp_path / "b" / "model.pt"))


def test_a_model_that_recorded_it_did_not_learn_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """gigamil predict, the workflow's prediction and the heatmaps load the model with
    load_model: a model that did not learn still predicts, and every log that used it says so;
    one that learned says nothing."""
    from gigamil.train.learning import log_columns

    _, ckpt = _small_model_checkpoint()
    record = {"final_train_loss": 0.69, **log_columns(2, "ce"), "learned": False}
    path = atomic_save({**ckpt, "learning": record}, tmp_path / "a" / "model.pt")
    with caplog.at_level("WARNING", logger="gigamil"):
        load_model(path)
    assert (
        f"{path}: training loss ended at 0.690 (mean of the last 3 epochs; chance level 0.693"
        in caplog.text
    )
    assert "DID NOT LEARN: its predictions mean nothing" in caplog.text
    caplog.clear()
    learned = {**record, "final_train_loss": 0.2, "learned": True}
    with caplog.at_level("WARNING", logger="gigamil"):
        load_model(atomic_save({**ckpt, "learning": learned}, tmp_path / "b" / "model.pt"))
    assert caplog.text == ""


def test_a_header_of_numpy_values_loads_with_weights_only(tmp_path: Path) -> None:
    """model.pt is read with ``weights_only=True``, which refuses numpy scalars: the header
    stores the µm/px, the feature dim, the metrics and the patient ids as plain Python values
    (numpy ones come from the stores' medians and pandas columns)."""
    cfg = ModelConfig.from_dict({"encoder": "smallcnn"})
    model = build_mil_model(cfg, 2, 32)
    seen = {"slides": [["c", "s1"]], "patient_ids": np.array(["p1", "p2"])}
    header = model_header(
        cfg.to_dict(),
        ["neg", "pos"],
        np.int64(32),
        patch_mpp=np.float64(0.5),
        features={"encoder_id": "enc", "dim": np.int64(8)},
        training_slides=seen,
        preprocessing={"preprocessing.patches.codec": "zstd"},
    )
    ckpt = model_checkpoint(model, header, np.int64(3), {"val_auc": np.float64(0.9)})
    torch.save(ckpt, tmp_path / "model.pt")
    back = torch.load(tmp_path / "model.pt", weights_only=True)
    assert back["patch_mpp"] == 0.5 and back["features"] == {"encoder_id": "enc", "dim": 8}
    assert back["metrics"] == {"val_auc": 0.9} and back["epoch"] == 3
    assert back["training_slides"]["patient_ids"] == ["p1", "p2"]
    assert back["preprocessing"] == {"preprocessing.patches.codec": "zstd"}


def test_a_model_whose_loss_is_not_judged_loads_without_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """model.pool: instance records ``learned`` None (not judged: a model that learned ends
    near chance too); loading it must not say that its predictions mean nothing."""
    from gigamil.train.learning import log_columns

    _, ckpt = _small_model_checkpoint()
    levels = log_columns(2, weak_patch_labels=True)
    record = {"final_train_loss": 0.68, **levels, "learned": None}
    with caplog.at_level("WARNING", logger="gigamil"):
        load_model(atomic_save({**ckpt, "learning": record}, tmp_path / "a" / "model.pt"))
    assert caplog.text == ""
