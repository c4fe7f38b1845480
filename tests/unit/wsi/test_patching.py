"""gigamil.wsi.patching: exact-MPP patches, level choice, resampling, grid, stores."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gigamil.data.store import REQUIRED_ATTRS, read_store
from gigamil.errors import GigamilError
from gigamil.wsi.extract import extract_patches
from gigamil.wsi.memory import ArrayReader
from gigamil.wsi.patching import PatchParams, mask_coverage, plan_patches, plan_units
from gigamil.wsi.reader import open_slide
from gigamil.wsi.stain import normalize_stains
from gigamil.wsi.tissue import TissueParams, compute_tissue_mask

PYRAMID = "CMU-1-Small-Region.pyramid.tiff"


@pytest.fixture(scope="module")
def cmu_level0(cmu_svs):
    with open_slide(cmu_svs) as r:
        return r.read_region((0, 0), 0, r.dimensions), r.mpp


@pytest.fixture(scope="module")
def cmu_tissue(cmu_svs):
    with open_slide(cmu_svs) as r:
        return compute_tissue_mask(r, TissueParams(), keep_rgb=False).mask


def _extract(tmp_path, slide, name, mask, threads=1, **kw):
    params = PatchParams(**{"mpp": 0.5, "patch_px": 128, **kw})
    res = extract_patches(
        slide, tmp_path / f"{name}.zarr", params, mask=mask, threads=threads, progress=False
    )
    return res, read_store(tmp_path / f"{name}.zarr")


def test_svs_and_pyramid_give_the_same_patches(cmu_svs, test_slides, tmp_path, cmu_tissue):
    pyr = test_slides / PYRAMID
    for tol in (0.005, 0.0):  # cut as is (0.499 ~ 0.5) and forced exact resampling
        _, (ps, cs, gs, as_) = _extract(
            tmp_path, cmu_svs, f"svs{tol}", cmu_tissue, resample_tolerance=tol
        )
        _, (pp, cp, gp, ap) = _extract(
            tmp_path, pyr, f"pyr{tol}", cmu_tissue, resample_tolerance=tol
        )
        assert len(cs) > 50
        np.testing.assert_array_equal(cs, cp)
        np.testing.assert_array_equal(gs, gp)
        assert as_["level"] == ap["level"] == 0
        assert as_["resampled"] == ap["resampled"] == (tol == 0.0)
        a, b = ps[...].astype(np.int16), pp[...].astype(np.int16)
        diff = np.abs(a - b)
        # the pyramid is the SVS (JPEG q30) re-encoded as JPEG q85: ~7 grey levels on tissue
        assert diff.mean() < 8.0
        # ... and registered to the pixel: a 1-px shift is far worse
        shifted = np.abs(a[:, :, 1:] - b[:, :, :-1]).mean()
        assert diff.mean() < 0.6 * shifted
        for a in (as_, ap):
            assert abs(a["effective_mpp"] / 0.5 - 1) <= 0.01


def _direct_downsample(level0, f, grid, px):
    """Reference: each patch's exact level-0 footprint box-resampled to px x px."""
    img = Image.fromarray(level0)
    h, w = level0.shape[:2]
    out = []
    for r, c in grid:
        x0, y0 = c * px * f, r * px * f
        box = (x0, y0, min(x0 + px * f, w), min(y0 + px * f, h))
        out.append(np.asarray(img.resize((px, px), Image.Resampling.BOX, box=box)))
    return np.stack(out).astype(np.int16)


@pytest.mark.parametrize("tol", [0.0, 0.005])
def test_1um_request_reads_pyramid_level_1(test_slides, tmp_path, cmu_level0, cmu_tissue, tol):
    level0, mpp = cmu_level0
    res, (p, c, g, attrs) = _extract(
        tmp_path,
        test_slides / PYRAMID,
        "l1",
        cmu_tissue,
        mpp=1.0,
        patch_px=64,
        resample_tolerance=tol,
    )
    assert attrs["level"] == 1 and attrs["level_downsample"] == pytest.approx(2.0, abs=0.01)
    assert attrs["resampled"] == (tol == 0.0)  # level 1 is 0.998 µm/px
    assert attrs["effective_mpp"] == pytest.approx(1.0, rel=0.01)
    assert attrs["patch_size_level0"] == pytest.approx(64 * 1.0 / mpp)
    ref = _direct_downsample(level0, 1.0 / mpp, g, 64)
    got = p[...].astype(np.int16)
    diff = np.abs(got - ref).mean()
    # level 1 is a JPEG q85 box downsample sampled at another sub-pixel phase: ~12 grey levels
    assert diff < 15.0
    # registered: one target pixel off is clearly worse; 0.5 µm/px pixels are far off
    assert diff < 0.8 * np.abs(got[:, :, 1:] - ref[:, :, :-1]).mean()
    wrong = np.stack([level0[y : y + 64, x : x + 64] for x, y in c]).astype(np.int16)
    assert diff < 0.7 * np.abs(got - wrong).mean()


def test_1um_request_from_single_level_svs_equals_direct_downsample(
    cmu_svs, tmp_path, cmu_level0, cmu_tissue
):
    level0, mpp = cmu_level0
    _, (p, c, g, attrs) = _extract(tmp_path, cmu_svs, "svs1", cmu_tissue, mpp=1.0, patch_px=64)
    assert attrs["level"] == 0 and attrs["resampled"] and attrs["effective_mpp"] == 1.0
    ref = _direct_downsample(level0, 1.0 / mpp, g, 64)
    assert np.abs(p[...].astype(np.int16) - ref).max() <= 1


def _gradient(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(5)
    noise = rng.integers(0, 40, (h, w))
    return np.stack(
        [(xx * 7 + noise) % 256, (yy * 5) % 256, (xx + yy + noise) % 256], axis=2
    ).astype(np.uint8)


def test_array_reader_exact_level_and_exact_resampling(tmp_path):
    img = _gradient(600, 800)
    reader = ArrayReader(img, 0.5, downsamples=(2,))
    level1 = np.asarray(Image.fromarray(img).resize((400, 300), Image.Resampling.BOX))
    # 1.0 µm/px: level 1 is exactly 1.0 -> its pixels, untouched
    res = extract_patches(
        reader,
        tmp_path / "a.zarr",
        PatchParams(mpp=1.0, patch_px=50, min_tissue=0.0),
        mask=None,
        progress=False,
    )
    p, c, g, attrs = read_store(tmp_path / "a.zarr")
    assert res.n_patches == 8 * 6 and attrs["level"] == 1 and not attrs["resampled"]
    for k in (0, 7, 20, 47):
        x, y = c[k] // 2
        np.testing.assert_array_equal(p[k], level1[y : y + 50, x : x + 50])
    # 0.75 µm/px: from level 0, resampled by 1.5 exactly (matches one whole-image resize)
    extract_patches(
        reader,
        tmp_path / "b.zarr",
        PatchParams(mpp=0.75, patch_px=40, min_tissue=0.0, block_px=100),
        mask=None,
        progress=False,
    )
    p, c, g, attrs = read_store(tmp_path / "b.zarr")
    whole = np.asarray(
        Image.fromarray(img).resize((533, 400), Image.Resampling.BOX, box=(0, 0, 799.5, 600))
    )
    assert attrs["level"] == 0 and attrs["resampled"] and attrs["effective_mpp"] == 0.75
    for k in range(p.shape[0]):
        r_, c_ = g[k]
        want = whole[r_ * 40 : r_ * 40 + 40, c_ * 40 : c_ * 40 + 40]
        assert np.abs(p[k].astype(int) - want).max() <= 1


def test_extraction_without_a_terminal_logs_progress_lines(tmp_path, caplog, monkeypatch):
    """Rule extract_patches (progress=False) and a redirected `gigamil patches` had no progress."""
    from gigamil.train import loop

    monkeypatch.setattr(loop, "PROGRESS_EVERY_S", 0.0)  # a line after every chunk
    reader = ArrayReader(_gradient(600, 800), 0.5)
    params = PatchParams(mpp=0.5, patch_px=50, min_tissue=0.0)
    with caplog.at_level("INFO", logger="gigamil.wsi.extract"):
        extract_patches(reader, tmp_path / "a.zarr", params, mask=None, progress=False)
    lines = [r.getMessage() for r in caplog.records if ": extracting: " in r.getMessage()]
    assert lines and lines[-1].split(",")[0].endswith("extracting: 192/192 patches")


def test_grid_stride_and_raster_order(tmp_path):
    reader = ArrayReader(_gradient(800, 1000), 1.0)
    plan = plan_patches(
        reader, PatchParams(mpp=1.0, patch_px=100, stride_px=50, min_tissue=0.0), None
    )
    assert (plan.n_rows, plan.n_cols) == (15, 19) and plan.n == 285
    np.testing.assert_array_equal(plan.grid[:3], [[0, 0], [0, 1], [0, 2]])
    np.testing.assert_array_equal(plan.coords, plan.grid[:, ::-1] * 50)
    order = plan.grid[:, 0] * plan.n_cols + plan.grid[:, 1]
    assert (np.diff(order) > 0).all()
    units = plan_units(plan, 64, 200)  # chunks of 64 rows, reads of <= 4 patches
    assert [u[0] for u in units] == [0, 64, 128, 192, 256] and units[-1][1] == plan.n
    for a, b, windows in units:
        assert np.array_equal(np.concatenate(windows), np.arange(a, b))
        for w in windows:
            assert len(w) <= 4 and len(set(plan.grid[w, 0])) == 1  # one row, contiguous cols
            assert (np.diff(plan.grid[w, 1]) == 1).all()
    # the target MPP sets the spacing in level-0 pixels
    plan2 = plan_patches(reader, PatchParams(mpp=2.0, patch_px=100, min_tissue=0.0), None)
    assert (plan2.n_rows, plan2.n_cols) == (4, 5)
    np.testing.assert_array_equal(plan2.coords[1], [200, 0])


def test_mask_coverage_matches_brute_force():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) > 0.6
    dims = (400, 300)  # level-0 px per mask px = 10
    x0 = np.array([0.0, 37.0, 215.5, 350.0])
    y0 = np.array([0.0, 123.0, 250.0])
    cov = mask_coverage(mask, dims, x0, y0, 50.0, 50.0)
    up = np.repeat(np.repeat(mask, 10, 0), 10, 1).astype(float)  # level-0 resolution
    up = np.pad(up, ((0, 60), (0, 60)))  # outside the slide = background
    for i, y in enumerate(y0):
        for j, x in enumerate(x0):
            x_, y_ = int(x), int(y)
            if x == x_:
                want = up[y_ : y_ + 50, x_ : x_ + 50].mean()
                assert cov[i, j] == pytest.approx(want, abs=1e-9)
    # fractional boxes: compare on a 2x finer grid
    up2 = np.repeat(np.repeat(up, 2, 0), 2, 1)
    assert cov[0, 2] == pytest.approx(up2[0:100, 431:531].mean(), abs=1e-9)


@pytest.mark.parametrize(("mpp", "mpp_y"), [(0.2425, None), (0.46, None), (0.25, 0.26)])
def test_min_tissue_1_keeps_every_patch_wholly_in_tissue(mpp, mpp_y):
    """A box wholly inside the mask has coverage 1 up to rounding (1 - 2e-15 from the summed
    areas): ``min_tissue: 1.0`` keeps it, and so every patch of an all-tissue slide."""
    reader = ArrayReader(np.full((400, 400, 3), 100, np.uint8), mpp, mpp_y=mpp_y)
    params = PatchParams(mpp=0.5, patch_px=16, min_tissue=1.0)
    everything = plan_patches(reader, PatchParams(mpp=0.5, patch_px=16, min_tissue=0.0), None)
    assert plan_patches(reader, params, np.ones((25, 25), bool)).n == everything.n > 0


def test_mask_coverage_of_boxes_of_other_width_than_height():
    """Non-square slide pixels give patch boxes of another level-0 width than height: a box
    inside the tissue is covered 1.0 (not height / width), one partly inside by the part."""
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True  # tissue at level-0 x < 200 (10 level-0 px per mask px)
    x0, y0 = np.array([0.0, 170.0, 300.0]), np.array([0.0, 200.0])
    for size_x, size_y in ((52.0, 50.0), (50.0, 52.0)):
        cov = mask_coverage(mask, (400, 400), x0, y0, size_x, size_y)
        want = [1.0, (200.0 - 170.0) / size_x, 0.0]
        np.testing.assert_allclose(cov, [want, want], atol=1e-12)


def test_mask_coverage_counts_a_box_past_the_mask_as_background_there():
    """A box running 20 level-0 px past the edge of a mask that is tissue everywhere is 40 %
    covered (the part outside is background), not 100 % (the last mask column extended)."""
    mask = np.ones((30, 40), bool)  # 10 level-0 px per mask px
    cov = mask_coverage(mask, (400, 300), np.array([0.0, 380.0]), np.array([0.0, 270.0]), 50, 50)
    np.testing.assert_allclose(cov, [[1.0, 0.4], [0.6, 0.24]], atol=1e-12)


def test_min_tissue_selects_patches_by_mask(tissue_image):
    img = tissue_image((800, 1000))
    reader = ArrayReader(img, 1.0)
    mask = np.zeros((80, 100), bool)
    mask[:, :45] = True  # x < 450 µm at 10 µm/px
    for thr, n in [(1.0, 4 * 8), (0.5, 5 * 8), (0.0, 10 * 8)]:
        plan = plan_patches(reader, PatchParams(mpp=1.0, patch_px=100, min_tissue=thr), mask)
        assert plan.n == n, thr


def test_threads_give_identical_store(cmu_svs, tmp_path, cmu_tissue):
    _, (p1, c1, _, _) = _extract(tmp_path, cmu_svs, "t1", cmu_tissue, patch_px=64)
    res = extract_patches(
        cmu_svs,
        tmp_path / "t2.zarr",
        PatchParams(mpp=0.5, patch_px=64, block_px=256),
        mask=cmu_tissue,
        threads=2,
        progress=False,
    )
    p2, c2, _, attrs = read_store(tmp_path / "t2.zarr")
    assert res.n_patches == len(c1) > 100
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(p1[...], p2[...])


def test_stain_normalization_at_extraction(cmu_svs, tmp_path, cmu_tissue):
    """preprocessing.patches.stain_normalization: macenko stores exactly the Macenko-normalised
    patches of the plain extraction (also with two worker threads) and says so in its attrs."""
    _, (plain, coords, _, attrs) = _extract(tmp_path, cmu_svs, "plain", cmu_tissue, patch_px=64)
    assert attrs["stain_normalization"] == "none" and "stain_normalization_skipped" not in attrs
    params = PatchParams(mpp=0.5, patch_px=64, block_px=256, stain_normalization="macenko")
    extract_patches(
        cmu_svs, tmp_path / "m.zarr", params, mask=cmu_tissue, threads=2, progress=False
    )
    normed, coords_m, _, attrs_m = read_store(tmp_path / "m.zarr")
    expected, skipped = normalize_stains(plain[...], "macenko")
    np.testing.assert_array_equal(coords, coords_m)
    np.testing.assert_array_equal(normed[...], expected)
    assert not np.array_equal(normed[...], plain[...])
    assert attrs_m["stain_normalization"] == "macenko"
    assert attrs_m["stain_normalization_skipped"] == skipped < len(coords) // 10


def test_attrs_and_mask_computed_when_absent(cmu_svs, tmp_path):
    res = extract_patches(
        cmu_svs,
        tmp_path / "s.zarr",
        PatchParams(mpp=2.0, patch_px=32),
        slide_id="cmu",
        progress=False,
    )
    _, coords, grid, attrs = read_store(tmp_path / "s.zarr")
    for key in REQUIRED_ATTRS:
        assert key in attrs, key
    assert attrs["slide_id"] == "cmu" and attrs["slide_mpp"] == pytest.approx(0.499)
    assert attrs["target_mpp"] == 2.0 and attrs["patch_px"] == 32 and attrs["stride_px"] == 32
    assert attrs["mask_params"]["computed"] and attrs["mask_params"]["mask_mpp"] == 8.0
    assert attrs["codec"] == "zstd" and attrs["slide_dimensions"] == [2220, 2967]
    assert attrs["source_size"] == cmu_svs.stat().st_size
    assert attrs["n_patches"] == res.n_patches == len(coords) > 0
    # provenance the heatmaps and the resume check rely on: where the slide is (absolute, so a
    # job in another directory finds it), when it was written, where its µm/px came from, how
    # much of it is tissue
    assert attrs["source_path"] == str(cmu_svs.resolve())
    assert attrs["source_mtime"] == pytest.approx(cmu_svs.stat().st_mtime)
    with open_slide(cmu_svs) as reader:
        assert attrs["slide_mpp_source"] == reader.mpp_source == "openslide"
    assert 0.2 < attrs["tissue_fraction"] < 0.95


def test_white_slide_gives_empty_store_with_warning(tmp_path):
    white = np.full((1000, 1000, 3), 250, np.uint8)
    res = extract_patches(
        ArrayReader(white, 0.5, (4, 16), name="white.tiff"),
        tmp_path / "w.zarr",
        PatchParams(mpp=0.5, patch_px=64),
        progress=False,
    )
    p, c, g, attrs = read_store(tmp_path / "w.zarr")
    assert res.n_patches == 0 and p.shape == (0, 64, 64, 3) and c.shape == (0, 2)
    assert any("no tissue" in w for w in attrs["warnings"])


def test_upsampling_and_tiny_slide_warn(tissue_image, tmp_path):
    reader = ArrayReader(tissue_image((200, 200)), 1.0)
    plan = plan_patches(reader, PatchParams(mpp=0.5, patch_px=64, min_tissue=0.0), None)
    assert any("upsampled" in w for w in plan.warnings) and plan.resample
    plan = plan_patches(reader, PatchParams(mpp=4.0, patch_px=64, min_tissue=0.0), None)
    assert plan.n == 0 and any("smaller than one" in w for w in plan.warnings)
    # a strip as wide as many patches but lower than one: no rows, said so
    strip = ArrayReader(tissue_image((40, 1000)), 1.0)
    plan = plan_patches(strip, PatchParams(mpp=1.0, patch_px=64, min_tissue=0.0), None)
    assert (plan.n_rows, plan.n) == (0, 0)
    assert any(
        "(1000 x 40 px at 1 µm/px) is smaller than one 64-px patch" in w for w in plan.warnings
    )


def test_more_than_4x_upsampling_is_refused(tissue_image):
    from gigamil.errors import GigamilError

    reader = ArrayReader(tissue_image((200, 200)), 1.0)
    assert plan_patches(reader, PatchParams(mpp=0.25, patch_px=64, min_tissue=0.0), None).resample
    with pytest.raises(
        GigamilError, match=r"target 0.24 µm/px .* is 4.17x finer than the slide's 1 µm/px"
    ):
        plan_patches(reader, PatchParams(mpp=0.24, patch_px=64, min_tissue=0.0), None)


def test_a_mask_of_another_shape_than_the_slide_is_refused(tissue_image):
    """gigamil patches --mask with another slide's mask (or any image) cut patches by it."""
    reader = ArrayReader(tissue_image((800, 1000)), 0.5)  # H 800, W 1000 at 0.5 µm/px
    params = PatchParams(mpp=0.5, patch_px=64, min_tissue=0.5)
    own = compute_tissue_mask(reader, TissueParams(mask_mpp=8.0)).mask  # 50 x 62 px (rounded)
    assert len(plan_patches(reader, params, own).grid) > 0
    # square, landscape, transposed, 12 % too tall (another slide's proportions)
    for shape in [(1000, 1000), (50, 400), (31, 25), (56, 62)]:
        with pytest.raises(GigamilError, match=r"does not have the slide's shape \(1000 x 800"):
            plan_patches(reader, params, np.ones(shape, bool))


def test_another_slides_mask_of_the_same_proportions_is_refused_by_its_sidecar(
    tissue_image, tmp_path
):
    """A mask of a slide with the same proportions passes the shape check; the JSON sidecar that
    gigamil mask writes beside it records its slide's size, and extraction compares them."""
    import json

    from gigamil.wsi.mask_io import mask_params_for

    reader = ArrayReader(tissue_image((800, 1000)), 0.5)
    params = PatchParams(mpp=0.5, patch_px=64, min_tissue=0.5)
    own = compute_tissue_mask(reader, TissueParams(mask_mpp=8.0)).mask
    png = tmp_path / "other.png"
    Image.fromarray(own.astype(np.uint8) * 255).save(png)
    png.with_suffix(".json").write_text(json.dumps({"slide_dimensions": [1100, 880]}))
    with pytest.raises(GigamilError, match=r"made from a slide of 1100 x 880 px .* 1000 x 800"):
        extract_patches(
            reader, tmp_path / "x.zarr", params, mask=own, mask_params=mask_params_for(png)
        )
    png.with_suffix(".json").write_text(json.dumps({"slide_dimensions": [1000, 800]}))
    res = extract_patches(
        reader,
        tmp_path / "y.zarr",
        params,
        mask=own,
        mask_params=mask_params_for(png),
        progress=False,
    )
    assert res.n_patches > 0 and "_mask_slide_dimensions" not in res.attrs["mask_params"]


def test_bad_params(tissue_image):
    from gigamil.errors import GigamilError

    reader = ArrayReader(tissue_image((100, 100)), 1.0)
    for kw, msg in [
        ({"patch_px": 0}, "patch_px"),
        ({"stride_px": -1}, "stride"),
        ({"stride_px": 0}, "stride must be >= 1 px, got 0"),  # not read as "no stride given"
        ({"min_tissue": 2.0}, "min_tissue"),
        ({"resample_tolerance": 0.1}, "1"),
    ]:
        with pytest.raises(GigamilError, match=msg):
            plan_patches(reader, PatchParams(**kw), None)


def test_openslide_path_gives_the_same_store(cmu_svs, tmp_path, cmu_tissue, monkeypatch):
    """GIGAMIL_NO_FAST_TIFF=1 reads through OpenSlide (the path of non-TIFF formats)."""
    _, (pf, cf, _, _) = _extract(tmp_path, cmu_svs, "fast", cmu_tissue, patch_px=64)
    monkeypatch.setenv("GIGAMIL_NO_FAST_TIFF", "1")
    with open_slide(cmu_svs) as r:
        assert not r.fast_tiff
    _, (po, co, _, _) = _extract(tmp_path, cmu_svs, "os", cmu_tissue, patch_px=64, threads=2)
    np.testing.assert_array_equal(cf, co)
    assert np.abs(pf[...].astype(np.int16) - po[...].astype(np.int16)).mean() < 0.5


def _disc_slide(path, mpp_x, mpp_y, diameter_um=40.0, size=(512, 512)):
    """A tiled TIFF of non-square pixels (resolution tags x != y) with one dark disc of
    ``diameter_um`` µm centred at (64 µm, 64 µm); an ellipse in pixel space."""
    import tifffile

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((xx + 0.5) * mpp_x - 64.0) ** 2 + ((yy + 0.5) * mpp_y - 64.0) ** 2 <= (
        diameter_um / 2
    ) ** 2
    img = np.full((h, w, 3), 240, np.uint8)
    img[disc] = (120, 40, 110)
    tifffile.imwrite(
        path,
        img,
        photometric="rgb",
        tile=(64, 64),
        resolution=(1e4 / mpp_x, 1e4 / mpp_y),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    return path


@pytest.mark.parametrize("fast", [True, False])
def test_non_square_pixels_are_resampled_per_axis(tmp_path, monkeypatch, fast):
    # x 0.25, y 0.26 µm/px: a 40 µm disc is 160 x 154 slide px and must be 80 x 80 at 0.5 µm/px
    # (averaging the MPPs gave 81 x 78 and a store claiming effective_mpp 0.5)
    if not fast:
        monkeypatch.setenv("GIGAMIL_NO_FAST_TIFF", "1")
    slide = _disc_slide(tmp_path / "aniso.tiff", 0.25, 0.26)
    with open_slide(slide) as r:
        res = extract_patches(
            r,
            tmp_path / "a.zarr",
            PatchParams(mpp=0.5, patch_px=256, min_tissue=0.0),
            mask=None,
            progress=False,
        )
        tm = compute_tissue_mask(r, TissueParams(mask_mpp=4.0, min_area_um2=0))
    patches, coords, grid, attrs = read_store(tmp_path / "a.zarr")
    assert res.n_patches == 1 and attrs["resampled"]
    dark = patches[0].mean(axis=2) < 180
    rows, cols = np.nonzero(dark.any(axis=1))[0], np.nonzero(dark.any(axis=0))[0]
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    assert abs(width - 80) <= 1 and abs(height - 80) <= 1, (width, height)
    assert dark.sum() == pytest.approx(np.pi * 40**2, rel=0.03)  # area of a 40 µm disc
    assert tm.mask.shape == (round(512 * 0.26 / 4), round(512 * 0.25 / 4))  # (33, 32)
    assert attrs["slide_mpp_xy"] == pytest.approx([0.25, 0.26])
    assert attrs["effective_mpp_xy"] == [0.5, 0.5] and attrs["effective_mpp"] == 0.5
    assert attrs["patch_size_level0_xy"] == pytest.approx([512.0, 256 * 0.5 / 0.26])
    with open_slide(slide) as r:
        assert r.mpp_xy == pytest.approx((0.25, 0.26)) and r.level_mpp(0) == r.mpp_xy


def test_array_reader_with_non_square_pixels():
    img = np.full((100, 100, 3), 200, np.uint8)
    r = ArrayReader(img, 0.25, mpp_y=0.26)
    assert r.mpp_xy == (0.25, 0.26) and r.mpp == pytest.approx(0.255)
    plan = plan_patches(r, PatchParams(mpp=0.5, patch_px=10, min_tissue=0.0), None)
    assert (plan.fx, plan.fy) == pytest.approx((2.0, 0.5 / 0.26))
    assert plan.n_cols == 5 and plan.n_rows == 5  # 100 * 0.26 / 0.5 = 52 target px high


def test_level_cut_without_resampling_when_downsample_is_above_a_whole_number(tmp_path):
    # A level whose downsample is a bit above 4 (401 / round(401 / 4) = 4.01): the level pixel
    # a patch starts at is read exactly, not the one before it (the location rounded to level 0
    # lies just below lx * downsample, and flooring it went one level pixel left/up).
    img = np.random.default_rng(5).integers(0, 255, (301, 401, 3), dtype=np.uint8)
    reader = ArrayReader(img, 0.25, downsamples=(4,))
    level1 = np.asarray(Image.fromarray(img).resize((100, 75), Image.Resampling.BOX))
    res = extract_patches(
        reader,
        tmp_path / "a.zarr",
        PatchParams(mpp=1.0, patch_px=20, min_tissue=0.0),
        mask=None,
        progress=False,
    )
    p, c, g, attrs = read_store(tmp_path / "a.zarr")
    assert res.n_patches == 5 * 3 and attrs["level"] == 1 and not attrs["resampled"]
    for k in range(res.n_patches):
        row, col = g[k]
        lx, ly = round(col * 20 * 100 / 401 * 4), round(row * 20 * 75 / 301 * 4)
        np.testing.assert_array_equal(p[k], level1[ly : ly + 20, lx : lx + 20])
    # read_region at the level-0 location of a level pixel starts at that level pixel
    for lx in range(0, 100, 7):
        loc = round(lx * reader.level_downsamples[1])
        assert reader.level_origin((loc, loc), 1) == (float(lx), float(lx))


def test_upsampling_limit_is_the_one_the_preflight_checks(tmp_path):
    # 0.25 x 0.26 µm/px: the run's preflight (gigamil.wsi.preflight, the slide's mean µm/px)
    # lets a target of 0.064 through (0.255 / 0.064 = 3.98x); extraction must not refuse it
    # later in the job (it compared the coarser axis, 0.26 / 0.064 = 4.06x)
    import tifffile

    from gigamil.wsi.preflight import SlideCheck, check_slide

    img = np.full((120, 160, 3), 230, np.uint8)
    path = tmp_path / "aniso.tif"
    tifffile.imwrite(
        path, img, photometric="rgb", resolution=(1e4 / 0.25, 1e4 / 0.26), resolutionunit=3
    )
    assert check_slide(SlideCheck("c", "s", path, None), patch_mpp=0.064).problem is None
    with open_slide(path) as reader:
        assert reader.mpp_xy == pytest.approx((0.25, 0.26))
        plan = plan_patches(reader, PatchParams(mpp=0.064, patch_px=64, min_tissue=0.0), None)
        assert plan.resample and any("upsampled" in w for w in plan.warnings)
    assert check_slide(SlideCheck("c", "s", path, None), patch_mpp=0.063).problem is not None
    with open_slide(path) as reader, pytest.raises(GigamilError, match="4.05x finer"):
        plan_patches(reader, PatchParams(mpp=0.063, patch_px=64, min_tissue=0.0), None)


def test_unresampled_patches_end_inside_a_slightly_coarser_slide(tmp_path):
    """A slide up to 0.5 % coarser than the target is read without resampling, p level px per
    patch: the grid, sized in target px, put the last patch past the slide's edge (at 0.5024
    µm/px for 0.5, a white column at x = 223 of the second 224-px patch)."""
    img = np.full((300, 448, 3), 100, np.uint8)
    for w, cols in ((446, 1), (448, 2)):  # 448 level px hold two patches: nothing dropped
        reader = ArrayReader(img[:, :w].copy(), mpp=0.5024)
        out = tmp_path / f"w{w}.zarr"
        params = PatchParams(mpp=0.5, patch_px=224, min_tissue=0.0)
        extract_patches(reader, out, params, mask=np.ones((30, 45), bool), progress=False)
        patches, coords, grid, attrs = read_store(out)
        assert attrs["resampled"] is False
        assert len(coords) == cols and (np.asarray(patches) == 100).all(), w
        assert coords[:, 0].max() + 224 <= w


@pytest.mark.parametrize(
    ("size", "mpp", "target", "px", "shape"),
    [
        # resampled, 666.7 x 400 target px: 16 whole columns (15.67 + 1 would be 17, the last
        # one past the edge), 10 rows
        ((1000, 600), (0.5, 0.5), 0.75, 40, (10, 16)),
        # unresampled (0.5024 is within 1 % of 0.5): 446 level px hold one 224-px row, not two
        ((300, 446), (0.5024, 0.5024), 0.5, 224, (1, 1)),
        ((446, 300), (0.5024, 0.5024), 0.5, 224, (1, 1)),
        # non-square pixels, resampled per axis: 52 target px high, 50 wide
        ((100, 100), (0.25, 0.26), 0.5, 10, (5, 5)),
        # non-square pixels: 210 target px wide (21 columns) but only 200 high (20 rows, each
        # axis sized by its own µm/px: a 21st row would run past the bottom edge)
        ((400, 400), (0.2625, 0.25), 0.5, 10, (20, 21)),
        # 125 px at 0.44 µm/px are exactly 110 px at 0.5, eleven 10-px patches, although
        # 125 / (0.5 / 0.44) is 109.99999999999999 in floating point
        ((125, 40), (0.44, 0.44), 0.5, 10, (3, 11)),
        # 240 px at 0.24 µm/px are exactly one 64-px patch at 0.9, although 240 / (0.9 / 0.24)
        # is 63.99999999999999 in floating point (the row was dropped: 0 x 3 patches)
        ((840, 240), (0.24, 0.24), 0.9, 64, (1, 3)),
        # upsampled (bilinear): the patches on the slide's edge have no pale rim from the white
        # past it (their outer pixel rows read 139, the corners 168, before)
        ((64, 64), (0.5, 0.5), 0.25, 32, (4, 4)),
        ((64, 64), (0.35, 0.35), 0.3, 32, (2, 2)),
    ],
)
def test_every_patch_is_whole_and_inside_the_slide(tmp_path, size, mpp, target, px, shape):
    """Only whole patches inside the slide are on the grid, on both axes, resampled or not: a
    slide of one grey value gives patches of that value only (a patch past the edge reads
    background), and the grid is as large as fits."""
    w, h = size
    reader = ArrayReader(np.full((h, w, 3), 100, np.uint8), mpp[0], mpp_y=mpp[1])
    params = PatchParams(mpp=target, patch_px=px, min_tissue=0.0)
    plan = plan_patches(reader, params, None)
    assert (plan.n_rows, plan.n_cols) == shape
    extract_patches(reader, tmp_path / "s.zarr", params, mask=None, progress=False)
    patches, coords, _, attrs = read_store(tmp_path / "s.zarr")
    assert len(coords) == shape[0] * shape[1]
    assert (np.asarray(patches) == 100).all()


def test_repeating_the_edge_changes_no_pixel_away_from_it(tmp_path):
    """Upsampled patches of a textured slide: those off the slide's edge are exactly what a
    slide twice as large (no edge near them) gives; only the edge patches' rims change."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    big = np.full((128, 128, 3), 255, np.uint8)
    big[:64, :64] = image
    params = PatchParams(mpp=0.25, patch_px=32, min_tissue=0.0)
    for name, img in (("small", image), ("big", big)):
        extract_patches(ArrayReader(img, 0.5), tmp_path / f"{name}.zarr", params, progress=False)
    small, small_coords, _, _ = read_store(tmp_path / "small.zarr")
    large, large_coords, _, _ = read_store(tmp_path / "big.zarr")
    index = {tuple(c): i for i, c in enumerate(np.asarray(large_coords))}
    small, large = np.asarray(small), np.asarray(large)
    for i, (x, y) in enumerate(np.asarray(small_coords)):
        a, b = small[i], large[index[(x, y)]]
        if x + 16 < 64 and y + 16 < 64:  # a patch spans 16 level-0 px: off the right and bottom
            assert np.array_equal(a, b), (x, y)
        else:  # on the edge: only the outer row or column, bilinear from the white, changes
            assert np.array_equal(a[:-1, :-1], b[:-1, :-1]) and not np.array_equal(a, b), (x, y)


def test_level0_coordinates_follow_each_axis_of_non_square_pixels():
    """0.25 x 0.26 µm/px cut at 0.5: a patch of 10 target px spans 20 level-0 px in x and
    19.23 in y; the stored top-left corners are those, rounded, axis by axis."""
    reader = ArrayReader(np.full((200, 200, 3), 100, np.uint8), 0.25, mpp_y=0.26)
    plan = plan_patches(reader, PatchParams(mpp=0.5, patch_px=10, min_tissue=0.0), None)
    rows, cols = plan.grid[:, 0], plan.grid[:, 1]
    np.testing.assert_array_equal(plan.coords[:, 0], np.round(cols * 10 * 0.5 / 0.25))
    np.testing.assert_array_equal(plan.coords[:, 1], np.round(rows * 10 * 0.5 / 0.26))
    assert plan.coords[:, 1].max() == round(9 * 10 * 0.5 / 0.26) == 173  # not 9 * 20 = 180


def test_a_level_coarser_than_the_target_on_one_axis_is_not_read():
    """Levels: 0.25 x 0.26 µm/px and 4x that, 1.0 x 1.04. For a target of 1.0 the 4x level is
    4 % too coarse in y (the tolerance is 1 %): the patches are cut from level 0, resampled,
    not read from level 1 and stretched in y."""
    reader = ArrayReader(np.full((400, 400, 3), 100, np.uint8), 0.25, (4,), mpp_y=0.26)
    plan = plan_patches(reader, PatchParams(mpp=1.0, patch_px=20, min_tissue=0.0), None)
    assert plan.level == 0 and plan.resample
    square = ArrayReader(np.full((400, 400, 3), 100, np.uint8), 0.25, (4,))
    assert plan_patches(square, PatchParams(mpp=1.0, patch_px=20, min_tissue=0.0), None).level == 1


def test_a_store_cut_as_is_records_the_slides_own_mpp(tmp_path):
    """A slide at 0.499 µm/px is within 1 % of a 0.5 target and is cut without resampling: the
    store's effective_mpp is the 0.499 it was cut at, not the 0.5 asked for."""
    reader = ArrayReader(np.full((120, 120, 3), 100, np.uint8), 0.499)
    params = PatchParams(mpp=0.5, patch_px=40, min_tissue=0.0)
    plan = plan_patches(reader, params, None)
    assert not plan.resample and plan.effective_mpp_xy == (0.499, 0.499)
    extract_patches(reader, tmp_path / "s.zarr", params, mask=None, progress=False)
    attrs = read_store(tmp_path / "s.zarr")[3]
    assert attrs["effective_mpp"] == pytest.approx(0.499, abs=1e-12)
    assert attrs["target_mpp"] == 0.5
