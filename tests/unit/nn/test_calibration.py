"""Calibration of BatchNorm statistics and the FeatureNorm layer (gigamil.nn.calibration,
gigamil.train.calibration)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gigamil.models.factory import build_mil_model
from gigamil.nn.calibration import FeatureNorm, batchnorm_layers, calibrate_batchnorm
from gigamil.nn.encoders import EvalBatchNorm2d
from gigamil.nn.losses import BagLoss
from gigamil.train.calibration import calibrate_model, calibration_batches


def _frozen_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        EvalBatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1),
        EvalBatchNorm2d(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        FeatureNorm(4),
    )


def test_calibration_standardises_every_layer_and_restores_modes():
    net = _frozen_cnn().train()
    x = torch.rand(64, 3, 12, 12) * 5 + 3  # far from mean 0 / variance 1
    with torch.no_grad():
        before = net(x)
    assert before.std(0).max() < 0.1  # the initial statistics normalise nothing
    seen = calibrate_batchnorm(net, x.split(16))
    assert seen == 64
    with torch.no_grad():
        out = net(x)  # frozen layers now use the calibrated statistics
        inner = net[:2](x)  # output of the first frozen BatchNorm
    np.testing.assert_allclose(out.mean(0).numpy(), 0, atol=0.02)
    np.testing.assert_allclose(out.var(0).numpy(), 1, atol=0.2)
    np.testing.assert_allclose(inner.mean((0, 2, 3)).numpy(), 0, atol=1e-4)
    assert all(m.training is False for m in batchnorm_layers(net))  # still frozen
    assert all(m.momentum == 0.1 for m in batchnorm_layers(net))
    assert net[0].training  # the train() flags of the rest are untouched


def test_calibration_of_selected_layers_only_and_empty_input():
    net = _frozen_cnn()
    first = net[1]
    calibrate_batchnorm(net, [torch.rand(8, 3, 6, 6)], layers=lambda m: isinstance(m, FeatureNorm))
    assert torch.equal(first.running_mean, torch.zeros(8))  # not selected: unchanged
    assert not torch.equal(net[7].running_mean, torch.zeros(4))
    with pytest.raises(ValueError, match="no instances"):
        calibrate_batchnorm(net, [])


def test_feature_norm_stays_frozen_and_instances_independent():
    norm = FeatureNorm(3).train()
    assert norm.training is False
    norm.running_mean.fill_(2.0)
    x = torch.randn(5, 3)
    np.testing.assert_allclose(norm(x)[:2].detach(), norm(x[:2]).detach(), atol=1e-6)


def test_feature_norm_is_frozen_from_construction():
    # nn.Module.__init__ set training=True without train(): a new FeatureNorm (and an
    # AttentionHead(feature_norm=True)) normalised by batch statistics and updated its
    # running statistics until .train() or .eval() was called
    from gigamil.nn.pooling import AttentionHead

    norm = FeatureNorm(3)
    assert norm.training is False
    x = torch.randn(5, 3) + 4
    np.testing.assert_allclose(norm(x).detach(), x / np.sqrt(1 + norm.eps), rtol=1e-6)
    assert torch.equal(norm.running_mean, torch.zeros(3))
    head = AttentionHead(3, feature_norm=True)
    logits, att = head(torch.randn(1, 3))  # one patch: batch statistics would refuse it
    assert att.shape == (1,)


class _ListBag:
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def chunks(self, size: int):
        yield from self.x.split(size)

    def subsample(self, n: int, generator: torch.Generator | None = None) -> _ListBag:
        idx = torch.randperm(len(self.x), generator=generator)[:n].sort().values
        return _ListBag(self.x[idx])


@pytest.mark.parametrize("encoder_too", [False, True])
def test_calibrate_model_encoder_only_for_random_init(encoder_too):
    torch.manual_seed(0)
    model = build_mil_model(
        {"encoder": "smallcnn", "pool": "abmil", "att_dim": 8, "feature_norm": True},
        2,
        16,
        None,
        BagLoss("ce"),
    )
    enc_bn = [m for m in model.feature_encoder.modules() if isinstance(m, nn.BatchNorm2d)]
    bags = [_ListBag(torch.randint(0, 255, (10, 16, 16, 3), dtype=torch.uint8)) for _ in range(3)]
    seen = calibrate_model(model, bags, n_patches=12, encoder_too=encoder_too, chunk=4)
    assert seen == 12  # 4 per bag
    changed = not torch.equal(enc_bn[0].running_mean, torch.zeros_like(enc_bn[0].running_mean))
    assert changed == encoder_too
    assert not torch.equal(model.attention_model.norm.running_var, torch.ones(64))
    assert calibrate_model(model, bags, n_patches=0, encoder_too=True) == 0


@pytest.mark.parametrize(("sizes", "chunk"), [([5, 3, 1], 4), ([1, 1, 1], 2), ([9], 3), ([2], 7)])
def test_calibration_batches_never_yield_a_single_instance(sizes, chunk):
    bags = [_ListBag(torch.full((n, 2, 2, 3), i, dtype=torch.uint8)) for i, n in enumerate(sizes)]
    n = max(sizes) * len(sizes)  # enough to take every row of every bag
    batches = list(calibration_batches(bags, n, chunk, 0, torch.device("cpu")))
    assert sum(len(b) for b in batches) == sum(sizes)  # every sampled patch, once
    assert all(2 <= len(b) <= chunk + 1 for b in batches)
