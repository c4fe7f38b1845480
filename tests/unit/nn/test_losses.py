"""Bag losses: cross-entropy, focal loss, class weights and label smoothing."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from gigamil.nn.losses import BagLoss, balanced_class_weights


def test_binary_ce_equals_bce_and_multiclass_equals_cross_entropy() -> None:
    z = torch.tensor([[1.5], [-0.3], [0.2]])
    y = torch.tensor([1, 0, 1])
    expected = F.binary_cross_entropy_with_logits(z[:, 0], y.float())
    assert torch.allclose(BagLoss()(z, y), expected)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 2])
    assert torch.allclose(BagLoss()(logits, labels), F.cross_entropy(logits, labels))


def test_label_smoothing_matches_torch_and_bounds_the_logit() -> None:
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 2, 1])
    smoothed = BagLoss(label_smoothing=0.2)(logits, labels)
    assert torch.allclose(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.2))
    # binary: the loss of a positive bag is smallest at z = ln((2 - eps) / eps), not at +inf
    loss = BagLoss(label_smoothing=0.1)
    zs = torch.linspace(0, 8, 801)
    best = float(zs[int(torch.stack([loss(z.reshape(1), 1) for z in zs]).argmin())])
    assert best == pytest.approx(math.log(1.9 / 0.1), abs=0.01)
    with pytest.raises(ValueError, match="label_smoothing"):
        BagLoss(label_smoothing=1.0)


def test_focal_and_class_weights() -> None:
    z = torch.tensor([2.0])
    p = torch.sigmoid(z)
    assert torch.allclose(BagLoss("focal", gamma=2.0)(z, 1), -((1 - p) ** 2) * torch.log(p))
    w = balanced_class_weights([0, 0, 0, 1], 2)
    assert w == pytest.approx([4 / 6, 2.0])
    weighted = BagLoss(class_weights=w)(torch.tensor([[0.0], [0.0]]), torch.tensor([0, 1]))
    assert torch.allclose(weighted, torch.tensor(math.log(2) * (4 / 6 + 2.0) / 2))


def test_class_weights_follow_each_bags_own_class() -> None:
    """Each bag's loss is multiplied by the weight of ITS class; the batch loss is the plain
    mean over bags."""
    bce = F.binary_cross_entropy_with_logits
    loss = BagLoss(class_weights=[0.25, 3.0])
    z = torch.tensor([0.7])
    assert torch.allclose(loss(z, 0), 0.25 * bce(z, torch.zeros(1)))
    assert torch.allclose(loss(z, 1), 3.0 * bce(z, torch.ones(1)))
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([2, 0, 1, 2])
    w = torch.tensor([0.5, 1.0, 2.0])
    expected = (F.cross_entropy(logits, labels, reduction="none") * w[labels]).mean()
    assert torch.allclose(BagLoss(class_weights=w.tolist())(logits, labels), expected)


def test_fractional_or_one_hot_labels_are_refused() -> None:
    """0.7 trained as class 0 and a one-hot [0, 1] was broadcast into the mean of both classes'
    losses, silently: both are errors; whole-number floats and one index per bag are fine."""
    loss = BagLoss()
    with pytest.raises(ValueError, match=r"label must be class indices"):
        loss(torch.tensor([0.3]), 0.7)
    with pytest.raises(ValueError, match=r"2 label\(s\) for 1 bag\(s\)"):
        loss(torch.tensor([0.3]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"3 label\(s\) for 1 bag\(s\)"):
        BagLoss()(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 0]))
    assert loss(torch.tensor([0.3]), 1.0) == loss(torch.tensor([0.3]), 1)
    batch = torch.tensor([[0.3], [-0.2]])
    assert loss(batch, torch.tensor([1, 0])) > 0
