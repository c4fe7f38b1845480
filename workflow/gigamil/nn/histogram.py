"""A learnable soft colour histogram of each patch, appended to an encoder's features.

Colour distributions (how much of a patch is dark purple nuclei, pink stroma, white glass) are
strong evidence in H&E, and a small CNN trained from random initialisation on a few slides does
not find them: on real PatchCamelyon mosaics a logistic regression on 16-bin RGB histograms
separates the slides far better than the same regression on the small CNN's pooled features
(README, "Real-tissue benchmark"). This layer gives the encoder those statistics directly, in a
form that still trains end to end: a histogram layer after Wang et al. 2016 ("Learnable
histogram: statistical context features for deep neural networks", ECCV) and Peeples et al. 2021
("Histogram layers for texture analysis", IEEE TAI).

For every pixel a 1 × 1 convolution projects the (normalised) colour onto ``3 × bins``
directions and a sigmoid thresholds each one; the spatial mean is the fraction of the patch's
pixels above that threshold, i.e. a soft cumulative histogram. It is initialised to exactly that
for the R, G and B channels at ``bins`` evenly spaced thresholds over each channel's range; the
directions, thresholds and sharpness then learn with the rest of the model.

The histogram is taken over a regular grid of at most :data:`MAX_PIXELS` pixels of each square
patch (every s-th pixel in each direction, s = ceil(sqrt(H W / MAX_PIXELS)); all of a 32 x 32 patch,
every third pixel of a 96 x 96 one), a systematic sample of its pixels: for tissue that is not
periodic at the grid's spacing it estimates the patch's colour histogram as a random sample of
that size would (standard error at most 0.016 per bin for 1,024 independent pixels). Over every
pixel the layer made a training step of the small CNN 6.8 times as slow, over the grid 1.28 times
(``benchmarks/histogram_cost.py``, 96-px patches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

MAX_PIXELS = 1024  # default pixels per patch the histogram is taken over (a regular grid)


class ColourHistogram(nn.Module):
    """Soft cumulative colour histogram of normalised patches.

    Input (n, 3, H, W) normalised as ``(x - mean) / std`` with x in [0, 1]; output (n, 3 × bins)
    in [0, 1]: for channel c and threshold j the share of pixels whose value exceeds it, over
    every :meth:`pixel_stride`-th pixel in each direction (at most ``max_pixels`` of a square
    patch; ``max_pixels`` >= H W: every pixel).
    """

    def __init__(
        self,
        bins: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        super().__init__()
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
        self.bins = int(bins)
        self.max_pixels = int(max_pixels)
        self.proj = nn.Conv2d(3, 3 * bins, kernel_size=1)
        with torch.no_grad():
            weight = torch.zeros(3 * bins, 3, 1, 1)
            bias = torch.zeros(3 * bins)
            for c in range(3):
                lo, hi = (0.0 - mean[c]) / std[c], (1.0 - mean[c]) / std[c]
                sharp = 4.0 * bins / (hi - lo)  # a transition about a quarter of a bin wide
                for j in range(bins):
                    t = lo + (j + 0.5) / bins * (hi - lo)
                    weight[c * bins + j, c] = sharp
                    bias[c * bins + j] = -sharp * t
            self.proj.weight.copy_(weight)
            self.proj.bias.copy_(bias)

    @property
    def out_dim(self) -> int:
        return 3 * self.bins

    @staticmethod
    def pixel_stride(height: int, width: int, max_pixels: int = MAX_PIXELS) -> int:
        """Grid spacing in px that keeps at most ``max_pixels`` pixels of a square H x W patch
        (of another shape, ceil(H / s) ceil(W / s) may exceed it slightly)."""
        return max(1, math.ceil(math.sqrt(height * width / max_pixels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.pixel_stride(x.shape[-2], x.shape[-1], self.max_pixels)
        return torch.sigmoid(self.proj(x[..., ::s, ::s])).mean(dim=(2, 3))  # (n, 3 × bins)


class WithColourHistogram(nn.Module):
    """``encoder(x)`` (n, D) and ``ColourHistogram(x)`` (n, 3 × bins) side by side: (n, D + 3 × bins).

    Every patch is still encoded on its own, so chunked (GradCache) gradients stay exact.
    """

    def __init__(
        self, encoder: nn.Module, bins: int, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.histogram = ColourHistogram(bins, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encoder(x), self.histogram(x).to(x.dtype)], dim=1)
