"""The resume warning names what changed between last.pt's signature and the training's now."""

from __future__ import annotations

from pathlib import Path

from gigamil.train.checkpoint import CheckpointSaver, atomic_save
from gigamil.train.signature import changed_keys, compared_part


def test_changed_keys_names_settings_and_slides() -> None:
    old = {"model": {"att_dim": 64, "pool": "abmil"}, "training": {"lr": 3e-4}, "train": [["a"]]}
    new = {"model": {"att_dim": 128, "pool": "abmil"}, "training": {"lr": 1e-3}, "train": [["b"]]}
    assert changed_keys(old, new) == (
        "model.att_dim, the training slides (ids, labels, patch counts or patches), training.lr"
    )
    assert changed_keys({"world": 1}, {"world": 2}) == "the number of processes"
    assert changed_keys({"training": {}}, {"training": {"seed": 1}}) == "training.seed"
    many = {"training": {f"k{i}": i for i in range(8)}}
    assert changed_keys({"training": {}}, many, limit=2) == "training.k0, training.k1, ..."
    assert changed_keys(None, new) == "no signature"


def test_a_last_pt_of_other_settings_is_ignored_naming_them(tmp_path: Path, caplog) -> None:
    """It said only "another configuration or other slides": which of the two, and which
    setting, was for the user to guess."""
    sig = {"model": {"att_dim": 64}, "training": {"lr": 3e-4, "epochs": 4}, "train": [["a"]]}
    saver = CheckpointSaver(tmp_path, sig)
    atomic_save({"signature": sig, "epoch": 1}, saver.last_path)
    assert saver.load_last() is not None
    other = CheckpointSaver(tmp_path, {**sig, "training": {"lr": 1e-3, "epochs": 4}})
    with caplog.at_level("WARNING", logger="gigamil"):
        assert other.load_last() is None
    assert "other settings or slides (changed: training.lr); starting from scratch" in caplog.text


def test_keys_strategy_em_does_not_use_are_not_compared_but_others_are(tmp_path: Path) -> None:
    """Under strategy em, ``training.epochs`` and early stopping's ``patience`` and
    ``min_epochs`` train nothing: a last.pt written with others resumes; under another strategy
    (and for em's own keys and the metric) a change still starts from scratch."""
    es = {"metric": "auc", "patience": 5, "min_epochs": 0}
    em = {"model": {}, "training": {"strategy": "em", "epochs": 20, "early_stopping": es}}
    saver = CheckpointSaver(tmp_path, em)
    atomic_save({"signature": em, "epoch": 2}, saver.last_path)
    unused = {"epochs": 3, "early_stopping": {**es, "patience": 1, "min_epochs": 2}}
    assert CheckpointSaver(tmp_path, {**em, "training": {**em["training"], **unused}}).load_last()
    used = {"early_stopping": {**es, "metric": "loss"}}
    assert not CheckpointSaver(tmp_path, {**em, "training": {**em["training"], **used}}).load_last()
    end_to_end = {"model": {}, "training": {"epochs": 20, "early_stopping": es}}
    atomic_save({"signature": end_to_end, "epoch": 2}, saver.last_path)
    assert CheckpointSaver(tmp_path, end_to_end).load_last()
    other = {**end_to_end, "training": {**end_to_end["training"], **unused}}
    assert not CheckpointSaver(tmp_path, other).load_last()
    assert compared_part(other) is other and compared_part(None) is None
