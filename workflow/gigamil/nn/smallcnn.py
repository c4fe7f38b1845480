"""The small CPU-friendly CNN patch encoder (``model.encoder: smallcnn``) and its folded
convolution + running-statistics BatchNorm (:func:`conv_bn_eval`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gigamil.errors import ConfigError


class SmallCNN(nn.Module):
    """A small CPU-friendly CNN: four 3×3 conv blocks (three with stride 2), global average pool.

    Input (n, in_ch, H, W) float, output (n, out_dim); with channels-last weights
    (:func:`gigamil.train.accel.prepare_model`) the input is made channels-last too, so every
    convolution runs in NHWC. :meth:`set_trainable_blocks` (``model.
    trainable_blocks: N``, 1-4) freezes all but the last N conv blocks: the leading blocks (the
    trunk) get no gradient, stay in eval mode and run under ``torch.no_grad``, as the ViT/ResNet
    trunks of :class:`gigamil.nn.partial.SplitEncoder`.
    """

    N_BLOCKS = 4
    LAYERS_PER_BLOCK = 3  # conv, BatchNorm, ReLU (the last block adds the pool and flatten)

    def __init__(self, in_ch: int = 3, width: int = 16, out_dim: int = 64) -> None:
        super().__init__()
        chans = [in_ch, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers += [
            nn.Conv2d(chans[-1], out_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        ]
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim
        self.n_top: int | None = None
        for m in self.modules():  # He initialisation (as torchvision's ResNets): activations keep
            if isinstance(m, nn.Conv2d):  # their scale even when BatchNorm is frozen at init
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def extra_repr(self) -> str:
        return f"trainable_blocks={'all' if self.n_top is None else self.n_top}"

    def _cut(self) -> int:
        """Index in ``net`` of the first trainable layer (0: everything trains)."""
        if self.n_top is None:
            return 0
        return (self.N_BLOCKS - self.n_top) * self.LAYERS_PER_BLOCK

    def set_trainable_blocks(self, n: int | None) -> None:
        """Freeze all but the last ``n`` conv blocks (None: train everything)."""
        if n is not None and n > self.N_BLOCKS:
            raise ConfigError(
                f"model.trainable_blocks: {n} but smallcnn has {self.N_BLOCKS} conv blocks"
            )
        self.n_top = n
        self.requires_grad_(n is None or n > 0)
        for layer in list(self.net)[: self._cut()]:
            layer.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> SmallCNN:
        super().train(mode)
        for layer in list(self.net)[: self._cut()]:  # the frozen trunk stays in eval mode
            layer.train(False)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net[0].weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        cut = self._cut()
        if cut:
            with torch.no_grad():
                x = self._run(x, 0, cut)
        return self._run(x, cut, len(self.net))

    def _run(self, x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        layers = self.net
        i = start
        while i < stop:  # (n, C, H, W) → ... → (n, out_dim)
            m = layers[i]
            if isinstance(m, nn.Conv2d) and i + 1 < stop and _uses_running_stats(layers[i + 1]):
                x = conv_bn_eval(x, m, layers[i + 1])
                i += 2
            else:
                x = m(x)
                i += 1
        return x


def _uses_running_stats(m: nn.Module) -> bool:
    """A BatchNorm2d that normalises with its running statistics (eval mode or ``frozen``)."""
    return (
        isinstance(m, nn.BatchNorm2d)
        and not m.training
        and m.running_mean is not None
        and m.running_var is not None
    )


def conv_bn_eval(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn(conv(x))`` for a BatchNorm using its running statistics, as ONE convolution whose
    weight and bias are folded from both (the same function, so the same gradients for the conv
    weight and the BatchNorm affine parameters); on the CPU 6-15% faster for the small CNN
    than a separate BatchNorm forward and backward. x (n, C_in, H, W) → (n, C_out, H', W')."""
    scale = torch.rsqrt(bn.running_var + bn.eps)  # (C_out,)
    if bn.weight is not None:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)
