"""Stain normalisation (gigamil.wsi.stain): Macenko per patch, at extraction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from gigamil.errors import GigamilError
from gigamil.wsi.patching import PatchParams
from gigamil.wsi.stain import normalize_stains

# stain optical-density vectors (unit length, RGB): a bluish and a pinkish pair, and the same
# stains with other hues (another lab's haematoxylin and eosin)
H_VEC, E_VEC = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])
H_OTHER, E_OTHER = np.array([0.55, 0.76, 0.35]), np.array([0.20, 0.95, 0.25])


def _concentrations(seed: int, px: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Haematoxylin (nuclei: blobs on a haematoxylin-stained background) and eosin (smooth)
    concentration maps (px, px); every pixel is stained (optical density >= 0.15 in each
    channel at strength 0.7, Macenko's threshold for the pixels it estimates from)."""
    rng = np.random.default_rng(seed)
    nuclei = gaussian_filter(rng.random((px, px)), 2.0)
    h = 0.55 + np.clip((nuclei - np.quantile(nuclei, 0.6)) * 40.0, 0.0, 1.0)
    e = 0.6 + 0.4 * gaussian_filter(rng.random((px, px)), 6.0)
    return h, e


def _stained(h: np.ndarray, e: np.ndarray, strength: float, h_vec=H_VEC, e_vec=E_VEC) -> np.ndarray:
    """uint8 (px, px, 3) RGB of the concentrations times ``strength`` (Beer-Lambert, I0 240)."""
    h_vec, e_vec = h_vec / np.linalg.norm(h_vec), e_vec / np.linalg.norm(e_vec)
    od = strength * (h[..., None] * h_vec + e[..., None] * e_vec)
    return np.clip(240.0 * np.exp(-od), 0, 255).astype(np.uint8)


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_macenko_takes_stain_strength_and_hue_away_and_keeps_the_tissue() -> None:
    """The same tissue stained pale, dark, or with other stain hues is (nearly) one image
    after normalisation; two different tissues stay different."""
    h, e = _concentrations(0)
    pale, dark = _stained(h, e, 0.7), _stained(h, e, 1.4)
    other_hue = _stained(h, e, 1.0, H_OTHER, E_OTHER)
    other_tissue = _stained(*_concentrations(1), 1.0)
    batch = np.stack([pale, dark, other_hue, other_tissue])
    out, skipped = normalize_stains(batch, "macenko")
    assert skipped == 0 and out.dtype == np.uint8 and out.shape == batch.shape
    assert _gap(pale, dark) > 25 and _gap(pale, other_hue) > 8  # before
    assert _gap(out[0], out[1]) < 2.5  # strength gone
    assert _gap(out[0], out[2]) < 0.25 * _gap(pale, other_hue)  # hue (mostly) gone
    assert _gap(out[0], out[3]) > 4 * _gap(out[0], out[1])  # the tissue is not
    # the nuclei stay where they were: the haematoxylin map's ranks survive
    dark_px = out[1].astype(float).sum(-1)
    assert np.corrcoef(dark_px.ravel(), h.ravel())[0, 1] < -0.9


def test_unstained_patches_are_left_as_they_are_and_counted() -> None:
    h, e = _concentrations(2)
    glass = np.full((64, 64, 3), 245, np.uint8)
    batch = np.stack([glass, _stained(h, e, 1.0)])
    out, skipped = normalize_stains(batch, "macenko")
    assert skipped == 1
    np.testing.assert_array_equal(out[0], glass)
    assert not np.array_equal(out[1], batch[1])
    np.testing.assert_array_equal(batch[0], glass)  # the input is not changed in place


def test_none_and_bad_arguments() -> None:
    batch = np.zeros((2, 8, 8, 3), np.uint8)
    out, skipped = normalize_stains(batch, "none")
    assert out is batch and skipped == 0
    with pytest.raises(ValueError, match="must be one of"):
        normalize_stains(batch, "reinhard")
    with pytest.raises(ValueError, match=r"uint8 \(n, H, W, 3\)"):
        normalize_stains(batch.astype(np.float32), "macenko")
    with pytest.raises(GigamilError, match="stain_normalization must be one of"):
        PatchParams(stain_normalization="vahadane").validate()


def test_a_patch_of_one_percent_stain_is_left_as_it_is():
    """torchstain scales by the 99th percentile over all pixels: with about 1 % stained the
    percentile falls on glass, and the glass came out dark purple (a review). Such a patch is
    left unchanged and counted."""
    patch = np.full((1, 100, 100, 3), 243, np.uint8)
    patch[0, :10, :10] = (120, 60, 150)  # 100 of 10,000 pixels stained: 1 %
    out, skipped = normalize_stains(patch)
    assert skipped == 1 and np.array_equal(out, patch)
