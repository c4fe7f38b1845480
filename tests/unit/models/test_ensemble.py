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


class GridBag:
    """Features on a 3 x 3 patch grid: ``forward_patches`` smooths the patch logits over it."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.grid = torch.tensor([[r, c] for r in range(3) for c in range(3)]).numpy()

    def __len__(self) -> int:
        return len(self.x)

    def chunks(self, size: int):
        yield from self.x.split(size)


def test_forward_patches_gives_forward_and_the_smoothed_positive_patch_logits() -> None:
    from gigamil.nn.pooling import grid_adjacency, smooth

    torch.manual_seed(0)
    head = AttentionHead(6, att_dim=4, pool="smabmil", sm_alpha=0.8)
    model = MILModel(nn.Identity(), head).eval()
    bag = GridBag(torch.randn(9, 6, generator=torch.Generator().manual_seed(3)))
    with torch.no_grad():
        logits, att = model(bag)
        z_bag, att2, patch = model.forward_patches(bag)
        z = head.instance_logits(bag.x)[:, 0]
    assert torch.equal(logits, z_bag) and torch.equal(att, att2)
    expected = smooth(z, grid_adjacency(bag.grid), 0.8)
    torch.testing.assert_close(patch, expected)
    assert not torch.allclose(patch, z)  # really smoothed
    # the bag logit is the attention-weighted mean of the unsmoothed patch logits
    assert float(att @ z) == pytest.approx(float(logits), abs=1e-5)


def test_forward_patches_of_more_classes_and_of_an_ensemble() -> None:
    from gigamil.models.mil import positive_logit

    z = torch.tensor([[1.0, 0.0, 2.0], [0.0, -1.0, -1.0]])
    expected = torch.logsumexp(z[:, 1:], 1) - z[:, 0]
    torch.testing.assert_close(positive_logit(z), expected)
    torch.testing.assert_close(positive_logit(z[:, :1]), z[:, 0])
    members = [member(0), member(1)]
    bag = torch.randn(5, 6, generator=torch.Generator().manual_seed(4))  # no grid: unsmoothed
    with torch.no_grad():
        outs = [m.forward_patches(bag) for m in members]
        ensemble = ReplicateEnsemble(members, [{"offset": 1.0, "scale": 2.0}, None])
        logits, att, patch = ensemble.forward_patches(bag)
        heads = [m.attention_model.instance_logits(bag)[:, 0] for m in members]
    torch.testing.assert_close(outs[0][2], heads[0])
    torch.testing.assert_close(patch, (heads[0] + heads[1]) / 2)
    torch.testing.assert_close(att, (outs[0][1] + outs[1][1]) / 2)
    expected = ((outs[0][0] - 1.0) * 2.0 + outs[1][0]) / 2  # calibrated bag logits, as forward
    torch.testing.assert_close(logits, expected)
