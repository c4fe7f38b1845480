"""The synthetic demo's tissue canvas (:mod:`gigamil.demo`): the packaged CC0 CMU-1-Small-Region
slide cut into fragments (random 90° rotations, flips, crop offsets) laid out as one, two or four
tissue pieces on its glass colour, covering ``COVERAGE_RANGE`` of the slide, in optical density.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from gigamil.errors import GigamilError

SOURCE_NAME = "CMU-1-Small-Region.svs"
SLIDE_PX = 2048  # level-0 side of a demo slide (≈1.02 mm)
LOW = 8  # working resolution for masks and layout: 1/8 of level 0
COVERAGE_RANGE = (0.40, 0.70)  # tissue fraction of a slide

# uint8 -> optical density lookup table
_OD_LUT = (-np.log(np.maximum(np.arange(256), 1) / 255.0)).astype(np.float32)


@dataclass(frozen=True)
class Source:
    """The packaged slide, loaded once (:func:`load_source`)."""

    od: np.ndarray  # float32 (3, H, W) optical density planes, H and W multiples of LOW
    tissue_lo: np.ndarray  # bool (H/LOW, W/LOW)
    background: np.ndarray  # uint8 (3,) typical glass colour


def source_slide_path() -> Path:
    """Path of the packaged CC0 slide ``CMU-1-Small-Region.svs``."""
    return Path(str(resources.files("gigamil") / "data" / SOURCE_NAME))


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over non-overlapping f x f blocks (the first two axes must be multiples of f)."""
    h, w = a.shape[:2]
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def _tissue_from_lowres(rgb_lo: np.ndarray) -> np.ndarray:
    """Tissue (not glass) at low resolution: coloured or dark, cleaned morphologically."""
    from scipy import ndimage as ndi

    rgb_lo = rgb_lo.astype(np.float32)
    sat = rgb_lo.max(axis=-1) - rgb_lo.min(axis=-1)
    tissue = (sat > 15) | (rgb_lo.mean(axis=-1) < 200)
    tissue = ndi.binary_closing(tissue, structure=np.ones((3, 3)), iterations=2, border_value=0)
    tissue = ndi.binary_opening(tissue, structure=np.ones((3, 3)), iterations=1)
    labels, n = ndi.label(tissue)
    if n:
        sizes = ndi.sum(tissue, labels, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], sizes >= 30])  # drop specks < 30 px (≈ 480 µm²)
        tissue = keep[labels]
    return tissue


@lru_cache(maxsize=1)
def load_source() -> Source:
    """The packaged slide's level 0 in optical density, its tissue at 1/LOW and its glass colour
    (read once per process); GigamilError if the file is missing."""
    import openslide

    path = source_slide_path()
    if not path.is_file():
        raise GigamilError(f"demo source slide missing: {path} (reinstall gigamil)")
    with openslide.OpenSlide(str(path)) as slide:
        w, h = slide.dimensions
        rgb = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
    h8, w8 = (h // LOW) * LOW, (w // LOW) * LOW
    rgb = np.ascontiguousarray(rgb[:h8, :w8])  # (2960, 2216, 3)
    rgb_lo = _block_mean(rgb.astype(np.float32), LOW)
    tissue_lo = _tissue_from_lowres(rgb_lo)
    background = np.median(rgb_lo[~tissue_lo], axis=0).round().astype(np.uint8)
    od = np.stack([_OD_LUT[rgb[..., c]] for c in range(3)])  # (3, 2960, 2216)
    return Source(od=od, tissue_lo=tissue_lo, background=background)


def _transform(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate by k*90° and optionally flip left-right (a view)."""
    a = np.rot90(a, k, axes=(0, 1))
    return a[:, ::-1] if flip else a


def upsample(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float 2-D array to ``shape`` (rows, cols); float32."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a, dtype=np.float32), mode="F")
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def noisy_radius(rng: np.random.Generator, theta: np.ndarray, amp: float) -> np.ndarray:
    """A smooth random radius function of the angle: 1 + low harmonics."""
    r = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        r += rng.uniform(0, amp / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return r


def _fragment_shape(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Soft (0..1) irregular rounded shape filling most of an h x w cell (low resolution)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    margin = rng.uniform(1.5, 4.0)
    cy, cx = (h - 1) / 2, (w - 1) / 2
    ay, ax = max(h / 2 - margin, 2.0), max(w / 2 - margin, 2.0)
    dy, dx = (yy - cy) / ay, (xx - cx) / ax
    p = rng.uniform(2.5, 4.0)  # superellipse exponent: rounded rectangle
    rho = (np.abs(dy) ** p + np.abs(dx) ** p) ** (1 / p)
    rho = rho / noisy_radius(rng, np.arctan2(dy, dx), 0.25)
    return 1.0 / (1.0 + np.exp(-(1.0 - rho) * min(ay, ax) * 1.5))


@dataclass(frozen=True)
class _Fragment:
    k: int  # rot90 count
    flip: bool
    src_y: int  # crop offset in the transformed source, low-res px
    src_x: int
    y: int  # cell rectangle on the canvas, low-res px
    x: int
    h: int
    w: int
    shape: np.ndarray  # float (h, w) soft fragment shape


def _cells(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, int]]:
    """Cells (y, x, h, w) in low-res px for a layout of 1, 2 or 4 fragments."""
    s = SLIDE_PX // LOW
    if n == 1:
        return [(0, 0, s, s)]
    cut = int(rng.integers(s * 2 // 5, s * 3 // 5))
    if n == 2:
        if rng.random() < 0.5:
            return [(0, 0, s, cut), (0, cut, s, s - cut)]
        return [(0, 0, cut, s), (cut, 0, s - cut, s)]
    cut2 = int(rng.integers(s * 2 // 5, s * 3 // 5))
    return [
        (0, 0, cut, cut2),
        (0, cut2, cut, s - cut2),
        (cut, 0, s - cut, cut2),
        (cut, cut2, s - cut, s - cut2),
    ]


def plan_layout(rng: np.random.Generator, src: Source) -> tuple[list[_Fragment], np.ndarray]:
    """Random layout of tissue fragments; returns fragments and the canvas tissue mask (low res)."""
    s = SLIDE_PX // LOW
    best: tuple[float, list[_Fragment], np.ndarray] | None = None
    for _attempt in range(12):
        n = int(rng.choice([1, 2, 4], p=[0.4, 0.35, 0.25]))
        frags: list[_Fragment] = []
        tissue = np.zeros((s, s), dtype=bool)
        for y, x, h, w in _cells(rng, n):
            k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            t = _transform(src.tissue_lo, k, flip)
            shape = _fragment_shape(rng, h, w)
            cands = [
                (int(rng.integers(t.shape[0] - h + 1)), int(rng.integers(t.shape[1] - w + 1)))
                for _ in range(6)
            ]
            fracs = [t[cy : cy + h, cx : cx + w][shape > 0.5].mean() for cy, cx in cands]
            ok = [i for i, f in enumerate(fracs) if f >= 0.35]
            i = ok[0] if ok else int(np.argmax(fracs))
            sy, sx = cands[i]
            frags.append(_Fragment(k, flip, sy, sx, y, x, h, w, shape))
            tissue[y : y + h, x : x + w] = t[sy : sy + h, sx : sx + w] & (shape > 0.5)
        cov = float(tissue.mean())
        lo, hi = COVERAGE_RANGE
        dist = max(lo - cov, cov - hi, 0.0)
        if best is None or dist < best[0]:
            best = (dist, frags, tissue)
        if dist == 0.0:
            break
    assert best is not None
    return best[1], best[2]


def render_od(frags: list[_Fragment], src: Source) -> np.ndarray:
    """Compose the level-0 canvas in optical density: float32 planes (3, SLIDE_PX, SLIDE_PX).

    Fragments are blended with the glass at their soft border in OD space (tissue thins out).
    """
    od_bg = _OD_LUT[src.background]  # (3,)
    canvas = np.empty((3, SLIDE_PX, SLIDE_PX), dtype=np.float32)
    canvas[:] = od_bg[:, None, None]
    for f in frags:
        a = upsample(f.shape, (f.h * LOW, f.w * LOW))  # (h, w) float32 0..1
        y, x = f.y * LOW, f.x * LOW
        for c in range(3):
            img = _transform(src.od[c], f.k, f.flip)
            crop = img[f.src_y * LOW : (f.src_y + f.h) * LOW, f.src_x * LOW : (f.src_x + f.w) * LOW]
            cell = canvas[c, y : y + f.h * LOW, x : x + f.w * LOW]
            np.subtract(crop, od_bg[c], out=cell)
            cell *= a
            cell += od_bg[c]
    return canvas
