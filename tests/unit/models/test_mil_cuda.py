"""GradCache on CUDA (marked gpu: ``pytest -m gpu`` on a CUDA machine; deselected by default).

float32 with TF32 off and deterministic cuDNN: GradCache equals the one-graph pass; with
augmentation and encoder dropout (CUDA RNG replay) it equals the one-graph pass over the same
chunks; bf16 and fp16 are finite and close to float32.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from gigamil import MILModel
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import set_batchnorm_mode
from gigamil.nn.losses import BagLoss
from gigamil.nn.pooling import AttentionHead, grid_adjacency
from gigamil.train.accel import prepare_model

pytestmark = pytest.mark.gpu

N, PX = 37, 32
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32() -> Iterator[None]:
    """IEEE float32 matmuls and convolutions, deterministic algorithms."""
    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    ) = saved


def make_model(pool: str, augment: bool, enc_dropout: float = 0.0, seed: int = 0) -> MILModel:
    torch.manual_seed(seed)
    pre = (
        PatchPreprocess(flips=True, rot90=True, color_jitter=0.2, stain_jitter=0.05)
        if augment
        else PatchPreprocess()
    )
    enc = nn.Sequential(
        pre,
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Dropout(enc_dropout),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(16, 24),
    )
    with torch.no_grad():
        enc[2].running_mean.uniform_(-0.5, 0.5)
        enc[2].running_var.uniform_(0.5, 2.0)
    set_batchnorm_mode(enc, "frozen")
    head = AttentionHead(24, n_classes=2, att_dim=12, pool=pool, dropout=0.1)
    model = MILModel(enc, head, BagLoss("ce")).to(CUDA).train()
    prepare_model(model, CUDA)  # channels-last convolutions, as in training
    torch.backends.cudnn.benchmark = False  # (prepare_model switches it on)
    return model


def make_bag(n: int = N) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(1)
    bag = torch.randint(0, 256, (n, PX, PX, 3), generator=g, dtype=torch.uint8)
    return bag, np.array([(i // 6, i % 6) for i in range(n)])


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-9))


def gradcache(model: MILModel, bag, k, adj, seed: int = 7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # seeds the CUDA generator too
    out = model.forward_train(bag, 1, max_instances_per_forward_pass=k, adj=adj)
    return out, grads(model), torch.cuda.get_rng_state()


def one_graph(model: MILModel, bag: torch.Tensor, k: int, adj, seed: int = 7):
    """All N instances in one graph, the encoder called on the same chunks (same random draws)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    h = torch.cat([model.feature_encoder(bag[s : s + k].to(CUDA)) for s in range(0, len(bag), k)])
    logits, att = model.attention_model(h, adj) if adj is not None else model.attention_model(h)
    loss = model.loss_fn(logits, 1)
    loss.backward()
    return float(loss), grads(model), torch.cuda.get_rng_state(), att.detach()


def check(ref, test, tol: float = 3e-4) -> None:
    """Gradients to float32 rounding (summation order differs: ~2e-5 on CPU), the loss, the RNG."""
    loss_r, g_r, rng_r = ref[0], ref[1], ref[2]
    out_t, g_t, rng_t = test
    assert set(g_r) == set(g_t) and len(g_r) > 0
    for name in g_r:
        assert rel_err(g_t[name], g_r[name]) <= tol, (name, rel_err(g_t[name], g_r[name]))
    assert abs(out_t.loss - loss_r) <= 1e-5 * max(1.0, abs(loss_r))
    assert torch.equal(rng_r, rng_t)  # the CUDA RNG ends where the one-graph pass leaves it


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil", "smabmil"])
@pytest.mark.parametrize("k", [5, 16, N])
def test_gradcache_equals_one_graph_pass_fp32(pool: str, k: int) -> None:
    model = make_model(pool, augment=False)
    bag, grid = make_bag()
    adj = grid_adjacency(grid).to(CUDA) if pool == "smabmil" else None
    ref = one_graph(copy.deepcopy(model), bag, N, adj)  # the plain full-bag graph
    check(ref, gradcache(model, bag, k, adj))


@pytest.mark.parametrize("pool", ["abmil", "gated_abmil", "smabmil"])
@pytest.mark.parametrize("k", [5, 16])
def test_gradcache_replays_cuda_rng_with_augmentation_and_dropout(pool: str, k: int) -> None:
    model = make_model(pool, augment=True, enc_dropout=0.2)
    bag, grid = make_bag()
    adj = grid_adjacency(grid).to(CUDA) if pool == "smabmil" else None
    ref = one_graph(copy.deepcopy(model), bag, k, adj)
    check(ref, gradcache(model, bag, k, adj))
    other = one_graph(copy.deepcopy(model), bag, k, adj, seed=8)  # the test can fail:
    name = "feature_encoder.1.weight"  # another draw gives other gradients
    assert rel_err(other[1][name], ref[1][name]) > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_is_finite_and_close_to_fp32(dtype: torch.dtype) -> None:
    torch.backends.cudnn.deterministic = False
    bag, _ = make_bag(200)
    ref = make_model("gated_abmil", augment=False)
    low = copy.deepcopy(ref)
    low.amp_dtype = dtype
    out_r = gradcache(ref, bag, 64, None)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    low.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    out_l = low.forward_train(bag, 1, max_instances_per_forward_pass=64, scaler=scaler)
    scale = 1.0 if scaler is None else float(scaler.get_scale())
    assert np.isfinite(out_l.loss) and abs(out_l.loss - out_r[0].loss) < 0.02
    for name, p in low.named_parameters():
        g = p.grad / scale
        assert torch.isfinite(g).all(), name
        tol = 0.1 if dtype == torch.bfloat16 else 0.05  # 8 vs 11 significant bits
        assert rel_err(g, out_r[1][name]) < tol, (name, rel_err(g, out_r[1][name]))
