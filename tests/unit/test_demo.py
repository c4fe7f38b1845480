"""The synthetic demo cohort generator (gigamil.demo, `gigamil demo --kind synthetic`), the fast
test cohort; the default real-tissue demo is tested in test_demo_tiles.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from skimage.color import rgb2hed
from sklearn.metrics import roc_auc_score

from gigamil import demo, demo_io
from gigamil.cli import main
from gigamil.errors import GigamilError

MASK_SIDE = demo.SLIDE_PX // demo.MASK_DOWNSAMPLE  # 128


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The full default cohort (seed 0, 16 patients of 1 or 2 slides), generated once."""
    out = tmp_path_factory.mktemp("demo") / "out"
    return out, demo.make_demo_cohort(out)


def _not_white_blocks(rgb: np.ndarray, block: int) -> np.ndarray:
    """Fraction of not-white pixels (min channel < 215) per block x block tile."""
    h, w = rgb.shape[:2]
    nw = rgb.min(axis=-1) < 215
    return nw.reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def test_same_seed_same_bytes_and_relative_paths(cohort, tmp_path, monkeypatch, file_digests):
    full_out, _ = cohort
    runs = {}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        args = ["demo", "out", "--kind", "synthetic", "--seed", "3", "--patients", "2"]
        args += ["--slides-per-patient", "1"]
        assert main(args) == 0
        runs[name] = file_digests(tmp_path / name / "out")
    assert runs["a"] == runs["b"]
    assert sorted(runs["a"]) == [
        "lesion_masks/demo_p01_s1.json",
        "lesion_masks/demo_p01_s1.png",
        "lesion_masks/demo_p02_s1.json",
        "lesion_masks/demo_p02_s1.png",
        "sheet.csv",
        "slides/demo_p01_s1.tiff",
        "slides/demo_p02_s1.tiff",
    ]
    # another seed (the seed-0 cohort) gives other slides
    seed0 = file_digests(full_out)
    assert runs["a"]["slides/demo_p01_s1.tiff"] != seed0["slides/demo_p01_s1.tiff"]
    sheet = pd.read_csv(tmp_path / "a" / "out" / "sheet.csv")
    assert sheet["path"].tolist() == [f"out/slides/{s}.tiff" for s in sheet["slide_id"]]
    assert sorted(sheet["label"]) == ["lesion", "normal"]


def test_sheet_structure(cohort):
    out, sheet = cohort
    assert list(sheet.columns) == ["slide_id", "patient_id", "label", "path", "lesion_mask"]
    for row in sheet.itertuples():  # every slide's ground truth, all zero on normal slides
        assert Path(row.lesion_mask) == out / "lesion_masks" / f"{row.slide_id}.png"
        assert Path(row.lesion_mask).is_file()
    assert len(sheet) == 22 and sheet["slide_id"].is_unique
    assert sheet["patient_id"].nunique() == 16
    assert sorted(set(sheet.groupby("patient_id").size())) == [1, 2]  # one or two slides
    labels = sheet.groupby("patient_id")["label"].agg(set)
    assert all(len(v) == 1 for v in labels), "a patient has conflicting labels"
    assert sum(v == {"lesion"} for v in labels) == 8
    assert set(sheet["label"]) == {"normal", "lesion"}
    assert sheet["slide_id"].str.fullmatch(r"demo_p\d\d_s\d").all()
    assert (
        sheet["path"] == [(out / "slides" / f"{s}.tiff").as_posix() for s in sheet.slide_id]
    ).all()
    assert pd.read_csv(out / "sheet.csv").equals(sheet)


def test_openslide_reads_pyramid_and_mpp(cohort):
    _, sheet = cohort
    for path in sheet["path"]:
        with openslide.OpenSlide(path) as slide:
            assert slide.properties["openslide.vendor"] == "generic-tiff"
            assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.499, abs=1e-4)
            assert float(slide.properties["openslide.mpp-y"]) == pytest.approx(0.499, abs=1e-4)
            assert slide.level_count == 3
            assert slide.level_dimensions == ((2048, 2048), (1024, 1024), (512, 512))
            assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
            tile = np.asarray(slide.read_region((1000, 1000), 1, (64, 64)).convert("RGB"))
            assert tile.shape == (64, 64, 3)


def test_masks_align_with_tissue_and_lesions_are_hematoxylin_rich(cohort):
    out, sheet = cohort
    block = demo.MASK_DOWNSAMPLE // 2  # mask pixel side at level 1 (downsample 2)
    lesion_h, other_h = [], []
    for row in sheet.itertuples():
        mask, mpp = demo_io.load_lesion_mask(out / "lesion_masks" / f"{row.slide_id}.png")
        meta = json.loads((out / "lesion_masks" / f"{row.slide_id}.json").read_text())
        assert mask.dtype == bool and mask.shape == (MASK_SIDE, MASK_SIDE)
        assert mpp == pytest.approx(0.499 * 16) and meta["downsample"] == 16
        assert 0.40 <= meta["tissue_fraction"] <= 0.70
        with openslide.OpenSlide(row.path) as slide:
            rgb = np.asarray(slide.read_region((0, 0), 1, slide.level_dimensions[1]).convert("RGB"))
        not_white = _not_white_blocks(rgb, block)  # (128, 128)
        tissue = not_white >= 0.5
        assert 0.3 <= tissue.mean() <= 0.75, f"{row.slide_id}: tissue covers {tissue.mean():.2f}"
        if row.label == "normal":
            assert not mask.any()
            continue
        # lesion only on tissue, 15-30 % of it
        assert not_white[mask].min() >= 0.4, row.slide_id
        assert tissue[mask].mean() >= 0.98, row.slide_id
        assert 0.15 <= mask.sum() / tissue.sum() <= 0.30, row.slide_id
        h = rgb2hed(rgb)[..., 0].reshape(MASK_SIDE, block, MASK_SIDE, block).mean(axis=(1, 3))
        lesion_h.append(h[mask].mean())
        other_h.append(h[tissue & ~mask].mean())
        grey = rgb.mean(axis=-1).reshape(MASK_SIDE, block, MASK_SIDE, block).mean(axis=(1, 3))
        assert grey[mask].mean() < grey[tissue & ~mask].mean() - 5, row.slide_id
    assert len(lesion_h) == (sheet["label"] == "lesion").sum() == 12
    assert all(a > b + 0.01 for a, b in zip(lesion_h, other_h, strict=True))


def test_lesion_visible_in_32px_patches_at_2um(cohort):
    """Even one hand-made feature (mean hematoxylin) separates lesion from other tissue patches
    at level 2 (≈2 µm/px) in 32-px patches; a CNN sees texture on top of that."""
    out, sheet = cohort
    feats, labels = [], []
    for row in sheet.itertuples():
        with openslide.OpenSlide(row.path) as slide:
            rgb = np.asarray(slide.read_region((0, 0), 2, slide.level_dimensions[2]).convert("RGB"))
        mask, _ = demo_io.load_lesion_mask(out / "lesion_masks" / f"{row.slide_id}.png")
        n = rgb.shape[0] // 32  # 16 x 16 patches of 32 px
        h = rgb2hed(rgb)[..., 0].reshape(n, 32, n, 32).mean(axis=(1, 3))
        lesion_cover = mask.reshape(n, 8, n, 8).mean(axis=(1, 3))
        keep = _not_white_blocks(rgb, 32) >= 0.5
        feats += h[keep].tolist()
        labels += (lesion_cover[keep] >= 0.5).tolist()
    assert 200 <= sum(labels) <= len(labels) // 3
    assert roc_auc_score(labels, feats) > 0.85


def test_load_lesion_mask_missing_sidecar(tmp_path):
    demo_io.write_lesion_mask(
        tmp_path / "x.png",
        np.eye(8, dtype=bool),
        "x",
        0.5,
        0.2,
        demo.SOURCE_MPP,
        demo.MASK_DOWNSAMPLE,
    )
    mask, mpp = demo_io.load_lesion_mask(tmp_path / "x.png")
    assert (mask == np.eye(8, dtype=bool)).all() and mpp == pytest.approx(7.984)
    (tmp_path / "x.json").unlink()
    with pytest.raises(GigamilError, match="x.json"):
        demo_io.load_lesion_mask(tmp_path / "x.png")


def test_cli_rejects_bad_sizes(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "o"), "--patients", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gigamil demo: error: demo cohort needs at least 2 patients (got 1)"
    assert not (tmp_path / "o").exists()


def test_demo_refuses_to_replace_a_cohort_without_overwrite(tmp_path, capsys):
    """A rerun into the same OUTDIR (e.g. another --seed) replaced the slides its patch stores
    and models were made from, without a word."""
    from gigamil.cli import main

    out = tmp_path / "d"
    args = ["demo", str(out), "--kind", "synthetic", "--patients", "2", "--slides-per-patient", "1"]
    assert main(args) == 0
    before = (out / "sheet.csv").read_bytes()
    capsys.readouterr()
    assert main([*args, "--seed", "5"]) == 2
    assert f"OUTDIR {out} already holds a cohort" in capsys.readouterr().err
    assert (out / "sheet.csv").read_bytes() == before
    assert main([*args, "--seed", "5", "--overwrite"]) == 0


def test_every_demo_slide_is_its_own_scan(cohort):
    """Each slide draws its own layout, stain and lesions ([seed, 2, patient, slide]): two
    slides of a patient that were one image under two ids (their TIFFs differ only in the
    description, so no check of the workflow would notice) would be one slide counted twice."""
    _, sheet = cohort
    images = set()
    for path in sheet["path"]:
        with openslide.OpenSlide(path) as slide:
            level = slide.level_count - 1
            rgb = slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB")
        images.add(np.asarray(rgb).tobytes())
    assert len(images) == len(sheet)
