"""Patch preprocessing and augmentation, inside the encoder path.

Every random number is drawn from torch's global generator with ONE ``torch.rand(n, k)`` call per
chunk (one row per patch; k = 6, or 12 with stain jitter). On CPU that makes the augmentation independent of how a bag is cut
into chunks, and the accumulating trainer can replay it exactly by restoring the RNG state.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Haematoxylin, eosin and DAB stain vectors (Ruifrok & Johnston 2001, as in skimage.color.rgb2hed)
RGB_FROM_HED = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)


class PatchPreprocess(nn.Module):
    """uint8 (n, H, W, 3) or float (n, 3, H, W) in [0, 1] → augmented, normalised (n, 3, H, W).

    Tensors that are not 4-D (e.g. pre-extracted features (n, D)) pass through unchanged.
    Augmentation (flips, 90° rotations, brightness/contrast/saturation jitter) runs only in
    training mode. The output dtype follows the module's buffers (``.double()`` gives float64).
    """

    def __init__(
        self,
        flips: bool = False,
        rot90: bool = False,
        color_jitter: float = 0.0,
        stain_jitter: float = 0.0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.flips = bool(flips)
        self.rot90 = bool(rot90)
        self.color_jitter = float(color_jitter)
        self.stain_jitter = float(stain_jitter)
        rgb_from_hed = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
        rgb_from_hed = rgb_from_hed / rgb_from_hed.norm(dim=1, keepdim=True)
        self.register_buffer("rgb_from_hed", rgb_from_hed.float())
        self.register_buffer("hed_from_rgb", torch.linalg.inv(rgb_from_hed).float())
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def extra_repr(self) -> str:
        return (
            f"flips={self.flips}, rot90={self.rot90}, color_jitter={self.color_jitter}, "
            f"stain_jitter={self.stain_jitter}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return x
        if x.dtype == torch.uint8:  # (n, H, W, 3) → (n, 3, H, W) in [0, 1]
            x = x.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0
        else:
            x = x.to(self.mean.dtype)
        if self.training and (
            self.flips or self.rot90 or self.color_jitter > 0 or self.stain_jitter > 0
        ):
            x = self._augment(x)
        return (x - self.mean) / self.std

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k = 12 if self.stain_jitter > 0 else 6
        u = torch.rand(n, k, device=x.device)  # one row of uniforms per patch (chunk-invariant)
        bcast = (n, 1, 1, 1)
        if self.flips:
            x = torch.where((u[:, 0] < 0.5).view(bcast), x.flip(-1), x)
            x = torch.where((u[:, 1] < 0.5).view(bcast), x.flip(-2), x)
        if self.rot90 and x.shape[-1] == x.shape[-2]:
            r = (u[:, 2] * 4).long().clamp(max=3).view(bcast)
            for j in (1, 2, 3):
                x = torch.where(r == j, torch.rot90(x, j, dims=(-2, -1)), x)
        s = self.color_jitter
        if s > 0:
            f = (1.0 + s * (2.0 * u[:, 3:6] - 1.0)).to(x.dtype)  # (n, 3) factors
            x = x * f[:, 0].view(bcast)  # brightness
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * f[:, 1].view(bcast) + mean  # contrast
            gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
            x = (x - gray) * f[:, 2].view(bcast) + gray  # saturation
            x = x.clamp(0.0, 1.0)
        if self.stain_jitter > 0:
            x = self._stain_jitter(x, u[:, 6:12])
        return x

    def _stain_jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """HED stain augmentation (Tellez et al. 2018, "HED-light"): each patch's haematoxylin,
        eosin and DAB concentrations c (colour deconvolution, Ruifrok & Johnston 2001) become
        c·a + b with a ~ U(1-σ, 1+σ), b ~ U(-σ, σ) per stain (σ = ``stain_jitter``); x (n, 3,
        H, W) in [0, 1], u (n, 6) uniforms."""
        s = self.stain_jitter
        dt = x.dtype
        a = (1.0 + s * (2.0 * u[:, 0:3] - 1.0)).to(dt)  # (n, 3)
        b = (s * (2.0 * u[:, 3:6] - 1.0)).to(dt)
        od = -torch.log(x.clamp(min=1.0 / 255.0))  # optical density (n, 3, H, W)
        hed = torch.einsum("nchw,cs->nshw", od, self.hed_from_rgb.to(dt))
        hed = hed * a[:, :, None, None] + b[:, :, None, None] * hed.mean(dim=(2, 3), keepdim=True)
        od = torch.einsum("nshw,sc->nchw", hed, self.rgb_from_hed.to(dt))
        return torch.exp(-od).clamp(0.0, 1.0)
