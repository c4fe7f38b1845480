"""Grid adjacency and the Sm smoothing operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gigamil.nn.pooling import AttentionHead, grid_adjacency, smooth


def test_grid_adjacency_refuses_two_patches_at_one_position() -> None:
    """Only the first of two was found as a neighbour: an asymmetric 'adjacency'."""
    with pytest.raises(ValueError, match=r"two patches at \(row, col\) \(5, 7\)"):
        grid_adjacency(np.array([[5, 7], [5, 7], [5, 8]]))


def test_grid_adjacency_neighbours() -> None:
    grid = np.array([(0, 0), (0, 1), (1, 1), (5, 5), (1, 0)])
    a = grid_adjacency(grid, connectivity=8).to_dense()
    assert torch.allclose(a, a.T)
    nz = (a > 0).int()
    expected = torch.tensor(
        [[0, 1, 1, 0, 1], [1, 0, 1, 0, 1], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]
    )
    assert torch.equal(nz, expected)
    # symmetric normalisation: every connected node has degree 3 here → weights 1/3
    assert torch.allclose(a[0, 1], torch.tensor(1 / 3))
    a4 = (grid_adjacency(grid, connectivity=4).to_dense() > 0).int()
    assert a4[0, 2] == 0 and a4[0, 1] == 1


def test_smooth_approx_converges_to_exact() -> None:
    grid = np.array([(r, c) for r in range(4) for c in range(4)])
    adj = grid_adjacency(grid, dtype=torch.float64)
    f = torch.randn(16, dtype=torch.float64)
    exact = smooth(f, adj, alpha=0.5, mode="exact")
    approx = smooth(f, adj, alpha=0.5, steps=60)
    assert torch.allclose(exact, approx, atol=1e-10)
    assert exact.std() < f.std()  # smoothing reduces variation


def test_head_outputs() -> None:
    h = torch.randn(9, 5)
    head = AttentionHead(5, n_classes=4, att_dim=3)
    logits, att = head(h)
    assert logits.shape == (4,) and att.shape == (9,)
    assert torch.isclose(att.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil", "instance"])
def test_head_refuses_an_empty_bag(pool: str) -> None:
    head = AttentionHead(4, pool=pool)
    with pytest.raises(ValueError, match="empty bag"):
        head(torch.zeros(0, 4))


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil", "instance"])
def test_head_pools_a_bag_of_one_instance(pool: str) -> None:
    """One patch is the smallest bag (a small biopsy): all the attention on it, no error."""
    logits, att = AttentionHead(4, pool=pool)(torch.randn(1, 4))
    assert logits.shape == (1,) and torch.allclose(att, torch.ones(1))


def test_instance_loss_weak_labels() -> None:
    torch.manual_seed(0)
    head = AttentionHead(4, att_dim=8, instance_loss=2.0, instance_top_k=2)
    h = torch.randn(6, 4)
    z = head.instance_logits(h)[:, 0].detach()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    # negative bag: every instance toward 0
    assert torch.allclose(head.instance_loss(h, 0), 2.0 * bce(z, torch.zeros(6)))
    # positive bag: only the two highest-scoring instances toward 1
    top = z.topk(2).values
    assert torch.allclose(head.instance_loss(h, 1), 2.0 * bce(top, torch.ones(2)))
    # the bag logit is the attention-weighted mean of the instance logits (linear classifier)
    logit, att = head(h)
    assert torch.allclose(logit[0], att @ z, atol=1e-6)
    assert AttentionHead(4).instance_loss(h, 1) is None
    # instance_top_k 0: every instance of a positive bag toward 1 (weak patch labels)
    every = AttentionHead(4, att_dim=8, instance_loss=1.0, instance_top_k=0)
    z_all = every.instance_logits(h)[:, 0].detach()
    assert torch.allclose(every.instance_loss(h, 1), bce(z_all, torch.ones(6)))


def test_instance_loss_multiclass_and_exact_chunked_gradients() -> None:
    from gigamil.models.mil import MILModel
    from gigamil.nn.losses import BagLoss

    torch.manual_seed(0)
    head = AttentionHead(4, n_classes=3, att_dim=8, instance_loss=1.0, instance_top_k=3)
    h = torch.randn(7, 4)
    z = head.instance_logits(h).detach()
    idx = z[:, 2].topk(3).indices
    expected = torch.nn.functional.cross_entropy(z[idx], torch.full((3,), 2))
    assert torch.allclose(head.instance_loss(h, 2), expected)

    model = MILModel(torch.nn.Linear(5, 4), head, BagLoss())
    x = torch.randn(11, 5)
    grads = []
    for k in (None, 4):
        model.zero_grad()
        step = model.forward_train(x, 1, max_instances_per_forward_pass=k)
        grads.append([p.grad.clone() for p in model.parameters()])
    bag_only = BagLoss()(step.logits, 1)
    assert step.loss > float(bag_only)  # the instance term is part of the trained loss
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # against autograd on the loss written out (not MILModel's own path): the instance term's
    # gradient reaches the encoder
    model.zero_grad()
    h_ref = model.feature_encoder(x)
    logits, _ = head(h_ref)
    (BagLoss()(logits, 1) + head.instance_loss(h_ref, 1)).backward()
    for a, (name, p) in zip(grads[1], model.named_parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6), name
    model.zero_grad()
    logits, _ = head(model.feature_encoder(x))
    BagLoss()(logits, 1).backward()  # the bag term alone: a different encoder gradient
    assert not torch.allclose(grads[1][0], model.feature_encoder.weight.grad, atol=1e-4)


def test_instance_pool_top_fraction_mean_and_weak_labels() -> None:
    torch.manual_seed(0)
    head = AttentionHead(4, pool="instance", top_fraction=0.3)
    assert head.V is None and head.w is None  # no attention network
    with pytest.raises(ValueError, match="no attention scores"):
        head.scores(torch.randn(3, 4))
    assert head.bag_loss_weight == 0.0  # trained on weak patch labels only
    h = torch.randn(10, 4)
    z = head.instance_logits(h)[:, 0].detach()
    logit, att = head(h)
    # the bag logit is the mean of the ceil(0.3 * 10) = 3 highest patch logits
    assert torch.allclose(logit[0], z.topk(3).values.mean(), atol=1e-6)
    # the "attention": the patch probabilities, divided by their sum
    assert torch.allclose(att, torch.sigmoid(z) / torch.sigmoid(z).sum(), atol=1e-6)
    assert torch.isclose(att.sum(), torch.tensor(1.0))
    # every patch toward the slide's class, whatever instance_top_k says
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert torch.allclose(head.instance_loss(h, 1), bce(z, torch.ones(10)))
    assert torch.allclose(head.instance_loss(h, 0), bce(z, torch.zeros(10)))
    # top_fraction 1: the mean of all patch logits
    everything = AttentionHead(4, pool="instance", top_fraction=1.0)
    assert torch.allclose(everything(h)[0][0], everything.instance_logits(h)[:, 0].mean())


def test_instance_pool_loss_is_weak_labels_with_exact_chunked_gradients() -> None:
    from gigamil.models.mil import MILModel
    from gigamil.nn.losses import BagLoss

    torch.manual_seed(0)
    head = AttentionHead(4, n_classes=3, pool="instance", top_fraction=0.5)
    model = MILModel(torch.nn.Linear(5, 4), head, BagLoss())
    x = torch.randn(9, 5)
    grads = []
    for k in (None, 4):
        model.zero_grad()
        step = model.forward_train(x, 2, max_instances_per_forward_pass=k)
        grads.append([p.grad.clone() for p in model.parameters()])
    with torch.no_grad():
        z = head.instance_logits(model.feature_encoder(x))
    # no bag term: the loss is the cross-entropy of every patch toward the slide's class
    expected = torch.nn.functional.cross_entropy(z, torch.full((9,), 2))
    assert abs(step.loss - float(expected)) < 1e-5
    assert torch.allclose(step.logits, z.topk(5, dim=0).values.mean(0), atol=1e-5)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # against autograd on the weak-label loss written out: the encoder learns from it
    model.zero_grad()
    ce = torch.nn.functional.cross_entropy(
        head.instance_logits(model.feature_encoder(x)), torch.full((9,), 2)
    )
    ce.backward()
    assert model.feature_encoder.weight.grad.abs().max() > 1e-3
    for a, (name, p) in zip(grads[1], model.named_parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6), name
    # its heatmap weights: each patch's P(not the first class), as the heatmaps label them
    # (they were the last class's probability)
    with torch.no_grad():
        _, att = head(model.feature_encoder(x))
    p = 1 - torch.softmax(z, dim=1)[:, 0]
    assert torch.allclose(att, p / p.sum(), atol=1e-6)


def test_instance_pool_rejects_bad_settings() -> None:
    from gigamil.errors import ConfigError
    from gigamil.models.factory import build_mil_model

    with pytest.raises(ValueError, match="top_fraction"):
        AttentionHead(4, pool="instance", top_fraction=0.0)
    with pytest.raises(ValueError, match="instance_loss"):
        AttentionHead(4, pool="instance", instance_loss=1.0)
    with pytest.raises(ConfigError, match="instance_loss"):
        build_mil_model({"encoder": "smallcnn", "pool": "instance", "instance_loss": 0.5}, 2, 32)


@pytest.mark.parametrize("pool", ["abmil", "smabmil"])
def test_sm_features_pools_smoothed_features_with_the_raw_attention(pool: str) -> None:
    torch.manual_seed(0)
    grid = np.array([(r, c) for r in range(3) for c in range(4)])
    adj = grid_adjacency(grid)
    h = torch.randn(12, 5)
    plain = AttentionHead(5, att_dim=3, pool=pool, sm_alpha=0.5)
    head = AttentionHead(5, att_dim=3, pool=pool, sm_alpha=0.5, sm_features=0.6)
    head.load_state_dict(plain.state_dict())
    assert head.needs_adj and plain.needs_adj == (pool == "smabmil")
    logit, att = head(h, adj)
    logit0, att0 = plain(h, adj if pool == "smabmil" else None)
    assert torch.allclose(att, att0)  # the attention comes from the raw features
    expected = head.classifier(att0 @ smooth(h, adj, 0.6))
    assert torch.allclose(logit, expected, atol=1e-6) and not torch.allclose(logit, logit0)
    # a high patch keeps less of its value alone than inside a contiguous region (2 x 2 block)
    iso, block = torch.zeros(12, 1), torch.zeros(12, 1)
    iso[5] = 3.0
    block[[1, 2, 5, 6]] = 3.0
    assert smooth(iso, adj, 0.6)[5, 0] < smooth(block, adj, 0.6)[5, 0] < 3.0
    with pytest.raises(ValueError, match="needs the adjacency"):
        head(h)
    with pytest.raises(ValueError, match="sm_features must be in"):
        AttentionHead(5, sm_features=1.0)


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil"])
def test_attention_is_the_softmax_of_the_documented_scores(pool: str) -> None:
    """a_i ∝ exp(wᵀ tanh(V h_i)) (ABMIL) or exp(wᵀ(tanh(V h_i) ⊙ σ(U h_i))) (gated), over the
    bag's instances; the bag logit classifies the attention-weighted mean feature."""
    torch.manual_seed(0)
    head = AttentionHead(5, att_dim=4, pool=pool)
    h = torch.randn(7, 5)
    a = torch.tanh(head.V(h))
    if pool == "gated_abmil":
        a = a * torch.sigmoid(head.U(h))
    s = a @ head.w.weight[0]
    expected = torch.exp(s) / torch.exp(s).sum()
    logit, att = head(h)
    assert torch.allclose(att, expected, atol=1e-6)
    assert torch.allclose(logit, head.classifier(expected @ h), atol=1e-6)


def test_grid_adjacency_equals_brute_force_neighbours() -> None:
    """Every pair of patches that touch (8-) or share an edge (4-connectivity), and no other: a
    patch at the right edge of a row is not a neighbour of one at the left of the next row."""
    rng = np.random.default_rng(0)
    full = np.array([(r, c) for r in range(3) for c in range(4)])
    cells = rng.choice(6 * 5, size=20, replace=False)
    sparse = np.stack([cells // 5, cells % 5], axis=1) + [3, 10]  # not starting at (0, 0)
    for grid in (full, sparse):
        d = np.abs(grid[:, None, :] - grid[None, :, :])
        for connectivity, touch in ((8, d.max(-1) == 1), (4, d.sum(-1) == 1)):
            deg = touch.sum(1)
            inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1)), 0.0)
            expected = touch * inv[:, None] * inv[None, :]
            a = grid_adjacency(grid, connectivity, dtype=torch.float64).to_dense().numpy()
            np.testing.assert_allclose(a, expected, atol=1e-12, err_msg=str(connectivity))


@pytest.mark.parametrize("alpha", [0.2, 0.8])
def test_smooth_is_the_sm_operator_for_any_alpha(alpha: float) -> None:
    """Both modes give (1-α)(I - αA)^-1 f, written out here (not the module's own solver)."""
    grid = np.array([(r, c) for r in range(3) for c in range(4)])
    adj = grid_adjacency(grid, dtype=torch.float64)
    f = torch.randn(12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dense = adj.to_dense()
    expected = (
        (1 - alpha) * torch.linalg.inv(torch.eye(12, dtype=torch.float64) - alpha * dense) @ f
    )
    torch.testing.assert_close(smooth(f, adj, alpha, mode="exact"), expected)
    torch.testing.assert_close(smooth(f, adj, alpha, steps=200), expected)
    torch.testing.assert_close(smooth(f[:, 0], dense, alpha, steps=200), expected[:, 0])


def test_feature_norm_standardises_the_features_the_head_sees() -> None:
    """``feature_norm``: the head pools (h - running_mean) / sqrt(running_var + eps) · γ + β
    (frozen statistics, also in training mode), and scores its instances on it too."""
    torch.manual_seed(0)
    normed = AttentionHead(5, att_dim=4, feature_norm=True)
    plain = AttentionHead(5, att_dim=4)
    plain.load_state_dict({k: v for k, v in normed.state_dict().items() if k in plain.state_dict()})
    norm = normed.norm
    with torch.no_grad():
        norm.running_mean.copy_(torch.linspace(-1.0, 1.0, 5))
        norm.running_var.copy_(torch.linspace(0.5, 3.0, 5))
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    h = torch.randn(7, 5) * 2 + 1
    z = (h - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    logit, att = normed.train()(h)
    logit0, att0 = plain(z)
    assert torch.allclose(att, att0, atol=1e-6) and torch.allclose(logit, logit0, atol=1e-6)
    assert torch.allclose(normed.instance_logits(h), plain.instance_logits(z), atol=1e-6)
    assert not torch.allclose(att, plain(h)[1], atol=1e-4)  # the statistics matter here
