"""The real-tissue demo cohort generator (gigamil.demo_tiles, `gigamil demo`)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage as ndi

from gigamil import demo_tiles, tile_pool
from gigamil.cli import main
from gigamil.demo_io import load_lesion_mask
from gigamil.errors import GigamilError
from gigamil.layout import lesion_masks

REPO = Path(__file__).resolve().parents[2]
PX = 96  # PatchCamelyon tile side


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The default demo cohort (seed 0, packaged tiles, 16 patients of 1 or 2 slides)."""
    out = tmp_path_factory.mktemp("tiles") / "out"
    return out, demo_tiles.make_tile_cohort(out)


def _tile_folder(root: Path, n_normal: int, n_tumour: int, seed: int = 0) -> Path:
    """A labelled tile folder of plain coloured 96-px JPEGs: pink normal, purple tumour."""
    rng = np.random.default_rng(seed)
    for cls, n, colour in ((0, n_normal, (225, 150, 190)), (1, n_tumour, (120, 60, 160))):
        (root / str(cls)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            noise = rng.normal(0, 12, size=(PX, PX, 3))
            img = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / str(cls) / f"patch{i:07d}.jpg", quality=90)
    return root


def test_committed_sheet_is_generated_sheet(cohort):
    _, sheet = cohort
    committed = pd.read_csv(REPO / "resources" / "demo" / "sheet.csv")
    expected = sheet.assign(
        path=[f"results/demo/slides/{s}.tiff" for s in sheet["slide_id"]],
        lesion_mask=[f"results/demo/lesion_masks/{s}.png" for s in sheet["slide_id"]],
    )
    pd.testing.assert_frame_equal(committed, expected)


def test_cohort_structure_no_reuse_and_lesion_regions(cohort):
    out, sheet = cohort
    assert len(sheet) == 22 and sheet["patient_id"].nunique() == 16
    assert sorted(set(sheet.groupby("patient_id").size())) == [1, 2]  # one or two slides
    assert (sheet.groupby("patient_id")["label"].nunique() == 1).all()
    assert (sheet.drop_duplicates("patient_id")["label"] == "lesion").sum() == 8
    tiles = pd.read_csv(out / "tiles.csv")
    assert tiles["sha256"].is_unique and tiles["file"].is_unique, "a tile is used twice"
    packaged = tile_pool.packaged_manifest()
    assert set(tiles["sha256"]) <= set(packaged["sha256"])
    assert (tiles["label"] == tiles["file"].str[0].astype(int)).all()
    for row in sheet.itertuples():
        t = tiles[tiles["slide_id"] == row.slide_id]
        lo, hi = demo_tiles.TILES_PER_SLIDE
        assert lo <= len(t) <= hi
        with openslide.OpenSlide(row.path) as slide:
            w, h = slide.dimensions
        grid = np.zeros((h // PX, w // PX), dtype=bool)
        grid[t["row"], t["col"]] = True
        lesion = np.zeros_like(grid)
        lesion[t["row"], t["col"]] = t["label"] == 1
        # one hole-free 4-connected blob with an empty border of cells
        assert ndi.label(grid)[1] == 1 and (ndi.binary_fill_holes(grid) == grid).all()
        assert not (grid[0].any() or grid[-1].any() or grid[:, 0].any() or grid[:, -1].any())
        frac = lesion.sum() / grid.sum()
        if row.label == "normal":
            assert frac == 0, row.slide_id
        else:
            assert 0.20 <= frac <= 0.35, (row.slide_id, frac)
            assert ndi.label(lesion)[1] == 1, f"{row.slide_id}: tumour region not contiguous"
        meta = json.loads((out / "lesion_masks" / f"{row.slide_id}.json").read_text())
        assert meta["lesion_fraction_of_tissue"] == pytest.approx(frac, abs=1e-4)


def test_tiff_mpp_pyramid_and_masks_align_with_tumour_tiles(cohort):
    out, sheet = cohort
    tiles = pd.read_csv(out / "tiles.csv")
    pool = {t.sha256: t for t in tile_pool.read_tile_pool(None)}
    for row in sheet.iloc[::5].itertuples():  # every fifth slide, both labels
        with openslide.OpenSlide(row.path) as slide:
            assert slide.properties["openslide.vendor"] == "generic-tiff"
            assert (
                "mosaic of PatchCamelyon tiles (CC0)" in slide.properties["tiff.ImageDescription"]
            )
            for key in ("openslide.mpp-x", "openslide.mpp-y"):
                assert float(slide.properties[key]) == pytest.approx(0.972, abs=1e-4)
            w, h = slide.dimensions
            assert w % PX == 0 and h % PX == 0 and slide.level_count == 3
            assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
            rgb = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
        mask, mpp = load_lesion_mask(out / "lesion_masks" / f"{row.slide_id}.png")
        assert mpp == pytest.approx(0.972 * 16)
        cell = PX // 16  # mask px per tile side
        assert mask.shape == (h // 16, w // 16)
        expected = np.zeros_like(mask)
        t = tiles[tiles["slide_id"] == row.slide_id]
        for r, c, label, sha in zip(t["row"], t["col"], t["label"], t["sha256"], strict=True):
            expected[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = label == 1
            src = np.asarray(Image.open(io.BytesIO(pool[sha].data)).convert("RGB"))
            got = rgb[r * PX : (r + 1) * PX, c * PX : (c + 1) * PX]
            assert np.abs(got.astype(int) - src).mean() < 8, (row.slide_id, r, c)
        assert (mask == expected).all(), row.slide_id
        background = np.ones(mask.shape, dtype=bool)
        for r, c in zip(t["row"], t["col"], strict=True):
            background[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = False
        glass = rgb.reshape(h // 16, 16, w // 16, 16, 3).mean(axis=(1, 3))[background]
        assert np.abs(glass - demo_tiles.BACKGROUND).max() < 6


def test_same_seed_same_bytes_other_seed_other_tiles(tmp_path, monkeypatch, file_digests):
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        args = ["demo", "out", "--seed", seed, "--patients", "2", "--slides-per-patient", "1"]
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
        "tiles.csv",
    ]
    assert runs["a"]["slides/demo_p01_s1.tiff"] != runs["c"]["slides/demo_p01_s1.tiff"]
    sheet = pd.read_csv(tmp_path / "a" / "out" / "sheet.csv")
    assert sheet["path"].tolist() == [f"out/slides/{s}.tiff" for s in sheet["slide_id"]]
    # the lesion masks are in the sheet, so it gives the localisation AUC as a plain cohort
    assert lesion_masks({}, sheet) == {s: f"out/lesion_masks/{s}.png" for s in sheet["slide_id"]}


def test_second_cohort_with_its_own_ids_and_none_of_the_first_ones_tiles(tmp_path, monkeypatch):
    """An external cohort for a demo project: other ids (--prefix), no shared tile
    (--exclude-tiles the first cohort's tiles.csv)."""
    monkeypatch.chdir(tmp_path)
    small = ["--patients", "2", "--slides-per-patient", "1"]
    assert main(["demo", "a", *small]) == 0
    args = ["demo", "b", *small, "--seed", "7", "--prefix", "ext", "--exclude-tiles"]
    assert main([*args, "a/tiles.csv"]) == 0
    sheet = pd.read_csv("b/sheet.csv")
    assert sheet["slide_id"].tolist() == ["ext_p01_s1", "ext_p02_s1"]
    assert sheet["patient_id"].str.startswith("ext_p0").all()
    assert set(pd.read_csv("a/tiles.csv")["sha256"]).isdisjoint(
        pd.read_csv("b/tiles.csv")["sha256"]
    )
    assert main([*args, "a/sheet.csv"]) == 2  # not a tiles.csv: one line, exit status 2
    assert main(["demo", "c", *small, "--prefix", "x y"]) == 2
    assert main(["demo", "c", "--kind", "synthetic", "--exclude-tiles", "a/tiles.csv"]) == 2


def test_other_tile_folder_exclusion_and_pool_too_small(tmp_path):
    folder = _tile_folder(tmp_path / "tiles", n_normal=50, n_tumour=12)
    kw = dict(n_patients=2, slides_per_patient=1, tiles_per_slide=(10, 12), tile_mpp=0.5)
    sheet = demo_tiles.make_tile_cohort(tmp_path / "a", tiles=folder, **kw)
    with openslide.OpenSlide(sheet["path"][0]) as slide:
        assert float(slide.properties["openslide.mpp-x"]) == pytest.approx(0.5, abs=1e-4)
        # a user's tiles are named by their folder, not claimed to be PatchCamelyon's (CC0)
        described = slide.properties["tiff.ImageDescription"]
        assert "mosaic of tiles of tiles;" in described and "PatchCamelyon" not in described
    used = pd.read_csv(tmp_path / "a" / "tiles.csv")
    assert used["sha256"].is_unique
    # excluding the used tiles gives a cohort of other tiles
    demo_tiles.make_tile_cohort(tmp_path / "b", tiles=folder, exclude=set(used["sha256"]), **kw)
    other = pd.read_csv(tmp_path / "b" / "tiles.csv")
    assert not set(other["sha256"]) & set(used["sha256"])
    with pytest.raises(GigamilError, match=r"tile pool has \d+ usable tiles in 0/") as err:
        demo_tiles.make_tile_cohort(tmp_path / "c", tiles=folder, **{**kw, "n_patients": 6})
    # the error names a cohort that fits (a new user had to guess), and it does fit
    hint = re.search(r"--patients (\d+) --slides-per-patient (\d+) fits", str(err.value))
    assert hint, str(err.value)
    fits = {"n_patients": int(hint[1]), "slides_per_patient": int(hint[2])}
    demo_tiles.make_tile_cohort(tmp_path / "d", tiles=folder, **{**kw, **fits})


def test_beside_the_demo_the_error_names_the_largest_cohort_that_fits(cohort, tmp_path):
    """Beside the default demo (91 normal tiles left) the error at seed 7 named "--patients 2
    --slides-per-patient 1-2" (3 slides) where 4 one-slide patients fit (README)."""
    out, _ = cohort
    kw = dict(seed=7, prefix="ext", exclude=set(pd.read_csv(out / "tiles.csv")["sha256"]))
    with pytest.raises(GigamilError, match="91 usable tiles in 0/") as err:
        demo_tiles.make_tile_cohort(tmp_path / "e", **kw)
    hint = re.search(r"--patients (\d+) --slides-per-patient (\S+) fits", str(err.value))
    assert hint and hint.groups() == ("4", "1"), str(err.value)
    sheet = demo_tiles.make_tile_cohort(tmp_path / "f", n_patients=4, slides_per_patient=1, **kw)
    assert len(sheet) == 4


def test_a_tile_folder_given_as_dot_is_named_in_the_description(tmp_path, monkeypatch):
    """`gigamil demo OUT --tiles .` run inside the tile folder: Path(".").name is "", which
    described the slides as a "mosaic of tiles of ;"."""
    folder = _tile_folder(tmp_path / "mytiles", n_normal=30, n_tumour=8)
    monkeypatch.chdir(folder)
    kw = dict(n_patients=2, slides_per_patient=1, tiles_per_slide=(10, 12), tile_mpp=0.5)
    sheet = demo_tiles.make_tile_cohort(tmp_path / "a", tiles=".", **kw)
    with openslide.OpenSlide(sheet["path"][0]) as slide:
        assert "mosaic of tiles of mytiles;" in slide.properties["tiff.ImageDescription"]


def test_both_short_classes_are_named(tmp_path):
    folder = _tile_folder(tmp_path / "tiles", n_normal=5, n_tumour=1)
    with pytest.raises(GigamilError) as err:
        demo_tiles.make_tile_cohort(tmp_path / "c", tiles=folder, n_patients=2, tile_mpp=0.5)
    msg = str(err.value)
    assert "usable tiles in 0/" in msg and "usable tiles in 1/" in msg
    assert "--patients, --slides-per-patient" in msg


@pytest.mark.parametrize("mpp", [0.0, -0.5, float("nan"), float("inf")])
def test_a_bad_tile_mpp_fails_before_anything_is_written(tmp_path, mpp):
    """The µm/px goes into every TIFF: 0, negative or NaN would fail deep in the TIFF writer
    after slides were written, or give slides whose MPP is nonsense."""
    folder = _tile_folder(tmp_path / "tiles", n_normal=40, n_tumour=20)
    with pytest.raises(GigamilError, match="tile µm/px must be a positive number"):
        demo_tiles.make_tile_cohort(tmp_path / "c", tiles=folder, n_patients=2, tile_mpp=mpp)
    assert not (tmp_path / "c").exists()


def test_a_tile_of_another_size_fails_whichever_tiles_are_drawn(tmp_path):
    folder = _tile_folder(tmp_path / "tiles", n_normal=50, n_tumour=12)
    odd = np.full((PX + 32, PX + 32, 3), (225, 150, 190), dtype=np.uint8)
    Image.fromarray(odd).save(folder / "0" / "zz_odd.png")  # sorted last among 51 normal tiles
    kw = dict(n_patients=2, slides_per_patient=1, tiles_per_slide=(10, 12), tile_mpp=0.5)
    for seed in range(3):  # a cohort that does not place it fails as well
        with pytest.raises(GigamilError, match=r"one size.*1 of 128 x 128 px \(e.g. 0/zz_odd"):
            demo_tiles.make_tile_cohort(tmp_path / f"s{seed}", tiles=folder, seed=seed, **kw)


def test_unreadable_and_skipped_tile_files_are_named(tmp_path, caplog):
    folder = _tile_folder(tmp_path / "tiles", n_normal=3, n_tumour=3)
    (folder / "1" / "notes.txt").write_text("not a tile")
    (folder / "1" / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level("WARNING", logger="gigamil.tile_pool"):
        pool = tile_pool.read_tile_pool(folder)
    assert len(pool) == 6
    assert "skipped 1 file(s)" in caplog.text and "1/notes.txt" in caplog.text
    assert ".DS_Store" not in caplog.text
    caplog.clear()  # the same folder read again in the run (the benchmark, then its cohort)
    with caplog.at_level("WARNING", logger="gigamil.tile_pool"):
        tile_pool.read_tile_pool(folder)
    assert "skipped" not in caplog.text
    assert tile_pool.tile_side(pool) == PX
    (folder / "0" / "broken.jpg").write_text("not an image either")
    pool = tile_pool.read_tile_pool(folder)
    broken = next(t for t in pool if t.file == "0/broken.jpg")
    with pytest.raises(GigamilError, match="tile 0/broken.jpg: not a readable image") as err:
        tile_pool.decode_tile(broken)
    assert "BytesIO" not in str(err.value)
    with pytest.raises(GigamilError, match="tile 0/broken.jpg: not a readable image"):
        tile_pool.tile_side(pool)
    with pytest.raises(GigamilError, match="tile 0/broken.jpg: not a readable image"):
        demo_tiles.make_tile_cohort(tmp_path / "c", tiles=folder, n_patients=2)


def test_packaged_tiles_manifest_licence_and_package_data():
    path = tile_pool.packaged_tiles_path()
    assert path.stat().st_size < 5_000_000
    manifest = tile_pool.packaged_manifest()
    with zipfile.ZipFile(path) as zf:
        names = {n for n in zf.namelist() if n != "manifest.csv"}
        assert names == set(manifest["file"])
        row = manifest.iloc[0]
        assert hashlib.sha256(zf.read(row["file"])).hexdigest() == row["sha256"]
    assert manifest["pcam_index"].notna().all() and manifest["pcam_index"].is_unique
    assert manifest["label"].value_counts().to_dict() == {0: 550, 1: 250}
    assert len(tile_pool.packaged_tile_hashes()) == 800
    licence = (path.parent / "pcam_demo_tiles.LICENSE.md").read_text()
    assert "CC0" in licence and "Veeling" in licence
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/*" in pyproject["tool"]["setuptools"]["package-data"]["gigamil"]


def test_cli_kind_options(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "o"), "--kind", "synthetic", "--exclude-packaged"]) == 2
    assert "need --kind tiles" in capsys.readouterr().err
    assert main(["demo", str(tmp_path / "o"), "--tiles", str(tmp_path / "missing")]) == 2
    assert "not a folder with 0/ and 1/" in capsys.readouterr().err


def test_write_tile_bags_uses_each_tile_once_and_records_the_resolution(tmp_path):
    from gigamil.data.store import read_store

    pool = tile_pool.read_tile_pool(None)
    df = demo_tiles.write_tile_bags(tmp_path, pool, 6, seed=3, side=3, tumour_tiles=(2, 4))
    assert list(df["label"]) == ["normal", "lesion"] * 3
    seen = set()
    for row in df.itertuples():
        patches, _, grid, attrs = read_store(row.store)
        assert patches.shape == (9, 96, 96, 3) and attrs["effective_mpp"] == demo_tiles.PCAM_MPP
        assert grid.max(axis=0).tolist() == [2, 2]
        keys = {np.asarray(p).tobytes() for p in patches}
        assert len(keys) == 9 and not keys & seen  # no tile twice, in a bag or across bags
        seen |= keys
    with pytest.raises(GigamilError, match="tile pool too small"):
        demo_tiles.write_tile_bags(tmp_path / "x", pool[:20], 6, side=3)


def test_a_folder_inside_a_class_folder_is_an_error(tmp_path):
    """Tiles in 1/batchA/ were left out without a word (the run used the 60 beside it)."""
    folder = _tile_folder(tmp_path / "tiles", n_normal=3, n_tumour=3)
    (folder / "1" / ".ipynb_checkpoints").mkdir()  # hidden: ignored
    assert len(tile_pool.read_tile_pool(folder)) == 6
    (folder / "1" / "batchA").mkdir()
    with pytest.raises(GigamilError, match=r"1/batchA/ is a folder; tiles are read from directly"):
        tile_pool.read_tile_pool(folder)


def _zip_folder(folder: Path, path: Path, prefix: str = "", extra: dict | None = None) -> Path:
    """``folder`` zipped as ``prefix``0/..., ``prefix``1/... (with folder entries, as zip tools
    write them), plus ``extra`` {name: bytes}."""
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(folder.rglob("*")):
            rel = prefix + p.relative_to(folder).as_posix()
            zf.writestr(rel + "/", b"") if p.is_dir() else zf.writestr(rel, p.read_bytes())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def test_a_zip_is_read_as_its_folder_would_be(tmp_path, caplog):
    """A zip gets the folder's rules: hidden files ignored (a Finder zip holds 0/.DS_Store and
    __MACOSX/), other files skipped with a warning, a folder inside 0/ or 1/ an error; 0/ and 1/
    may sit in one top folder (a zipped tile folder)."""
    folder = _tile_folder(tmp_path / "tiles", n_normal=3, n_tumour=2)
    junk = {"0/.DS_Store": b"\0", "1/README.txt": b"notes", "__MACOSX/0/._x.jpg": b"\0"}
    flat = _zip_folder(folder, tmp_path / "flat.zip", extra=junk)
    with caplog.at_level("WARNING", logger="gigamil.tile_pool"):
        pool = tile_pool.read_tile_pool(flat)
    assert sorted(t.file for t in pool) == sorted(t.file for t in tile_pool.read_tile_pool(folder))
    assert "skipped 1 file(s)" in caplog.text and "1/README.txt" in caplog.text
    assert ".DS_Store" not in caplog.text
    extra = {f"tiles/{k}": v for k, v in junk.items() if not k.startswith("__")}
    nested = _zip_folder(folder, tmp_path / "nested.zip", prefix="tiles/", extra=extra)
    assert [t.sha256 for t in tile_pool.read_tile_pool(nested)] == [t.sha256 for t in pool]
    batch = _zip_folder(folder, tmp_path / "batch.zip", extra={"1/batchA/p.jpg": b"x"})
    with pytest.raises(GigamilError, match=r"1/batchA/ is a folder; tiles are read from directly"):
        tile_pool.read_tile_pool(batch)


def test_a_rebuild_that_fails_halfway_leaves_no_sheet(tmp_path, monkeypatch, capsys):
    """--overwrite replaces slides one by one: the old sheet goes first and the new one is
    written last, so a build killed halfway is never taken for a complete cohort."""
    folder = _tile_folder(tmp_path / "tiles", n_normal=200, n_tumour=60)
    out = tmp_path / "c"
    demo_tiles.make_tile_cohort(out, tiles=folder, n_patients=2, slides_per_patient=1)
    assert (out / "sheet.csv").is_file()
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed
        return write(*args, **kwargs)

    write = demo_tiles._write_slide
    monkeypatch.setattr(demo_tiles, "_write_slide", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        demo_tiles.make_tile_cohort(out, tiles=folder, seed=1, n_patients=2, slides_per_patient=1)
    assert not (out / "sheet.csv").exists()
    capsys.readouterr()
    assert main(["demo", str(out), "--tiles", str(folder), "--patients", "2"]) == 0  # no refusal
    # a user's tiles without --tile-mpp: the 0.972 assumed is said (it was silent)
    err = capsys.readouterr().err
    assert "--tile-mpp not given: the tiles of" in err and "0.972" in err


def test_draws_of_other_seeds_take_other_tiles_and_masks_carry_the_tile_mpp(tmp_path):
    """The benchmark's draws (seeds 0, 1, ...) are other cohorts of the same folder: each seed
    shuffles the pool itself, so two draws share few tiles (not the same first tiles of one
    fixed order with another layout); the lesion mask's sidecar gives the tiles' µm/px."""
    folder = _tile_folder(tmp_path / "tiles", n_normal=200, n_tumour=60)
    kw = dict(n_patients=2, slides_per_patient=1, tiles_per_slide=(10, 12), tile_mpp=0.5)
    used = []
    for seed in (0, 1):
        sheet = demo_tiles.make_tile_cohort(tmp_path / f"s{seed}", tiles=folder, seed=seed, **kw)
        used.append(set(pd.read_csv(tmp_path / f"s{seed}" / "tiles.csv")["sha256"]))
    shared = len(used[0] & used[1])
    assert shared <= min(map(len, used)) // 4, f"{shared} of about 22 tiles in both draws"
    lesion = sheet.loc[sheet["label"] == "lesion", "lesion_mask"].iloc[0]
    assert load_lesion_mask(lesion)[1] == pytest.approx(0.5 * 16)


def test_resized_copies_of_the_packaged_tiles_are_excluded_by_content(tmp_path, caplog):
    """--exclude-packaged compared bytes: the packaged tiles resized to 64 px (the docs' own
    --tile-mpp example) or saved as PNG passed, and a benchmark 'on other tiles' drew half its
    tiles from the demo's (a new user's trial). Tiles of other content stay."""
    rng = np.random.default_rng(0)
    packaged = tile_pool.read_tile_pool(None)
    copies = [t for t in packaged if t.label == 0][:6] + [t for t in packaged if t.label == 1][:3]
    for t in copies:
        (tmp_path / "t" / str(t.label)).mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(tile_pool.decode_tile(t)).resize((64, 64), Image.Resampling.LANCZOS)
        img.save(tmp_path / "t" / str(t.label) / f"copy_{Path(t.file).stem}.png")
    for cls, colour in ((0, (225, 150, 190)), (1, (120, 60, 160))):
        for i in range(4):
            noise = rng.normal(0, 30, size=(64, 64, 3))
            img = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "t" / str(cls) / f"other{i}.png")
    kept = {t.file for t in tile_pool.usable_pool(tmp_path / "t")}
    assert sum(n.split("/")[1].startswith("copy_") for n in kept) == len(copies)
    with caplog.at_level("WARNING"):
        pool = tile_pool.usable_pool(tmp_path / "t", tile_pool.packaged_tile_hashes())
    assert sorted(t.file for t in pool) == sorted(n for n in kept if "/other" in n)
    assert len(pool) == 8 and f"left out {len(copies)} tile(s) that are resized" in caplog.text


def test_byte_identical_tile_files_are_one_tile_and_said(tmp_path, caplog):
    """PCam holds byte-identical duplicates: a folder of 70 files was counted as '69 tiles in
    1/' without a word on why."""
    folder = _tile_folder(tmp_path / "t", n_normal=3, n_tumour=2)
    (folder / "1" / "dup.jpg").write_bytes((folder / "1" / "patch0000000.jpg").read_bytes())
    tiles = tile_pool.read_tile_pool(folder)
    with caplog.at_level("INFO", logger="gigamil.tile_pool"):
        unique = tile_pool.unique_tiles(tiles)
    assert len(tiles) == 6 and len(unique) == 5
    assert "1 tile file(s) are byte-identical copies of others" in caplog.text
