"""Fixtures of the data tests: ``s1_attrs`` (complete patch store attrs of slide s1) and
``rewrite_array`` (damage a store's array as another tool would)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr


@pytest.fixture()
def s1_attrs(store_attrs):
    """``s1_attrs(**kw)``: complete store attrs of slide s1."""
    return lambda **kw: store_attrs(
        **{"slide_id": "s1", "mask_params": {"a": 1}, "slide_dimensions": (10, 20), **kw}
    )


@pytest.fixture()
def rewrite_array() -> Callable[[Path, str, Callable[[np.ndarray], np.ndarray]], None]:
    """``rewrite_array(store, name, change)``: replace the array ``name`` of a zarr v3 store by
    ``change(its values)``, written as a plain new array (another tool's rewrite: no gigamil
    codecs or checksums)."""

    def rewrite(store: Path, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
        group = zarr.open_group(str(store), mode="a", zarr_format=3)
        data = change(np.asarray(group[name][...]))
        del group[name]
        group.create_array(name, data=data, write_data=True)

    return rewrite
