"""A fold's bags: checks across its slides."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import pytest

from gigamil.errors import GigamilError
from gigamil.settings import TissueConfig
from gigamil.train.fold_data import (
    _patch_mpp,
    _patch_px,
    _preprocessing,
    check_fold_slides,
    preprocessing_warning,
    shared_store,
    store_preprocessing,
)
from gigamil.train.predict import _check_mpp


def test_stores_of_two_patch_sizes_name_a_slide_of_each() -> None:
    """The error named the two shapes but no slide: which stores to cut again was for the user
    to find among all of them."""

    def item(slide_id: str, px: int) -> SimpleNamespace:
        return SimpleNamespace(slide_id=slide_id, bag=SimpleNamespace(patch_shape=(px, px, 3)))

    assert _patch_px([item("a", 96), item("b", 96)]) == 96
    with pytest.raises(GigamilError) as err:
        _patch_px([item("a", 96), item("b", 64), item("c", 96), item("d", 64)])
    assert "(64, 64, 3) (e.g. slide b), (96, 96, 3) (e.g. slide a)" in str(err.value)


def test_stores_and_model_may_differ_in_resolution_by_one_percent_not_more() -> None:
    """MPP_TOLERANCE: stores within 1 % train together and are predicted by the model; 2 %
    apart (0.5 vs 0.51 µm/px: another scanner or pyramid level) is refused, in training and in
    prediction."""

    def item(slide_id: str, mpp: float) -> SimpleNamespace:
        return SimpleNamespace(slide_id=slide_id, bag=SimpleNamespace(attrs={"effective_mpp": mpp}))

    near = [item("a", 0.5), item("b", 0.504), item("c", 0.502)]
    assert _patch_mpp(near) == pytest.approx(0.502)
    with pytest.raises(GigamilError, match=r"slide a at 0.5 µm/px, slide b at 0.51 µm/px"):
        _patch_mpp([item("a", 0.5), item("b", 0.51)])
    _check_mpp("s", item("s", 0.504).bag, 0.5)
    with pytest.raises(GigamilError, match=r"slide s: patches are at 0.51 µm/px but the model"):
        _check_mpp("s", item("s", 0.51).bag, 0.5)


def test_store_preprocessing_reads_every_recorded_key_and_no_other() -> None:
    """min_tissue, codec, jpeg_quality and every preprocessing.tissue setting of the mask's
    ``mask_params``; a hand-drawn mask (``mask_params`` null) and keys not recorded add
    nothing."""
    fields = [f.name for f in dataclasses.fields(TissueConfig)]
    mask = {name: i for i, name in enumerate(fields)} | {"mask_file": "/m.png"}
    attrs = {"min_tissue": 0.5, "codec": "jpeg", "jpeg_quality": 80, "mask_params": mask}
    assert store_preprocessing(attrs) == {
        "preprocessing.patches.min_tissue": 0.5,
        "preprocessing.patches.codec": "jpeg",
        "preprocessing.patches.jpeg_quality": 80,
        **{f"preprocessing.tissue.{name}": i for i, name in enumerate(fields)},
    }
    drawn = {"min_tissue": 0.5, "mask_params": None}
    assert store_preprocessing(drawn) == {"preprocessing.patches.min_tissue": 0.5}


def test_the_fold_records_a_key_only_where_every_store_agrees() -> None:
    def item(codec: str, min_tissue: float) -> SimpleNamespace:
        attrs = {"codec": codec, "min_tissue": min_tissue}
        return SimpleNamespace(bag=SimpleNamespace(attrs=attrs))

    items = [item("zstd", 0.5), item("jpeg", 0.5), item("zstd", 0.5)]  # the middle one differs
    assert _preprocessing(items) == {"preprocessing.patches.min_tissue": 0.5}


def test_preprocessing_warning_names_at_most_five_slides_and_the_trained_value() -> None:
    """No record (an older model.pt: None or empty) is no warning; a differing key lists the
    first five slides and the count, with the training value as written (repr)."""
    stores = {f"s{i}": {"codec": "jpeg"} for i in range(7)}
    assert preprocessing_warning(stores, None) is None
    assert preprocessing_warning(stores, {}) is None
    assert preprocessing_warning(stores, {"preprocessing.patches.codec": "jpeg"}) is None
    warned = preprocessing_warning(stores, {"preprocessing.patches.codec": "zstd"})
    assert warned is not None and warned.startswith("7 of the 7 slides to predict")
    assert (
        "preprocessing.patches.codec 'jpeg' (7 slide(s): s0, s1, s2, s3, s4, ... (7 in all)) "
        "where the training patches had 'zstd'"
    ) in warned


def test_a_store_of_another_patch_size_is_not_compared() -> None:
    """A store cut at 256 px (an error when predicted) warned first about its stride 256 against
    the model's 96: noise before the real error (a model-sharing trial)."""
    recorded = {"preprocessing.patches.stride_px": 96}
    other_size = {"big": {"patch_px": 256, "stride_px": 256}}
    assert preprocessing_warning(other_size, recorded, patch_px=96) is None
    assert preprocessing_warning(other_size, recorded) is not None  # the size not given
    overlapping = {"half": {"patch_px": 96, "stride_px": 48}}
    warned = preprocessing_warning(overlapping, recorded, patch_px=96)
    assert warned is not None and "stride_px 48 (1 slide(s): half)" in warned


def _fold(slides: list[tuple[str, str, str]], root) -> pd.DataFrame:
    """(slide_id, patient_id, store name) rows of one label."""
    rows = [
        {"cohort": "c", "slide_id": s, "patient_id": p, "label": "a", "store": str(root / st)}
        for s, p, st in slides
    ]
    return pd.DataFrame(rows)


def test_shared_store_marks_the_first_store_given_twice_compared_resolved(tmp_path) -> None:
    """``x.zarr`` and ``sub/../x.zarr`` are one store; of two shared stores the rows of the
    first are marked (the error names them), not every duplicated row."""
    slides = _fold(
        [("s0", "p0", "y.zarr"), ("s1", "p1", "x.zarr"), ("s2", "p2", "sub/../x.zarr")], tmp_path
    )
    assert shared_store(slides.iloc[:2]) is None
    assert shared_store(slides).tolist() == [False, True, True]
    two_pairs = _fold(
        [("s0", "p0", "y.zarr"), ("s1", "p1", "x.zarr"), ("s2", "p2", "y.zarr")]
        + [("s3", "p3", "x.zarr")],
        tmp_path,
    )
    assert shared_store(two_pairs).tolist() == [True, False, True, False]


def test_check_fold_slides_names_the_leaking_patient_and_both_sides_of_a_store(tmp_path) -> None:
    """The patient named is the one on both sides (not the first one); a store shared by a
    training and a validation slide says both; tables without a store column are checked for
    the rest."""
    train = _fold([("s0", "p0", "0.zarr"), ("s1", "p1", "1.zarr")], tmp_path)
    val = _fold([("s2", "p2", "2.zarr"), ("s3", "p1", "3.zarr")], tmp_path)
    with pytest.raises(GigamilError, match=r"^patient p1 has training and validation slides"):
        check_fold_slides(train, val)
    shared = val.assign(patient_id=["p2", "p3"], store=[str(tmp_path / "1.zarr"), "3.zarr"])
    with pytest.raises(GigamilError, match=r"s1, s2 .* \(training and validation slides\)"):
        check_fold_slides(train, shared)
    check_fold_slides(train.drop(columns="store"), shared.drop(columns="store"))
    with pytest.raises(GigamilError, match=r"^slide s1 is listed twice \(training slides\)"):
        check_fold_slides(pd.concat([train, train.iloc[1:]]), val.iloc[:1])
