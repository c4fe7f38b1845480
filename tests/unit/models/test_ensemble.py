"""ReplicateEnsemble: the mean of the members' calibrated logits and of their attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gigamil.models.ensemble import ReplicateEnsemble, apply_calibration
from gigamil.models.mil import MILModel
from gigamil.nn.pooling import AttentionHead


def member(seed: int, n_classes: int = 2) -> MILModel:
    torch.manual_seed(seed)
    return MILModel(nn.Identity(), AttentionHead(6, n_classes=n_classes, att_dim=4)).eval()


def test_ensemble_averages_calibrated_logits_and_attention() -> None:
    members = [member(0), member(1), member(2)]
    calibrations = [{"offset": 0.5, "scale": 2.0}, None, {"offset": -1.0, "scale": 0.5}]
    bag = torch.randn(9, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        outs = [m(bag) for m in members]
        logits, att = ReplicateEnsemble(members, calibrations)(bag)
    z = [float(o[0]) for o in outs]
    expected = ((z[0] - 0.5) * 2.0 + z[1] + (z[2] + 1.0) * 0.5) / 3
    assert logits.shape == (1,) and logits.dtype == torch.float32
    assert float(logits) == pytest.approx(expected, abs=1e-6)
    torch.testing.assert_close(att, torch.stack([o[1] for o in outs]).mean(0))
    assert float(att.sum()) == pytest.approx(1.0, abs=1e-6)
    assert len({round(float(a.max()), 6) for _, a in outs}) == 3  # members really differ


def test_multiclass_logits_are_not_calibrated_and_mismatched_lists_are_refused() -> None:
    logits = torch.tensor([0.3, -1.0, 2.0])
    assert torch.equal(apply_calibration(logits, {"offset": 1.0, "scale": 3.0}), logits)
    with pytest.raises(ValueError, match="one calibration"):
        ReplicateEnsemble([member(0)], [None, None])
