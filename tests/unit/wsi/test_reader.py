"""gigamil.wsi.reader: formats, levels, MPP trust order and every open/read error."""

from __future__ import annotations

import os
import pickle

import numpy as np
import openslide
import pytest
from PIL import Image

from gigamil.errors import SlideError
from gigamil.wsi.memory import ArrayReader
from gigamil.wsi.mpp import check_mpp, mpp_from_resolution, resolve_mpp
from gigamil.wsi.reader import open_slide, slide_mpp
from gigamil.wsi.slide import composite_on_white


def test_svs_properties(cmu_svs):
    with open_slide(cmu_svs) as r:
        assert r.dimensions == (2220, 2967)
        assert r.level_count == 1
        assert r.mpp == pytest.approx(0.499)
        assert r.mpp_source == "openslide"
        assert r.tile_size == (240, 240)


def test_pyramid_levels_and_best_level(test_slides):
    with open_slide(test_slides / "CMU-1-Small-Region.pyramid.tiff") as r:
        assert r.level_dimensions == ((2220, 2967), (1110, 1483), (555, 741))
        assert r.best_level_for_mpp(0.5) == 0
        assert r.best_level_for_mpp(0.3) == 0  # finer than the slide: level 0 (upsampled)
        assert r.best_level_for_mpp(1.0) == 1  # level 1 is 0.998-0.9983 µm/px
        assert r.best_level_for_mpp(1.9) == 1
        assert r.best_level_for_mpp(2.0) == 2
        assert r.best_level_for_mpp(50.0) == 2
        mx, my = r.level_mpp(1)
        assert mx == pytest.approx(0.998) and my == pytest.approx(0.499 * 2967 / 1483)


@pytest.mark.parametrize("fast", [False, True])
def test_read_region_matches_openslide_composited_on_white(test_slides, fast):
    path = test_slides / "CMU-1-Small-Region.pyramid.tiff"
    ref = openslide.OpenSlide(str(path))
    with open_slide(path, fast_tiff=fast) as r:
        assert r.fast_tiff == fast
        # inside, across the right/bottom edge (transparent outside -> white), and level 1
        # (OpenSlide blends sub-pixel origins at levels > 0; the fast path uses whole pixels:
        # compare it there only at an exact origin)
        last = ((0, 0), 1, (80, 60)) if fast else ((-40, -40), 1, (80, 60))
        for loc, level, size in [((100, 200), 0, (300, 200)), ((2100, 2900), 0, (200, 120)), last]:
            got = r.read_region(loc, level, size)
            rgba = np.asarray(ref.read_region(loc, level, size)).astype(float)
            a = rgba[..., 3:] / 255.0
            want = rgba[..., :3] * a + 255.0 * (1 - a)
            assert got.shape == (size[1], size[0], 3) and got.dtype == np.uint8
            if not fast:
                assert np.abs(got - want).max() <= 1.0
            else:  # own JPEG decode: chroma upsampling differs on a few pixels
                assert np.abs(got - want).mean() < 0.5
        assert (r.read_region((2200, 2950), 0, (50, 50))[30:, 30:] == 255).all()


def test_fast_tiff_path_on_svs_and_fallback_for_corrupt_tiles(cmu_svs, test_slides):
    with open_slide(cmu_svs) as fast, open_slide(cmu_svs, fast_tiff=False) as slow:
        assert fast.fast_tiff and not slow.fast_tiff
        a = fast.read_region((500, 700), 0, (700, 500)).astype(int)
        b = slow.read_region((500, 700), 0, (700, 500)).astype(int)
        assert np.abs(a - b).mean() < 0.5
    with open_slide(test_slides / "synthetic" / "unreadable.svs") as r:
        assert not r.fast_tiff  # the self-check failed: OpenSlide reads (and reports) it


def test_a_jpeg_tile_whose_end_was_overwritten_is_an_error_not_grey_pixels(cmu_svs, tmp_path):
    """libjpeg decoded a tile whose second half was zeroed into pixels, with a warning at most,
    so 15 patches of the slide were cut from garbage where OpenSlide refuses the tile (a
    review, 2026-12-06): the fast path checks each JPEG tile's start and end markers."""
    import shutil

    import tifffile

    copy = tmp_path / "damaged.svs"
    shutil.copyfile(cmu_svs, copy)
    with tifffile.TiffFile(copy) as tif:
        page = tif.pages[0]
        index = int(np.argmax(page.databytecounts))
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        tw, tl, ntx = (
            int(page.tilewidth),
            int(page.tilelength),
            -(-page.imagewidth // page.tilewidth),
        )
    with open(copy, "r+b") as fh:
        fh.seek(offset + count // 2)
        fh.write(b"\x00" * (count - count // 2))
    x, y = (index % ntx) * tw, (index // ntx) * tl
    with open_slide(copy) as r:
        assert r.fast_tiff
        with pytest.raises(
            SlideError, match=rf"tile {index} of level 0 is damaged: .*end-of-image"
        ):
            r.read_region((x, y), 0, (tw, tl))
        r.read_region((0, 0) if index else (tw, 0), 0, (8, 8))  # other tiles still read


def test_override_wins_over_file_mpp(cmu_svs):
    with open_slide(cmu_svs, mpp_override=0.25) as r:
        assert r.mpp == 0.25 and r.mpp_source == "override"


def test_resolve_mpp_trust_order():
    assert resolve_mpp("s", 0.3, (0.5, 0.5), (0.7, 0.7)) == (0.3, "override")
    assert resolve_mpp("s", None, (0.5, 0.5), (0.7, 0.7)) == (0.5, "openslide")
    assert resolve_mpp("s", None, None, (0.7, 0.7)) == (0.7, "tiff")


def test_mpp_from_resolution_units():
    assert mpp_from_resolution(20000.0, 20000.0, "centimeter") == (0.5, 0.5)
    assert mpp_from_resolution(50800.0, 50800.0, 2) == (0.5, 0.5)  # inch
    assert mpp_from_resolution(72.0, 72.0, 1) is None  # no absolute unit
    assert mpp_from_resolution(None, 72.0, 2) is None
    # the non-baseline codes some writers use: 4 millimetre, 5 micrometre
    assert mpp_from_resolution(2000.0, 4000.0, 4) == (0.5, 0.25)
    assert mpp_from_resolution(2.0, 4.0, "5") == (0.5, 0.25)
    assert mpp_from_resolution(2000.0, 2000.0, "mm") == (0.5, 0.5)
    assert mpp_from_resolution(0.0, 2.0, 5) is None  # no resolution


@pytest.mark.parametrize(
    ("x", "y", "fragment"),
    [(352.78, 352.78, "implausible"), (0.01, 0.01, "implausible"), (0.25, 0.5, "non-square")],
)
def test_check_mpp_rejects_nonsense(x, y, fragment):
    with pytest.raises(SlideError, match=fragment) as exc:
        check_mpp("slide.svs", x, y, "somewhere")
    assert "slide.svs" in str(exc.value) and "--slide-mpp" in str(exc.value)


@pytest.mark.parametrize(
    ("value", "said"),
    [(352.78, "a 72/96 dpi image default?"), (264.58, "a 72/96 dpi image default?")]
    + [(v, "not the scan's resolution; 0.25 is 40x, 0.5 20x") for v in (0.0001, 5000.0)],
)
def test_a_files_implausible_mpp_is_called_a_dpi_default_only_near_one(value, said):
    """72 and 96 dpi are 352.8 and 264.6 µm/px; a file saying 0.0001 µm/px was told the same
    (new-user trial)."""
    with pytest.raises(SlideError) as exc:
        check_mpp("slide.tif", value, value, "TIFF resolution tags")
    assert said in str(exc.value)
    assert ("dpi" in said) == ("dpi" in str(exc.value))


def test_an_implausible_typed_mpp_is_called_a_typo_not_a_dpi_default():
    """The sheet's own value: the user set the column already, and a file's dpi is not involved."""
    with pytest.raises(SlideError) as exc:
        resolve_mpp("s.svs", 250.0, (0.5, 0.5), None)
    msg = str(exc.value)
    assert "implausible microns-per-pixel 250 x 250 from the override" in msg
    assert "a typo, or another unit? µm per pixel, e.g. 0.25 at 40x" in msg and "dpi" not in msg


def test_72dpi_default_is_an_error_unless_overridden(test_slides):
    boxes = test_slides / "synthetic" / "boxes.tiff"
    with pytest.raises(SlideError, match=r"boxes\.tiff: implausible microns-per-pixel 352\.778"):
        open_slide(boxes)
    with open_slide(boxes, mpp_override=2.0) as r:
        assert r.mpp == 2.0 and r.level_count == 4


def test_unopenable_file(test_slides):
    path = test_slides / "synthetic" / "unopenable.tiff"
    with pytest.raises(SlideError, match="Unsupported TIFF compression: 52479") as exc:
        open_slide(path)
    assert str(path) in str(exc.value)


def test_openable_but_unreadable_slide(test_slides):
    path = test_slides / "synthetic" / "unreadable.svs"
    with open_slide(path) as r:  # the header is fine
        assert r.dimensions == (16, 16)
        with pytest.raises(SlideError, match="cannot read pixels: Bogus marker length") as exc:
            r.read_region((0, 0), 0, (16, 16))
    assert str(path) in str(exc.value)
    # a slide that opens but whose tiles are damaged: what to do, as for a truncated file
    assert str(exc.value).endswith(
        ": copy the slide again from its source, or remove it from the sheet"
    )


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(SlideError, match="is a directory"):
        open_slide(tmp_path)


def test_an_mpp_openslide_refuses_is_not_retried_by_the_plain_image_reader(
    write_tiff, tmp_path, monkeypatch
):
    """A tiled TIFF OpenSlide opens but whose 72 dpi is no slide MPP is refused for its MPP
    as it is: the in-memory fallback (which decodes the whole level 0, or calls a large slide
    too large for it) is not tried."""
    import gigamil.wsi.reader as reader_module

    def no_fallback(*args, **kwargs):
        raise AssertionError("the plain-image fallback was tried")

    monkeypatch.setattr(reader_module, "ImageReader", no_fallback)
    monkeypatch.setattr(reader_module, "plain_image_header", no_fallback)
    img = np.full((128, 128, 3), 200, np.uint8)
    path = write_tiff(tmp_path / "dpi72.tif", img, mpp=25400 / 72, unit="INCH")
    refused = r"dpi72\.tif: implausible microns-per-pixel 352\.778 x 352\.778 from openslide"
    with pytest.raises(SlideError, match=refused):
        open_slide(path)
    with pytest.raises(SlideError, match=refused):
        slide_mpp(path)


@pytest.mark.parametrize("tiled", [True, False])
def test_tiff_without_resolution_needs_override(write_tiff, tmp_path, tiled):
    img = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    path = write_tiff(tmp_path / f"nores-{tiled}.tiff", img, mpp=None, tiled=tiled)
    msg = r"no microns-per-pixel \(MPP\) in the file; set the slide's `mpp` column in the cohort sheet"
    with pytest.raises(SlideError, match=msg) as exc:
        open_slide(path)
    assert str(path) in str(exc.value) and "--slide-mpp" in str(exc.value)
    with open_slide(path, mpp_override=0.5) as r:
        assert r.mpp == 0.5
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (128, 96)), img)


def test_plain_image_without_mpp_says_only_that(tmp_path):
    """A PNG (OpenSlide refuses it, the plain-image fallback reads it) without MPP: the error is
    the MPP one, without OpenSlide's refusal chained in (it would head the job's traceback)."""
    from PIL import Image

    path = tmp_path / "nompp.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    with pytest.raises(SlideError, match="no microns-per-pixel") as exc:
        open_slide(path)
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert exc.value.reason == "mpp"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_truncated_plain_image_says_so(tmp_path, fmt):
    """A JPEG/PNG cut short: the fallback's "truncated" error, not OpenSlide's refusal."""
    img = np.random.default_rng(4).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    path = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(img).save(path, format=fmt, dpi=(50800, 50800))  # 0.5 µm/px
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(SlideError, match="truncated") as exc:
        open_slide(path)
    assert exc.value.reason == "truncated" and exc.value.__cause__ is None
    assert "OpenSlide" not in str(exc.value)


def test_slide_error_reasons_are_a_closed_set(tmp_path):
    """The reader decides on the fallback by ``SlideError.reason``, never by the message."""
    assert SlideError("x").reason == "unreadable"
    with pytest.raises(ValueError, match="reason must be one of"):
        SlideError("x", reason="MPP")
    again = pickle.loads(pickle.dumps(SlideError("y", reason="mpp")))
    assert (str(again), again.reason) == ("y", "mpp")
    junk = tmp_path / "MPP too large truncated.png"  # the message's words in the name
    junk.write_bytes(b"not an image")
    with pytest.raises(SlideError, match="not a slide OpenSlide can read") as exc:
        open_slide(junk)  # OpenSlide's refusal, the fallback's chained as the cause
    assert exc.value.reason == "unreadable" and "cannot read the image" in str(exc.value.__cause__)


def test_plain_tiff_fallback_reads_resolution_tags(write_tiff, tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    for unit in ("CENTIMETER", "INCH"):
        path = write_tiff(tmp_path / f"strip-{unit}.tiff", img, mpp=0.25, tiled=False, unit=unit)
        with open_slide(path) as r:  # OpenSlide refuses untiled TIFFs: the fallback reads it
            assert type(r).__name__ == "ImageReader"
            assert r.mpp == pytest.approx(0.25) and r.mpp_source == "tiff"
            np.testing.assert_array_equal(r.read_region((10, 5), 0, (20, 30)), img[5:35, 10:30])


@pytest.mark.parametrize("folder", ["plain", "MPP_study", "too large truncated"])
def test_png_fallback_with_override(tmp_path, folder):
    # words of the fallback's own messages in the path must not change which error is raised
    img = np.random.default_rng(2).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "plain.png"
    Image.fromarray(img).save(path)
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        open_slide(path)
    with open_slide(path, mpp_override=1.0) as r:
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (60, 50)), img)


def test_plain_images_of_other_sample_kinds_read_as_their_colours(tmp_path):
    """A 16-bit grey PNG read all white (Pillow's convert clips), a palette TIFF as its
    indices, a min-is-white TIFF inverted; CMYK or 32-bit TIFFs are refused by their kind, not
    with OpenSlide's "not a slide format"."""
    import tifffile

    ramp = np.tile(np.linspace(20, 200, 60).astype(np.uint8), (50, 1))
    want = np.repeat(ramp[..., None], 3, axis=2)
    Image.fromarray(ramp.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    palette = np.tile((np.arange(256) * 257).astype(np.uint16), (3, 1))
    palette[:, 7] = 25 * 257  # index 7 shows grey 25
    tifffile.imwrite(tmp_path / "pal.tif", np.full((50, 60), 7, np.uint8), colormap=palette)
    tifffile.imwrite(tmp_path / "miw.tif", 255 - ramp, photometric="miniswhite")
    for name, expected in (("g16.png", want), ("pal.tif", 25), ("miw.tif", want)):
        with open_slide(tmp_path / name, mpp_override=1.0) as r:
            got = r.read_region((0, 0), 0, (60, 50))
            np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape), name)
    tifffile.imwrite(
        tmp_path / "cmyk.tif", np.zeros((50, 60, 4), np.uint8), photometric="separated"
    )
    Image.fromarray(np.zeros((50, 60), np.int32)).save(tmp_path / "i32.tif")  # Pillow mode I
    ycc = np.full((50, 60, 3), (200, 30, 40), np.uint8)  # uncompressed: samples are Y, Cb, Cr
    tifffile.imwrite(tmp_path / "ycc.tif", ycc, photometric="ycbcr", subsampling=(1, 1))
    for name, message in (
        ("cmyk.tif", "cmyk.tif: TIFF of photometric interpretation SEPARATED is not supported"),
        ("i32.tif", r"i32.tif: unsupported sample type int32 \(expected 8-bit RGB\)"),
        ("ycc.tif", "ycc.tif: TIFF of photometric interpretation YCBCR is not supported"),
    ):
        with pytest.raises(SlideError, match=message) as exc:
            open_slide(tmp_path / name, mpp_override=1.0)
        assert exc.value.reason == "unsupported"


def test_array_reader_levels_and_outside_is_white():
    img = np.random.default_rng(3).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    r = ArrayReader(img, 0.5, downsamples=(2, 4))
    assert r.level_dimensions == ((96, 64), (48, 32), (24, 16))
    assert r.level_downsamples == (1.0, 2.0, 4.0)
    assert r.best_level_for_mpp(1.0) == 1
    out = r.read_region((80, 50), 0, (32, 32))
    np.testing.assert_array_equal(out[:14, :16], img[50:, 80:])
    assert (out[14:] == 255).all() and (out[:, 16:] == 255).all()
    level1 = np.asarray(Image.fromarray(img).resize((48, 32), Image.Resampling.BOX))
    np.testing.assert_array_equal(r.read_region((8, 4), 1, (10, 6)), level1[2:8, 4:14])


def test_composite_on_white():
    rgba = np.array([[[10, 20, 30, 255], [200, 100, 0, 0], [100, 100, 100, 128]]], np.uint8)
    out = composite_on_white(rgba)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert np.abs(out[0, 2].astype(int) - 177).max() <= 1


# --- colours: glass comes out near white in every supported format ----------------------------

GLASS = ((1700, 100), (400, 300))  # level-0 box of bare glass on CMU-1-Small-Region
TISSUE = ((900, 2200), (300, 300))  # level-0 box of H&E (pink)


@pytest.fixture(scope="module")
def cmu_formats(cmu_svs, test_slides, tmp_path_factory, write_tiff, write_dicom_wsi):
    """The CMU slide in every format gigamil reads: {name: (path, slide_mpp override)}."""
    root = tmp_path_factory.mktemp("formats")
    with open_slide(cmu_svs) as r:
        img = r.read_region((0, 0), 0, r.dimensions)
    Image.fromarray(img).save(root / "cmu.png")
    return {
        "svs": (cmu_svs, None),
        "tiled-tiff": (test_slides / "CMU-1-Small-Region.pyramid.tiff", None),
        "plain-tiff": (write_tiff(root / "plain.tiff", img, 0.499, tiled=False), None),
        "png": (root / "cmu.png", 0.499),
        "dicom-ybr": (write_dicom_wsi(root / "ybr", img, 0.499, "YBR_FULL_422", levels=2)[0], None),
        # YCbCr JPEG frames under a header that says RGB: OpenSlide shows pink glass, teal tissue
        "dicom-rgb-header": (write_dicom_wsi(root / "rgb", img, 0.499, "RGB", levels=2)[0], None),
    }


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize(
    "fmt", ["svs", "tiled-tiff", "plain-tiff", "png", "dicom-ybr", "dicom-rgb-header"]
)
def test_glass_is_white_and_tissue_pink_in_every_format(cmu_formats, cmu_svs, fmt, fast):
    path, mpp = cmu_formats[fmt]
    with open_slide(cmu_svs) as r:
        want = r.read_region(TISSUE[0], 0, TISSUE[1]).astype(float)
    with open_slide(path, mpp, fast_tiff=fast) as r:
        assert r.dimensions == (2220, 2967)
        glass = r.read_region(GLASS[0], 0, GLASS[1]).reshape(-1, 3).mean(axis=0)
        tissue = r.read_region(TISSUE[0], 0, TISSUE[1]).astype(float)
        r2, g2, b2 = tissue.reshape(-1, 3).mean(axis=0)
        if r.level_count > 1:  # the reduced levels too
            lv = r.read_region(GLASS[0], 1, (200, 150)).reshape(-1, 3).mean(axis=0)
            assert lv.min() > 235 and np.ptp(lv) < 5, lv
    assert glass.min() > 235 and np.ptp(glass) < 5, glass  # near white, not tinted
    assert r2 > g2 + 30 and b2 > g2 + 20  # pink/purple H&E, not teal
    # the SVS's colours (per pixel up to a JPEG re-encoding with chroma subsampling)
    assert np.abs(tissue.mean(axis=(0, 1)) - want.mean(axis=(0, 1))).max() < 3


def test_dicom_with_rgb_header_gives_the_svs_tissue_mask(cmu_formats, cmu_svs, iou):
    from gigamil.wsi.tissue import TissueParams, compute_tissue_mask

    with open_slide(cmu_svs) as r:
        svs = compute_tissue_mask(r, TissueParams())
    with open_slide(cmu_formats["dicom-rgb-header"][0]) as r:
        dcm = compute_tissue_mask(r, TissueParams())  # was 88 % tissue (pink glass)
    assert dcm.tissue_fraction == pytest.approx(svs.tissue_fraction, abs=0.02)
    assert iou(dcm.mask, svs.mask) > 0.95


def test_ycbcr_to_rgb_matches_pillow():
    from gigamil.wsi.reader import ycbcr_to_rgb

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ycc = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    assert np.abs(ycbcr_to_rgb(ycc).astype(int) - rgb).max() <= 3


def test_dicom_whose_colours_match_no_reading_is_refused(cmu_formats, monkeypatch):
    import io

    import gigamil.wsi.reader as reader_mod

    real = reader_mod._dicom_first_frame

    def green_frame(path):
        ds, frame = real(path)
        buf = io.BytesIO()
        Image.new("RGB", Image.open(io.BytesIO(frame)).size, (0, 200, 0)).save(buf, "JPEG")
        return ds, buf.getvalue()

    monkeypatch.setattr(reader_mod, "_dicom_first_frame", green_frame)
    with pytest.raises(SlideError, match="colours differ from the DICOM frames"):
        open_slide(cmu_formats["dicom-rgb-header"][0])


def test_slide_mpp_reads_headers_like_open_slide(cmu_svs, test_slides):
    from gigamil.wsi.reader import slide_mpp

    for path, override in [
        (cmu_svs, None),
        (test_slides / "CMU-1-Small-Region.pyramid.tiff", None),
        (test_slides / "synthetic" / "boxes.tiff", 0.5),
    ]:
        with open_slide(path, override) as r:
            assert slide_mpp(path, override) == pytest.approx(r.mpp)
    for bad in ("boxes.tiff", "unopenable.tiff"):  # 72 dpi; not a slide
        path = test_slides / "synthetic" / bad
        with pytest.raises(SlideError) as want:
            open_slide(path)
        with pytest.raises(SlideError) as got:
            slide_mpp(path)
        assert str(got.value) == str(want.value)


def test_slide_mpp_does_not_decode_plain_images(tmp_path, monkeypatch):
    import tifffile

    from gigamil.wsi.reader import slide_header, slide_mpp

    img = Image.fromarray(np.full((64, 64, 3), 200, np.uint8))
    img.save(tmp_path / "a.png", dpi=(50800, 50800))  # 0.5 µm/px
    img.save(tmp_path / "b.png")  # no resolution
    monkeypatch.setattr(Image.Image, "convert", lambda *a, **k: pytest.fail("pixels decoded"))
    assert slide_mpp(tmp_path / "a.png") == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(SlideError, match="no microns-per-pixel"):
        slide_mpp(tmp_path / "b.png")
    assert slide_mpp(tmp_path / "b.png", 0.25) == 0.25
    # the size too, from the same header read (the pre-run check's slide_header)
    Image.fromarray(np.full((30, 70, 3), 200, np.uint8)).save(tmp_path / "c.png", dpi=(50800,) * 2)
    tifffile.imwrite(tmp_path / "d.tif", np.full((20, 40, 3), 200, np.uint8))
    assert slide_header(tmp_path / "c.png") == (pytest.approx(0.5, rel=1e-3), (70, 30))
    assert slide_header(tmp_path / "d.tif", 0.25)[1] == (40, 20)


def test_openslide_reads_left_of_or_above_the_slide_where_level_origin_says(write_tiff, tmp_path):
    # OpenSlide (openslide_read_region) paints a region that starts at a negative level-0
    # location with the slide's edge at level pixel trunc(-x / downsample) of the output, not
    # at -x / downsample: read_raster pads its windows by a level pixel or two, so every window
    # at the slide's left or top edge (the first block of a tissue mask, the first row and
    # column of patches) was shifted by up to one level pixel on the OpenSlide path.
    rng = np.random.default_rng(7)
    img = rng.integers(0, 255, (131, 197, 3), dtype=np.uint8)
    path = write_tiff(tmp_path / "pyr.tiff", img, mpp=0.5, levels=2)  # level 1: 98 x 65
    with open_slide(path, fast_tiff=False) as slow, open_slide(path) as fast:
        assert not slow.fast_tiff and fast.fast_tiff
        ds = slow.level_downsamples[1]
        assert ds != 2.0
        level1 = fast.read_region((0, 0), 1, slow.level_dimensions[1])
        for loc in [(-2, -2), (-5, -1), (-1, -9), (-40, -3)]:
            ox, oy = slow.level_origin(loc, 1)
            assert (ox, oy) == (-int(-loc[0] / ds), -int(-loc[1] / ds))
            out = slow.read_region(loc, 1, (30, 20))
            tx, ty = int(-ox), int(-oy)
            assert (out[:ty] == 255).all() and (out[:, :tx] == 255).all()
            np.testing.assert_array_equal(out[ty:, tx:], level1[: 20 - ty, : 30 - tx])
        # read_raster at the top-left corner: both paths give the same pixels
        from gigamil.wsi.raster import read_raster

        for f in (2.5, 3.3):
            a = read_raster(slow, 1, f, f, 0, 0, 40, 30).astype(int)
            b = read_raster(fast, 1, f, f, 0, 0, 40, 30).astype(int)
            assert np.abs(a - b).mean() < 1.0


@pytest.mark.parametrize("tiled", [True, False])
def test_resolution_without_unit_tag_is_in_inches_in_both_readers(write_tiff, tmp_path, tiled):
    # TIFF 6.0: ResolutionUnit defaults to 2 (inch) when the tag is absent. OpenSlide (tiled
    # TIFFs) applies the default; the plain-image fallback (untiled TIFFs) took the same tags
    # for "no MPP in the file".
    import tifffile

    img = np.random.default_rng(2).integers(0, 255, (80, 100, 3), dtype=np.uint8)
    path = write_tiff(tmp_path / f"nounit-{tiled}.tiff", img, mpp=0.25, tiled=tiled, unit="INCH")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["ResolutionUnit"].offset
    data = bytearray(path.read_bytes())
    assert int.from_bytes(data[offset : offset + 2], "little") == 296
    data[offset : offset + 2] = (300).to_bytes(2, "little")  # an unassigned tag code: no unit
    path.write_bytes(bytes(data))
    with tifffile.TiffFile(path) as tif:
        assert "ResolutionUnit" not in tif.pages[0].tags
    with open_slide(path) as r:
        assert type(r).__name__ == ("OpenSlideReader" if tiled else "ImageReader")
        assert r.mpp == pytest.approx(0.25) and r.mpp_source in ("openslide", "tiff")


def test_ome_tiff_pyramid_in_subifds_reads_as_its_full_resolution_level(tmp_path):
    """An OME-TIFF keeps its reduced levels in SubIFDs, which OpenSlide (generic tiled TIFF) does
    not list: the slide opens with one level, the µm/px of its resolution tags and exact
    pixels; coarser patches are then resampled from that level (README, Preprocessing)."""
    import tifffile

    rng = np.random.default_rng(0)
    img = (rng.random((512, 768, 3)) * 255).astype(np.uint8)
    path = tmp_path / "s.ome.tif"
    opts = {"tile": (256, 256), "photometric": "rgb", "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(img, subifds=1, resolution=(2e4, 2e4), **opts)  # 0.5 µm/px
        tif.write(img[::2, ::2], subfiletype=1, resolution=(1e4, 1e4), **opts)
    reader = open_slide(path)
    assert reader.level_dimensions == ((768, 512),)
    assert reader.mpp_xy == pytest.approx((0.5, 0.5))
    assert np.array_equal(reader.read_region((256, 128), 0, (64, 32)), img[128:160, 256:320])
    assert reader.best_level_for_mpp(1.0) == 0


def test_a_tiled_16_bit_grey_tiff_is_not_read_through_openslide(tmp_path, monkeypatch):
    """OpenSlide garbled the last, partial tile column of a tiled 16-bit greyscale TIFF (a mean
    32 grey levels off) and gigamil took it as data; now the in-memory reader reads it whole,
    and one too large for it is refused naming the kind of file."""
    import tifffile

    from gigamil.wsi import memory

    ramp = (np.tile(np.linspace(20, 200, 300), (300, 1)) * 257).astype(np.uint16)
    path = tmp_path / "g16.tiff"
    tifffile.imwrite(path, ramp, tile=(128, 128))  # the last tile column is partial
    with open_slide(path, mpp_override=0.5) as r:
        assert type(r).__name__ == "ImageReader"
        got = r.read_region((0, 0), 0, (300, 300))
    np.testing.assert_array_equal(got[..., 0], (ramp >> 8).astype(np.uint8))
    monkeypatch.setattr(memory, "FALLBACK_MAX_PIXELS", 1000)
    with pytest.raises(SlideError, match="16-bit greyscale TIFF, which OpenSlide misreads"):
        open_slide(path, mpp_override=0.5)


def test_a_ycbcr_level_without_jpeg_is_read_by_openslide_not_the_fast_path(tmp_path):
    """Deflate-compressed YCbCr tiles decode to raw Y, Cb, Cr: the fast path took such a level
    (its self-check looked at level 0 only) and gave pixels about 74 grey levels off."""
    import tifffile

    from gigamil.wsi.reader import ycbcr_to_rgb

    rng = np.random.default_rng(0)
    low = rng.integers(60, 250, (16, 16, 3), dtype=np.uint8)
    rgb0 = np.asarray(Image.fromarray(low).resize((512, 512), Image.Resampling.BILINEAR))
    rgb1 = np.asarray(Image.fromarray(rgb0).resize((256, 256), Image.Resampling.BOX))
    m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
    ycc1 = np.clip(np.round(rgb1 @ m.T + [0, 128, 128]), 0, 255).astype(np.uint8)
    assert np.abs(ycbcr_to_rgb(ycc1).astype(int) - rgb1).mean() < 1.5  # the conversion's inverse
    path = tmp_path / "ycc.tiff"
    res = {"resolution": (1e4 / 0.5, 1e4 / 0.5), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb0, tile=(256, 256), photometric="rgb", compression="jpeg", **res)
        tw.write(ycc1, tile=(256, 256), photometric="ycbcr", compression="zlib",
                 subsampling=(1, 1), subfiletype=1, resolution=(1e4, 1e4),
                 resolutionunit="CENTIMETER")  # fmt: skip
    ref = openslide.OpenSlide(str(path))
    want = np.asarray(ref.read_region((0, 0), 1, (256, 256)))[..., :3].astype(int)
    with open_slide(path) as r:
        assert not r.fast_tiff
        got = r.read_region((0, 0), 1, (256, 256)).astype(int)
    assert np.abs(got - want).mean() < 0.5 and np.abs(got - rgb1).mean() < 3


def test_the_fast_path_refuses_a_tile_the_file_no_longer_holds(test_slides, tmp_path):
    """A short read (the file cut while open) is an error, not a partly decoded tile."""
    from gigamil.wsi.tiff_tiles import TiffTileSource

    path = tmp_path / "p.tiff"
    path.write_bytes((test_slides / "CMU-1-Small-Region.pyramid.tiff").read_bytes())
    with open_slide(path) as r:
        dims = r.level_dimensions
    src = TiffTileSource(str(path), dims)
    try:
        ok = src.tile(2, 0, 0)
        assert ok.shape[2] == 3
        ends = src._offsets[0] + src._counts[0]
        last = int(np.argmax(ends))
        os.truncate(path, int(ends[last]) - 100)
        ntx = -(-dims[0][0] // src.tile_shape[0][1])
        with pytest.raises(SlideError, match="the file is truncated: tile") as exc:
            src.tile(0, last // ntx, last % ntx)
        assert exc.value.reason == "truncated"
    finally:
        src.close()


@pytest.mark.parametrize(("offset", "used"), [(0, True), (0.6, True), (3, False)])
def test_the_fast_path_is_used_only_where_it_decodes_as_openslide_does(cmu_svs, offset, used):
    """The self-check compares the direct tile decoding with OpenSlide's read on a tile per
    level: a layout the fast path accepts but decodes differently (here OpenSlide's pixels
    shifted by 3 grey levels, beyond the 1-level mean tolerance) is read through OpenSlide."""
    import openslide

    from gigamil.wsi.tiff_tiles import try_tile_source

    with openslide.OpenSlide(str(cmu_svs)) as osr:

        def read(x, y, level, w, h):
            rgb = np.asarray(osr.read_region((x, y), level, (w, h)).convert("RGB"), float)
            return rgb + offset

        src = try_tile_source(str(cmu_svs), osr.level_dimensions, read)
    assert (src is not None) == used
    if src is not None:
        src.close()


def test_a_plain_tiff_with_associated_alpha_is_not_darkened_twice(tmp_path):
    """ExtraSamples 1 (associated alpha): the colours are already multiplied by alpha, as
    OpenSlide's are; compositing them as unassociated darkened them a second time (the plain
    reader gave (177, 152, 140) where OpenSlide gives (227, 177, 152))."""
    import tifffile

    a, rgb = 128, np.array([200, 100, 50])
    img = np.zeros((64, 64, 4), np.uint8)
    img[..., :3], img[..., 3] = np.round(rgb * a / 255), a
    path = tmp_path / "assoc.tif"
    tifffile.imwrite(path, img, photometric="rgb", extrasamples=["assocalpha"],
                     resolution=(20000, 20000), resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(path) as r:
        assert r.read_region((0, 0), 0, (4, 4))[0, 0].tolist() == [227, 177, 152]
    unassoc = tmp_path / "unassoc.tif"  # colours not multiplied: c·a/255 + (255 - a)
    img[..., :3] = rgb
    tifffile.imwrite(unassoc, img, photometric="rgb", extrasamples=["unassalpha"],
                     resolution=(20000, 20000), resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(unassoc) as r:
        assert r.read_region((0, 0), 0, (4, 4))[0, 0].tolist() == [227, 177, 152]


def test_a_jpegs_exif_resolution_without_a_unit_gives_no_mpp(tmp_path):
    """EXIF ResolutionUnit 1 (no absolute unit): Pillow's dpi read it as inches, a plausible
    0.5 µm/px from nothing; now the missing-MPP error, as for a TIFF. In inches or cm, and with
    x and y apart, EXIF gives the µm/px."""

    def jpeg(name: str, x: float, y: float, unit: int):  # noqa: ANN202
        exif = Image.Exif()
        exif[0x011A], exif[0x011B], exif[0x0128] = x, y, unit
        path = tmp_path / name
        Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(path, exif=exif.tobytes())
        return path

    with pytest.raises(SlideError, match="no microns-per-pixel"):
        open_slide(jpeg("none.jpg", 50800.0, 50800.0, 1))
    with open_slide(jpeg("cm.jpg", 20000.0, 20000.0, 3)) as r:
        assert r.mpp == pytest.approx(0.5)
    with open_slide(jpeg("inch.jpg", 50800.0, 50800.0, 2)) as r:
        assert r.mpp == pytest.approx(0.5)


@pytest.mark.parametrize("order", [(2, 1, 0), (1, 0, 2)])
def test_a_tiff_pyramid_not_written_largest_level_first_has_its_level_0_mpp(tmp_path, order):
    """OpenSlide lists a generic TIFF's levels largest first but takes its properties (the MPP
    of the resolution tags) from the file's first directory: a pyramid written smallest level
    first had its smallest level's µm/px (2.0 for 0.5) as level 0's."""
    import tifffile

    from gigamil.wsi.reader import slide_header

    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    levels = [(img, 2e4), (img[::2, ::2], 1e4), (img[::4, ::4], 5e3)]  # 0.5, 1, 2 µm/px
    path = tmp_path / "order.tiff"
    with tifffile.TiffWriter(path) as tw:
        for k, i in enumerate(order):
            tw.write(levels[i][0], tile=(128, 128), photometric="rgb", subfiletype=int(k > 0),
                     resolution=(levels[i][1],) * 2, resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(path) as r:
        assert r.level_dimensions == ((512, 512), (256, 256), (128, 128))
        assert r.mpp_xy == pytest.approx((0.5, 0.5))
        assert r.level_mpp(2) == pytest.approx((2.0, 2.0))
    assert slide_header(path) == (pytest.approx(0.5), (512, 512))
    with open_slide(path, mpp_override=0.25) as r:
        assert r.mpp == 0.25 and r.mpp_source == "override"


def test_a_smallest_first_pyramid_whose_full_page_openslide_skips_has_its_level_0_mpp(tmp_path):
    """Written smallest level first with the usual NewSubfileType (0 for the full-resolution
    page, 1 for the reduced ones), OpenSlide skips the last page (not its first, not marked
    reduced): its level 0 is the middle page, 1 µm/px. The MPP came from the largest tiled page
    OpenSlide does not list, 0.5: every patch and mask twice too coarse, silently."""
    import tifffile

    from gigamil.wsi.reader import slide_header

    img = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
    levels = [(img[::4, ::4], 5e3, 1), (img[::2, ::2], 1e4, 1), (img, 2e4, 0)]  # 2, 1, 0.5 µm/px
    path = tmp_path / "smallest_first.tiff"
    with tifffile.TiffWriter(path) as tw:
        for im, res, sub in levels:
            tw.write(im, tile=(128, 128), photometric="rgb", subfiletype=sub,
                     resolution=(res, res), resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(path) as r:
        assert r.level_dimensions == ((256, 256), (128, 128))  # OpenSlide's choice of pages
        assert r.mpp_xy == pytest.approx((1.0, 1.0))
    assert slide_header(path) == (pytest.approx(1.0), (256, 256))


def test_a_plain_tiff_of_separate_colour_planes_reads_as_its_colours(tmp_path):
    """tifffile returns a planar (PlanarConfiguration 2) page as (3, H, W): the fallback
    refused such an RGB TIFF as an "unsupported image layout"."""
    import tifffile

    img = np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate")
    with open_slide(path, mpp_override=1.0) as r:
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (60, 50)), img)


def test_the_header_check_refuses_a_plain_tiff_the_reader_refuses(tmp_path):
    """A CMYK, uncompressed YCbCr or 32-bit plain TIFF passed the header-only check of a run's
    preflight (slide_header) and failed its tissue_mask job later, refused by its kind."""
    import tifffile

    from gigamil.wsi.reader import slide_header

    tifffile.imwrite(
        tmp_path / "cmyk.tif", np.zeros((50, 60, 4), np.uint8), photometric="separated"
    )
    ycc = np.full((50, 60, 3), (200, 30, 40), np.uint8)
    tifffile.imwrite(tmp_path / "ycc.tif", ycc, photometric="ycbcr", subsampling=(1, 1))
    tifffile.imwrite(tmp_path / "i32.tif", np.zeros((50, 60), np.int32))
    for name, message in (
        ("cmyk.tif", "photometric interpretation SEPARATED is not supported"),
        ("ycc.tif", "photometric interpretation YCBCR is not supported"),
        ("i32.tif", "unsupported sample type int32"),
    ):
        with pytest.raises(SlideError, match=message) as exc:
            slide_header(tmp_path / name, mpp_override=1.0)
        assert exc.value.reason == "unsupported"


@pytest.mark.parametrize("suffix", [".svs", ".tif", ".png"])
def test_a_file_that_is_no_slide_is_said_to_exist_with_the_fix(tmp_path, suffix):
    """A text file renamed notaslide.svs was "not a slide format OpenSlide recognises
    (Unsupported or missing image file)": the file exists, and no fix was given. The message
    (the CLI's and the pipeline preflight's) says it exists and gives README's advice."""
    from gigamil.wsi.preflight import SlideCheck, check_slide

    junk = tmp_path / f"notaslide{suffix}"
    junk.write_text("hello\n")
    with pytest.raises(SlideError) as exc:
        open_slide(junk)
    msg = str(exc.value)
    assert msg.startswith(f"{junk}: the file exists but is not a slide OpenSlide can read")
    assert "missing" not in msg.lower()
    assert "vips tiffsave SLIDE out.tif --tile --pyramid" in msg
    assert "remove the slide from its cohort sheet" in msg
    assert check_slide(SlideCheck("c", "s", junk, None)).problem == msg  # the preflight's
