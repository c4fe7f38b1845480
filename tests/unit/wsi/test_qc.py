"""gigamil.wsi.qc: the QC table's HTML page and the annotated tissue-mask QC thumbnail (the CSV
itself is tested with real slides in tests/unit/commands/test_mask_patches.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fresh_python import modules_loaded_by
from PIL import Image

from gigamil.wsi.mask_io import OUTLINE_RGB
from gigamil.wsi.qc import (
    COLUMNS,
    annotate_qc_image,
    qc_caption,
    qc_labels,
    qc_row,
    qc_table,
    scale_bar_um,
    um_text,
    write_qc_html,
    write_qc_table,
)
from gigamil.wsi.tissue import TissueParams, make_mask


@pytest.mark.parametrize(
    ("mpp", "width", "expected"),
    [
        (8.0, 512, 500.0),
        (8.0, 3000, 2000.0),
        (0.5, 1000, 100.0),
        (16.0, 800, 2000.0),
        (1, 3, 1.0),
        (1.0, 1000, 200.0),
    ],
)
def test_scale_bar_is_a_round_length_near_a_fifth_of_the_width(mpp, width, expected):
    assert scale_bar_um(mpp, width) == expected


def test_qc_caption_states_fraction_threshold_and_resolution():
    summary = {
        "tissue_fraction": 0.4213,
        "threshold_value": 23.4,
        "mask_mpp": 8.0,
        "params": {"threshold": "otsu"},
    }
    # the threshold as qc.csv gives it (a trial read 28 on the image and 27.9 in the table)
    assert qc_caption(summary) == (
        "tissue 42.1 % · saturation threshold 23.4 (Otsu) · mask 8 µm/px"
    )
    summary["params"]["threshold"] = 40
    assert "threshold 23.4 (fixed)" in qc_caption(summary)


def test_annotated_thumbnail_has_a_title_band_and_a_scale_bar_of_the_right_length():
    img = np.full((300, 600, 3), 230, np.uint8)
    out = annotate_qc_image(img, 8.0, "slide.tiff", "tissue 10.0 %")
    band = out.shape[0] - 300
    assert out.shape[1] == 600 and band > 20
    np.testing.assert_array_equal(out[band:][:200], img[:200])  # the image itself, below
    assert (out[:band] < 128).any()  # the title is drawn
    # the bar: the longest run of black pixels near the bottom = 500 µm / 8 µm/px
    black = (out[band + 200 :] < 40).all(axis=2)
    longest = max(np.diff(np.flatnonzero(np.diff(np.r_[0, r, 0]))).max(initial=0) for r in black)
    assert scale_bar_um(8.0, 600) == 500.0 and longest == round(500.0 / 8.0)
    no_bar = annotate_qc_image(img, None, "slide.tiff", "x")
    assert not (no_bar[band + 200 :] < 40).all(axis=2).any()


def test_mask_qc_thumbnail_is_annotated(cmu_svs, tmp_path):
    summary = make_mask(
        cmu_svs, tmp_path / "m.png", tmp_path / "m.qc.png", None, TissueParams(mask_mpp=16.0)
    )
    qc = np.asarray(Image.open(tmp_path / "m.qc.png"))
    h, w = summary["mask_shape"]  # 93 x 69 px: the QC image is the slide's 1024-px thumbnail
    w0, h0 = summary["slide_dimensions"]  # 2220 x 2967 px
    assert max(h, w) < 1024 and qc.shape[1] == round(w0 * 1024 / h0)
    band = qc.shape[0] - 1024
    assert band > 0 and (qc[:band] < 128).any()  # the title band above it
    assert (qc[band:] == OUTLINE_RGB).all(axis=2).sum() > 1000  # the outline, enlarged to it


def test_qc_html_lists_every_slide_and_highlights_warnings(tmp_path):
    rows = [
        dict.fromkeys(COLUMNS, None)
        | {"slide_id": "a", "tissue_fraction": 0.41234, "n_patches": 7},
        dict.fromkeys(COLUMNS, None)
        | {"slide_id": "b", "tissue_fraction": 0.0, "n_patches": 0, "warnings": "no tissue found"},
    ]
    table = pd.DataFrame(rows, columns=COLUMNS)
    write_qc_html(table, tmp_path / "qc.html", "cohort x: QC")
    page = (tmp_path / "qc.html").read_text()
    assert "<h3>cohort x: QC</h3>" in page and "<th>tissue (%)</th>" in page
    assert "<td>a</td>" in page and "<td>41.2</td>" in page and "<td>7</td>" in page
    assert "no tissue found" in page and "2 slide(s), 1 with warnings" in page


def test_qc_html_embeds_each_slides_mask_image_beside_its_row(tmp_path, monkeypatch):
    import base64
    import io
    import re

    from gigamil.wsi import qc

    Image.fromarray(np.full((300, 400, 3), 200, np.uint8)).save(tmp_path / "a.qc.png")
    table = pd.DataFrame(
        [dict.fromkeys(COLUMNS, None) | {"slide_id": s} for s in ("a", "b")], columns=COLUMNS
    )
    thumbs = {"a": tmp_path / "a.qc.png", "b": tmp_path / "b.qc.png"}  # b's image is missing
    write_qc_html(table, tmp_path / "qc.html", "QC", thumbs)
    page = (tmp_path / "qc.html").read_text()
    (data,) = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", page)
    with Image.open(io.BytesIO(base64.b64decode(data))) as img:
        assert img.size == (qc.THUMBNAIL_PX, 120)  # 400 x 300 scaled to 160 wide
    assert "<th>tissue mask</th>" in page and "<tr><td></td><td>b</td>" in page
    monkeypatch.setattr(qc, "MAX_THUMBNAILS", 1)  # too many slides: no images, a note
    write_qc_html(table, tmp_path / "qc.html", "QC", thumbs)
    page = (tmp_path / "qc.html").read_text()
    assert "base64" not in page and f"see {tmp_path}/" in page


def test_qc_labels_from_the_mask_json(tmp_path):
    js = tmp_path / "s.json"
    js.write_text(
        '{"tissue_fraction": 0.05, "threshold_value": 40, "params": {"threshold": 40},'
        ' "warnings": ["s.tiff: little tissue"]}'
    )
    assert qc_labels(js) == {
        "tissue fraction": "5.0 %",
        "threshold": "40 (fixed)",
        "warnings": "s.tiff: little tissue",
    }


def test_the_tissue_mask_job_does_not_import_pandas_zarr_or_scipy_stats():
    """A tissue_mask job imports wsi.tissue, wsi.mask_io and (for the QC thumbnail) wsi.qc:
    pandas and zarr (the QC table's) and scipy.stats (the AUC's) cost about 1.5 s per job
    together, once per slide; the training modules need no scipy.stats either."""
    job = ("gigamil.wsi.tissue", "gigamil.wsi.mask_io", "gigamil.wsi.qc")
    assert not {"pandas", "zarr", "scipy.stats"} & modules_loaded_by(*job)
    training = ("gigamil.train.run", "gigamil.evaluate.localization", "gigamil.viz.scales")
    assert "scipy.stats" not in modules_loaded_by(*job, *training)


def _fake_store(monkeypatch, attrs: dict) -> None:
    """open_store gives an object with ``attrs`` (a patch store's attributes)."""
    import types

    from gigamil.data import store

    monkeypatch.setattr(store, "open_store", lambda path: types.SimpleNamespace(attrs=attrs))


def test_qc_row_prefers_the_store_and_lists_each_warning_once(tmp_path, monkeypatch):
    import json

    info = {"slide": "old.svs", "slide_dimensions": [10, 20], "slide_mpp": 0.5}
    info |= {"slide_mpp_source": "file", "tissue_fraction": 0.3, "threshold_value": 21.0}
    info |= {"mask_mpp": 8.0, "seconds": 1.5, "warnings": ["little tissue", "pen ink"]}
    (tmp_path / "s.json").write_text(json.dumps(info))
    attrs = {"source_path": "new.svs", "slide_dimensions": [30, 40], "slide_mpp": 0.25}
    attrs |= {"slide_mpp_source": "override", "n_patches": 7, "target_mpp": 0.5}
    attrs |= {"effective_mpp": 0.5, "patch_px": 224, "level": 1, "seconds": 2.5}
    attrs |= {"warnings": ["pen ink", "blurry"]}
    _fake_store(monkeypatch, attrs)
    assert qc_row("s", tmp_path / "s.json", tmp_path / "s.zarr") == {
        "slide_id": "s",
        "source_path": "new.svs",
        "width": 30,
        "height": 40,
        "slide_mpp": 0.25,
        "slide_mpp_source": "override",
        "tissue_fraction": 0.3,
        "tissue_threshold": 21.0,
        "mask_mpp": 8.0,
        "n_patches": 7,
        "target_mpp": 0.5,
        "effective_mpp": 0.5,
        "patch_px": 224,
        "level": 1,
        "mask_seconds": 1.5,
        "extract_seconds": 2.5,
        "warnings": "little tissue | pen ink | blurry",
    }
    # a store without the slide's own attributes: the mask JSON's
    _fake_store(monkeypatch, {})
    row = qc_row("s", tmp_path / "s.json", tmp_path / "s.zarr")
    assert (row["source_path"], row["width"], row["height"]) == ("old.svs", 10, 20)
    assert (row["slide_mpp"], row["slide_mpp_source"]) == (0.5, "file")


def test_qc_table_needs_one_mask_and_store_per_slide(tmp_path):
    with pytest.raises(ValueError, match="must have the same length"):
        qc_table(["a", "b"], [tmp_path / "a.json"], [tmp_path / "a.zarr", tmp_path / "b.zarr"])


def test_write_qc_table_embeds_the_qc_image_beside_each_mask_json(tmp_path, monkeypatch):
    for s in ("a", "b"):
        (tmp_path / f"{s}.json").write_text("{}")
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(tmp_path / "a.qc.png")
    _fake_store(monkeypatch, {})
    df = write_qc_table(
        tmp_path / "qc.csv",
        ["a", "b"],
        [tmp_path / "a.json", tmp_path / "b.json"],
        [tmp_path / "a.zarr", tmp_path / "b.zarr"],
        out_html=tmp_path / "qc.html",
        sheet={"slide_id": ["b", "a"], "patient_id": ["p2", "p1"]},  # the sheet's order
    )
    assert df["patient_id"].tolist() == ["p1", "p2"] and df["label"].isna().all()
    page = (tmp_path / "qc.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 1  # a's image; b has none


def test_qc_html_leaves_a_missing_number_empty_and_hides_the_source_path(tmp_path):
    row = dict.fromkeys(COLUMNS, None) | {"slide_id": "a", "source_path": "/data/a.svs"}
    row |= {"slide_mpp": float("nan"), "tissue_threshold": 21.04, "mask_mpp": 8}
    write_qc_html(pd.DataFrame([row], columns=COLUMNS), tmp_path / "qc.html", "QC")
    page = (tmp_path / "qc.html").read_text()
    assert "nan" not in page and "/data/a.svs" not in page
    assert "<td>21.0</td><td>8.00</td>" in page  # threshold and mask µm/px, rounded
    assert "0 with warnings" in page and "background" not in page


def test_qc_labels_without_warnings_say_none(tmp_path):
    js = tmp_path / "s.json"
    js.write_text('{"tissue_fraction": 0.5, "threshold_value": 20.4}')
    assert qc_labels(js) == {
        "tissue fraction": "50.0 %",
        "threshold": "20.4 (Otsu)",
        "warnings": "none",
    }


def test_qc_caption_without_a_threshold_value_names_the_method_only():
    caption = qc_caption({"tissue_fraction": 0.1, "mask_mpp": 8.0, "params": {"threshold": 30}})
    assert caption == "tissue 10.0 % · saturation threshold fixed · mask 8 µm/px"


@pytest.mark.parametrize(("um", "text"), [(500.0, "500 µm"), (1000.0, "1 mm"), (2000.0, "2 mm")])
def test_lengths_from_a_millimetre_on_are_in_mm(um, text):
    assert um_text(um) == text


def test_qc_html_highlights_the_rows_with_warnings(tmp_path):
    rows = [dict.fromkeys(COLUMNS, None) | {"slide_id": "a", "warnings": ""}]
    rows.append(dict.fromkeys(COLUMNS, None) | {"slide_id": "b", "warnings": "no tissue found"})
    write_qc_html(pd.DataFrame(rows, columns=COLUMNS), tmp_path / "qc.html", "QC")
    page = (tmp_path / "qc.html").read_text()
    assert "<tr><td>a</td>" in page and "<tr style='background:#fff3cd'><td>b</td>" in page


def test_qc_html_embeds_the_images_of_exactly_max_thumbnails_slides(tmp_path, monkeypatch):
    from gigamil.wsi import qc

    monkeypatch.setattr(qc, "MAX_THUMBNAILS", 2)
    table = pd.DataFrame(
        [dict.fromkeys(COLUMNS, None) | {"slide_id": s} for s in ("a", "b")], columns=COLUMNS
    )
    thumbs = {"a": tmp_path / "a.qc.png", "b": tmp_path / "b.qc.png"}
    write_qc_html(table, tmp_path / "qc.html", "QC", thumbs)
    assert "<th>tissue mask</th>" in (tmp_path / "qc.html").read_text()


def test_a_cut_short_mask_sidecar_is_an_error_naming_it_not_read_as_no_sidecar(tmp_path):
    """A tissue mask's JSON sidecar cut short (a half-copied results folder, a damaged disk):
    extraction took it for no sidecar (the store lost the mask's settings and the check of the
    slide size it records, silently) and the QC table stopped with a bare JSONDecodeError."""
    from gigamil.errors import GigamilError
    from gigamil.wsi.mask_io import mask_params_for

    png, js = tmp_path / "s.png", tmp_path / "s.json"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(png)
    text = '{"tissue_fraction": 0.5, "slide_dimensions": [1100, 880], "params": {"mask_mpp": 8}}'
    js.write_text(text)
    assert mask_params_for(png)["_mask_slide_dimensions"] == [1100, 880]
    js.write_text(text[: len(text) // 2])
    for read in (mask_params_for, lambda _: qc_labels(js), lambda _: qc_row("s", js, "x")):
        with pytest.raises(GigamilError, match=r"s\.json is damaged or cut short.*delete it"):
            read(png)
