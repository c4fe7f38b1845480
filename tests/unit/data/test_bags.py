"""ZarrBag: lazy chunked reading with prefetch, subsampling, caching, empty stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gigamil.data.bags import ZarrBag


def _patches(n: int, px: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_chunks_cover_the_store_in_order(write_store, tmp_path: Path, prefetch: int) -> None:
    data = _patches(150)
    bag = ZarrBag(
        write_store(tmp_path / "a.zarr", data, chunk=32), prefetch=prefetch, cache_bytes=0
    )
    assert len(bag) == 150 and bag.patch_shape == (8, 8, 3)
    chunks = list(bag.chunks(40))
    assert [len(c) for c in chunks] == [40, 40, 40, 30]
    assert all(c.dtype == torch.uint8 for c in chunks)
    assert np.array_equal(torch.cat(chunks).numpy(), data)
    assert bag.grid.shape == (150, 2)


def test_early_break_stops_prefetch_thread(write_store, tmp_path: Path) -> None:
    import threading

    bag = ZarrBag(
        write_store(tmp_path / "a.zarr", _patches(200), chunk=16), prefetch=1, cache_bytes=0
    )
    before = threading.active_count()
    for i, _chunk in enumerate(bag.chunks(10)):
        if i == 2:
            break
    assert threading.active_count() == before


def test_subsample_keeps_order_and_grid(write_store, tmp_path: Path) -> None:
    data = _patches(100)
    bag = ZarrBag(write_store(tmp_path / "a.zarr", data), cache_bytes=0)
    sub = bag.subsample(30, torch.Generator().manual_seed(0))
    assert len(sub) == 30 and np.all(np.diff(sub.indices) > 0)
    assert np.array_equal(sub.load().numpy(), data[sub.indices])
    assert np.array_equal(sub.grid, bag.grid[sub.indices])
    assert np.array_equal(torch.cat(list(sub.chunks(7))).numpy(), data[sub.indices])
    sparse = ZarrBag(bag.path, indices=np.array([0, 50, 99]), cache_bytes=0)
    assert np.array_equal(sparse.load().numpy(), data[[0, 50, 99]])
    assert bag.subsample(500) is bag


def test_cache_and_empty_store(write_store, tmp_path: Path) -> None:
    data = _patches(20)
    bag = ZarrBag(write_store(tmp_path / "a.zarr", data))
    list(bag.chunks(8))
    assert bag._cache is None  # no caching by default
    view = bag.with_cache()
    assert np.array_equal(torch.cat(list(view.chunks(8))).numpy(), data)
    assert view._cache is not None and bag._cache is None  # the view keeps the small bag
    big = bag.with_cache(cache_bytes=100)
    list(big.chunks(8))
    assert big._cache is None  # larger than the limit: streamed
    empty = ZarrBag(write_store(tmp_path / "e.zarr", np.zeros((0, 8, 8, 3), np.uint8)))
    assert len(empty) == 0 and list(empty.chunks(4)) == []
    assert empty.load().shape == (0, 8, 8, 3)
