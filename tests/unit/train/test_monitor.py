"""Watching a training run: the start-of-run TensorBoard warning."""

from __future__ import annotations

from gigamil.train.monitor import tensorboard_warning


def test_folds_trained_without_tensorboard_are_named_at_the_start_of_a_run(tmp_path):
    """training.tensorboard is not a training param: switching it on retrains nothing, so a
    run says which finished folds will have no events."""
    folds = [tmp_path / f"fold{k}" for k in range(4)]
    for d in folds[:3]:
        d.mkdir()
        (d / "model.pt").write_bytes(b"x")
    (folds[1] / "tensorboard").mkdir()  # one model per fold, with events
    (folds[2] / "replicate0" / "tensorboard").mkdir(parents=True)  # replicates, with events
    message = tensorboard_warning(folds)  # fold3 has not trained: it will write events
    assert message is not None and "but fold0 trained without it" in message
    assert "fold1" not in message and "fold2" not in message and "fold3" not in message
    (folds[0] / "tensorboard").mkdir()
    assert tensorboard_warning(folds) is None
