"""Fixtures of the data tests: ``s1_attrs`` (complete patch store attrs of slide s1)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def s1_attrs(store_attrs):
    """``s1_attrs(**kw)``: complete store attrs of slide s1."""
    return lambda **kw: store_attrs(
        **{"slide_id": "s1", "mask_params": {"a": 1}, "slide_dimensions": (10, 20), **kw}
    )
