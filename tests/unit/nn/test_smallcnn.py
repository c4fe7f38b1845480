"""gigamil.nn.smallcnn: the small CNN encoder and its folded conv + BatchNorm."""

from __future__ import annotations

import pytest
import torch

from gigamil.nn import smallcnn
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


@pytest.mark.parametrize("batchnorm", ["frozen", "train"])
def test_smallcnn_takes_its_input_in_the_memory_format_of_its_weights(
    monkeypatch, batchnorm: str
) -> None:
    """Channels-last conv weights (``gigamil.train.accel.prepare_model``): the small CNN converts
    its NCHW input to channels-last too, so every convolution runs in NHWC (``benchmarks/
    memory_format.py``), folded with a frozen BatchNorm or not; the outputs and parameter
    gradients equal the NCHW model's (float64)."""
    torch.manual_seed(0)
    enc, _ = build_encoder("smallcnn", None, 32, batchnorm)
    enc = enc.double().train()  # train(): applies the BatchNorm mode
    assert enc.net[1].training == (batchnorm == "train")
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    seen: list[bool] = []  # memory format of the first convolution's input, per forward

    def note(t: torch.Tensor) -> None:
        if t.shape[1] == 3:  # the patches, not a later layer's features
            seen.append(t.is_contiguous(memory_format=torch.channels_last))

    folded = smallcnn.conv_bn_eval  # frozen: the first conv runs folded with its BatchNorm
    monkeypatch.setattr(smallcnn, "conv_bn_eval", lambda t, *a: (note(t), folded(t, *a))[1])
    enc.net[0].register_forward_pre_hook(lambda _m, args: note(args[0]))  # train: as a layer

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        enc.zero_grad()
        out = enc(x)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in enc.parameters()]

    out_nchw, g_nchw = run()
    enc.to(memory_format=torch.channels_last)
    out_nhwc, g_nhwc = run()
    assert seen == [False, True]
    torch.testing.assert_close(out_nhwc, out_nchw, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_nhwc, g_nchw, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
