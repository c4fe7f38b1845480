"""gigamil.nn.smallcnn: the small CNN encoder and its folded conv + BatchNorm."""

from __future__ import annotations

import pytest
import torch

from gigamil.nn.encoders import build_encoder


@pytest.mark.parametrize("mode", ["frozen", "eval"])
def test_smallcnn_folded_conv_bn_equals_separate_layers(mode: str) -> None:
    """With running-statistics BatchNorm the small CNN folds each BN into its conv: the outputs
    and the gradients of every parameter equal running the layers one by one (float64)."""
    torch.manual_seed(0)
    enc, _ = build_encoder("smallcnn", None, 32, "frozen" if mode == "frozen" else "train")
    enc = enc.double()
    with torch.no_grad():  # non-trivial statistics and affine parameters
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    enc.train() if mode == "frozen" else enc.eval()
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)

    def grads(fn):  # noqa: ANN001, ANN202
        enc.zero_grad()
        out = fn(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in enc.parameters()]

    out_f, g_f = grads(enc)

    def layer_by_layer(t: torch.Tensor) -> torch.Tensor:
        for m in enc.net:
            t = m(t)
        return t

    out_s, g_s = grads(layer_by_layer)
    torch.testing.assert_close(out_f, out_s, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_f, g_s, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert any(isinstance(m, torch.nn.BatchNorm2d) and not m.training for m in enc.net)
