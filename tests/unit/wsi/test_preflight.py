"""gigamil.wsi.preflight: every unusable slide of a run in one error, before any job."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gigamil.errors import ConfigError, SlideError
from gigamil.wsi.preflight import MAX_LISTED, SlideCheck, check_slides, sheet_checks
from gigamil.wsi.reader import open_slide


def test_usable_slides_pass_and_report_their_mpp(cmu_svs, test_slides):
    statuses = check_slides(
        [
            SlideCheck("a", "svs", Path(cmu_svs), None),
            SlideCheck("a", "pyr", test_slides / "CMU-1-Small-Region.pyramid.tiff", None),
            SlideCheck("a", "boxes", test_slides / "synthetic" / "boxes.tiff", 0.5),  # override
        ]
    )
    assert [s.problem for s in statuses] == [None, None, None]
    assert [round(s.mpp, 3) for s in statuses] == [0.499, 0.499, 0.5]


def test_every_unusable_slide_is_named_with_its_reason(cmu_svs, test_slides):
    syn = test_slides / "synthetic"
    checks = [
        SlideCheck("a", "good", Path(cmu_svs), None),
        SlideCheck("a", "dpi72", syn / "boxes.tiff", None),
        SlideCheck("b", "broken", syn / "unopenable.tiff", None),
    ]
    with pytest.raises(ConfigError) as err:
        check_slides(checks)
    msg = str(err.value)
    assert msg.startswith("2 of 3 slide(s) cannot be used (checked before any job runs)")
    assert "a/dpi72: " in msg and "implausible microns-per-pixel" in msg
    assert "mpp` column in the cohort sheet" in msg  # the reader's hint on how to fix it
    assert "b/broken: " in msg and "unopenable.tiff" in msg
    assert "a/good" not in msg


def test_a_truncated_slide_is_refused_before_any_job(test_slides, tmp_path):
    """A pyramid cut short (an interrupted copy): its header reads, its tiles are missing."""
    pyramid = (test_slides / "CMU-1-Small-Region.pyramid.tiff").read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(pyramid[: len(pyramid) // 3])
    with pytest.raises(ConfigError, match=r"a/cut: .*cut.tiff: the file is truncated: "):
        check_slides([SlideCheck("a", "cut", cut, None)])
    with pytest.raises(SlideError, match="truncated") as exc:  # and so is the job's reader
        open_slide(cut)
    assert exc.value.reason == "truncated"


@pytest.mark.parametrize("keep", [800_000, 1_800_000])
def test_a_truncated_svs_is_named_truncated(cmu_svs, tmp_path, keep):
    """OpenSlide calls an .svs cut short "Unsupported or missing image file": the error says
    truncated (its first image directory, or a later one, lies past the end of the file)."""
    cut = tmp_path / "cut.svs"
    cut.write_bytes(Path(cmu_svs).read_bytes()[:keep])
    with pytest.raises(ConfigError, match=r"a/cut: .*cut.svs: the file is truncated: an image"):
        check_slides([SlideCheck("a", "cut", cut, None)])
    with pytest.raises(SlideError, match="past its end") as exc:
        open_slide(cut)
    assert exc.value.reason == "truncated"
    whole = tmp_path / "whole.svs"  # the intact file still opens
    whole.write_bytes(Path(cmu_svs).read_bytes())
    with open_slide(whole) as reader:
        assert reader.dimensions == (2220, 2967)


@pytest.mark.parametrize("keep", [1_300_000, 1_500_000])
def test_a_truncated_tiff_pyramid_is_named_truncated_not_read_as_a_plain_image(
    test_slides, tmp_path, keep
):
    """A .tif pyramid cut short: OpenSlide refuses it and the plain-image fallback, which reads
    page 0 only, opened it as a working one-level slide; now it is named truncated."""
    cut = tmp_path / "cut.tiff"
    cut.write_bytes((test_slides / "CMU-1-Small-Region.pyramid.tiff").read_bytes()[:keep])
    with pytest.raises(SlideError, match="truncated") as exc:
        open_slide(cut)
    assert exc.value.reason == "truncated"


def test_long_lists_are_cut(test_slides):
    bad = test_slides / "synthetic" / "boxes.tiff"
    checks = [SlideCheck("c", f"s{i}", bad, None) for i in range(MAX_LISTED + 3)]
    with pytest.raises(ConfigError, match=r"\.\.\. and 3 more") as err:
        check_slides(checks, threads=2)
    assert str(err.value).count("c/s") == MAX_LISTED


def test_missing_files_are_left_to_the_sheet_loader(tmp_path):
    (status,) = check_slides([SlideCheck("demo", "x", tmp_path / "later.tiff", None)])
    assert status.problem is None and status.mpp is None


def test_coarse_slides_are_a_warning(cmu_svs, caplog):
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        check_slides([SlideCheck("a", "svs", Path(cmu_svs), None)], patch_mpp=0.25)
    assert "1 slide(s) are coarser than preprocessing.patches.mpp 0.25" in caplog.text
    assert "a/svs at 0.499" in caplog.text


def test_a_target_far_finer_than_the_scan_is_refused_with_the_slide(cmu_svs):
    svs = SlideCheck("a", "svs", Path(cmu_svs), None)  # 0.499 µm/px
    check_slides([svs], patch_mpp=0.125)  # 4x: allowed (a warning)
    with pytest.raises(ConfigError) as err:
        check_slides([svs], patch_mpp=0.005)  # a typo for 0.5
    msg = str(err.value)
    assert msg.startswith("1 of 1 slide(s) cannot be used") and "a/svs: " in msg
    assert (
        "target 0.005 µm/px (preprocessing.patches.mpp, gigamil patches --mpp) is 99.8x finer than"
        in msg
    )
    assert "e.g. 0.5 for 20x" in msg and "typo" not in msg
    # an override typed in the sheet (4.99 for 0.499) is pointed at as the likelier typo
    typed = SlideCheck("a", "svs", Path(cmu_svs), 4.99)
    with pytest.raises(ConfigError, match=r"the slide's 4.99 µm/px is the override from its sheet"):
        check_slides([typed], patch_mpp=0.5)


def test_a_tissue_mask_far_finer_than_the_scan_is_refused_before_any_job(cmu_svs):
    """preprocessing.tissue.mask_mpp 0.01 (a typo for 8) asked one tissue_mask job for 46 GiB."""
    svs = SlideCheck("a", "svs", Path(cmu_svs), None)  # 0.499 µm/px
    check_slides([svs], patch_mpp=0.5, mask_mpp=8.0)
    with pytest.raises(ConfigError) as err:
        check_slides([svs], patch_mpp=0.5, mask_mpp=0.01)
    assert "a/svs: preprocessing.tissue.mask_mpp 0.01 µm/px (gigamil mask --mask-mpp) is 49.9x" in (
        str(err.value)
    )


def test_a_tissue_mask_of_a_few_pixels_is_refused_before_any_job(cmu_svs):
    """preprocessing.tissue.mask_mpp 5000 (a typo for 5) gave every slide a 1 x 1 px mask, no
    patches, and an error only at training ('no training slide has patches')."""
    svs = SlideCheck("a", "svs", Path(cmu_svs), None)  # 2220 x 2967 px at 0.499: 1108 µm wide
    check_slides([svs], patch_mpp=0.5, mask_mpp=138.0)  # 8.03 mask px on the short side
    with pytest.raises(ConfigError) as err:
        check_slides([svs], patch_mpp=0.5, mask_mpp=5000)
    assert (
        "a/svs: preprocessing.tissue.mask_mpp 5000 µm/px (gigamil mask --mask-mpp) would map this "
        "slide (1108 x 1481 µm) on fewer than 8 mask pixels a side: use at most 138 µm/px"
    ) in str(err.value)


def test_an_inverted_lesion_mask_is_a_warning(cmu_svs, tmp_path, caplog):
    """A mask of black lesion on white marks the whole slide but the lesion: its slide's
    localisation AUC would silently be scored against the background (new-user trial: read
    as 81 % lesion without a word); a usual mask says nothing."""
    from PIL import Image

    lesion = np.zeros((297, 222), np.uint8)
    lesion[100:150, 50:100] = 255
    Image.fromarray(lesion).save(tmp_path / "usual.png")
    Image.fromarray(255 - lesion).save(tmp_path / "inverted.png")
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        check_slides([SlideCheck("a", "usual", Path(cmu_svs), None, tmp_path / "usual.png")])
    assert "lesion" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        check_slides([SlideCheck("a", "inv", Path(cmu_svs), None, tmp_path / "inverted.png")])
    assert "1 lesion mask(s) mark most of their slide as lesion (e.g. a/inv: 96 % of " in (
        caplog.text
    )
    assert "inverted (lesion black on white)?" in caplog.text


def test_a_lesion_mask_that_is_no_binary_mask_stops_the_run_before_any_job(cmu_svs, tmp_path):
    """A lesion mask of the right size but the wrong content (a photo, or labels 1 and 2) was
    found by the evaluation, after training, in a traceback naming no slide."""
    from PIL import Image

    rng = np.random.default_rng(0)
    photo, labels = tmp_path / "photo.png", tmp_path / "labels.png"
    Image.fromarray(rng.integers(20, 230, (297, 222), dtype=np.uint8)).save(photo)
    two = np.zeros((297, 222), np.uint8)
    two[:50], two[100:150] = 1, 2
    Image.fromarray(two).save(labels)
    with pytest.raises(ConfigError, match=r"a/photo: mask .*photo.png: \d+ % of its pixels"):
        check_slides([SlideCheck("a", "photo", Path(cmu_svs), None, photo)])
    with pytest.raises(ConfigError, match=r"a/labels: mask .*labels.png: a label image with "):
        check_slides([SlideCheck("a", "labels", Path(cmu_svs), None, labels)])


def test_sheet_checks_resolve_paths_overrides_and_skip_cohorts(tmp_path):
    sheets = {
        "mine": pd.DataFrame(
            {"slide_id": ["s1", "s2"], "path": ["rel/s1.svs", "/abs/s2.svs"], "mpp": [np.nan, 0.25]}
        ),
        "demo": pd.DataFrame(
            {"slide_id": ["d1", "d2"], "path": ["d1.tiff", "d2.tiff"], "mpp": [np.nan, np.nan]}
        ),
    }
    (tmp_path / "d2.tiff").write_bytes(b"")  # generated already: checked like any slide
    checks = sheet_checks(sheets, skip=["demo"], base_dir=tmp_path)
    assert checks == [
        SlideCheck("mine", "s1", tmp_path / "rel" / "s1.svs", None),
        SlideCheck("mine", "s2", Path("/abs/s2.svs"), 0.25),
        SlideCheck("demo", "d2", tmp_path / "d2.tiff", None),
    ]


def test_a_lesion_mask_of_another_size_stops_the_run_before_any_job(cmu_svs, tmp_path):
    """A mask that cannot span its slide (e.g. another slide's) was found only by the
    evaluation, after training; the PNG's header and the slide's suffice."""
    from PIL import Image

    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(np.zeros((297, 222), np.uint8)).save(good)  # 2220 x 2967 at 10x
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(bad)
    statuses = check_slides([SlideCheck("a", "svs", Path(cmu_svs), None, good)])
    assert statuses[0].problem is None
    with pytest.raises(ConfigError, match=r"a/svs: .*bad.png") as err:
        check_slides([SlideCheck("a", "svs", Path(cmu_svs), 0.499, bad)])
    assert "typo" not in str(err.value)  # the µm/px override plays no part in a mask's size
    (tmp_path / "bad.json").write_text('{"downsample": 10,}')
    with pytest.raises(ConfigError, match=r"a/svs: lesion mask sidecar .*bad.json"):
        check_slides([SlideCheck("a", "svs", Path(cmu_svs), None, bad)])
    sheets = {
        "c": pd.DataFrame({"slide_id": ["s"], "path": [str(cmu_svs)], "lesion_mask": ["m.png"]})
    }
    (check,) = sheet_checks(sheets, base_dir=tmp_path)
    assert check.lesion_mask == tmp_path / "m.png"


def test_a_cohort_smaller_than_one_patch_is_refused_naming_its_override(cmu_svs, caplog):
    """A cohort MPP typed several times too small made every slide smaller than one patch: every
    job ran, no patch was cut, and training stopped with 'no training slide has patches'. One
    slide smaller than a patch among others is a tiny image: a warning."""
    typo = SlideCheck("a", "svs", Path(cmu_svs), 0.09)  # 2220 x 2967 px: 200 x 267 µm
    check_slides([typo], patch_mpp=0.972, patch_px=96)  # 93 µm: a patch fits
    with pytest.raises(ConfigError) as err:
        check_slides([typo], patch_mpp=0.972, patch_px=256)  # 249 µm: none fits
    assert (
        "a/svs: the whole slide (2220 x 2967 px at 0.09 µm/px: 200 x 267 µm) is smaller than "
        "one patch (256 px at 0.972 µm/px: 249 µm), so it would give no patch; the slide's "
        "0.09 µm/px is the override" in str(err.value)
    )
    fine = SlideCheck("a", "svs2", Path(cmu_svs), None)  # 1108 x 1481 µm: patches fit
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        statuses = check_slides([typo, fine], patch_mpp=0.972, patch_px=256)
    assert [s.problem for s in statuses] == [None, None]
    assert "1 slide(s) will give no patch (e.g. a/svs: the whole slide (2220 x 2967" in caplog.text


def test_a_cohort_smaller_than_one_patch_at_the_configured_mpp_is_refused(cmu_svs):
    """preprocessing.patches.mpp typed ten times too coarse (9.72 for 0.972): only a warning,
    then every slide was masked and extracted before training found no patch."""
    check = SlideCheck("a", "svs", Path(cmu_svs), None)  # 1108 x 1481 µm
    with pytest.raises(ConfigError, match=r"no slide of cohort a holds one patch: is "):
        check_slides([check], patch_mpp=9.72, patch_px=256)  # 2488 µm
    # a cohort of several such slides: one line, with the count (not one line per slide)
    three = [SlideCheck("a", f"s{i}", Path(cmu_svs), None) for i in range(3)]
    with pytest.raises(ConfigError) as err:
        check_slides(three, patch_mpp=9.72, patch_px=256)
    text = str(err.value)
    assert text.startswith("3 of 3 slide(s) cannot be used") and text.count("whole slide") == 1
    assert "  a: all 3 slides, e.g. s0: the whole slide (" in text


def test_an_override_far_from_the_files_mpp_is_a_warning(cmu_svs, caplog):
    """A sheet mpp of 0.25 for a 0.972 µm/px slide passed without a word; the slide's tissue then
    fell below min_area_um2 and the cohort ended in 'no slide has a prediction'."""
    near = SlideCheck("a", "near", Path(cmu_svs), 0.52)  # the file says 0.499
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        check_slides([near], patch_mpp=0.5, patch_px=96)
        assert "override far from the file's own" not in caplog.text
        far = SlideCheck("a", "far", Path(cmu_svs), 0.125)
        check_slides([near, far], patch_mpp=0.5, patch_px=96)
    assert (
        "1 slide(s) have a µm/px override far from the file's own (e.g. a/far: 0.125 typed, "
        in (caplog.text)
    )


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_a_plain_image_at_a_screen_dpi_is_refused_before_any_job(tmp_path, suffix):
    """A plain TIFF or PNG (no slide vendor, so OpenSlide's properties do not apply) whose
    resolution tags say 72 dpi (352.8 µm/px): the run stops at the preflight, not in a job."""
    from PIL import Image

    path = tmp_path / f"screen{suffix}"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(path, dpi=(72, 72))
    with pytest.raises(ConfigError) as err:
        check_slides([SlideCheck("a", "screen", path, None)])
    assert "a/screen: " in str(err.value) and "implausible microns-per-pixel 352.7" in str(
        err.value
    )
    assert check_slides([SlideCheck("a", "screen", path, 0.5)])[0].problem is None  # overridden


def test_pixels_more_than_5_percent_from_square_are_refused(tmp_path):
    """x and y µm/px may differ by up to 5 % (resampled per axis); 0.25 x 0.27 is 7.4 %."""
    import tifffile

    for y_mpp, ok in ((0.26, True), (0.27, False)):
        path = tmp_path / f"aniso{y_mpp}.tif"
        tifffile.imwrite(
            path,
            np.full((64, 64, 3), 200, np.uint8),
            photometric="rgb",
            resolution=(1e4 / 0.25, 1e4 / y_mpp),
            resolutionunit=3,
        )
        if ok:
            assert check_slides([SlideCheck("a", "s", path, None)])[0].problem is None
        else:
            with pytest.raises(ConfigError, match="non-square pixels, MPP x=0.25 y=0.27"):
                check_slides([SlideCheck("a", "s", path, None)])


def test_a_slide_refused_for_its_target_stays_refused_whatever_its_other_checks(cmu_svs, tmp_path):
    """The tissue mask's µm/px and the lesion mask are checked only for a slide usable so far:
    a fine mask_mpp or a lesion mask of the right size must not clear an earlier problem."""
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((297, 222), np.uint8)).save(good)  # spans the slide at 10x
    for check, mask_mpp in [
        (SlideCheck("a", "svs", Path(cmu_svs), None), 8.0),
        (SlideCheck("a", "svs", Path(cmu_svs), None, good), None),
    ]:
        with pytest.raises(ConfigError, match=r"a/svs: target 0.005 µm/px"):
            check_slides([check], patch_mpp=0.005, mask_mpp=mask_mpp)


def test_a_slide_exactly_one_patch_wide_gives_a_patch(cmu_svs):
    check = SlideCheck("a", "svs", Path(cmu_svs), 1.0)  # 2220 x 2967 px: 2220 x 2967 µm
    (status,) = check_slides([check], patch_mpp=10.0, patch_px=222)  # 2220 µm
    assert status.problem is None and status.small is None


def test_without_an_override_the_files_mpp_is_not_read_twice(cmu_svs):
    (status,) = check_slides([SlideCheck("a", "svs", Path(cmu_svs), None)])
    assert status.file_mpp is None
    (status,) = check_slides([SlideCheck("a", "svs", Path(cmu_svs), 0.5)])
    assert status.mpp == 0.5 and round(status.file_mpp, 3) == 0.499


def test_a_slide_with_a_problem_of_its_own_is_listed_once(cmu_svs):
    """Smaller than one patch and with a tissue mask far too fine: one slide, one entry."""
    typo = SlideCheck("a", "svs", Path(cmu_svs), 0.09)  # 200 x 267 µm
    with pytest.raises(ConfigError) as err:
        check_slides([typo], patch_mpp=0.972, patch_px=256, mask_mpp=0.0001)
    assert str(err.value).startswith("1 of 1 slide(s) cannot be used")
    assert str(err.value).count("a/svs: ") == 1


def test_a_cohort_too_small_through_its_override_is_not_told_to_check_the_patch_settings(
    cmu_svs,
):
    typo = SlideCheck("a", "svs", Path(cmu_svs), 0.09)
    with pytest.raises(ConfigError) as err:
        check_slides([typo], patch_mpp=0.972, patch_px=256)
    assert "the override" in str(err.value) and "patches.mpp (or patch_px)" not in str(err.value)


def test_a_slide_within_the_level_tolerance_of_the_target_is_not_upsampled(cmu_svs, caplog):
    near = SlideCheck("a", "svs", Path(cmu_svs), 0.504)  # 0.8 % coarser than 0.5
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        check_slides([near], patch_mpp=0.5)
    assert "coarser than" not in caplog.text


@pytest.mark.parametrize(("typed", "warned"), [(0.6, False), (0.65, True), (0.38, True)])
def test_an_override_a_quarter_off_the_files_mpp_is_a_warning(cmu_svs, caplog, typed, warned):
    with caplog.at_level(logging.WARNING, logger="gigamil.wsi.preflight"):
        check_slides([SlideCheck("a", "s", Path(cmu_svs), typed)])  # the file says 0.499
    assert ("override far from the file's own" in caplog.text) is warned
