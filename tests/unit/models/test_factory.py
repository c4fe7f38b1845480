"""build_mil_model builds what the model and augmentation config say."""

from __future__ import annotations

import torch
from torch import nn

from gigamil.models.factory import build_mil_model
from gigamil.nn.calibration import FeatureNorm
from gigamil.nn.encoders import EvalBatchNorm2d


def test_every_head_and_augmentation_setting_reaches_the_model() -> None:
    cfg = {
        "encoder": "smallcnn",
        "pool": "smabmil",
        "att_dim": 7,
        "sm_alpha": 0.3,
        "sm_features": 0.4,
        "dropout": 0.35,
        "feature_norm": True,
        "instance_loss": 0.6,
        "instance_top_k": 3,
        "batchnorm": "frozen",
    }
    aug = {
        "flips": True,
        "rot90": True,
        "color_jitter": 0.15,
        "stain_jitter": 0.05,
        "hue_jitter": 0.02,
        "grayscale": 0.1,
        "scale": 0.1,
        "blur": 0.5,
    }
    model = build_mil_model(cfg, 3, 16, augment=aug)
    pre, enc = model.feature_encoder
    assert {key: getattr(pre, key) for key in aug} == aug
    head = model.attention_model
    assert head.pool == "smabmil" and head.n_out == 3 and head.V.out_features == 7
    assert (head.sm_alpha, head.sm_features) == (0.3, 0.4)
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.35
    assert isinstance(head.norm, FeatureNorm)
    assert (head.instance_loss_weight, head.instance_top_k) == (0.6, 3)
    assert any(isinstance(m, EvalBatchNorm2d) for m in enc.modules())
    plain = build_mil_model({"encoder": "smallcnn", "feature_norm": False}, 2, 16)
    pre0 = plain.feature_encoder[0]
    assert not (pre0.flips or pre0.rot90) and pre0.color_jitter == pre0.stain_jitter == 0
    assert isinstance(plain.attention_model.dropout, nn.Identity)
    assert plain.attention_model.norm is None and plain.attention_model.n_out == 1
    out = model.eval()(torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8), adj=torch.eye(4))
    assert out[0].shape == (3,) and out[1].shape == (4,)
