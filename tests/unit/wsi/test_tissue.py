"""gigamil.wsi.tissue: masks vs histolab's reference, morphology in µm, empty slides, outputs,
dark scanner borders, pen ink, unsaturated glass."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from gigamil.errors import ConfigError
from gigamil.wsi.mask_io import OUTLINE_RGB, mask_params_for, read_mask_png
from gigamil.wsi.memory import ArrayReader
from gigamil.wsi.reader import open_slide
from gigamil.wsi.tissue import (
    INK_HUE_DEG,
    TissueParams,
    _binary_morph,
    _disk,
    _median,
    compute_tissue_mask,
    fill_holes,
    hue_degrees,
    make_mask,
    mask_from_rgb,
    mask_raster_problem,
    saturation,
)


@pytest.fixture(scope="module")
def cmu_mask(cmu_svs):
    with open_slide(cmu_svs) as r:
        return compute_tissue_mask(r, TissueParams())


def test_cmu_mask_agrees_with_histolab_reference(test_slides, iou, cmu_mask):
    ref = np.load(test_slides / "reference-masks" / "tissue-mask-cmu-1-small-region.npy")
    assert ref.shape == (296, 221)
    ours = Image.fromarray(cmu_mask.mask.astype(np.uint8) * 255)
    ours = np.asarray(ours.resize((ref.shape[1], ref.shape[0]), Image.Resampling.NEAREST)) > 0
    assert iou(ours, ref) >= 0.8
    assert 0.25 < cmu_mask.tissue_fraction < 0.6
    # 8 µm/px over a 2220 x 2967 slide at 0.499 µm/px
    assert cmu_mask.mask.shape == (round(2967 * 0.499 / 8), round(2220 * 0.499 / 8))
    assert cmu_mask.mpp_x == pytest.approx(8.0, rel=0.01) and cmu_mask.warnings == []


def test_pyramid_mask_matches_svs_mask(test_slides, iou, cmu_mask):
    with open_slide(test_slides / "CMU-1-Small-Region.pyramid.tiff") as r:
        tm = compute_tissue_mask(r, TissueParams())
    assert tm.level == 2  # read from the 2 µm/px level, not level 0
    assert tm.mask.shape == cmu_mask.mask.shape
    assert iou(tm.mask, cmu_mask.mask) > 0.9


def test_saturation():
    rgb = np.array([[[255, 255, 255], [255, 0, 0], [200, 100, 100], [0, 0, 0]]], np.uint8)
    got = saturation(rgb)[0].astype(int)
    assert got.dtype.kind == "i" and np.abs(got - [0, 255, 127.5, 0]).max() <= 0.5


def test_area_filter_and_holes_are_in_microns():
    # 1 µm/px canvas: a big disk with a hole, a 100x100 µm speck (1e4 µm²) and a 200x200 µm
    # piece (4e4 µm²); min_area 2e4 µm² keeps the piece, drops the speck, fills the hole.
    img = np.full((1200, 1200, 3), 245, np.uint8)
    pink = np.array([190, 110, 160], np.uint8)
    yy, xx = np.mgrid[0:1200, 0:1200]
    disk = (yy - 400) ** 2 + (xx - 400) ** 2 <= 300**2
    hole = (yy - 400) ** 2 + (xx - 400) ** 2 <= 40**2
    img[disk & ~hole] = pink
    img[900:1000, 200:300] = pink  # speck
    img[850:1050, 800:1000] = pink  # piece
    params = TissueParams(mask_mpp=4.0, min_area_um2=20000.0)
    for mpp, downsamples in [(1.0, (4,)), (0.5, ())]:  # same physical result at another MPP
        big = img if mpp == 1.0 else np.asarray(Image.fromarray(img).resize((2400, 2400)))
        tm = compute_tissue_mask(ArrayReader(big, mpp, downsamples), params)
        m = tm.mask  # 300 x 300 at 4 µm/px
        assert m.shape == (300, 300)
        assert m[100, 100]  # hole filled
        assert not m[950 // 4, 250 // 4]  # speck dropped
        assert m[950 // 4, 900 // 4]  # piece kept
        assert not m[20, 280]  # background


def test_tissue_all_smaller_than_min_area_is_named_not_called_no_tissue():
    """A slide read at a µm/px 4x too fine: its tissue pieces all fell below min_area_um2 and
    the warning said 'no tissue found', hiding the cause."""
    img = np.full((400, 400, 3), 245, np.uint8)
    img[100:200, 100:200] = (190, 110, 160)  # 100 x 100 px of tissue
    params = TissueParams(mask_mpp=4.0, min_area_um2=20000.0)
    tm = compute_tissue_mask(ArrayReader(img, 1.0, (4,), name="s.tif"), params)  # 1e4 µm²
    assert not tm.mask.any()
    assert any(
        w.startswith(
            "s.tif: every tissue piece is smaller than min_area_um2 20000 µm² (the largest "
        )
        and "is that µm/px wrong" in w
        for w in tm.warnings
    ), tm.warnings


def test_a_piece_of_exactly_min_area_um2_is_kept():
    """Components *smaller* than min_area_um2 are dropped (the schema's words): at 2 µm/px a
    5 x 5 px piece is 100 µm² and stays at min_area_um2 100, a 5 x 4 px one (80 µm²) goes."""
    img = np.full((40, 40, 3), 245, np.uint8)
    img[5:10, 5:10] = (190, 110, 160)  # 25 px = 100 µm²
    img[20:25, 20:24] = (190, 110, 160)  # 20 px = 80 µm²
    params = TissueParams(threshold=40.0, median_px=1, close_um=0.0, open_um=0.0, min_area_um2=100)
    mask, _, _ = mask_from_rgb(img, 2.0, params)
    assert mask[5:10, 5:10].all() and mask.sum() == 25


def test_a_slide_smaller_than_one_mask_pixel_gets_a_one_pixel_mask():
    """4 x 4 px at 0.5 µm/px is 2 µm, a quarter of an 8 µm mask pixel: the mask is 1 x 1 px
    (the raster is at least one pixel), not an empty array."""
    tm = compute_tissue_mask(ArrayReader(np.full((4, 4, 3), 245, np.uint8), 0.5), TissueParams())
    assert tm.mask.shape == (1, 1) and not tm.mask.any()


def test_fixed_threshold_and_bad_threshold(tissue_image):
    img = tissue_image((400, 400))
    m, thr, _ = mask_from_rgb(img, 4.0, TissueParams(threshold=30.0, min_area_um2=0))
    assert thr == 30.0 and 0.3 < m.mean() < 0.5
    with pytest.raises(ValueError, match="otsu"):
        mask_from_rgb(img, 4.0, TissueParams(threshold="li"))


def test_white_slide_gives_empty_mask_and_warning(tmp_path):
    white = np.full((600, 800, 3), 250, np.uint8)
    white += np.random.default_rng(0).integers(0, 4, white.shape, dtype=np.uint8)  # glass noise
    r = ArrayReader(white, 0.5, (4, 16), name="white.tiff")
    tm = compute_tissue_mask(r, TissueParams())
    assert not tm.mask.any() and tm.tissue_fraction == 0.0
    assert any("no tissue" in w for w in tm.warnings)


def test_make_mask_outputs(cmu_svs, tmp_path):
    out = tmp_path / "m" / "s.png"
    summary = make_mask(
        cmu_svs,
        out,
        tmp_path / "m" / "s.qc.png",
        tmp_path / "m" / "s.json",
        TissueParams(mask_mpp=16.0),
    )
    png = np.asarray(Image.open(out))
    assert png.dtype == np.uint8 and set(np.unique(png)) <= {0, 255}
    assert png.shape == tuple(summary["mask_shape"])
    info = json.loads((tmp_path / "m" / "s.json").read_text())
    assert info["tissue_fraction"] == pytest.approx((png > 0).mean())
    assert info["mask_mpp"] == 16.0 and info["warnings"] == []
    assert info["params"]["min_area_um2"] == 20000.0
    qc = np.asarray(Image.open(tmp_path / "m" / "s.qc.png"))
    assert qc.ndim == 3 and min(qc.shape[:2]) >= 512
    assert (qc == OUTLINE_RGB).all(axis=2).sum() > 100  # the outline is drawn
    np.testing.assert_array_equal(read_mask_png(out), png > 0)
    params = mask_params_for(out)
    assert params["mask_file"].endswith("s.png") and params["mask_mpp"] == 16.0


def test_mask_mpp_far_too_fine_is_a_config_error_not_a_memory_error(cmu_svs):
    """gigamil mask --mask-mpp 0.01 tried to allocate 45.8 GiB; now one line naming the key."""
    too_fine = r"mask_mpp 0.01 µm/px .* is 49.9x finer than"
    with open_slide(cmu_svs) as reader, pytest.raises(ConfigError, match=too_fine):
        compute_tissue_mask(reader, TissueParams(mask_mpp=0.01))
    # a whole-slide image of 100k x 80k px at 0.25 µm/px: 8 µm/px is fine, 1 µm/px is not
    assert mask_raster_problem((100_000, 80_000), (0.25, 0.25), 8.0) is None
    problem = mask_raster_problem((100_000, 80_000), (0.25, 0.25), 1.0)
    assert "would be 25000 x 20000 px" in problem and "use at least 1.37 µm/px" in problem


def test_params_from_config_dict():
    p = TissueParams.from_dict({"mask_mpp": 4, "threshold": 20, "unknown": 1, "open_um": None})
    assert p.mask_mpp == 4 and p.threshold == 20 and p.open_um == 16.0


def test_opencv_filters_equal_the_reference_definitions():
    """_median / _binary_morph (OpenCV) give exactly a padded scikit-image rank median and
    scipy's disk closing / opening with replicated edges."""
    from scipy import ndimage
    from skimage.filters import rank

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (61, 47), dtype=np.uint8)
    for k in (3, 5, 7):
        pad = k // 2
        ref = rank.median(np.pad(img, pad, mode="edge"), np.ones((k, k), bool))
        np.testing.assert_array_equal(_median(img, k), ref[pad:-pad, pad:-pad])
    blobs = ndimage.uniform_filter(rng.random((80, 90)), 5) > 0.5
    for r in (1, 2, 4, 8):
        se, pad = _disk(r), r + 1
        m = np.pad(blobs, pad, mode="edge")
        dil = ndimage.binary_dilation(m, se)
        close = ndimage.binary_erosion(dil, se, border_value=1)[pad:-pad, pad:-pad]
        ero = ndimage.binary_erosion(m, se, border_value=1)
        opened = ndimage.binary_dilation(ero, se)[pad:-pad, pad:-pad]
        np.testing.assert_array_equal(_binary_morph(blobs, r, "close"), close)
        np.testing.assert_array_equal(_binary_morph(blobs, r, "open"), opened)
        assert close.sum() > blobs.sum() > opened.sum()
    for m in (blobs, ~blobs, np.zeros((5, 6), bool), np.ones((5, 6), bool), blobs[:1]):
        np.testing.assert_array_equal(fill_holes(m), ndimage.binary_fill_holes(m))


# --- dark borders, pen ink, unsaturated glass (synthetic slides at 8 µm/px) -------------------


def _he_tissue(shape, rng):
    """H&E-like texture: a per-pixel mix of eosin pink and haematoxylin purple, plus noise."""
    mix = rng.random((*shape, 1))
    he = np.array([215, 130, 180]) * mix + np.array([120, 70, 160]) * (1 - mix)
    return np.clip(he + rng.integers(-25, 25, (*shape, 1)), 0, 255).astype(np.uint8)


def _glass(shape, rng, level=240):
    return (level + rng.integers(-4, 5, (*shape, 3))).astype(np.uint8)


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def test_dark_unscanned_border_is_not_tissue(iou):
    # a near-black unscanned border (RGB (2,2,4)..(40,35,50): saturated, since max-min is large
    # relative to max) on three sides of a slide with an H&E ellipse that runs into it
    rng = np.random.default_rng(1)
    shape = (400, 500)
    img = _glass(shape, rng)
    tissue = _ellipse(shape, 220, 300, 110, 150)
    img[tissue] = _he_tissue(shape, rng)[tissue]
    border = np.zeros(shape, bool)
    border[:, :170] = border[:70] = border[-50:] = True  # the tissue runs into it
    lo, hi = np.array([2, 2, 4]), np.array([40, 35, 50])
    dark = lo + rng.random((*shape, 1)) * (hi - lo) + rng.integers(-2, 3, (*shape, 3))
    img[border] = dark.clip(0, 255).astype(np.uint8)[border]
    truth = tissue & ~border
    m, _, warnings = mask_from_rgb(img, 8.0, TissueParams())
    assert m.mean() == pytest.approx(truth.mean(), abs=0.01)  # was 0.79 vs 0.25
    assert not m[border].any() and iou(m, truth) > 0.97 and warnings == []
    off = mask_from_rgb(img, 8.0, TissueParams(dark_value=0))[0]
    assert off[border].mean() > 0.9  # dark_value 0 turns the exclusion off


def test_a_black_dot_inside_the_tissue_is_not_filled_back_in():
    """Dark pixels are never tissue, also where the tissue encloses them: a black pen dot
    (240 µm) on an H&E ellipse was set aside as dark, then filled back as a hole (709 of its
    709 pixels tissue)."""
    rng = np.random.default_rng(0)
    shape = (400, 500)
    img = _glass(shape, rng)
    tissue = _ellipse(shape, 200, 250, 150, 200)
    img[tissue] = _he_tissue(shape, rng)[tissue]
    dot = _ellipse(shape, 200, 250, 15, 15)
    img[dot] = (20, 20, 25)
    m, _, warnings = mask_from_rgb(img, 8.0, TissueParams())
    # (a few rim pixels, tissue in the median blur, may stay)
    assert m[dot].mean() < 0.05 and not m[_ellipse(shape, 200, 250, 13, 13)].any()
    assert warnings == []
    assert m[tissue & ~_ellipse(shape, 200, 250, 19, 19)].mean() > 0.99  # the rest is kept
    assert mask_from_rgb(img, 8.0, TissueParams(dark_value=0))[0][dot].all()  # off: tissue


def _pen_slide(rng):
    """H&E ellipse crossed by a blue stroke, a green pen circle (overlapping the tissue's edge)
    around glass with a blue dot in it: (image, true tissue, glass inside the circle, ink)."""
    shape = (400, 600)
    img = _glass(shape, rng)
    tissue = _ellipse(shape, 200, 180, 120, 110)
    img[tissue] = _he_tissue(shape, rng)[tissue]
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(yy - 200, xx - 375)
    ring = (r > 95) & (r < 110)
    green = np.array([40, 140, 90]) + rng.integers(-15, 15, (*shape, 3))
    img[ring] = green.clip(0, 255).astype(np.uint8)[ring]
    stroke = (np.abs(yy - 0.3 * xx - 60) < 7) & (xx > 40) & (xx < 330)
    dot = np.hypot(yy - 230, xx - 400) < 20
    blue = np.array([40, 70, 170]) + rng.integers(-15, 15, (*shape, 3))
    img[stroke | dot] = blue.clip(0, 255).astype(np.uint8)[stroke | dot]
    ink = ring | stroke | dot
    truth = tissue & ~ink
    return img, truth, (r <= 95) & ~tissue & ~dot, ink


def test_pen_ink_is_not_tissue_and_circled_glass_stays_empty(iou):
    img, truth, circled_glass, ink = _pen_slide(np.random.default_rng(2))
    m, _, warnings = mask_from_rgb(img, 8.0, TissueParams())
    assert not m[ink].any() and not m[circled_glass].any()
    assert m.mean() == pytest.approx(truth.mean(), abs=0.01) and iou(m, truth) > 0.95
    assert warnings == []
    kept = mask_from_rgb(img, 8.0, TissueParams(pen_ink=False))[0]
    assert kept[ink].mean() > 0.9 and kept[circled_glass].mean() > 0.9  # the old behaviour
    # the ink is told apart by hue: green and blue pens lie inside INK_HUE_DEG, H&E outside it
    hues = hue_degrees(np.array([[[40, 140, 90], [40, 70, 170], [215, 130, 180], [120, 70, 160]]]))
    inside = (hues >= INK_HUE_DEG[0]) & (hues <= INK_HUE_DEG[1])
    assert inside.tolist() == [[True, True, False, False]]


def test_holes_touching_ink_are_not_filled():
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # a hole ...
    ink = np.zeros_like(mask)
    ink[4, 4] = True  # ... with ink in it stays open
    np.testing.assert_array_equal(fill_holes(mask, keep_open=ink), mask)
    assert fill_holes(mask)[3:6, 3:6].all()  # without ink it is filled
    ink[0, 0] = True  # ink outside the hole does not matter
    ink[4, 4] = False
    assert fill_holes(mask, keep_open=ink)[3:6, 3:6].all()


def test_zero_saturation_glass_on_a_mostly_tissue_slide_gives_no_warning():
    # glass of saturation exactly 0 (pure white, e.g. background-corrected scans) puts Otsu's
    # threshold at ~0; on a slide that is 85 % tissue that is not "little or no tissue"
    rng = np.random.default_rng(3)
    img = np.full((400, 400, 3), 255, np.uint8)
    img[:, :340] = _he_tissue((400, 340), rng)
    m, thr, warnings = mask_from_rgb(img, 8.0, TissueParams())
    assert warnings == [] and thr == 15.0
    assert m.mean() == pytest.approx(0.85, abs=0.01)
    # a blank slide still warns
    blank = np.full((400, 400, 3), 250, np.uint8)
    blank += rng.integers(0, 4, blank.shape, dtype=np.uint8)
    m, thr, warnings = mask_from_rgb(blank, 8.0, TissueParams())
    assert not m.any() and any("little or no tissue" in w for w in warnings)


@pytest.mark.parametrize("mpp", [0, -8.0, float("nan"), float("inf"), "8", True])
def test_a_mask_mpp_that_is_not_a_positive_number_is_refused(mpp):
    """Through the Python API (the schema guards config.yaml): 0 divided by zero, -8 or 1e6
    gave a 1 x 1 empty mask."""
    with pytest.raises(ConfigError, match=r"preprocessing.tissue.mask_mpp .*: the tissue mask's"):
        TissueParams(mask_mpp=mpp)
    assert TissueParams(mask_mpp=np.float32(4.0)).mask_mpp == 4.0


def test_closing_and_opening_radii_are_in_microns():
    """close_um is a length on the tissue, whatever the mask's µm/px: a 48-µm gap between two
    pieces is closed (radius 32 µm) at a mask of 4 and of 8 µm/px, a 160-µm gap is not; and a
    strand 24 µm thin is opened away (radius 16 µm) at both."""
    img = np.full((800, 1600, 3), 245, np.uint8)
    pink = np.array([190, 110, 160], np.uint8)
    img[200:600, 96:496] = pink
    img[200:600, 544:944] = pink  # 48 µm after the first piece
    img[200:600, 1104:1504] = pink  # 160 µm after the second
    img[700:724, 96:1504] = pink  # a 24-µm strand
    for mask_mpp in (4.0, 8.0):
        params = TissueParams(mask_mpp=mask_mpp, min_area_um2=1000.0)
        m = compute_tissue_mask(ArrayReader(img, 1.0, (4,)), params).mask

        def at(x_um, y_um, m=m, f=mask_mpp):
            return bool(m[int(y_um / f), int(x_um / f)])

        assert at(300, 400) and at(740, 400) and at(1300, 400), mask_mpp  # the pieces
        assert at(520, 400), mask_mpp  # the 48-µm gap closed
        assert not at(1024, 400), mask_mpp  # the 160-µm gap kept
        assert not at(800, 712), mask_mpp  # the strand opened away


def test_an_otsu_split_of_tinted_glass_alone_is_warned_about():
    """A blank slide on yellowish glass (saturation 17-30) came out 56 % tissue without a
    word: Otsu split the glass's own tint. Classes that close are warned about; glass against
    tissue (5 against 80) is not."""
    from gigamil.wsi.otsu import otsu_threshold

    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(np.linspace(17, 30, 20000), 3), 0, 255)
    thr, warnings = otsu_threshold(glass, "s")
    assert thr > 15 and len(warnings) == 1 and "classes only" in warnings[0]
    slide = np.r_[rng.normal(5, 2, 15000), rng.normal(80, 15, 5000)].clip(0, 255)
    assert otsu_threshold(slide, "s")[1] == []


def test_an_image_without_glass_warns_that_its_pale_tissue_may_be_left_out():
    """A crop inside the tissue (pale stroma beside dense tissue, no glass): Otsu split the
    tissue itself and left the pale half out without a word; with glass in the image (its lower
    class has a saturation of about 3, as on the CMU and demo slides) nothing is said."""
    rng = np.random.default_rng(0)
    img = np.empty((200, 300, 3), np.uint8)
    noise = rng.integers(-4, 5, (200, 150, 3))
    img[:, :150] = np.clip(np.array([235, 180, 210]) + noise, 0, 255)  # saturation ~60
    img[:, 150:] = np.clip(np.array([150, 70, 160]) + noise, 0, 255)  # ~143
    m, thr, warnings = mask_from_rgb(img, 8.0, TissueParams())
    assert m[:, :150].mean() < 0.05 and len(warnings) == 1, (thr, warnings)
    assert "does not look like glass" in warnings[0] and "tissue.threshold" in warnings[0]
    with_glass = np.concatenate([_glass((200, 150), rng), img], axis=1)
    assert mask_from_rgb(with_glass, 8.0, TissueParams())[2] == []


def test_a_failed_mask_run_leaves_no_sidecar_of_the_earlier_mask(cmu_svs, tmp_path):
    """gigamil mask again with other settings, failing after the new mask PNG (here: its QC
    image's folder is a file) left the earlier run's JSON sidecar beside the new mask, and
    gigamil patches recorded the earlier settings as this mask's."""
    out, sidecar = tmp_path / "s.png", tmp_path / "s.json"
    make_mask(cmu_svs, out, None, sidecar, TissueParams(mask_mpp=8.0))
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        make_mask(cmu_svs, out, tmp_path / "file" / "qc.png", sidecar, TissueParams(mask_mpp=16))
    assert "mask_mpp" not in mask_params_for(out)  # not the earlier mask's 8.0
    assert not sidecar.exists() and read_mask_png(out).shape == (93, 69)  # the 16 µm/px mask
