"""Gradient equality of the accumulating trainer (GradCache) with the naive full-bag pass."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from gigamil import MILModel
from gigamil.models.mil import TrainStep
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import set_batchnorm_mode
from gigamil.nn.losses import BagLoss
from gigamil.nn.pooling import AttentionHead, grid_adjacency

N = 23
TOL = 1e-10  # float64: GradCache against the full bag differs by about 4e-14


def make_model(
    pool: str = "abmil",
    n_classes: int = 2,
    batchnorm: str = "frozen",
    enc_dropout: float = 0.0,
    head_dropout: float = 0.1,
    seed: int = 0,
) -> MILModel:
    torch.manual_seed(seed)
    enc = nn.Sequential(
        PatchPreprocess(flips=True, rot90=True, color_jitter=0.2),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(enc_dropout),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(4, 8),
    )
    with torch.no_grad():  # non-trivial running statistics
        enc[2].running_mean.uniform_(-0.5, 0.5)
        enc[2].running_var.uniform_(0.5, 2.0)
    set_batchnorm_mode(enc, batchnorm)
    head = AttentionHead(8, n_classes=n_classes, att_dim=6, pool=pool, dropout=head_dropout)
    model = MILModel(enc, head, BagLoss("ce")).double()
    model.train()
    return model


def make_bag(n: int = N, seed: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    bag = torch.randint(0, 256, (n, 8, 8, 3), generator=g, dtype=torch.uint8)
    grid = np.array([(i // 5, i % 5) for i in range(n)])  # raster order on a 5-wide grid
    return bag, grid


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, with an absolute floor for gradients that vanish in exact arithmetic."""
    return float((a - b).norm() / b.norm().clamp_min(1e-9))


def run(model: MILModel, bag, label, k, adj, seed: int = 123):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model.forward_train(bag, label, max_instances_per_forward_pass=k, adj=adj)
    return out, grads(model), torch.get_rng_state()


def assert_same(ref, test) -> None:
    (out_r, g_r, rng_r), (out_t, g_t, rng_t) = ref, test
    assert set(g_r) == set(g_t)
    assert len(g_r) > 0
    for name in g_r:
        assert rel_err(g_t[name], g_r[name]) <= TOL, name
    assert abs(out_r.loss - out_t.loss) <= 1e-10
    assert torch.allclose(out_r.attention, out_t.attention, rtol=0, atol=1e-12)
    assert torch.equal(rng_r, rng_t)  # the trainer consumes the RNG exactly like the naive pass


def chunked_with_grad(
    model: MILModel,
    bag: torch.Tensor,
    label: int,
    k: int,
    adj: torch.Tensor | None = None,
    seed: int = 123,
):
    """A naive pass (one graph over all N instances, one backward; memory grows with N) whose
    encoder is called on the same chunks, so it draws the same random numbers."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    h = torch.cat([model.feature_encoder(bag[s : s + k]) for s in range(0, len(bag), k)])
    logits, att = model.attention_model(h, adj) if adj is not None else model.attention_model(h)
    loss = model.loss_fn(logits, label)
    loss.backward()
    out = TrainStep(logits.detach(), att.detach(), float(loss.detach()))
    return out, grads(model), torch.get_rng_state()


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil", "smabmil"])
@pytest.mark.parametrize("k", [1, 7, N])
def test_gradcache_equals_full_bag_with_augmentation(pool: str, k: int) -> None:
    """Augmentation in the encoder and dropout in the head: identical to the plain full-bag pass
    (the augmentation draws one row of uniforms per patch, so it does not depend on chunking)."""
    model = make_model(pool, enc_dropout=0.0)
    bag, grid = make_bag()
    adj = grid_adjacency(grid, dtype=torch.float64) if pool == "smabmil" else None
    ref = run(model, bag, 1, None, adj)
    test = run(copy.deepcopy(model), bag, 1, k, adj)
    assert_same(ref, test)
    # the test is sensitive: a different augmentation/dropout draw changes the gradients
    other = run(copy.deepcopy(model), bag, 1, k, adj, seed=124)
    assert rel_err(other[1]["feature_encoder.1.weight"], ref[1]["feature_encoder.1.weight"]) > 1e-3


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil", "smabmil"])
@pytest.mark.parametrize("k", [1, 7, N])
def test_gradcache_equals_naive_pass_with_encoder_dropout(pool: str, k: int) -> None:
    """Dropout AND augmentation in the encoder: two random consumers interleave per chunk, so
    the draws depend on the chunking; the reference is the one-graph pass over the same chunks."""
    model = make_model(pool, enc_dropout=0.2)
    bag, grid = make_bag()
    adj = grid_adjacency(grid, dtype=torch.float64) if pool == "smabmil" else None
    ref = chunked_with_grad(copy.deepcopy(model), bag, 1, k, adj)
    assert_same(ref, run(model, bag, 1, k, adj))
    if k == N:
        assert_same(run(copy.deepcopy(model), bag, 1, None, adj), ref)


@pytest.mark.parametrize(("k", "passes"), [(N + 5, 1), (N, 1), (7, 2 * 4)])
def test_a_bag_in_one_chunk_is_encoded_once(k: int, passes: int) -> None:
    """GradCache's no-grad encoding is skipped when the bag fits in one chunk (same gradients
    and RNG stream as the chunked pass, one encoder pass instead of two)."""
    model = make_model("abmil")
    calls = []
    model.feature_encoder.register_forward_hook(lambda *_: calls.append(1))
    bag, _ = make_bag()
    test = run(model, bag, 1, k, None)
    assert len(calls) == passes
    assert_same(run(copy.deepcopy(model), bag, 1, 7, None), test)


def test_gradcache_multiclass_and_focal() -> None:
    model = make_model("gated_abmil", n_classes=3)
    model.loss_fn = BagLoss("focal", class_weights=[0.5, 1.0, 2.0])
    bag, _ = make_bag()
    assert_same(run(model, bag, 2, None, None), run(copy.deepcopy(model), bag, 2, 5, None))


def test_rng_replay_is_what_makes_it_exact(monkeypatch) -> None:
    """Without restoring each chunk's RNG state before re-encoding it, the augmentation of the
    re-encoded chunks differs from the pass that made H: the gradients are no longer exact."""
    import gigamil.models.mil as mil

    model = make_model("abmil")
    bag, _ = make_bag()
    ref = run(model, bag, 1, None, None)
    assert_same(ref, run(copy.deepcopy(model), bag, 1, 7, None))
    restored = []
    monkeypatch.setattr(mil, "set_rng_state", lambda state, dev: restored.append(1))
    broken = run(copy.deepcopy(model), bag, 1, 7, None)
    assert len(restored) == 4 + 1  # one state per chunk of 7, then the stream after pass 1
    err = rel_err(broken[1]["feature_encoder.1.weight"], ref[1]["feature_encoder.1.weight"])
    assert err > 1e-3


def test_frozen_batchnorm_keeps_running_stats() -> None:
    model = make_model("abmil", batchnorm="frozen")
    bn = model.feature_encoder[2]
    before = (bn.running_mean.clone(), bn.running_var.clone())
    bag, _ = make_bag()
    ref = run(model, bag, 0, None, None)
    assert_same(ref, run(copy.deepcopy(model), bag, 0, 4, None))
    assert not bn.training  # eval-mode statistics although the model is in training mode
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])


@pytest.mark.parametrize("k", [6, N])
def test_train_batchnorm_updates_running_stats_once(k: int) -> None:
    model = make_model("abmil", batchnorm="train")
    bag, _ = make_bag()
    ref_model = copy.deepcopy(model)
    g_ref = chunked_with_grad(ref_model, bag, 1, k)[1]
    _, g_test, _ = run(model, bag, 1, k, None)
    for name in g_ref:
        assert rel_err(g_test[name], g_ref[name]) <= TOL, name
    bn, bn_ref = model.feature_encoder[2], ref_model.feature_encoder[2]
    assert torch.allclose(bn.running_mean, bn_ref.running_mean, atol=1e-12)
    assert torch.allclose(bn.running_var, bn_ref.running_var, atol=1e-12)
    assert int(bn.num_batches_tracked) == -(-N // k)


def test_groupnorm_swap_is_exact() -> None:
    model = make_model("abmil", batchnorm="groupnorm")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    bag, _ = make_bag()
    assert_same(run(model, bag, 1, None, None), run(copy.deepcopy(model), bag, 1, 7, None))


def test_frozen_encoder_trains_head_only() -> None:
    model = make_model("abmil")
    for p in model.feature_encoder.parameters():
        p.requires_grad_(False)
    bag, _ = make_bag()
    ref = run(model, bag, 1, None, None)
    test = run(copy.deepcopy(model), bag, 1, 7, None)
    assert all(k.startswith("attention_model") for k in test[1])
    assert_same(ref, test)


def test_lazy_bag_source_and_loss_scale() -> None:
    class Source:  # a lazy source of chunks: the bag never exists as one tensor
        def __init__(self, data: torch.Tensor) -> None:
            self.data, self.reads = data, 0

        def __len__(self) -> int:
            return len(self.data)

        def chunks(self, size: int):
            for s in range(0, len(self.data), size):
                self.reads += 1
                yield self.data[s : s + size].clone()

    model = make_model("abmil")
    bag, _ = make_bag()
    src = Source(bag)
    ref = run(model, bag, 1, None, None)
    model2 = copy.deepcopy(model)
    model2.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    out = model2.forward_train(src, 1, max_instances_per_forward_pass=10, loss_scale=0.5)
    assert src.reads == 2 * 3  # two passes over three chunks
    for name, g in grads(model2).items():
        assert rel_err(2 * g, ref[1][name]) <= TOL
    assert out.attention.shape == (N,)
    # loss_scale scales the gradients only: the loss returned (and logged) is the bag's own
    assert abs(out.loss - ref[0].loss) <= 1e-10


class WatchedEncoder(nn.Module):
    """An encoder that records the largest batch it is given and the most chunk graphs alive
    at once (a chunk's graph is alive from its grad-enabled forward until dL/d(its output)
    has been computed by a backward)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.largest, self.most_alive, self.pending = inner, 0, 0, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.largest = max(self.largest, len(x))
        out = self.inner(x)
        if out.requires_grad:
            done = [False]
            out.register_hook(lambda g, done=done: done.__setitem__(0, True))
            self.pending.append(done)
            self.most_alive = max(self.most_alive, sum(not d[0] for d in self.pending))
        return out


@pytest.mark.parametrize("trainable", [True, False])
def test_memory_does_not_grow_with_the_bag(trainable: bool) -> None:
    """The claim 'memory independent of bag size', as structure: whatever N, the encoder sees at
    most k patches at a time and at most one chunk's graph is alive (GradCache re-encodes a chunk
    and backpropagates it before the next); a frozen encoder is run in chunks of k too."""
    for n in (N, 4 * N):
        model = make_model("abmil")
        model.feature_encoder = WatchedEncoder(model.feature_encoder)
        for p in model.feature_encoder.parameters():
            p.requires_grad_(trainable)
        bag, _ = make_bag(n)
        model.forward_train(bag, 1, max_instances_per_forward_pass=7)
        watched = model.feature_encoder
        assert watched.largest == 7, n
        assert watched.most_alive == (1 if trainable else 0), n
        assert len(watched.pending) == (-(-n // 7) if trainable else 0), n
    # the check itself sees a pass that keeps every chunk's graph (memory growing with N)
    watched = WatchedEncoder(make_model("abmil").feature_encoder)
    bag, _ = make_bag()
    torch.cat([watched(bag[s : s + 7]) for s in range(0, N, 7)]).sum().backward()
    assert watched.most_alive == 4


def test_empty_bag_raises() -> None:
    model = make_model("abmil")
    with pytest.raises(ValueError, match="empty bag"):
        model.forward_train(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), 1, 4)


@pytest.mark.parametrize("k", [-4, 2.5, "8", True])
def test_a_chunk_size_that_is_not_a_whole_number_is_a_clear_error(k) -> None:
    """0 divided the chunk loop by zero, -4 gave 'the bag yielded 0 instances', 2.5 and '8'
    raw TypeErrors: each is now one message naming the argument, in training and inference."""
    model = make_model("abmil")
    bag = torch.zeros(6, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"max_instances_per_forward_pass must be a whole"):
        model.forward_train(bag, 1, k)
    with pytest.raises(ValueError, match=r"max_instances_per_forward_pass must be a whole"):
        model(bag, max_instances_per_forward_pass=k)


def test_a_chunk_size_of_0_or_none_is_the_whole_bag() -> None:
    model = make_model("abmil").eval()
    bag = torch.randint(0, 255, (6, 8, 8, 3), dtype=torch.uint8)
    with torch.no_grad():
        whole, _ = model(bag, max_instances_per_forward_pass=None)
        zero, _ = model(bag, max_instances_per_forward_pass=0)
        numpy_k, _ = model(bag, max_instances_per_forward_pass=np.int64(4))
    torch.testing.assert_close(zero, whole)
    torch.testing.assert_close(numpy_k, whole, rtol=1e-5, atol=1e-6)
    model.train()
    assert model.forward_train(bag, 1, 0).loss > 0  # the plain pass, no division by zero


def test_balanced_chunk_size_never_leaves_a_chunk_of_one() -> None:
    from gigamil.models.mil import balanced_chunk_size

    assert balanced_chunk_size(257, 256) == 129  # 129 + 128, not 256 + 1
    assert balanced_chunk_size(513, 256) == 171
    assert balanced_chunk_size(23, 6) == 6 and balanced_chunk_size(24, 6) == 6  # unchanged
    assert balanced_chunk_size(10, 3) == 2  # 3+3+3+1 -> 2+2+2+2+2
    assert balanced_chunk_size(1, 4) is None and balanced_chunk_size(3, 2) is None


def test_train_batchnorm_with_a_last_chunk_of_one_patch() -> None:
    """ResNet18 on 32 px patches ends in a 1x1 map: BatchNorm in training mode cannot normalise
    a chunk of one patch ("Expected more than 1 value per channel")."""
    from gigamil.errors import GigamilError
    from gigamil.models.factory import build_mil_model

    torch.manual_seed(0)
    cfg = {"encoder": "resnet18", "weights": None, "batchnorm": "train"}
    model = build_mil_model(cfg, 2, 32, loss_fn=BagLoss("ce")).train()
    bag = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    out = model.forward_train(bag, 1, max_instances_per_forward_pass=4)  # chunks 3 + 2
    assert np.isfinite(out.loss)
    assert all(p.grad is not None for p in model.feature_encoder.parameters() if p.requires_grad)
    with pytest.raises(GigamilError, match=r"a bag of 1 patch.*model\.batchnorm: train"):
        model.forward_train(bag[:1], 1, max_instances_per_forward_pass=4)


def test_a_bag_with_a_grid_gets_its_8_connected_adjacency() -> None:
    """A bag that carries its patch grid (``.grid``) needs no ``adj``: SmABMIL smooths over the
    8-connected neighbours of that grid; a bag's own ``adjacency()`` is used as it is."""

    class GridBag:
        def __init__(self, data: torch.Tensor, grid: np.ndarray) -> None:
            self.data, self.grid = data, grid

        def __len__(self) -> int:
            return len(self.data)

        def chunks(self, size: int):
            yield from self.data.split(size)

    model = make_model("smabmil").eval()
    bag, grid = make_bag()
    with torch.no_grad():
        ref = model(bag, adj=grid_adjacency(grid, connectivity=8))
        four = model(bag, adj=grid_adjacency(grid, connectivity=4))
        got = model(GridBag(bag, grid), max_instances_per_forward_pass=7)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(four[1], ref[1])  # the check can tell the two apart
    cached = GridBag(bag, grid)
    cached.adjacency = lambda: grid_adjacency(grid, connectivity=4)
    with torch.no_grad():
        torch.testing.assert_close(model(cached), four)
    with pytest.raises(ValueError, match="needs `adj`"):
        model(bag)
