"""Watching a training run: the start-of-run TensorBoard warning, the check that the weights
are still finite numbers."""

from __future__ import annotations

import pytest
import torch

from gigamil.errors import GigamilError
from gigamil.train.monitor import (
    check_finite_weights,
    non_finite_weights,
    tensorboard_package_warning,
    tensorboard_warning,
    tensorboard_writer,
)


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


def test_infinite_weights_stop_the_training_as_nan_ones_do() -> None:
    """An optimizer step can write inf without NaN (an overflowing update): every later epoch
    and prediction is then NaN, so inf must stop the training with the layers named."""
    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(4)])
    assert non_finite_weights(model) == ""
    check_finite_weights(model, 1, 0.5)  # finite: nothing happens
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    assert non_finite_weights(model) == "1.weight"
    with pytest.raises(GigamilError, match=r"training diverged in epoch 3 .*\(1\.weight\)"):
        check_finite_weights(model, 3, 0.5)
    with torch.no_grad():
        for layer in model:
            layer.bias[0] = float("-inf")
    assert non_finite_weights(model) == "0.bias, 1.weight, 1.bias, ..."


def test_a_training_that_starts_again_at_epoch_1_purges_the_earlier_events(tmp_path) -> None:
    """A fold killed in its first epoch (after that epoch's events, before its first last.pt),
    or trained again from scratch (``--no-resume``, other settings), starts again at epoch 1:
    the earlier events are purged as a resumed run's are, not drawn twice (epoch 1 twice)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def run(first_epoch: int, values: list[float]) -> None:
        tb = tensorboard_writer(tmp_path, first_epoch)
        for epoch, value in enumerate(values, start=first_epoch):
            tb.add_scalar("val_auc", value, epoch)
        tb.close()

    def scalars() -> list[tuple[int, float]]:
        acc = EventAccumulator(str(tmp_path))
        acc.Reload()
        return [(e.step, round(e.value, 3)) for e in acc.Scalars("val_auc")]

    run(1, [0.1])  # killed before epoch 1's last.pt
    run(1, [0.2, 0.3, 0.4])  # started again at epoch 1, killed after epoch 3's events
    assert scalars() == [(1, 0.2), (2, 0.3), (3, 0.4)]
    run(3, [0.5])  # resumed after epoch 2's last.pt: epoch 3 redone
    assert scalars() == [(1, 0.2), (2, 0.3), (3, 0.5)]


def test_a_run_is_told_at_its_start_that_tensorboard_is_not_installed(monkeypatch) -> None:
    """training.tensorboard: true without the package passed the dry run without a word; every
    train_fold job then stopped at its first epoch, after preprocessing."""
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    message = tensorboard_package_warning()
    assert message is not None and "tensorboard package is not installed" in message
    assert "gigamil[tensorboard]" in message and "tensorboard: false" in message
