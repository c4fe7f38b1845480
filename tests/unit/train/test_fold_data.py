"""A fold's bags: checks across its slides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gigamil.errors import GigamilError
from gigamil.train.fold_data import _patch_mpp, _patch_px
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
