"""Helpers shared by the slide-ingestion tests (test_wsi_*.py, test_store.py).

The shared developer slides live in ``../shared/data/slides`` beside the clone (CI and the dev
machines) or wherever ``GIGAMIL_SHARED_DATA`` points (its ``slides/`` subdirectory). Tests that
need them FAIL when they are absent: they are part of the acceptance criteria.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CMU_SVS = REPO / "workflow" / "gigamil" / "data" / "CMU-1-Small-Region.svs"


def shared_slides() -> Path:
    """The shared test-slide directory; pytest.fail if it is missing."""
    env = os.environ.get("GIGAMIL_SHARED_DATA")
    base = Path(env) if env else REPO.parent / "shared" / "data"
    slides = base / "slides"
    if not (slides / "CMU-1-Small-Region.pyramid.tiff").is_file():
        pytest.fail(f"shared test slides not found in {slides}; set GIGAMIL_SHARED_DATA")
    return slides


def write_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float | None,
    tiled: bool = True,
    levels: int = 1,
    unit: str = "CENTIMETER",
) -> Path:
    """A (pyramidal if ``levels`` > 1) RGB TIFF, with resolution tags only if ``mpp`` is given."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path) as tw:
        img = image
        for i in range(levels):
            kw: dict = {"photometric": "rgb", "subfiletype": 0 if i == 0 else 1}
            if tiled:
                kw["tile"] = (64, 64)
            if mpp is not None:
                per_unit = (1e4 if unit == "CENTIMETER" else 25400.0) / (mpp * 2**i)
                kw.update(resolution=(per_unit, per_unit), resolutionunit=unit)
            tw.write(img, **kw)
            h, w = img.shape[:2]
            img = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BOX))
    return path


def tissue_image(size: tuple[int, int] = (800, 1000), seed: int = 0) -> np.ndarray:
    """A white (H, W, 3) image with a textured pink ellipse covering the middle (fake tissue)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1.0
    img = np.full((h, w, 3), 245, np.uint8)
    tex = rng.integers(-25, 25, (h, w, 1))
    pink = np.clip(np.array([200, 120, 170]) + tex, 0, 255).astype(np.uint8)
    img[inside] = pink[inside]
    return img


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
