"""The `gigamil mask` / `gigamil patches` command-line contract and the QC table."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gigamil.cli import main
from gigamil.data.store import read_store
from gigamil.wsi.qc import COLUMNS, write_qc_table


def _one_error_line(capsys, command, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if e.startswith("gigamil ")]  # log lines carry a timestamp
    assert len(err) == 1, err
    assert err[0].startswith(f"gigamil {command}: error: ")
    for frag in fragments:
        assert frag in err[0], (frag, err[0])


def test_mask_and_patches_contract(cmu_svs, tmp_path, capsys):
    mask, qc, js = tmp_path / "m.png", tmp_path / "m.qc.png", tmp_path / "m.json"
    assert main(["mask", str(cmu_svs), "--out", str(mask), "--qc", str(qc), "--json", str(js)]) == 0
    assert mask.is_file() and qc.is_file()
    # a mask named .jpg would be saved lossy (values between 0 and 255): refused before any work
    assert main(["mask", str(cmu_svs), "--out", str(tmp_path / "m.jpg")]) == 2
    assert not (tmp_path / "m.jpg").exists()
    info = json.loads(js.read_text())
    assert {"tissue_fraction", "mask_mpp", "warnings"} <= set(info)
    store = tmp_path / "s.zarr"
    assert (
        main(
            [
                "patches",
                str(cmu_svs),
                "--out",
                str(store),
                "--mpp",
                "0.5",
                "--patch-px",
                "128",
                "--stride",
                "96",
                "--mask",
                str(mask),
                "--threads",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    p, coords, grid, attrs = read_store(store)
    for key in ("slide_id", "slide_mpp", "target_mpp", "effective_mpp", "patch_px", "level"):
        assert key in attrs
    assert attrs["slide_id"] == "CMU-1-Small-Region" and attrs["stride_px"] == 96
    assert attrs["target_mpp"] == 0.5 and abs(attrs["effective_mpp"] - 0.5) <= 0.005
    assert attrs["mask_params"]["mask_file"] == str(mask.resolve())
    assert attrs["mask_params"]["mask_mpp"] == 8.0  # from the JSON sidecar next to the mask
    assert p.shape[1:] == (128, 128, 3) and p.shape[0] == len(coords) > 50
    # --slide-mpp changes the physical scale: at a claimed 0.25 µm/px, 128 px at 0.5 µm/px
    # span 256 level-0 px
    store2 = tmp_path / "s2.zarr"
    assert (
        main(
            [
                "patches",
                str(cmu_svs),
                "--out",
                str(store2),
                "--mpp",
                "0.5",
                "--patch-px",
                "128",
                "--slide-mpp",
                "0.25",
                "--min-tissue",
                "0",
                "--codec",
                "jpeg",
                "--stain-normalization",
                "macenko",
            ]
        )
        == 0
    )
    _, c2, g2, a2 = read_store(store2)
    assert a2["slide_mpp"] == 0.25 and a2["level"] == 0 and a2["codec"] == "jpeg"
    assert a2["stain_normalization"] == "macenko" and attrs["stain_normalization"] == "none"
    assert a2["patch_size_level0"] == 256.0
    np.testing.assert_array_equal(c2[1], [256, 0])
    # a store is written again in place, but --out never replaces anything else: a folder of
    # stores, the slide, the mask (each was deleted without a word)
    args = ["patches", str(cmu_svs), "--mpp", "0.5", "--patch-px", "128", "--mask", str(mask)]
    assert main([*args, "--out", str(store2), "--no-progress"]) == 0
    assert read_store(store2)[3]["codec"] == "zstd"
    for out in (tmp_path, mask):
        before = sorted(tmp_path.iterdir())
        assert main([*args, "--out", str(out), "--no-progress"]) == 2
        assert sorted(tmp_path.iterdir()) == before
    assert "m.png: exists and is not a patch store (a file)" in capsys.readouterr().err


def test_qc_table(cmu_svs, tmp_path):
    for sid in ("a", "b"):
        assert (
            main(
                [
                    "mask",
                    str(cmu_svs),
                    "--out",
                    str(tmp_path / f"{sid}.png"),
                    "--json",
                    str(tmp_path / f"{sid}.json"),
                    "--mask-mpp",
                    "16",
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "patches",
                    str(cmu_svs),
                    "--out",
                    str(tmp_path / f"{sid}.zarr"),
                    "--mpp",
                    "2",
                    "--patch-px",
                    "32",
                    "--mask",
                    str(tmp_path / f"{sid}.png"),
                    "--slide-id",
                    sid,
                ]
            )
            == 0
        )
    out = tmp_path / "qc" / "cohort.csv"
    write_qc_table(
        out,
        ["a", "b"],
        [tmp_path / "a.json", tmp_path / "b.json"],
        [tmp_path / "a.zarr", tmp_path / "b.zarr"],
        out_html=tmp_path / "qc" / "cohort.html",
        sheet={"slide_id": ["b", "a"], "patient_id": ["p2", "p1"], "label": ["x", "y"]},
    )
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS and list(df["slide_id"]) == ["a", "b"]
    assert list(df["patient_id"]) == ["p1", "p2"] and list(df["label"]) == ["y", "x"]
    page = (tmp_path / "qc" / "cohort.html").read_text()
    assert "<th>tissue (%)</th>" in page and "<th>width (px)</th>" in page
    # the mask's threshold and resolution, as its QC thumbnail states them
    info = json.loads((tmp_path / "a.json").read_text())
    assert df.loc[0, "tissue_threshold"] == pytest.approx(info["threshold_value"], rel=1e-6)
    assert (df["mask_mpp"] == 16).all() and "<th>saturation threshold (0–255)</th>" in page
    assert f"<td>{100 * df['tissue_fraction'][0]:.1f}</td>" in page  # a fraction shown in %
    row = df.iloc[0]
    assert (row["width"], row["height"]) == (2220, 2967)
    assert row["slide_mpp"] == pytest.approx(0.499) and row["n_patches"] > 0
    assert 0.2 < row["tissue_fraction"] < 0.6 and row["extract_seconds"] >= 0


def test_unopenable_slide(test_slides, tmp_path, capsys):
    slide = test_slides / "synthetic" / "unopenable.tiff"
    assert main(["mask", str(slide), "--out", str(tmp_path / "m.png")]) == 2
    _one_error_line(capsys, "mask", str(slide), "Unsupported TIFF compression")
    assert not (tmp_path / "m.png").exists()


def test_unreadable_slide(test_slides, tmp_path, capsys):
    slide = test_slides / "synthetic" / "unreadable.svs"
    assert (
        main(
            [
                "patches",
                str(slide),
                "--out",
                str(tmp_path / "s.zarr"),
                "--mpp",
                "0.5",
                "--patch-px",
                "8",
                "--min-tissue",
                "0",
            ]
        )
        == 2
    )
    _one_error_line(capsys, "patches", str(slide), "Bogus marker length")
    assert not list(tmp_path.iterdir())  # no store, no temporary leftovers


def test_missing_mpp_needs_override(write_tiff, tmp_path, capsys):
    img = np.full((300, 400, 3), 240, np.uint8)
    slide = write_tiff(tmp_path / "nompp.tiff", img, mpp=None)
    assert main(["mask", str(slide), "--out", str(tmp_path / "m.png")]) == 2
    _one_error_line(capsys, "mask", str(slide), "no microns-per-pixel (MPP)", "--slide-mpp")
    assert (
        main(
            [
                "patches",
                str(slide),
                "--out",
                str(tmp_path / "s.zarr"),
                "--mpp",
                "1",
                "--patch-px",
                "32",
            ]
        )
        == 2
    )
    _one_error_line(capsys, "patches", str(slide), "`mpp` column")


def test_implausible_mpp_message(test_slides, tmp_path, capsys):
    slide = test_slides / "synthetic" / "boxes.tiff"
    assert main(["mask", str(slide), "--out", str(tmp_path / "m.png")]) == 2
    _one_error_line(capsys, "mask", str(slide), "implausible", "--slide-mpp")


def test_a_mask_of_a_few_pixels_is_refused(cmu_svs, tmp_path, capsys):
    """--mask-mpp 5000 (a typo for 5) wrote a 1 x 1 px mask without a word, and gigamil patches
    then cut nothing; the pipeline refuses it before any job, the command now does too."""
    out = tmp_path / "m.png"
    assert main(["mask", str(cmu_svs), "--out", str(out), "--mask-mpp", "5000"]) == 2
    _one_error_line(capsys, "mask", str(cmu_svs), "fewer than 8 mask pixels", "at most 138")
    assert not out.exists()
    assert main(["mask", str(cmu_svs), "--out", str(out), "--mask-mpp", "138"]) == 0
    assert min(Image.open(out).size) == 8


def test_empty_tissue_is_a_warning_not_a_crash(write_tiff, tmp_path, capsys):
    white = np.full((512, 512, 3), 248, np.uint8)
    slide = write_tiff(tmp_path / "white.tiff", white, mpp=0.5, levels=2)
    mask, js = tmp_path / "w.png", tmp_path / "w.json"
    assert main(["mask", str(slide), "--out", str(mask), "--json", str(js), "--mask-mpp", "4"]) == 0
    assert not np.asarray(Image.open(mask)).any()
    assert any("no tissue" in w for w in json.loads(js.read_text())["warnings"])
    assert (
        main(
            [
                "patches",
                str(slide),
                "--out",
                str(tmp_path / "w.zarr"),
                "--mpp",
                "1",
                "--patch-px",
                "32",
                "--mask",
                str(mask),
            ]
        )
        == 0
    )
    p, _, _, attrs = read_store(tmp_path / "w.zarr")
    assert p.shape == (0, 32, 32, 3) and attrs["warnings"]
    assert "no patch reaches" in capsys.readouterr().err


def test_bad_arguments(cmu_svs, tmp_path, capsys):
    assert (
        main(["mask", str(cmu_svs), "--out", str(tmp_path / "m.png"), "--threshold", "high"]) == 2
    )
    _one_error_line(capsys, "mask", "--threshold")
    with pytest.raises(SystemExit) as exc:  # argparse: the schema's range of patch_px
        main(["patches", str(cmu_svs), "--out", str(tmp_path / "s.zarr"), "--mpp", "0.5",
              "--patch-px", "0"])  # fmt: skip
    assert exc.value.code == 2
    assert "argument --patch-px: must be >= 8, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --out is required
        main(["patches", str(cmu_svs), "--mpp", "0.5", "--patch-px", "64"])


def test_console_script_reports_one_line(test_slides, tmp_path):
    exe = shutil.which("gigamil")
    assert exe, "the gigamil console script is not installed"
    slide = test_slides / "synthetic" / "unopenable.tiff"
    proc = subprocess.run(
        [
            exe,
            "patches",
            str(slide),
            "--out",
            str(tmp_path / "s.zarr"),
            "--mpp",
            "0.5",
            "--patch-px",
            "256",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gigamil patches: error: ")
    assert str(slide) in lines[0]


def test_threshold_must_be_otsu_or_within_0_255():
    """A saturation threshold above 255 (or below 0) masks nothing or everything: refused."""
    from gigamil.commands.mask import threshold_arg
    from gigamil.errors import GigamilError

    assert threshold_arg("otsu") == "otsu" and threshold_arg("0") == 0.0
    assert threshold_arg("255") == 255.0
    for bad in ("256", "300", "-1", "nan"):
        with pytest.raises(GigamilError, match="--threshold must be 'otsu' or a number in 0..255"):
            threshold_arg(bad)


def test_mask_options_reach_the_tissue_parameters(monkeypatch, tmp_path):
    """Every `gigamil mask` option is used, none silently replaced by its default."""
    from gigamil.wsi import tissue

    seen = {}
    monkeypatch.setattr(tissue, "make_mask", lambda *a: seen.update(args=a))
    argv = ["mask", "s.svs", "--out", str(tmp_path / "m.png"), "--mask-mpp", "16"]
    argv += ["--threshold", "40", "--median-px", "7", "--close-um", "10", "--open-um", "3"]
    argv += ["--min-area-um2", "5", "--dark-value", "20", "--keep-pen-ink", "--slide-mpp", "0.3"]
    assert main(argv) == 0
    slide, out, qc, js, params, slide_mpp = seen["args"]
    assert slide == "s.svs" and str(out) == str(tmp_path / "m.png") and slide_mpp == 0.3
    assert qc is None and js is None
    assert (params.mask_mpp, params.threshold, params.median_px) == (16.0, 40.0, 7)
    assert (params.close_um, params.open_um, params.min_area_um2) == (10.0, 3.0, 5.0)
    assert params.dark_value == 20 and params.pen_ink is False


def test_patches_records_the_given_slide_id(cmu_svs, tmp_path):
    """--slide-id is the store's slide_id (heatmap --predictions finds the slide by it), not
    the file name."""
    out = tmp_path / "s.zarr"
    args = ["patches", str(cmu_svs), "--out", str(out), "--mpp", "4", "--patch-px", "16"]
    assert main([*args, "--slide-id", "case-7", "--no-progress"]) == 0
    assert read_store(out)[3]["slide_id"] == "case-7"


def _config(tmp_path, preprocessing: dict) -> str:
    """A config.yaml like a shared model's: a train cohort and this preprocessing section."""
    import yaml

    cfg = {
        "classes": ["normal", "lesion"],
        "cohorts": {"c": {"sheet": "absent.csv"}},  # Lab B has no such sheet: not read
        "preprocessing": preprocessing,
    }
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_mask_takes_the_tissue_settings_of_a_config_under_the_flags(monkeypatch, tmp_path):
    """A lab predicting with shared models typed the training config's tissue settings by
    hand; --config takes them, and a flag given still wins."""
    from gigamil.wsi import tissue

    seen = {}
    monkeypatch.setattr(tissue, "make_mask", lambda *a: seen.update(params=a[4]))
    shared = _config(tmp_path, {"tissue": {"threshold": 30, "close_um": 8.0, "pen_ink": False}})
    argv = ["mask", "s.svs", "--out", str(tmp_path / "m.png"), "--config", shared]
    assert main(argv) == 0
    p = seen["params"]
    assert (p.threshold, p.close_um, p.pen_ink) == (30, 8.0, False)
    assert (p.mask_mpp, p.median_px, p.open_um) == (8.0, 5, 16.0)  # the schema's defaults
    assert main([*argv, "--close-um", "4"]) == 0 and seen["params"].close_um == 4.0
    assert main(["mask", "s.svs", "--out", str(tmp_path / "m.png")]) == 0
    assert seen["params"].threshold == "otsu" and seen["params"].pen_ink is True  # no --config
    bad = _config(tmp_path, {"tissue": {"close_um": -1}})
    assert main([*argv[:4], "--config", bad]) == 2


def test_patches_take_the_patch_settings_of_a_config(cmu_svs, tmp_path, capsys):
    shared = _config(
        tmp_path,
        {
            "patches": {"mpp": 4.0, "patch_px": 16, "stride_px": 8, "min_tissue": 0.25},
            "tissue": {"mask_mpp": 16.0},
        },
    )
    out = tmp_path / "s.zarr"
    args = ["patches", str(cmu_svs), "--out", str(out), "--no-progress"]
    assert main([*args, "--config", shared]) == 0
    attrs = read_store(out)[3]
    assert (attrs["target_mpp"], attrs["stride_px"], attrs["min_tissue"]) == (4.0, 8, 0.25)
    assert attrs["mask_params"]["mask_mpp"] == 16.0  # the mask it computed: the config's
    flagged = ["patches", str(cmu_svs), "--out", str(tmp_path / "t.zarr"), "--no-progress"]
    assert main([*flagged, "--config", shared, "--min-tissue", "0.75"]) == 0  # the flag wins
    assert read_store(tmp_path / "t.zarr")[3]["min_tissue"] == 0.75
    capsys.readouterr()
    assert main([*args[:4], "--no-progress"]) == 2  # neither --mpp/--patch-px nor --config
    assert "give --mpp and --patch-px, or --config" in capsys.readouterr().err


def test_every_tissue_flag_wins_over_the_config_zero_included(monkeypatch, tmp_path):
    """A flag of 0 (--open-um 0: no opening) is a value given, not a flag left out."""
    from gigamil.wsi import tissue

    seen = {}
    monkeypatch.setattr(tissue, "make_mask", lambda *a: seen.update(params=a[4]))
    shared = _config(
        tmp_path,
        {
            "tissue": {
                "mask_mpp": 16.0,
                "median_px": 7,
                "close_um": 8.0,
                "open_um": 4.0,
                "min_area_um2": 100.0,
                "dark_value": 30,
            }
        },
    )
    flags = ["--mask-mpp", "4", "--median-px", "3", "--close-um", "0", "--open-um", "0"]
    flags += ["--min-area-um2", "0", "--dark-value", "0", "--threshold", "20"]
    argv = ["mask", "s.svs", "--out", str(tmp_path / "m.png"), "--config", shared, *flags]
    assert main(argv) == 0
    p = seen["params"]
    assert (p.mask_mpp, p.median_px, p.threshold) == (4.0, 3, 20.0)
    assert (p.close_um, p.open_um, p.min_area_um2, p.dark_value) == (0.0, 0.0, 0.0, 0)


def test_patches_need_both_mpp_and_patch_px_without_a_config(tmp_path, capsys):
    base = ["patches", "s.svs", "--out", str(tmp_path / "s.zarr"), "--no-progress"]
    for half in (["--mpp", "4"], ["--patch-px", "16"]):
        assert main([*base, *half]) == 2
        assert "give --mpp and --patch-px, or --config" in capsys.readouterr().err


def test_mask_warns_about_an_even_median_kernel(monkeypatch, tmp_path, capsys):
    from gigamil.wsi import tissue

    monkeypatch.setattr(tissue, "make_mask", lambda *a: None)
    argv = ["mask", "s.svs", "--out", str(tmp_path / "m.png")]
    assert main([*argv, "--median-px", "4"]) == 0
    assert "--median-px 4 is even; a median blur needs an odd kernel" in capsys.readouterr().err
    assert main([*argv, "--median-px", "3"]) == 0
    assert "is even" not in capsys.readouterr().err


def test_every_patch_flag_wins_over_the_config(monkeypatch, tmp_path):
    """The PatchParams extract_patches gets: the config's under each flag given."""
    from types import SimpleNamespace

    from gigamil.wsi import extract

    seen = {}

    def fake(slide, out, params, **kw):
        seen.update(params=params, tissue=kw["tissue_params"])
        return SimpleNamespace(n_patches=0, attrs={"effective_mpp": params.mpp}, seconds=0.0)

    monkeypatch.setattr(extract, "extract_patches", fake)
    shared = _config(tmp_path, {"patches": {"mpp": 4.0, "patch_px": 16, "codec": "zstd"}})
    argv = ["patches", "s.svs", "--out", str(tmp_path / "s.zarr"), "--config", shared]
    flags = ["--stride", "8", "--min-tissue", "0.3", "--codec", "jpeg", "--jpeg-quality", "70"]
    flags += ["--stain-normalization", "macenko", "--resample-tolerance", "0.01"]
    assert main([*argv, *flags, "--no-progress"]) == 0
    p = seen["params"]
    assert (p.mpp, p.patch_px, p.stride_px, p.min_tissue) == (4.0, 16, 8, 0.3)
    assert (p.codec, p.jpeg_quality, p.stain_normalization) == ("jpeg", 70, "macenko")
    assert p.resample_tolerance == 0.01 and seen["tissue"] is not None
    assert main([*argv, "--mpp", "8", "--patch-px", "8", "--no-progress"]) == 0
    assert (seen["params"].mpp, seen["params"].patch_px) == (8.0, 8)


def test_an_even_median_from_the_config_is_named_as_the_configs_key(monkeypatch, tmp_path, capsys):
    """It was reported as a --median-px flag nobody gave."""
    from gigamil.wsi import tissue

    monkeypatch.setattr(tissue, "make_mask", lambda *a: None)
    shared = _config(tmp_path, {"tissue": {"median_px": 4}})
    assert main(["mask", "s.svs", "--out", str(tmp_path / "m.png"), "--config", shared]) == 0
    err = capsys.readouterr().err
    assert f"{shared}: preprocessing.tissue.median_px 4 is even; a median blur" in err
    assert "--median-px" not in err


def test_a_mask_without_its_json_beside_it_is_warned_about(cmu_svs, tmp_path, capsys):
    """`--json` under another name than the mask's: the store recorded no tissue settings and
    gigamil predict compared none, without a word (a model-sharing trial)."""
    mask = tmp_path / "e.mask.png"
    assert main(["mask", str(cmu_svs), "--out", str(mask), "--json", str(tmp_path / "e.json")]) == 0
    args = ["patches", str(cmu_svs), "--mpp", "4", "--patch-px", "16", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a.zarr"), "--mask", str(mask)]) == 0
    assert "no readable e.mask.json beside it" in capsys.readouterr().err
    (tmp_path / "e.json").rename(tmp_path / "e.mask.json")
    assert main([*args, "--out", str(tmp_path / "b.zarr"), "--mask", str(mask)]) == 0
    assert "beside it" not in capsys.readouterr().err


def test_a_config_of_only_its_preprocessing_section_is_enough(monkeypatch, tmp_path, capsys):
    """--config needed a whole pipeline config (classes, cohorts) for the one section it reads;
    a config without that section silently cut at the schema's defaults."""
    import yaml

    from gigamil.wsi import tissue

    seen = {}
    monkeypatch.setattr(tissue, "make_mask", lambda *a: seen.update(params=a[4]))
    only = tmp_path / "only.yaml"
    only.write_text(yaml.safe_dump({"preprocessing": {"tissue": {"close_um": 8.0}}}))
    argv = ["mask", "s.svs", "--out", str(tmp_path / "m.png")]
    assert main([*argv, "--config", str(only)]) == 0 and seen["params"].close_um == 8.0
    assert "no preprocessing section" not in capsys.readouterr().err
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"training": {"epochs": 3}}))
    assert main([*argv, "--config", str(bare)]) == 0
    assert f"--config {bare} has no preprocessing section" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"preprocessing": {"tissue": {"close_um": -1}}}))
    assert main([*argv, "--config", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    assert main([*argv, "--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: config file not found" in capsys.readouterr().err


def test_mask_json_under_another_name_than_the_masks_is_warned_about(monkeypatch, tmp_path, capsys):
    from gigamil.wsi import tissue

    monkeypatch.setattr(tissue, "make_mask", lambda *a: None)
    argv = ["mask", "s.svs", "--out", str(tmp_path / "e.mask.png")]
    assert main([*argv, "--json", str(tmp_path / "e.json")]) == 0
    assert "reads the mask's settings from" in capsys.readouterr().err
    assert main([*argv, "--json", str(tmp_path / "e.mask.json")]) == 0
    assert "reads the mask's settings" not in capsys.readouterr().err


def test_patches_read_the_config_once(cmu_svs, tmp_path, capsys):
    """The patch and the tissue settings come from one reading of --config: a file without a
    preprocessing section was warned about twice."""
    import yaml

    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"training": {"epochs": 3}}))
    args = ["patches", str(cmu_svs), "--out", str(tmp_path / "s.zarr"), "--no-progress"]
    assert main([*args, "--config", str(bare), "--mpp", "4", "--patch-px", "16"]) == 0
    assert capsys.readouterr().err.count("has no preprocessing section") == 1


def test_a_mask_too_coarse_for_the_short_side_is_refused(write_tiff, tmp_path, capsys):
    """The mask must have 8 pixels on the slide's short side, whichever that is: a strip of
    tissue 2048 px wide and 64 px (32 µm) high maps to 4 mask rows at 8 µm/px."""
    strip = np.full((64, 2048, 3), 200, np.uint8)
    slide = write_tiff(tmp_path / "strip.tiff", strip, mpp=0.5)
    out = tmp_path / "m.png"
    assert main(["mask", str(slide), "--out", str(out), "--mask-mpp", "8"]) == 2
    _one_error_line(capsys, "mask", str(slide), "fewer than 8 mask pixels", "at most 4")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--qc", "{slide}"], "--qc {slide}: that is the slide itself"),
        (["--json", "{slide}"], "--json {slide}: that is the slide itself"),
        (["--qc", "{out}"], "--out and --qc both name {out}"),
        (["--json", "{out}"], "--out and --json both name {out}"),
        (["--qc", "{tmp}"], "--qc {tmp}: a folder"),
        (["--qc", "{tmp}/qc.txt"], "--qc {tmp}/qc.txt: the QC image is written as PNG or JPEG"),
    ],
)
def test_mask_outputs_that_would_destroy_a_file_are_refused_first(
    cmu_svs, tmp_path, capsys, flags, fragment
):
    """`--qc SLIDE` replaced the slide with its QC image, `--json MASK.png` the mask with the
    JSON, and `--qc DIR` / `--qc qc.txt` were a traceback after the mask was written (a review
    of the CLI): now one line each, before anything is written."""
    slide = tmp_path / "s.svs"
    shutil.copy(cmu_svs, slide)
    out = tmp_path / "m.png"
    names = {"slide": str(slide), "out": str(out), "tmp": str(tmp_path)}
    argv = ["mask", str(slide), "--out", str(out), *(f.format(**names) for f in flags)]
    before = slide.read_bytes()
    assert main(argv) == 2
    _one_error_line(capsys, "mask", fragment.format(**names))
    assert slide.read_bytes() == before and not out.exists()


def test_a_new_mask_rewrites_the_stale_sidecar_beside_it(cmu_svs, tmp_path, capsys):
    """A mask made again without --json left the earlier mask's sidecar beside it, and gigamil
    patches --mask recorded its settings (otsu, close_um 32) for the new mask (threshold 120,
    close_um 0)."""
    mask = tmp_path / "m.png"
    assert main(["mask", str(cmu_svs), "--out", str(mask), "--json", str(tmp_path / "m.json")]) == 0
    assert (
        main(["mask", str(cmu_svs), "--out", str(mask), "--threshold", "120", "--close-um", "0"])
        == 0
    )
    assert "the sidecar of an earlier mask" in capsys.readouterr().err
    params = json.loads((tmp_path / "m.json").read_text())["params"]
    assert params["threshold"] == 120 and params["close_um"] == 0


def test_a_slide_mpp_typo_is_named_before_any_work(cmu_svs, tmp_path, capsys, monkeypatch):
    """`--slide-mpp 25` typed for 0.25: gigamil patches computed the tissue mask, then advised
    only to change --mpp; the pipeline's preflight asks whether the sheet's `mpp` is a typo.
    Now the commands ask it of --slide-mpp, before any work."""
    import gigamil.wsi.extract
    import gigamil.wsi.tissue

    def no_work(*args, **kwargs):
        raise AssertionError("the slide was processed before its µm/px was checked")

    monkeypatch.setattr(gigamil.wsi.extract, "extract_patches", no_work)
    monkeypatch.setattr(gigamil.wsi.tissue, "make_mask", no_work)
    typo = "the slide's 25 µm/px is the override --slide-mpp: is that a typo?"
    argv = ["patches", str(cmu_svs), "--out", str(tmp_path / "p.zarr"), "--mpp", "0.972"]
    assert main([*argv, "--patch-px", "96", "--slide-mpp", "25"]) == 2
    _one_error_line(capsys, "patches", "25.7x finer than the slide's 25 µm/px", typo)
    argv[-1] = "0.1"  # without the override: the advice to change --mpp alone
    assert main([*argv, "--patch-px", "96", "--mask", str(tmp_path / "m.png")]) == 2
    err = capsys.readouterr().err
    assert "finer than the slide's 0.499 µm/px" in err and "typo" not in err
    out = str(tmp_path / "m.png")
    assert main(["mask", str(cmu_svs), "--out", out, "--slide-mpp", "25", "--mask-mpp", "2"]) == 2
    _one_error_line(capsys, "mask", "12.5x finer than the slide's 25 µm/px", typo)
    assert not list(tmp_path.iterdir())
