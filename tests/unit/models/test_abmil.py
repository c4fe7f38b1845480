"""torchmil-style ABMIL / SmABMIL: shapes, masks, losses, agreement with MILModel's head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gigamil.models import ABMIL, SmABMIL
from gigamil.nn.pooling import grid_adjacency


def test_abmil_binary_shapes_and_loss() -> None:
    torch.manual_seed(0)
    model = ABMIL(in_shape=(5,), att_dim=8, feat_ext=nn.Linear(5, 6))
    x = torch.randn(3, 7, 5)
    y, att = model(x, return_att=True)
    assert y.shape == (3,) and att.shape == (3, 7)
    assert torch.allclose(att.sum(1), torch.ones(3))
    y_pred, losses = model.compute_loss(torch.tensor([0, 1, 1]), x)
    assert list(losses) == ["BCEWithLogitsLoss"]
    assert torch.allclose(
        losses["BCEWithLogitsLoss"],
        nn.functional.binary_cross_entropy_with_logits(y_pred, torch.tensor([0.0, 1.0, 1.0])),
    )
    y2, att2 = model.predict(x)
    assert torch.allclose(y2, y) and torch.allclose(att2, att)


def test_mask_equals_unpadded_bag() -> None:
    torch.manual_seed(0)
    model = ABMIL(in_shape=4, gated=True, n_classes=3, att_dim=5)
    x = torch.randn(1, 6, 4)
    padded = torch.cat([x, torch.randn(1, 3, 4)], dim=1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    y_ref, att_ref = model(x, return_att=True)
    y, att = model(padded, mask=mask, return_att=True)
    assert y.shape == (1, 3)
    assert torch.allclose(y, y_ref, atol=1e-6)
    # torchmil's positional order, forward(X, mask) / compute_loss(Y, X, mask) / predict(X,
    # mask): the mask was taken for adj and ignored (the padded rows got attention)
    assert torch.allclose(model(padded, mask), y_ref, atol=1e-6)
    assert torch.allclose(model.compute_loss(torch.tensor([2]), padded, mask)[0], y_ref, atol=1e-6)
    assert torch.allclose(model.predict(padded, mask)[1][:, 6:], torch.zeros(1, 3))
    assert torch.allclose(att[0, :6], att_ref[0], atol=1e-6) and torch.all(att[0, 6:] == 0)
    _, losses = model.compute_loss(torch.tensor([2]), padded, mask=mask)
    assert "CrossEntropyLoss" in losses


@pytest.mark.parametrize("pool", ["abmil", "smabmil"])
def test_fully_masked_bag_is_an_error_not_the_bias(pool: str) -> None:
    """A bag whose mask is all False has nothing to attend to: pooling it gave the
    classifier's bias as a prediction, indistinguishable from a real one."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    if pool == "abmil":
        model, kw = ABMIL(in_shape=3, att_dim=4), {}
    else:
        model = SmABMIL(in_shape=3, att_dim=4)
        kw = {"adj": grid_adjacency(np.array([[0, 0], [0, 1], [1, 0], [1, 1]])).to_dense()[None]}
        kw["adj"] = kw["adj"].expand(2, 4, 4)
    with pytest.raises(ValueError, match="bag 1 of the batch has no instance"):
        model(x, mask=mask, **kw)
    assert model(x[:1], mask=mask[:1], **{k: v[:1] for k, v in kw.items()}).shape == (1,)


def test_smabmil_uses_adjacency() -> None:
    torch.manual_seed(0)
    grid = np.array([(r, c) for r in range(3) for c in range(4)])
    adj = grid_adjacency(grid).to_dense()[None]
    model = SmABMIL(in_shape=3, att_dim=4, sm_alpha=0.8)
    x = torch.randn(1, 12, 3)
    y, att = model(x, adj=adj, return_att=True)
    y0, att0 = model(x, adj=torch.zeros_like(adj), return_att=True)  # no neighbours
    assert not torch.allclose(att, att0)
    with pytest.raises(ValueError, match="adj"):
        model(x)


def test_abmil_takes_the_issue_s_signature_and_torchmil_s_order() -> None:
    """Issue 4: ``forward(X, adj=None, mask=None, return_att=False)`` for ABMIL too (it had
    torchmil's ABMIL signature, without adj, so ``adj=None`` was a TypeError); torchmil's own
    order, ABMIL(X, mask), still reads the mask (test_mask_equals_unpadded_bag)."""
    torch.manual_seed(0)
    model = ABMIL(in_shape=3, att_dim=4)
    x, mask = torch.randn(1, 4, 3), torch.tensor([[1, 1, 0, 0]])
    y, att = model(x, adj=None, mask=mask, return_att=True)
    assert torch.equal(att[0, 2:], torch.zeros(2)) and y.shape == (1,)
    adj = grid_adjacency(np.array([[0, 0], [0, 1], [1, 0], [1, 1]])).to_dense()[None]
    assert torch.equal(model(x, adj, mask), y)  # an adjacency: accepted, unused
    assert torch.equal(model(x, mask), y)  # torchmil's ABMIL order: the mask, by shape
    y_pred, losses = model.compute_loss(torch.tensor([1.0]), x, mask=mask)
    assert torch.equal(y_pred, y) and set(losses) == {"BCEWithLogitsLoss"}
    assert torch.equal(model.predict(x, None, mask)[1], att)


def test_gated_differs_from_plain() -> None:
    torch.manual_seed(0)
    plain = ABMIL(in_shape=4, att_dim=5)
    torch.manual_seed(0)
    gated = ABMIL(in_shape=4, att_dim=5, gated=True)
    assert gated.head.U is not None and plain.head.U is None


def test_smabmil_attention_is_the_softmax_of_the_sm_smoothed_scores() -> None:
    """SmABMIL's settings reach its head: the attention is softmax((1-α)(I - αA)^-1 s) of the
    ABMIL scores s, with the model's own α."""
    torch.manual_seed(0)
    grid = np.array([(r, c) for r in range(3) for c in range(4)])
    adj = grid_adjacency(grid).to_dense()
    model = SmABMIL(in_shape=3, att_dim=4, sm_alpha=0.8, sm_mode="exact", sm_steps=3)
    assert (model.head.sm_alpha, model.head.sm_mode, model.head.sm_steps) == (0.8, "exact", 3)
    x = torch.randn(1, 12, 3)
    _, att = model(x, adj=adj[None], return_att=True)
    with torch.no_grad():
        s = model.head.w(torch.tanh(model.head.V(x[0])))[:, 0]
        smoothed = 0.2 * torch.linalg.solve(torch.eye(12) - 0.8 * adj, s)
    assert torch.allclose(att[0], torch.softmax(smoothed, dim=0), atol=1e-5)
