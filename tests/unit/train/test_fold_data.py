"""A fold's bags: checks across its slides."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from gigamil.errors import GigamilError
from gigamil.train.fold_data import _patch_px


def test_stores_of_two_patch_sizes_name_a_slide_of_each() -> None:
    """The error named the two shapes but no slide: which stores to cut again was for the user
    to find among all of them."""

    def item(slide_id: str, px: int) -> SimpleNamespace:
        return SimpleNamespace(slide_id=slide_id, bag=SimpleNamespace(patch_shape=(px, px, 3)))

    assert _patch_px([item("a", 96), item("b", 96)]) == 96
    with pytest.raises(GigamilError) as err:
        _patch_px([item("a", 96), item("b", 64), item("c", 96), item("d", 64)])
    assert "(64, 64, 3) (e.g. slide b), (96, 96, 3) (e.g. slide a)" in str(err.value)
