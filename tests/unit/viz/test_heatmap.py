"""Heatmaps put attention on the right grid cells; the GeoJSON is valid and in level-0 pixels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from PIL import Image

from gigamil.errors import GigamilError
from gigamil.viz.heatmap import HeatmapStyle, make_heatmap
from gigamil.viz.slide_info import SlidePrediction


def test_make_heatmap_outputs_and_one_hot_overlay(grid_slide, tmp_path):
    keep = [
        i for i in range(grid_slide.rows * grid_slide.cols) if i not in (0, 7)
    ]  # two cells without tissue
    store = tmp_path / "s1.zarr"
    coords, grid = grid_slide.write(store, keep=keep)
    hot = keep.index(29)  # grid cell row 3, col 5
    att = np.full(len(keep), 0.01, np.float32)
    att[hot] = 0.9
    out = tmp_path / "hm"
    info = make_heatmap(
        store,
        att,
        out,
        slide_path=None,
        style=HeatmapStyle(normalize="minmax", top_k=3, alpha=1.0, cmap="jet", thumb_px=256),
    )
    assert info["top"][0] == hot and info["n_patches"] == len(keep)
    np.testing.assert_array_equal(np.load(out / "attention.npy"), att)
    for name in ("overlay.png", "gallery.png", "patches.geojson"):
        assert (out / name).stat().st_size > 0
    # the overlay: the hottest (dark red in jet) pixels form one blob at the planted patch
    img = np.asarray(Image.open(out / "overlay.png").convert("RGB")).astype(int)
    img = img[:, : int(0.7 * img.shape[1])]  # leave out the colour bar on the right
    red = (img[..., 0] > 100) & (img[..., 1] < 60) & (img[..., 2] < 60)
    blue = (img[..., 2] > 100) & (img[..., 0] < 60) & (img[..., 1] < 60)
    assert red.sum() > 20 and blue.sum() > 10 * red.sum()
    ys, xs = np.nonzero(blue)
    (ry, rx) = np.nonzero(red)
    # position of the red blob inside the blue heatmap's bounding box = cell (3, 5) of 6 x 8
    fy = (ry.mean() - ys.min()) / (ys.max() - ys.min() + 1)
    fx = (rx.mean() - xs.min()) / (xs.max() - xs.min() + 1)
    assert abs(fy - 3.5 / grid_slide.rows) < 0.05 and abs(fx - 5.5 / grid_slide.cols) < 0.05


def test_geojson_is_valid_and_in_level0_pixels(grid_slide, tmp_path):
    store = tmp_path / "s2.zarr"
    coords, _ = grid_slide.write(store)
    att = np.random.default_rng(0).random(len(coords)).astype(np.float32)
    make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(top_k=2, thumb_px=128))
    geo = json.loads((tmp_path / "hm" / "patches.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == len(coords)
    for i, feat in enumerate(geo["features"]):
        assert feat["type"] == "Feature"
        assert feat["geometry"]["type"] == "Polygon"
        ring = np.array(feat["geometry"]["coordinates"][0])
        assert ring.shape == (5, 2) and (ring[0] == ring[-1]).all()  # closed ring
        x, y = coords[i]
        assert ring[:, 0].min() == x and ring[:, 1].min() == y
        assert ring[:, 0].max() == x + grid_slide.patch and ring[:, 1].max() == y + grid_slide.patch
        # exterior ring counter-clockwise (positive shoelace area with y up)
        area = 0.5 * np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
        assert area == pytest.approx(grid_slide.patch * grid_slide.patch)
        props = feat["properties"]
        assert props["objectType"] == "tile"
        assert props["measurements"]["attention"] == pytest.approx(float(att[i]))
        assert 0.0 <= props["measurements"]["attention_normalized"] <= 1.0
        assert props["classification"]["name"] in ("attention-high", "attention-low")


def test_gallery_shows_top_and_bottom_patches(grid_slide, tmp_path, monkeypatch):
    import gigamil.viz.heatmap as hm

    shown = {}
    real = hm.render_gallery

    def spy(tiles, att, captions, *args, **kwargs):
        shown.update(att=np.asarray(att), captions=list(captions))
        return real(tiles, att, captions, *args, **kwargs)

    monkeypatch.setattr(hm, "render_gallery", spy)
    store = tmp_path / "s3.zarr"
    coords, _ = grid_slide.write(store)
    n = len(coords)
    att = np.arange(n, dtype=np.float32)  # the last patch has the highest attention
    info = make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(top_k=4, thumb_px=128))
    assert info["top"] == [n - 1 - i for i in range(4)]
    # every patch captioned with its rank among the slide's n patches: the lowest is #n
    assert shown["captions"] == [
        "#1",
        "#2",
        "#3",
        "#4",
        f"#{n}",
        f"#{n - 1}",
        f"#{n - 2}",
        f"#{n - 3}",
    ]
    assert shown["att"].tolist() == [n - 1, n - 2, n - 3, n - 4, 0, 1, 2, 3]
    # the overlay boxes the same top patches in magenta, so the gallery's #1 is found on it
    overlay = np.asarray(Image.open(tmp_path / "hm" / "overlay.png").convert("RGB")).astype(int)
    magenta = (overlay[..., 0] > 200) & (overlay[..., 1] < 60) & (overlay[..., 2] > 200)
    assert magenta.sum() > 4 * 4 * 12  # four boxes of at least 12 px a side
    # the gallery's title gives the patches' physical width
    attrs = zarr.open_group(str(store), mode="r").attrs
    width = attrs["patch_size_level0"] * attrs["slide_mpp"]
    title = Image.open(tmp_path / "hm" / "gallery.png").text["Title"]
    assert title.endswith(f"; each {width:.0f} µm wide"), title


def test_attention_length_mismatch_is_an_error(grid_slide, tmp_path):
    store = tmp_path / "s4.zarr"
    grid_slide.write(store)
    with pytest.raises(GigamilError, match="attention has 3 values but the store has 48 patches"):
        make_heatmap(store, np.ones(3), tmp_path / "hm")
    # a (2, 24) array has the store's 48 values but is no slide's attention: it was flattened
    # and drawn (a review, 2026-12-06)
    with pytest.raises(GigamilError, match=r"attention of shape \(2, 24\), not one value per"):
        make_heatmap(store, np.ones((2, 24)), tmp_path / "hm")


def test_attention_that_is_not_finite_is_an_error_and_writes_nothing(grid_slide, tmp_path):
    """NaN attention was drawn, then the GeoJSON writer failed: a traceback, and overlay.png,
    gallery.png and a cut-off patches.geojson left behind."""
    store = tmp_path / "s4.zarr"
    grid_slide.write(store)
    att = np.ones(48, np.float32)
    att[[3, 7]] = [np.nan, np.inf]
    with pytest.raises(GigamilError, match="attention holds 2 NaN or infinite value"):
        make_heatmap(store, att, tmp_path / "hm")
    assert not (tmp_path / "hm").exists() or not any((tmp_path / "hm").iterdir())


def test_geojson_is_written_whole_or_not_at_all(tmp_path):
    from gigamil.viz.geojson import write_geojson

    path = tmp_path / "p.geojson"
    feature = {"type": "Feature", "properties": {"attention": 0.5}, "geometry": None}
    write_geojson({"features": [feature, feature]}, path)
    assert json.loads(path.read_text())["features"] == [feature, feature]
    with pytest.raises(ValueError, match="JSON compliant"):
        write_geojson({"features": [{**feature, "properties": {"attention": float("nan")}}]}, path)
    assert json.loads(path.read_text())["features"] == [feature, feature]  # the old file stays
    assert [p.name for p in tmp_path.iterdir()] == ["p.geojson"]  # no temporary left


def test_empty_store_still_gives_outputs(grid_slide, tmp_path):
    store = tmp_path / "s5.zarr"
    grid_slide.write(store, keep=[])
    make_heatmap(store, np.zeros(0, np.float32), tmp_path / "hm", style=HeatmapStyle(thumb_px=64))
    geo = json.loads((tmp_path / "hm" / "patches.geojson").read_text())
    assert geo == {"type": "FeatureCollection", "features": []}
    assert (tmp_path / "hm" / "overlay.png").is_file()


def test_cli_heatmap_averages_attention_files(grid_slide, tmp_path, capsys):
    from gigamil.cli import main

    store = tmp_path / "s6.zarr"
    coords, _ = grid_slide.write(store)
    a = np.zeros(len(coords), np.float32)
    b = np.zeros(len(coords), np.float32)
    a[3], b[3], b[5] = 1.0, 1.0, 0.5
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    args = [
        "heatmap",
        "--store",
        str(store),
        "--attention",
        str(tmp_path / "a.npy"),
        str(tmp_path / "b.npy"),
        "--out",
        str(tmp_path / "hm"),
        "--thumb-px",
        "128",
    ]
    assert main(args) == 0
    np.testing.assert_allclose(np.load(tmp_path / "hm" / "attention.npy"), (a + b) / 2)
    assert "48 patches" in capsys.readouterr().out
    title = Image.open(tmp_path / "hm" / "gallery.png").text["Title"]
    assert "attention of 48" in title and "patch probability" not in title
    # --pool instance: the weights are patch probabilities, and the gallery says so
    assert (
        main(
            [*args[:-4], "--out", str(tmp_path / "inst"), "--thumb-px", "128", "--pool", "instance"]
        )
        == 0
    )
    title = Image.open(tmp_path / "inst" / "gallery.png").text["Title"]
    assert "patch probability of 48" in title
    # --weights patch_score: attention and the patch logits written beside it, named so
    for name in ("a.npy", "b.npy"):
        (tmp_path / "patch_logits").mkdir(exist_ok=True)
        np.save(tmp_path / "patch_logits" / name, np.arange(len(coords), dtype=np.float32))
    assert main([*args[:-4], "--out", str(tmp_path / "ps"), "--weights", "patch_score"]) == 0
    title = Image.open(tmp_path / "ps" / "gallery.png").text["Title"]
    assert "patch score of 48" in title
    drawn = np.load(tmp_path / "ps" / "attention.npy")
    assert drawn.sum() == pytest.approx(1.0, abs=1e-5)
    assert drawn[3] > drawn[4] and drawn.argmax() == 47  # both halves count
    # --tissue-mask: a missing file was ignored (no clipping, no outline), another slide's mask
    # (here a square one: the slide is 552 x 408 px) drawn
    for name, size in {"m.png": (138, 102), "other.png": (100, 100)}.items():
        Image.fromarray(np.full(size[::-1], 255, np.uint8)).save(tmp_path / name)
    assert main([*args, "--tissue-mask", str(tmp_path / "m.png")]) == 0
    assert main([*args, "--tissue-mask", str(tmp_path / "no.png")]) == 2
    assert "--tissue-mask: " in capsys.readouterr().err
    assert main([*args, "--tissue-mask", str(tmp_path / "other.png")]) == 2
    assert "does not have the slide's shape (552 x 408 px)" in capsys.readouterr().err


# --- colour scales that compare across slides, titles, gallery, seams, thumbnails ---------------


def _spy_kwargs(monkeypatch, name: str) -> dict:
    """The keyword arguments gigamil.viz.heatmap's ``name`` (render_overlay, render_gallery) is
    called with from now on (the call still runs)."""
    import gigamil.viz.heatmap as hm

    seen: dict = {}
    real = getattr(hm, name)

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(hm, name, spy)
    return seen


def _prediction(slide_id: str, p_lesion: float, label: str, n_models: int = 6) -> SlidePrediction:
    return SlidePrediction(
        slide_id=slide_id,
        cohort="ext",
        label=label,
        pred="lesion" if p_lesion >= 0.5 else "normal",
        probability=p_lesion,
        positive="lesion",
        n_models=n_models,
    )


def _warm_pixels(png) -> int:
    """Red-to-yellow pixels of jet (R high, B low) left of the colour bar."""
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    img = img[:, : int(0.7 * img.shape[1])]
    return int(((img[..., 0] > 100) & (img[..., 0] > img[..., 2] + 60)).sum())


def test_honest_default_scale_draws_a_confident_normal_slide_cooler(grid_slide, tmp_path):
    store = tmp_path / "s7.zarr"
    coords, _ = grid_slide.write(store)
    att = np.full(len(coords), 0.2 / (len(coords) - 1), np.float32)
    att[19] = 0.8  # the same peaked attention on both slides
    style = HeatmapStyle(thumb_px=256, alpha=1.0)  # the default colour scale
    normal = make_heatmap(
        store, att, tmp_path / "n", style=style, prediction=_prediction("s7", 3e-6, "normal")
    )
    lesion = make_heatmap(
        store, att, tmp_path / "l", style=style, prediction=_prediction("s7", 0.99, "lesion")
    )
    assert normal["scale"] == lesion["scale"] == "probability"
    assert normal["values"].max() < 1e-5 < 0.9 < lesion["values"].max()
    assert (normal["values"] <= lesion["values"]).all()
    # in the images: the lesion slide's peak is red, the normal slide has no warm pixel at all
    assert _warm_pixels(tmp_path / "l" / "overlay.png") > 100
    assert _warm_pixels(tmp_path / "n" / "overlay.png") == 0
    # whereas a per-slide scale paints both the same (why it is no longer the default)
    same = [
        make_heatmap(
            store,
            att,
            tmp_path / f"r{i}",
            style=HeatmapStyle(normalize="rank", thumb_px=256),
            prediction=_prediction("s7", p, "x"),
        )["values"]
        for i, p in enumerate((3e-6, 0.99))
    ]
    np.testing.assert_array_equal(same[0], same[1])


def test_titles_carry_label_prediction_probability_and_models(grid_slide, tmp_path):
    store = tmp_path / "s8.zarr"
    coords, _ = grid_slide.write(store)
    att = np.random.default_rng(1).random(len(coords)).astype(np.float32)
    make_heatmap(
        store,
        att,
        tmp_path / "hm",
        style=HeatmapStyle(thumb_px=128, top_k=3),
        prediction=_prediction("s8", 0.973, "lesion", n_models=5),
    )
    for name in ("overlay.png", "gallery.png"):
        title = Image.open(tmp_path / "hm" / name).text["Title"]
        assert title.startswith("ext / s8\n"), title
        for part in ("true: lesion", "predicted: lesion", "P(lesion) = 0.973", "5 fold models"):
            assert part in title, (name, title)


def test_overlay_is_drawn_pixel_for_pixel_without_seams(grid_slide, tmp_path):
    store = tmp_path / "s9.zarr"
    coords, _ = grid_slide.write(store)
    for thumb_px in (200, 256, 333):
        out = tmp_path / f"hm{thumb_px}"
        make_heatmap(
            store,
            np.full(len(coords), 1 / len(coords), np.float32),
            out,
            style=HeatmapStyle(normalize="minmax", alpha=1.0, thumb_px=thumb_px, mark_top=False),
        )
        img = np.asarray(Image.open(out / "overlay.png").convert("RGB")).astype(int)
        img = img[:, : int(0.7 * img.shape[1])]
        # minmax of a constant = 0.5: jet's green; every patch pixel must be exactly that colour
        green = (img[..., 1] > 200) & (img[..., 0] < 180) & (img[..., 2] < 180)
        ys, xs = np.nonzero(green)
        box = img[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert (box == box[0, 0]).all(), f"seam at thumb_px={thumb_px}"
        # the drawn area is the patches' area: 1:1 in the thumbnail's pixels
        scale = thumb_px / (grid_slide.cols * grid_slide.patch + 40)
        assert box.shape[1] == round(grid_slide.cols * grid_slide.patch * scale)
        assert box.shape[0] == round(grid_slide.rows * grid_slide.patch * scale)


MAGENTA = (200, 40, 200)


def _magenta_pixels(overlay: Path) -> int:
    img = np.asarray(Image.open(overlay).convert("RGB")).astype(int)
    return int((np.abs(img - MAGENTA).sum(axis=-1) < 30).sum())


@pytest.mark.parametrize("slide_px", [(300, 400), (16, 16)])
def test_thumbnail_from_the_store_source_path_or_slide(
    slide_px, write_store, row_major_grid, tmp_path, caplog
):
    """Without a slide path the thumbnail comes from the store's recorded source_path. A file
    of another size than the store's slide (--slide with another slide's file) would put the
    attention on the wrong tissue: the heatmap is drawn on grey and the warning says why."""
    src = tmp_path / "slide.png"
    Image.fromarray(np.full((*slide_px, 3), MAGENTA, np.uint8)).save(src)
    # a PNG has no MPP: the store's is used
    store = _two_patch_store(
        write_store, row_major_grid, tmp_path / "s10.zarr", source_path=str(src)
    )
    with caplog.at_level(logging.WARNING):
        make_heatmap(store, np.array([0.5, 0.5]), tmp_path / "hm", style=HeatmapStyle(thumb_px=200))
    magenta = _magenta_pixels(tmp_path / "hm" / "overlay.png")
    if slide_px == (300, 400):
        assert magenta > 0.5 * 200 * 150  # most of the 200 x 150 thumbnail shows the slide
    else:
        assert "it is 16 x 16 px, the slide the patches were cut from 400 x 300 px" in caplog.text
        assert magenta == 0  # nothing of it drawn


def test_a_replaced_source_file_is_not_drawn_under_the_attention(
    write_store, row_major_grid, tmp_path, caplog
):
    """The store records the slide file's size; a file of the same name rewritten since (a
    `gigamil demo` rerun with another seed) holds other tissue: grey and a warning."""
    src = tmp_path / "slide.png"
    Image.fromarray(np.full((300, 400, 3), MAGENTA, np.uint8)).save(src)
    kw = {"stride": 64, "patch_size_level0": 64.0, "slide_dimensions": [400, 300]}
    store = write_store(
        tmp_path / "s.zarr",
        np.zeros((2, 8, 8, 3), np.uint8),
        row_major_grid(2, 2),
        slide_mpp=0.5,
        source_path=str(src),
        source_size=src.stat().st_size + 1,  # cut from a file one byte longer
        **kw,
    )
    with caplog.at_level(logging.WARNING):
        make_heatmap(store, np.array([0.5, 0.5]), tmp_path / "hm", style=HeatmapStyle(thumb_px=200))
    assert _magenta_pixels(tmp_path / "hm" / "overlay.png") == 0
    assert f"the store's source_path {src} is not the file its patches were cut from" in caplog.text


def test_cli_heatmap_reads_predictions_and_the_source_path(grid_slide, tmp_path, capsys):
    from gigamil.cli import main
    from gigamil.evaluate.predictions import write_fold_predictions

    store = tmp_path / "s11.zarr"
    coords, _ = grid_slide.write(store)
    np.save(tmp_path / "a.npy", np.full(len(coords), 1 / len(coords), np.float32))
    row = {"slide_id": "s11", "patient_id": "p", "cohort": "c", "label": "lesion"}
    write_fold_predictions(
        pd.DataFrame([{**row, "prob_normal": 0.1, "prob_lesion": 0.9, "pred": "lesion"}]),
        2,
        tmp_path / "p.csv",
    )
    args = ["heatmap", "--store", str(store), "--attention", str(tmp_path / "a.npy")]
    args += ["--out", str(tmp_path / "hm"), "--thumb-px", "128"]
    assert main([*args, "--predictions", str(tmp_path / "p.csv")]) == 0
    title = Image.open(tmp_path / "hm" / "overlay.png").text["Title"]
    assert "c / s11" in title and "P(lesion) = 0.9" in title and "1 fold model (fold 2)" in title
    # a.npy is not named after the store's slide (gigamil predict writes s11.npy): a trial drew
    # another slide's attention on a slide of as many patches without a word
    assert "a.npy: named after another slide than the store's (s11;" in capsys.readouterr().err
    (tmp_path / "s11.npy").write_bytes((tmp_path / "a.npy").read_bytes())
    named = ["heatmap", "--store", str(store), "--attention", str(tmp_path / "s11.npy")]
    assert main([*named, "--out", str(tmp_path / "hm2"), "--thumb-px", "128"]) == 0
    assert "named after another slide" not in capsys.readouterr().err
    assert main([*args, "--normalize", "probability"]) == 2  # needs --predictions
    assert "needs --predictions" in capsys.readouterr().err
    # predictions that name the slide otherwise (the sheet's id, not the store's): --slide-id
    renamed = pd.read_csv(tmp_path / "p.csv").assign(slide_id="cmu")
    renamed.to_csv(tmp_path / "q.csv", index=False)
    assert main([*args, "--predictions", str(tmp_path / "q.csv")]) == 2
    assert "give that id with --slide-id" in capsys.readouterr().err
    assert main([*args, "--predictions", str(tmp_path / "q.csv"), "--slide-id", "cmu"]) == 0
    assert "c / cmu" in Image.open(tmp_path / "hm" / "overlay.png").text["Title"]
    # one model's predictions (gigamil predict without --fold: no fold column)
    pd.read_csv(tmp_path / "p.csv").drop(columns="fold").to_csv(tmp_path / "one.csv", index=False)
    assert main([*args, "--predictions", str(tmp_path / "one.csv")]) == 0
    assert "1 model" in Image.open(tmp_path / "hm" / "overlay.png").text["Title"]
    # a file that is not a prediction CSV: its own error, without the --slide-id hint
    assert main([*args, "--predictions", str(tmp_path / "a.npy")]) == 2
    assert "--slide-id" not in capsys.readouterr().err
    # two models' attention beside one model's predictions: the title's probability and the
    # map are of other models (a colleague's mix-up); said, not silent
    two = [*args[:5], str(tmp_path / "a.npy"), *args[5:], "--predictions", str(tmp_path / "p.csv")]
    assert main(two) == 0
    assert "2 --attention file(s) beside predictions of 1 model(s)" in capsys.readouterr().err
    # the slide had no patches when predicted (empty probabilities): said as such, not as a
    # count mismatch of "predictions of 0 model(s)"
    blank = pd.read_csv(tmp_path / "p.csv")
    blank[[c for c in blank.columns if c.startswith("prob_")]] = np.nan
    blank.assign(pred="").to_csv(tmp_path / "blank.csv", index=False)
    blank_args = [*args, "--predictions", str(tmp_path / "blank.csv"), "--normalize", "relative"]
    assert main([*blank_args, "--out", str(tmp_path / "hm_blank")]) == 0
    err = capsys.readouterr().err
    assert "give slide s11 no probability (it had no patches" in err and "0 model(s)" not in err
    assert "1 fold model (fold 2)" in Image.open(tmp_path / "hm" / "overlay.png").text["Title"]
    assert main([*args, "--predictions", str(tmp_path / "p.csv")]) == 0
    assert "--attention file(s) beside" not in capsys.readouterr().err


def test_a_moved_slide_file_is_drawn_on_grey_with_a_hint(
    write_store, row_major_grid, tmp_path, caplog
):
    """The store's source_path no longer exists (slides moved, or a colleague's machine): the
    warning says how to draw on the slide anyway (--slide)."""
    moved = str(tmp_path / "moved" / "slide.tiff")
    store = _two_patch_store(write_store, row_major_grid, tmp_path / "s.zarr", source_path=moved)
    with caplog.at_level(logging.WARNING):
        make_heatmap(store, np.array([0.5, 0.5]), tmp_path / "hm", style=HeatmapStyle(thumb_px=64))
    assert (
        "slide.tiff is not a file (moved?); drawing on grey; give the slide file with --slide"
        in (caplog.text)
    )


def test_heatmap_style_refuses_an_opacity_outside_0_1():
    from gigamil.errors import GigamilError
    from gigamil.viz.heatmap import HeatmapStyle

    for kw, match in [({"alpha": 5}, "alpha"), ({"alpha": -0.1}, "alpha"), ({"top_k": 0}, "top_k")]:
        with pytest.raises(GigamilError, match=match):
            HeatmapStyle(**kw)
    assert HeatmapStyle(alpha=1.0).alpha == 1.0


def test_lesion_mask_is_outlined_on_the_overlay(grid_slide, tmp_path, capsys):
    """The ground truth the localisation AUC is scored against, drawn where the attention is."""
    from gigamil.cli import main
    from gigamil.data.store import read_store

    store = tmp_path / "s7.zarr"
    coords, _ = grid_slide.write(store)
    w, h = read_store(store)[3]["slide_dimensions"]
    lesion = np.zeros((h // 16, w // 16), np.uint8)  # a lesion in the slide's right half
    lesion[h // 64 : 3 * h // 64, w // 32 + w // 128 : w // 16 - w // 128] = 255
    Image.fromarray(lesion).save(tmp_path / "lesion.png")
    right = coords[:, 0] > w / 2  # more attention on the right half: the gallery's top row
    np.save(tmp_path / "a.npy", np.where(right, 2.0, 1.0).astype(np.float32) / len(coords))
    args = ["heatmap", "--store", str(store), "--attention", str(tmp_path / "a.npy")]
    args += ["--thumb-px", "200", "--normalize", "relative"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main([*args, "--out", str(tmp_path / "les"), "--lesion-mask", str(tmp_path / "les.png")])
        == 2
    )
    assert "--lesion-mask" in capsys.readouterr().err
    assert (
        main([*args, "--out", str(tmp_path / "les"), "--lesion-mask", str(tmp_path / "lesion.png")])
        == 0
    )
    # annotations.geojson holds the lesion outline for a QuPath review (in level-0 pixels)
    import json

    def lesions(name: str) -> list[dict]:
        geo = json.loads((tmp_path / name / "annotations.geojson").read_text())
        return [
            f
            for f in geo["features"]
            if f["properties"]["classification"]["name"] == "Lesion (ground truth)"
        ]

    assert lesions("plain") == []
    (piece,) = lesions("les")
    xs = [x for x, _ in piece["geometry"]["coordinates"][0]]
    assert min(xs) > w / 2 and max(xs) <= w and piece["properties"]["name"] == "lesion 1"
    # the gallery frames the lesion patches in cyan, and its title says how many there are
    from gigamil.evaluate.localization import lesion_fraction, read_store_geometry
    from gigamil.viz.heatmap import top_bottom

    shown = np.r_[top_bottom(np.load(tmp_path / "a.npy"), 8)]
    xy, _, attrs = read_store_geometry(store)
    assert (lesion_fraction(xy, attrs, tmp_path / "lesion.png") >= 0.5)[shown].any()
    for name, framed in (("plain", False), ("les", True)):
        gallery = Image.open(tmp_path / name / "gallery.png")
        rgb = np.asarray(gallery.convert("RGB")).astype(int)
        assert bool((np.abs(rgb - (0, 200, 255)).sum(-1) < 40).sum() > 100) == framed
        assert ("cyan frame: lesion patch" in gallery.info["Title"]) == framed
    plain = np.asarray(Image.open(tmp_path / "plain" / "overlay.png").convert("RGB")).astype(int)
    drawn = np.asarray(Image.open(tmp_path / "les" / "overlay.png").convert("RGB")).astype(int)
    rows = min(plain.shape[0], drawn.shape[0])  # the key line under the image may wrap once more
    plain, drawn = plain[:rows], drawn[:rows]
    changed = np.abs(drawn - plain).sum(axis=-1) > 60
    white = changed & (drawn.min(axis=-1) > 230)
    assert white.sum() > 50  # the outline
    # where the image is: the coloured (heatmap) pixels' box; the outline lies in its right half
    coloured = np.abs(plain - plain.mean(axis=-1, keepdims=True)).sum(axis=-1) > 60
    ys, xs = np.nonzero(coloured[: int(0.8 * plain.shape[0]), : int(0.7 * plain.shape[1])])
    wy, wx = np.nonzero(white[: ys.max() + 1])  # above the line of text under the image
    assert wx.min() > (xs.min() + xs.max()) / 2 - 3 and wx.max() <= xs.max() + 3
    assert wy.min() >= ys.min() - 3


def test_overlay_scale_bar_lies_under_the_image(tmp_path):
    """With the thumbnail's µm/px the overlay gets a scale bar of a round length (50 µm = 25 px
    at 2 µm/px on a 200-px-wide image), in a band under the image: it hides no tissue."""
    from gigamil.viz.figures import SCALE_BAR_PX, render_overlay

    thumb = np.full((100, 200, 3), 150, np.uint8)
    canvas = np.full((100, 200), np.nan, np.float32)
    render_overlay(thumb, canvas, tmp_path / "bar.png", "t", mpp=2.0)
    render_overlay(thumb, canvas, tmp_path / "none.png", "t")
    bar = np.asarray(Image.open(tmp_path / "bar.png").convert("RGB")).astype(int)
    none = np.asarray(Image.open(tmp_path / "none.png").convert("RGB")).astype(int)
    assert bar.shape[0] == none.shape[0] + SCALE_BAR_PX
    rows = np.nonzero(((bar == 150).all(axis=-1)).sum(axis=1) == 200)[0]
    assert len(rows) == 100  # the image itself, untouched
    cols = np.nonzero((bar[rows[0]] == 150).all(axis=-1))[0]
    under = np.s_[rows.max() + 1 :, cols.min() : cols.max() + 1]  # the band under the image
    runs = [_longest_run(r) for r in (bar.max(axis=-1) < 40)[under]]
    assert 24 <= max(runs) <= 26  # the bar: 25 px (its label's letters are shorter runs)
    below = (none.max(axis=-1) < 40)[under]  # without µm/px: only the key's text
    assert max(_longest_run(r) for r in below) < 12


def _longest_run(row: np.ndarray) -> int:
    """The longest run of True in a 1-D bool array."""
    best = cur = 0
    for v in row:
        cur = cur + 1 if v else 0
        best = max(best, cur)
    return best


def test_a_tall_slide_keeps_its_bottom_patch_on_the_bottom_rows(write_store, tmp_path, monkeypatch):
    """A thumbnail rounds its width and height separately: on a slide 104 x 38,424 px (800 px
    high, 2 px wide) one scale from the width (0.0192 px/px instead of 0.0208) would put the
    bottom patch 60 rows above the bottom. The canvas uses a scale per axis."""
    from gigamil.viz import heatmap

    n = 600  # one column of 64-px patches
    grid = np.stack([np.arange(n), np.zeros(n, np.int64)], axis=1)
    store = write_store(
        tmp_path / "tall.zarr",
        np.full((n, 8, 8, 3), 120, np.uint8),
        grid,
        stride=64,
        patch_size_level0=64.0,
        slide_dimensions=[104, n * 64 + 24],
        slide_mpp=0.5,
    )
    canvases, paint = [], heatmap.attention_canvas

    def keep(*args):
        canvases.append(paint(*args))
        return canvases[-1]

    monkeypatch.setattr(heatmap, "attention_canvas", keep)
    att = np.zeros(n, np.float32)
    att[-1] = 1.0  # the bottom patch
    make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(thumb_px=800, normalize="minmax"))
    (canvas,) = canvases
    assert canvas.shape == (800, 2)
    hot = np.nonzero(np.nan_to_num(canvas[:, 0]) == 1.0)[0]
    assert hot.min() >= 797 and hot.max() == 799  # 38,336-38,400 px * 800 / 38,424
    assert np.isfinite(canvas[:, 0]).all()  # every row under a patch, down to the last


def test_a_slide_with_patches_but_no_probability_is_drawn_relative(grid_slide, tmp_path, caplog):
    """A NaN probability means "no patches"; for a slide that has patches (predictions older
    than its store) the probability scale would paint every patch 0 (confidently normal): the
    relative scale is drawn instead, with a warning."""
    store = tmp_path / "s9.zarr"
    coords, _ = grid_slide.write(store)
    att = np.full(len(coords), 0.2 / (len(coords) - 1), np.float32)
    att[19] = 0.8
    with caplog.at_level(logging.WARNING):
        out = make_heatmap(
            store,
            att,
            tmp_path / "hm",
            style=HeatmapStyle(thumb_px=128),
            prediction=_prediction("s9", float("nan"), "lesion"),
        )
    assert out["scale"] == "relative"
    assert out["values"].max() > 0.5
    assert "its predicted probability is nan" in caplog.text


def test_overlay_boxes_are_numbered_as_the_gallery_and_the_scale_bar_is_in_thumbnail_um(
    grid_slide, tmp_path, monkeypatch
):
    """The overlay's magenta boxes carry the gallery's numbers (#1 = highest) on the top
    patches' corners, and its scale bar gets µm per *thumbnail* pixel (level-0 µm/px over the
    thumbnail's scale): 0.5 µm/px at half size is 1 µm per thumbnail pixel."""
    seen = _spy_kwargs(monkeypatch, "render_overlay")
    store = tmp_path / "m.zarr"
    coords, _ = grid_slide.write(store)  # 552 x 408 level-0 px at 0.5 µm/px
    att = np.zeros(len(coords), np.float32)
    att[[10, 20, 30]] = (0.5, 0.3, 0.2)
    info = make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(top_k=3, thumb_px=276))
    assert info["thumbnail_shape"] == [204, 276] and info["top"] == [10, 20, 30]
    assert [m[3] for m in seen["marks"]] == ["#1", "#2", "#3"]
    for (x, y, side, _), i in zip(seen["marks"], info["top"], strict=True):
        assert (x, y, side) == pytest.approx((coords[i, 0] / 2, coords[i, 1] / 2, 32))
    assert seen["mpp"] == pytest.approx(1.0)


def test_a_store_without_slide_dimensions_is_drawn_on_the_patches_extent(write_store, tmp_path):
    """An older store records no slide_dimensions: the thumbnail takes the patches' extent
    (x from the columns, y from the rows), here one row of three 64-px patches: 192 x 64 px."""
    store = write_store(
        tmp_path / "old.zarr",
        np.zeros((3, 8, 8, 3), np.uint8),
        np.array([[0, 0], [0, 1], [0, 2]]),
        stride=64,
        patch_size_level0=64.0,
        slide_dimensions=[],
        slide_mpp=0.5,
    )
    info = make_heatmap(
        store, np.array([0.2, 0.3, 0.5]), tmp_path / "hm", style=HeatmapStyle(thumb_px=96)
    )
    assert info["thumbnail_shape"] == [32, 96]


def test_gallery_frames_only_patches_at_least_half_in_the_lesion(grid_slide, tmp_path, monkeypatch):
    """A patch is a lesion patch (cyan frame) with at least half its area in the lesion mask, as
    the localisation AUC counts them: one a quarter in the lesion is not framed."""
    seen = _spy_kwargs(monkeypatch, "render_gallery")
    lesion = [  # patch 0 (grid cell 0, 0) whole, a quarter of patch 1, half of patch 2
        (slice(0, 8), slice(0, 8)),
        (slice(0, 4), slice(8, 12)),
        (slice(0, 8), slice(16, 20)),
    ]
    info = _gallery_of_lesion(grid_slide, tmp_path, lesion, (0.5, 0.4, 0.3))
    assert info["top"] == [0, 1, 2]
    assert seen["lesion"][:3] == [True, False, True]
    assert "2 of 48" in Image.open(tmp_path / "hm" / "gallery.png").text["Title"]


def test_the_colour_bar_names_the_positive_class(grid_slide, tmp_path, monkeypatch):
    """Under the probability scale the colour bar reads ``P(<positive class>) × attention ...``
    with the prediction's class name, not a generic ``P(positive)``."""
    seen = _spy_kwargs(monkeypatch, "render_overlay")
    store = tmp_path / "c.zarr"
    coords, _ = grid_slide.write(store)
    att = np.full(len(coords), 1 / len(coords), np.float32)
    make_heatmap(
        store,
        att,
        tmp_path / "hm",
        style=HeatmapStyle(thumb_px=64),
        prediction=_prediction("c", 0.9, "lesion"),
    )
    assert seen["scale"].label.startswith("P(lesion) × attention")


def test_a_slide_without_patches_and_a_nan_probability_still_gets_its_heatmap(grid_slide, tmp_path):
    """A slide without patches is predicted NaN by every model; under the default probability
    scale its heatmap is drawn (nothing on it), not an error about a missing probability."""
    store = tmp_path / "e.zarr"
    grid_slide.write(store, keep=[])
    info = make_heatmap(
        store,
        np.zeros(0, np.float32),
        tmp_path / "hm",
        style=HeatmapStyle(thumb_px=64),
        prediction=_prediction("e", float("nan"), "lesion", n_models=0),
    )
    assert info["scale"] == "probability" and info["n_patches"] == 0
    assert (tmp_path / "hm" / "overlay.png").is_file()


def test_a_store_without_slide_dimensions_keeps_the_attention_on_its_tissue(
    write_store, tmp_path, monkeypatch
):
    """A store without slide_dimensions whose slide file is larger than the patches' extent:
    the whole slide's thumbnail was squeezed onto the extent, so the hot patch was drawn off its
    tissue (0 % overlap here). The thumbnail is now the extent's part of the slide."""
    import gigamil.viz.heatmap as hm

    slide = np.full((300, 400, 3), 255, np.uint8)  # 400 x 300 level-0 px
    slide[192:256, 256:320] = (255, 0, 255)  # magenta tissue under the patch at (256, 192)
    Image.fromarray(slide).save(tmp_path / "slide.png")
    store = write_store(
        tmp_path / "s.zarr",
        np.zeros((2, 8, 8, 3), np.uint8),
        np.array([[0, 0], [3, 4]]),
        stride=64,
        patch_size_level0=64.0,
        slide_dimensions=[],
        slide_mpp=0.5,
        source_path=str(tmp_path / "slide.png"),
    )
    seen = {}
    real = hm.render_overlay
    monkeypatch.setattr(
        hm, "render_overlay", lambda t, c, *a, **k: seen.update(t=t, c=c) or real(t, c, *a, **k)
    )
    make_heatmap(store, np.array([0.0, 1.0]), tmp_path / "hm", style=HeatmapStyle(thumb_px=160))
    thumb, canvas = seen["t"], seen["c"]
    assert thumb.shape[:2] == canvas.shape == (128, 160)  # the 320 x 256 px extent
    tissue = (thumb[..., 1] < 80) & (thumb[..., 0] > 200)
    hot = np.nan_to_num(canvas, nan=-1) == canvas[np.isfinite(canvas)].max()
    assert (hot & tissue).sum() > 0.8 * hot.sum()


def test_overlay_boxes_of_a_tall_slide_use_the_vertical_scale(write_store, tmp_path, monkeypatch):
    """The top patches' boxes are placed as the canvas paints them, with a scale per axis: on
    a slide 104 x 38,424 px (thumbnail 2 x 800) the bottom patch's box is at the bottom rows,
    not 60 rows above them (the width's scale) or below the image."""
    seen = _spy_kwargs(monkeypatch, "render_overlay")
    store = write_store(
        tmp_path / "tall.zarr",
        np.full((2, 8, 8, 3), 120, np.uint8),
        np.array([[0, 0], [599, 0]]),
        stride=64,
        patch_size_level0=64.0,
        slide_dimensions=[104, 599 * 64 + 88],
        slide_mpp=0.5,
    )
    make_heatmap(
        store,
        np.array([0.2, 0.8], np.float32),
        tmp_path / "hm",
        style=HeatmapStyle(thumb_px=800, top_k=1, normalize="minmax"),
    )
    ((x, y, _, text),) = seen["marks"]
    assert text == "#1" and x == 0.0
    assert y == pytest.approx(599 * 64 * 800 / (599 * 64 + 88))  # 797.9, the bottom rows


def test_a_source_file_longer_than_recorded_is_not_drawn_under_the_attention(
    write_store, row_major_grid, tmp_path, caplog
):
    """A replaced slide file may be longer as well as shorter than the one the patches were
    cut from: any other size than the store's ``source_size`` draws on grey, with a warning."""
    src = tmp_path / "slide.png"
    Image.fromarray(np.full((300, 400, 3), MAGENTA, np.uint8)).save(src)
    store = _two_patch_store(
        write_store,
        row_major_grid,
        tmp_path / "s.zarr",
        source_path=str(src),
        source_size=src.stat().st_size - 1,  # cut from a file one byte shorter
    )
    with caplog.at_level(logging.WARNING):
        make_heatmap(store, np.array([0.5, 0.5]), tmp_path / "hm", style=HeatmapStyle(thumb_px=200))
    assert _magenta_pixels(tmp_path / "hm" / "overlay.png") == 0
    assert f"the store's source_path {src} is not the file its patches were cut from" in caplog.text


def test_gallery_tiles_are_the_ranked_patches_under_their_captions(
    write_store, row_major_grid, tmp_path, monkeypatch
):
    """Each gallery cell shows the patch its caption ranks (read from the store in index
    order, put back in rank order): #1 is the highest-attention patch's pixels, not the
    lowest-indexed top patch's."""
    import gigamil.viz.heatmap as hm

    n = 12
    patches = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 20, 8, axis=1)
    patches = np.repeat(np.repeat(patches, 8, axis=2), 3, axis=3)  # patch i is grey 20 i
    store = write_store(
        tmp_path / "g.zarr",
        patches,
        row_major_grid(n, 4),
        stride=64,
        patch_size_level0=64.0,
        slide_dimensions=[256, 192],
        slide_mpp=0.5,
    )
    seen = {}
    real = hm.render_gallery
    monkeypatch.setattr(
        hm, "render_gallery", lambda t, *a, **k: seen.update(t=np.asarray(t)) or real(t, *a, **k)
    )
    att = np.array([3, 11, 0, 7, 9, 1, 5, 10, 2, 8, 4, 6], np.float32)
    info = make_heatmap(store, att, tmp_path / "hm", style=HeatmapStyle(top_k=3, thumb_px=64))
    assert info["top"] == [1, 7, 4]
    shown = seen["t"][:, 0, 0, 0].tolist()  # each tile's grey level / 20 = its patch index
    assert [v // 20 for v in shown] == [1, 7, 4, 2, 5, 8]


def test_gallery_lesion_frames_follow_the_patches_in_rank_order(grid_slide, tmp_path, monkeypatch):
    """The cyan frame goes on the cell of the lesion patch, wherever its rank puts it: here the
    top patch (#1) is the highest-indexed of the three and the only one in the lesion."""
    seen = _spy_kwargs(monkeypatch, "render_gallery")
    lesion = [(slice(0, 8), slice(16, 24))]  # patch 2 (cell 0, 2) whole
    info = _gallery_of_lesion(grid_slide, tmp_path, lesion, (0.3, 0.4, 0.5))
    assert info["top"] == [2, 1, 0]
    assert seen["lesion"] == [True, False, False, False, False, False]


def _gallery_of_lesion(grid_slide, tmp_path, lesion: list, top: tuple) -> dict:
    """make_heatmap of the grid slide with a lesion mask painted on the ``lesion`` (rows, cols)
    slices of its mask pixels (8 level-0 px each) and attention ``top`` on patches 0, 1 and 2."""
    store = tmp_path / "g.zarr"
    coords, _ = grid_slide.write(store)
    mask = np.zeros((51, 69), np.uint8)  # the 552 x 408 px slide at 8 level-0 px a mask pixel
    for rows, cols in lesion:
        mask[rows, cols] = 255
    Image.fromarray(mask).save(tmp_path / "lesion.png")
    att = np.full(len(coords), 0.01, np.float32)
    att[[0, 1, 2]] = top
    style = HeatmapStyle(top_k=3, thumb_px=128)
    return make_heatmap(
        store, att, tmp_path / "hm", style=style, lesion_mask=tmp_path / "lesion.png"
    )


def _two_patch_store(write_store, row_major_grid, path, **attrs):
    """Two black 8-px patches of a 400 x 300 px slide at 0.5 µm/px, 64 level-0 px apart, with
    ``attrs`` (the source slide's path and size)."""
    return write_store(
        path,
        np.zeros((2, 8, 8, 3), np.uint8),
        row_major_grid(2, 2),
        stride=64,
        patch_size_level0=64.0,
        slide_dimensions=[400, 300],
        slide_mpp=0.5,
        **attrs,
    )


def test_cli_heatmap_checks_the_attention_names_without_predictions(grid_slide, tmp_path, capsys):
    """The check needs only the store's slide id: a heatmap drawn without --predictions (the
    usual way to look at attention) warns too, and --slide-id is the id the files are named
    after when given."""
    from gigamil.cli import main

    store = tmp_path / "s11.zarr"
    coords, _ = grid_slide.write(store)
    for name in ("a", "cmu"):
        np.save(tmp_path / f"{name}.npy", np.full(len(coords), 1 / len(coords), np.float32))
    base = ["heatmap", "--store", str(store), "--thumb-px", "128"]
    assert main([*base, "--attention", str(tmp_path / "a.npy"), "--out", str(tmp_path / "h")]) == 0
    assert "a.npy: named after another slide than the store's (s11;" in capsys.readouterr().err
    cmu = ["--attention", str(tmp_path / "cmu.npy"), "--slide-id", "cmu"]
    assert main([*base, *cmu, "--out", str(tmp_path / "h2")]) == 0
    assert "named after another slide" not in capsys.readouterr().err


def test_the_attention_name_warning_names_three_files_and_counts_the_rest(caplog):
    from gigamil.commands.heatmap import _warn_attention_names

    with caplog.at_level(logging.WARNING):
        _warn_attention_names([f"x{i}.npy" for i in range(5)] + ["s.npy"], "s")
    assert "--attention x0.npy, x1.npy, x2.npy (+2): named after another slide" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _warn_attention_names(["a/s.npy", "b/s.npy"], "s")
        _warn_attention_names(["a.npy"], None)  # a store without a slide id: nothing to compare
    assert not caplog.text


def test_cli_heatmap_names_a_missing_attention_file_before_anything_else(
    grid_slide, tmp_path, capsys
):
    """A quoted pattern that matched no file (`--attention 'new/fold*/attention/S2.npy'`) was
    warned about as named after another slide, then stopped with a bare "No such file or
    directory": now one error naming it, with where gigamil predict writes attention."""
    from gigamil.cli import main

    store = tmp_path / "s11.zarr"
    grid_slide.write(store)
    missing = str(tmp_path / "fold*" / "attention" / "s12.npy")
    argv = ["heatmap", "--store", str(store), "--attention", missing, "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"gigamil heatmap: error: --attention {missing}: no such file (no file matches" in err
    assert "gigamil predict --attention-dir DIR writes DIR/<slide_id>.npy" in err
    assert "named after another slide" not in err and "No such file or directory" not in err


def test_make_heatmap_writes_patches_geojson_from_a_generator(grid_slide, tmp_path, monkeypatch):
    """make_heatmap built patches.geojson's features as one list (about 4 kB a patch: 930 MB
    peak for 2 x 10^5 patches); it hands the writer a generator, and the file is unchanged."""
    import json

    from gigamil.viz import heatmap

    store = tmp_path / "s.zarr"
    grid_slide.write(store)
    kinds = []
    write = heatmap.write_geojson
    monkeypatch.setattr(
        heatmap,
        "write_geojson",
        lambda geo, path: kinds.append(type(geo["features"])) or write(geo, path),
    )
    heatmap.make_heatmap(
        store, np.full(48, 1 / 48), tmp_path / "hm", style=HeatmapStyle(normalize="relative")
    )
    assert kinds and kinds[0] is not list
    geo = json.loads((tmp_path / "hm" / "patches.geojson").read_text())
    assert len(geo["features"]) == 48
