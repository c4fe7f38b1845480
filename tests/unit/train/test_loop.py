"""One training epoch and one validation pass (gigamil.train.loop) on in-memory feature bags:
the seeds, the gradient accumulation over a step, validation in eval mode, bag mixing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gigamil.data.features import FeatureBag
from gigamil.models.mil import MILModel
from gigamil.nn.losses import BagLoss
from gigamil.nn.pooling import AttentionHead
from gigamil.train.amp import AmpScaler, Optimization
from gigamil.train.loop import (
    BagItem,
    EpochSettings,
    bag_seed,
    make_scheduler,
    mix_negative,
    steps_per_epoch,
    train_epoch,
    validate,
)

DIM = 4


def item(i: int, n: int, label: int) -> BagItem:
    """Bag ``s{i}`` of ``n`` random features (mean ``label``)."""
    feats = np.random.default_rng(i).normal(size=(n, DIM)) + label
    grid = np.stack([np.arange(n), np.zeros(n, np.int64)], 1)
    attrs = {"slide_id": f"s{i}", "patch_px": 8}
    return BagItem(f"s{i}", FeatureBag.in_memory(feats, grid * 8, grid, attrs), label)


def head_model(dropout: float = 0.0) -> MILModel:
    """An attention head on features (no encoder), as the frozen and em strategies train it."""
    torch.manual_seed(0)
    head = AttentionHead(DIM, n_classes=2, att_dim=4, dropout=dropout)
    return MILModel(nn.Identity(), head, BagLoss())


def sgd(model: MILModel, lr: float) -> Optimization:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return Optimization(
        opt, make_scheduler(opt, "constant", 10), AmpScaler(False, torch.device("cpu"))
    )


def test_every_epoch_and_bag_draws_its_own_randomness() -> None:
    """Shuffling, augmentation and subsampling are seeded by (seed, epoch, bag): an epoch that
    reused another's seeds would show the model the same order and augmentations every epoch."""
    seeds = {bag_seed(0, e, i) for e in range(1, 6) for i in range(-1, 8)}
    assert len(seeds) == 5 * 9
    assert bag_seed(0, 1, 3) != bag_seed(1, 1, 3)
    assert bag_seed(7, 2, 3) == bag_seed(7, 2, 3)


def test_steps_per_epoch_counts_the_last_partial_step() -> None:
    """5 bags at 2 bags per step are 3 optimizer steps (the schedule spans all of them; with
    2 it would reach its end early and the last step of each epoch would run at lr 0)."""
    assert steps_per_epoch(5, 2, 1) == 3
    assert steps_per_epoch(7, 2, 2) == 2
    assert steps_per_epoch(4, 2, 1) == 2
    assert steps_per_epoch(0, 2, 1) == 1


def test_a_step_of_several_bags_follows_the_mean_of_their_gradients() -> None:
    """bags_per_step: 2 accumulates the two bags' gradients scaled by 1/2 (the mean, as one
    batch would): a sum would double the learning rate of every step."""
    items = [item(0, 5, 0), item(1, 7, 1)]
    model = head_model()
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    grads = []
    for it in items:
        model.zero_grad()
        model.forward_train(it.bag, it.label)
        grads.append([p.grad.clone() for p in params])
    model.zero_grad()
    lr = 0.5
    settings = EpochSettings(seed=0, bags_per_step=2, progress=False)
    train_epoch(model, items, sgd(model, lr), epoch=1, settings=settings)
    for p, p0, g0, g1 in zip(params, before, *grads, strict=True):
        assert torch.allclose(p.detach(), p0 - lr * (g0 + g1) / 2, atol=1e-6)


def test_validation_runs_in_eval_mode_whatever_mode_the_model_was_left_in() -> None:
    """After a training epoch the model is in train mode; validation must switch dropout off
    (else its loss and AUC, which choose the best epoch, are noisy draws)."""
    items = [item(i, 6, i % 2) for i in range(6)]
    model = head_model(dropout=0.5)
    model.eval()
    expected = validate(model, items, None, 2, BagLoss(), None)
    model.train()
    torch.manual_seed(1)
    got = validate(model, items, None, 2, BagLoss(), None)
    assert not model.training
    assert got == pytest.approx(expected)


def test_bag_mixing_adds_patches_of_negative_bags_only() -> None:
    """Bag mixing keeps labels only when the added patches come from class-0 bags: adding a
    positive bag's patches to a negative bag would train it as negative with lesion patches."""
    items = [item(0, 5, 1), item(1, 6, 0), item(2, 7, 1), item(3, 8, 1)]
    settings = EpochSettings(seed=0, bag_mixing=1.0)
    for index in (0, 1, 2, 3):
        for seed in range(5):
            mixed = mix_negative(items[index].bag, index, items, settings, seed)
            if index == 1:  # the only negative bag has no other negative bag to take from
                assert mixed is items[1].bag
                continue
            base, part = mixed.parts
            assert base is items[index].bag
            assert part.slide_id == "s1" and 1 <= len(part) <= 6
