"""Patch preprocessing and augmentation, inside the encoder path.

Every random number is drawn from torch's global CPU generator with ONE ``torch.rand(n, k)`` call
per chunk (one row per patch; k = 6, 12 with stain jitter, one more each with hue jitter, random
greyscale, scale jitter and Gaussian blur), then moved to the patches' device. That makes the
augmentation independent of how a bag is cut into chunks on every device (CUDA's Philox generator
is not: its draws depend on the call sizes), and the accumulating trainer can replay it exactly
by restoring the RNG state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B
# NTSC YIQ (FCC 1953): Y is the luma, (I, Q) the chroma plane that a hue rotation turns
YIQ_FROM_RGB = (
    LUMA,
    (0.596, -0.274, -0.322),
    (0.211, -0.523, 0.312),
)
# Haematoxylin, eosin and DAB stain vectors (Ruifrok & Johnston 2001, as in skimage.color.rgb2hed)
RGB_FROM_HED = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)


class PatchPreprocess(nn.Module):
    """uint8 (n, H, W, 3) or float (n, 3, H, W) in [0, 1] → augmented, normalised (n, 3, H, W).

    Tensors that are not 4-D (e.g. pre-extracted features (n, D)) pass through unchanged.
    Augmentation (flips, 90° rotations, scale jitter, brightness/contrast/saturation jitter, hue
    rotation, H&E stain jitter, random greyscale, Gaussian blur, in that order) runs only in
    training mode. The output dtype follows the module's buffers (``.double()`` gives float64).
    """

    def __init__(  # noqa: PLR0913 - one keyword per training.augment key, plus mean and std
        self,
        flips: bool = False,
        rot90: bool = False,
        color_jitter: float = 0.0,
        stain_jitter: float = 0.0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        hue_jitter: float = 0.0,
        grayscale: float = 0.0,
        scale: float = 0.0,
        blur: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= scale < 1.0:
            raise ValueError(f"scale: {scale} is not in [0, 1) (the zoom factor is 1 ± scale)")
        if not 0.0 <= blur <= 8.0:
            raise ValueError(f"blur: {blur} is not in [0, 8] (the largest Gaussian sigma, px)")
        self.scale = float(scale)
        self.blur = float(blur)
        if not 0.0 <= hue_jitter <= 0.5:
            raise ValueError(f"hue_jitter: {hue_jitter} is not in [0, 0.5] (a fraction of a turn)")
        if not 0.0 <= color_jitter <= 1.0:
            raise ValueError(
                f"color_jitter: {color_jitter} is not in [0, 1] (the factors are 1 ± "
                "color_jitter; above 1 they turn negative and invert the patch's contrast)"
            )
        if not 0.0 <= grayscale <= 1.0:
            raise ValueError(f"grayscale: {grayscale} is not a probability in [0, 1]")
        self.hue_jitter = float(hue_jitter)
        self.grayscale = float(grayscale)
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
            f"stain_jitter={self.stain_jitter}, hue_jitter={self.hue_jitter}, "
            f"grayscale={self.grayscale}, scale={self.scale}, blur={self.blur}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return x
        dt = self.mean.dtype
        if x.dtype == torch.uint8:  # (n, H, W, 3) → (n, 3, H, W) in [0, 1], contiguous
            x = x.to(dt).permute(0, 3, 1, 2).contiguous().mul_(1.0 / 255.0)
        else:
            x = x.to(dt)
        if self.training and (
            self.flips
            or self.rot90
            or self.color_jitter > 0
            or self.stain_jitter > 0
            or self.hue_jitter > 0
            or self.grayscale > 0
            or self.scale > 0
            or self.blur > 0
        ):
            x = self._augment(x)
        # (x - mean) / std in one pass (elementwise ops on a contiguous tensor: several times
        # faster on CPU than on the permuted view of the uint8 patches)
        return torch.addcmul(-self.mean / self.std, x, 1.0 / self.std)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        k = 12 if self.stain_jitter > 0 else 6
        hue_col = k
        k += 1 if self.hue_jitter > 0 else 0
        gray_col = k
        k += 1 if self.grayscale > 0 else 0
        scale_col = k
        k += 1 if self.scale > 0 else 0
        blur_col = k
        k += 1 if self.blur > 0 else 0
        u = torch.rand(n, k).to(x.device)  # a row of CPU uniforms per patch (chunk-invariant)
        if self.flips or (self.rot90 and x.shape[-1] == x.shape[-2]):
            x = self._dihedral(x, u)
        if self.scale > 0:
            x = self._rescale(x, 1.0 + self.scale * (2.0 * u[:, scale_col] - 1.0))
        s = self.color_jitter
        if s > 0:
            x = self._color_jitter(x, (1.0 + s * (2.0 * u[:, 3:6] - 1.0)).to(x.dtype))
        if self.hue_jitter > 0:
            x = self._hue_rotate(x, self.hue_jitter * (2.0 * u[:, hue_col] - 1.0))
        if self.stain_jitter > 0:
            x = self._stain_jitter(x, u[:, 6:12])
        if self.grayscale > 0:
            x = self._random_grayscale(x, u[:, gray_col] < self.grayscale)
        if self.blur > 0:
            x = self._gaussian_blur(x, self.blur * u[:, blur_col])
        return x

    @staticmethod
    def _rescale(x: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
        """Zoom each patch of x (n, 3, H, W) about its centre by ``zoom`` (n,) (> 1 magnifies,
        < 1 shrinks; the patch keeps its size and µm/px label): bilinear resampling
        (``torch.nn.functional.grid_sample``, pixel centres, ``align_corners=False``) with the
        border reflected where a shrunk patch needs pixels from outside it. Scale augmentation
        of the "morphology" group of Tellez et al. 2019 (scanners and slides differ in their
        true µm/px by a few per cent); a zoom of exactly 1 returns the patch unchanged."""
        n = x.shape[0]
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        inv = 1.0 / zoom.to(x.dtype)
        theta[:, 0, 0], theta[:, 1, 1] = inv, inv
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(
            x, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return out.clamp_(0.0, 1.0)

    def _gaussian_blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Blur each patch of x (n, 3, H, W) with an isotropic Gaussian of standard deviation
        ``sigma`` (n,) px (kernel radius ceil(3 × ``blur``), borders reflected; separable, one
        grouped convolution per axis); sigma below 0.05 px leaves the patch as it is. Out-of-focus
        scanning (the blur of the "morphology" augmentation of Tellez et al. 2019)."""
        n, c, h, w = x.shape
        r = min(math.ceil(3.0 * self.blur), min(h, w) - 1)  # reflect padding needs r < side
        t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
        s = sigma.to(x.dtype).clamp(min=0.05)[:, None]
        k = torch.exp(-0.5 * (t[None, :] / s) ** 2)
        k = k / k.sum(dim=1, keepdim=True)  # (n, 2r + 1); sigma 0.05: 1 at the centre, ~0 else
        k = k.repeat_interleave(c, dim=0)  # one kernel per channel of each patch
        y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, k.view(n * c, 1, 1, 2 * r + 1), groups=n * c)
        y = F.conv2d(y, k.view(n * c, 1, 2 * r + 1, 1), groups=n * c)
        return y.view(n, c, h, w)

    @staticmethod
    def _random_grayscale(x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
        """The patches of x (n, 3, H, W) where ``pick`` (n,) is true become grey: each channel
        is set to the luma 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, as PIL's ``convert("L")``
        and, to 1e-4, torchvision's ``RandomGrayscale``), which keeps the patch's morphology and
        intensity and removes its colour."""
        if not bool(pick.any()):
            return x
        idx = pick.nonzero().squeeze(1)
        luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
        gray = torch.einsum("nchw,c->nhw", x.index_select(0, idx), luma).unsqueeze(1)
        return x.index_copy(0, idx, gray.expand(-1, 3, -1, -1))

    @staticmethod
    def _color_jitter(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and saturation factors f (n, 3) applied in that order to x (n, 3,
        H, W), then clamped to [0, 1]: brightness x·b; contrast (x - m)·c + m with m the patch
        mean; saturation (x - g)·s + g with g the luma (0.299 R + 0.587 G + 0.114 B). All three
        are affine in x and the luma weights sum to 1, so the result is computed in one affine
        step: α·s·x + α·(1 - s)·g(x) + β, α = b·c, β = b·(1 - c)·mean(x)."""
        n = x.shape[0]
        b, c, sat = f[:, 0], f[:, 1], f[:, 2]
        alpha = b * c
        beta = b * (1.0 - c) * x.mean(dim=(1, 2, 3))
        luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device)
        gray = torch.einsum("nchw,c->nhw", x, luma).unsqueeze(1)  # (n, 1, H, W)
        gray = gray * (alpha * (1.0 - sat)).view(n, 1, 1, 1) + beta.view(n, 1, 1, 1)
        return torch.addcmul(gray, x, (alpha * sat).view(n, 1, 1, 1)).clamp_(0.0, 1.0)

    def _hue_rotate(self, x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        """Rotate the hue of each patch of x (n, 3, H, W) in [0, 1] by ``turns`` (n,) of a full
        turn: the chroma plane (I, Q) of the YIQ colour space is rotated about the luma axis Y,
        which stays unchanged before the clamp (the linear hue rotation of image processing, a
        stand-in for an HSV hue shift such as torchvision's ``adjust_hue``); then clamped to
        [0, 1]."""
        n = x.shape[0]
        theta = (2.0 * math.pi) * turns.to(torch.float64)
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.zeros(n, 3, 3, dtype=torch.float64, device=x.device)
        rot[:, 0, 0] = 1.0
        rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = c, -s, s, c
        yiq_from_rgb = torch.tensor(YIQ_FROM_RGB, dtype=torch.float64, device=x.device)
        m = torch.linalg.inv(yiq_from_rgb) @ rot @ yiq_from_rgb  # (n, 3, 3), float64
        return torch.einsum("nij,njhw->nihw", m.to(x.dtype), x).clamp_(0.0, 1.0)

    def _dihedral(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Per patch: flip W if u0 < 0.5, flip H if u1 < 0.5 (``flips``), then rotate by
        90° × floor(4 u2) (``rot90``, square patches); each patch is copied once, by the group
        of patches that share its transform."""
        n = x.shape[0]
        zero = torch.zeros(n, dtype=torch.long, device=x.device)
        fw = (u[:, 0] < 0.5).long() if self.flips else zero
        fh = (u[:, 1] < 0.5).long() if self.flips else zero
        square = x.shape[-1] == x.shape[-2]
        r = (u[:, 2] * 4).long().clamp(max=3) if self.rot90 and square else zero
        code = fw + 2 * fh + 4 * r
        if not bool(code.any()):
            return x
        out = x.clone()
        for c in code.unique().tolist():
            if c == 0:
                continue
            idx = (code == c).nonzero().squeeze(1)
            y = x.index_select(0, idx)
            if c & 1:
                y = y.flip(-1)
            if c & 2:
                y = y.flip(-2)
            if c >> 2:
                y = torch.rot90(y, c >> 2, dims=(-2, -1))
            out.index_copy_(0, idx, y)
        return out

    def _stain_jitter(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """HED stain augmentation (Tellez et al. 2018, "HED-light"): each patch's haematoxylin,
        eosin and DAB concentrations c (colour deconvolution, Ruifrok & Johnston 2001) become
        c·a + b·mean(c) with a ~ U(1-σ, 1+σ), b ~ U(-σ, σ) per stain (σ = ``stain_jitter``,
        mean(c) the stain's mean over the patch); x (n, 3, H, W) in [0, 1], u (n, 6) uniforms."""
        s = self.stain_jitter
        dt = x.dtype
        n, _, h, w = x.shape
        a = (1.0 + s * (2.0 * u[:, 0:3] - 1.0)).to(dt)  # (n, 3)
        b = (s * (2.0 * u[:, 3:6] - 1.0)).to(dt)
        od = x.clamp(min=1.0 / 255.0).log_().neg_().reshape(n, 3, h * w)  # optical density
        # hed = Hᵀ od per pixel (H = hed_from_rgb); hed' = a·hed + b·mean(hed); od' = Rᵀ hed'
        # (R = rgb_from_hed): one 3 × 3 map and offset per patch, applied in one batched matmul
        hed_t = self.hed_from_rgb.to(dt).T
        rgb_t = self.rgb_from_hed.to(dt).T
        m = rgb_t @ (a[:, :, None] * hed_t)  # (n, 3, 3)
        v = (b * (od.mean(dim=2) @ hed_t.T)) @ rgb_t.T  # (n, 3)
        od = torch.baddbmm(v[:, :, None], m, od)
        return od.neg_().exp_().clamp_(0.0, 1.0).view(n, 3, h, w)
