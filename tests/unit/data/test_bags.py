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
    # a subsample of a subsample draws from the first one's rows, not from the whole store
    subsub = sub.subsample(10, torch.Generator().manual_seed(1))
    assert len(subsub) == 10 and set(subsub.indices) <= set(sub.indices)
    assert np.array_equal(subsub.load().numpy(), data[subsub.indices])


def test_cache_and_empty_store(write_store, tmp_path: Path) -> None:
    data = _patches(20)
    bag = ZarrBag(write_store(tmp_path / "a.zarr", data))
    list(bag.chunks(8))
    assert bag._cache is None  # no caching by default
    view = bag.with_cache()
    assert np.array_equal(torch.cat(list(view.chunks(8))).numpy(), data)
    assert view._chunk_cache is not None and bag._chunk_cache is None  # the view keeps it
    reads = []
    view.read = lambda a, b: reads.append((a, b))  # the second pass must not read the store
    assert np.array_equal(torch.cat(list(view.chunks(8))).numpy(), data) and reads == []
    big = bag.with_cache(cache_bytes=100)
    list(big.chunks(8))
    assert big._cache is None and big._chunk_cache is None  # larger than the limit: streamed
    empty = ZarrBag(write_store(tmp_path / "e.zarr", np.zeros((0, 8, 8, 3), np.uint8)))
    assert len(empty) == 0 and list(empty.chunks(4)) == []
    assert empty.load().shape == (0, 8, 8, 3)


# ---------------------------------------------------------------- the decoding pool
@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_decode_pool_gives_the_single_thread_chunks_in_order(
    write_store, tmp_path: Path, workers: int, prefetch: int
) -> None:
    data = _patches(150)
    path = write_store(tmp_path / "a.zarr", data, chunk=16)
    single = [c.clone() for c in ZarrBag(path, prefetch=0, workers=1).chunks(20)]
    for indices in (None, np.arange(3, 150, 2)):
        bag = ZarrBag(path, indices=indices, prefetch=prefetch, workers=workers)
        chunks = list(bag.chunks(20))
        expected = data if indices is None else data[indices]
        assert np.array_equal(torch.cat(chunks).numpy(), expected)  # order kept
        assert [len(c) for c in chunks] == [
            len(x) for x in torch.split(torch.from_numpy(expected), 20)
        ]
        again = list(bag.chunks(20))  # deterministic: the same chunks every pass
        assert all(torch.equal(a, b) for a, b in zip(chunks, again, strict=True))
    assert all(
        torch.equal(a, b)
        for a, b in zip(single, list(ZarrBag(path, workers=workers).chunks(20)), strict=True)
    )
    sub = ZarrBag(path, workers=workers).subsample(40, torch.Generator().manual_seed(0))
    assert sub.workers == workers  # a subsample reads through the same pool size


def test_decode_pool_runs_n_workers_at_once(write_store, tmp_path: Path) -> None:
    """Three chunks are read concurrently by three threads (a barrier of three would time out
    with fewer), and the pool's threads are gone afterwards."""
    import threading

    data = _patches(120)
    bag = ZarrBag(write_store(tmp_path / "a.zarr", data, chunk=16), prefetch=0, workers=3)
    barrier = threading.Barrier(3, timeout=10)
    names: set[str] = set()
    read = bag.read

    def read_together(start: int, stop: int) -> np.ndarray:
        names.add(threading.current_thread().name)
        if start < 30:  # the first three chunks of 10 wait for each other
            barrier.wait()
        return read(start, stop)

    bag.read = read_together
    before = threading.active_count()
    assert np.array_equal(torch.cat(list(bag.chunks(10))).numpy(), data)
    assert len(names) == 3 and all(n.startswith("decode-a.zarr") for n in names)
    assert threading.active_count() == before


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_pool_raises_a_chunk_error_unchanged_in_its_turn(
    write_store, tmp_path: Path, workers: int
) -> None:
    data = _patches(100)
    bag = ZarrBag(write_store(tmp_path / "a.zarr", data, chunk=16), workers=workers)
    error = OSError("chunk 4 of slide a is damaged")
    read = bag.read

    def failing(start: int, stop: int) -> np.ndarray:
        if start == 40:
            raise error
        return read(start, stop)

    bag.read = failing
    got = []
    with pytest.raises(OSError) as info:
        for chunk in bag.chunks(10):
            got.append(chunk)
    assert info.value is error  # the very exception, not a wrapper
    assert np.array_equal(torch.cat(got).numpy(), data[:40])  # every chunk before it, in order


def test_decode_pool_names_a_damaged_chunk(write_store, tmp_path: Path) -> None:
    from gigamil.errors import GigamilError

    path = write_store(tmp_path / "a.zarr", _patches(100), chunk=16)
    chunk = path / "patches" / "c" / "3" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with pytest.raises(GigamilError, match=r"a\.zarr is damaged: chunk patches/c/3/0/0/0 fails"):
        for _ in ZarrBag(path, workers=4).chunks(10):
            pass


def test_pinned_memory_only_with_cuda(write_store, tmp_path: Path, monkeypatch) -> None:
    """Without CUDA ``pin_memory`` is ignored (pinning would raise); with it every chunk is
    pinned in the worker that read it."""
    import threading

    from gigamil.data import bags

    data = _patches(60)
    path = write_store(tmp_path / "a.zarr", data, chunk=16)
    monkeypatch.setattr(bags, "pinnable", lambda: False)
    bag = ZarrBag(path, workers=2, pin_memory=True)
    assert bag.pin_memory is False
    assert np.array_equal(torch.cat(list(bag.chunks(10))).numpy(), data)
    monkeypatch.setattr(bags, "pinnable", lambda: True)
    pinned_in: list[str] = []

    def fake_pin(self: torch.Tensor) -> torch.Tensor:
        pinned_in.append(threading.current_thread().name)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    bag = ZarrBag(path, workers=2, pin_memory=True)
    assert np.array_equal(torch.cat(list(bag.chunks(10))).numpy(), data)
    assert len(pinned_in) == 6 and all(n.startswith("decode-") for n in pinned_in)
    assert bag.subsample(20).pin_memory is True


def test_concat_bag_chunks_and_grid(tmp_path: Path, write_store) -> None:
    from gigamil.data.bags import ConcatBag
    from gigamil.nn.pooling import grid_adjacency

    rng = np.random.default_rng(0)
    a = ZarrBag(write_store(tmp_path / "a.zarr", rng.integers(0, 255, (5, 8, 8, 3), np.uint8)))
    b = ZarrBag(write_store(tmp_path / "b.zarr", rng.integers(0, 255, (3, 8, 8, 3), np.uint8)))
    bag = ConcatBag([a, b])
    assert len(bag) == 8 and bag.grid.shape == (8, 2)
    chunks = list(bag.chunks(4))
    assert [len(c) for c in chunks] == [4, 1, 3]  # no chunk spans two parts
    assert torch.equal(torch.cat(chunks), torch.cat([a.load(), b.load()]))
    adj = grid_adjacency(bag.grid).to_dense()
    assert adj[:5, 5:].abs().sum() == 0  # no patch of one part neighbours one of the other


def test_mix_negative_adds_patches_of_a_negative_bag(tmp_path: Path, write_store) -> None:
    from gigamil.data.bags import ConcatBag
    from gigamil.train.loop import BagItem, EpochSettings, mix_negative

    rng = np.random.default_rng(1)
    items = [
        BagItem(
            f"s{i}",
            ZarrBag(
                write_store(
                    tmp_path / f"s{i}.zarr", rng.integers(0, 255, (4 + i, 8, 8, 3), np.uint8)
                )
            ),
            label,
        )
        for i, label in enumerate([1, 0, 1, 0])
    ]
    never = EpochSettings(seed=0, bag_mixing=0.0)
    always = EpochSettings(seed=0, bag_mixing=1.0)
    assert mix_negative(items[0].bag, 0, items, never, 5) is items[0].bag
    sizes = set()
    for seed in range(20):
        mixed = mix_negative(items[0].bag, 0, items, always, seed)
        assert isinstance(mixed, ConcatBag) and mixed.parts[0] is items[0].bag
        donor = mixed.parts[1]
        assert donor.path.stem in {"s1", "s3"}  # negatives only
        assert 1 <= len(donor) <= 7
        sizes.add(len(mixed))
        again = mix_negative(items[0].bag, 0, items, always, seed)  # deterministic in the seed
        assert torch.equal(torch.cat(list(again.chunks(3))), torch.cat(list(mixed.chunks(3))))
    assert len(sizes) > 3
    # a negative bag is never mixed with itself; no other negative: unchanged
    assert mix_negative(items[1].bag, 1, items[:2], always, 0) is items[1].bag


def test_a_bag_that_keeps_its_rows_is_its_own_cached_view(write_store, tmp_path: Path) -> None:
    data = _patches(20)
    bag = ZarrBag(write_store(tmp_path / "a.zarr", data)).with_cache(10**6)
    assert np.array_equal(torch.cat(list(bag.chunks(8))).numpy(), data)
    assert bag.with_cache() is bag  # kept: the next training step reuses what was read
    # the trainer asks with its 256 MiB default for bags _keep_decoded keeps up to 1 GiB: a
    # smaller limit still reuses the rows already held (a new view read the store every epoch)
    assert bag.with_cache(cache_bytes=100) is bag
    plain = ZarrBag(write_store(tmp_path / "b.zarr", data))
    assert plain.with_cache() is not plain  # no cache of its own: a view, freed with it


def test_indices_must_be_strictly_increasing_store_rows(write_store, tmp_path: Path) -> None:
    """Unsorted, repeated or out-of-range rows would break the grid raster order SmABMIL
    relies on (or read past the store): refused."""
    path = write_store(tmp_path / "a.zarr", _patches(5))
    for bad in ([3, 1], [1, 1], [-1, 2], [0, 5]):
        with pytest.raises(ValueError, match="strictly increasing store rows"):
            ZarrBag(path, indices=np.array(bad))
    assert len(ZarrBag(path, indices=np.array([0, 4]))) == 2


def test_coords_follow_the_indices(write_store, tmp_path: Path) -> None:
    """A bag of some rows (a subsample) has the coords of those rows, as its grid (the em
    strategy builds feature bags from them; heatmaps place patches by them)."""
    path = write_store(tmp_path / "a.zarr", _patches(30))
    bag = ZarrBag(path)
    sparse = ZarrBag(path, indices=np.array([2, 7, 29]))
    np.testing.assert_array_equal(sparse.coords, bag.coords[[2, 7, 29]])
    sub = bag.subsample(10, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(sub.coords, bag.coords[sub.indices])


def test_a_cached_pass_is_not_reused_for_another_chunk_size(write_store, tmp_path: Path) -> None:
    """The chunks kept from a pass of size 8 are not handed out for a pass of size 5 (the
    GradCache passes must see the chunks they asked for)."""
    data = _patches(20)
    view = ZarrBag(write_store(tmp_path / "a.zarr", data)).with_cache()
    assert [len(c) for c in view.chunks(8)] == [8, 8, 4]
    chunks = list(view.chunks(5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5]
    assert np.array_equal(torch.cat(chunks).numpy(), data)


def test_store_digests_tell_codecs_apart(row_major_grid, store_attrs, tmp_path: Path) -> None:
    """The same pixels as cut stored with zstd, JPEG q90 and JPEG q50 have one patches_sha256
    but give other patches to the model: the resume signature must tell them apart."""
    from gigamil.data.bags import store_digests
    from gigamil.data.store_writer import StoreWriter

    data = _patches(4)
    grid = row_major_grid(4, 2)
    digests = []
    for name, codec, quality in (("z", "zstd", 90), ("j", "jpeg", 90), ("q", "jpeg", 50)):
        attrs = store_attrs(slide_id=name, codec=codec)
        if codec == "jpeg":
            attrs["jpeg_quality"] = quality
        with StoreWriter(
            tmp_path / f"{name}.zarr", 4, 8, grid * 8, grid, codec=codec, jpeg_quality=quality
        ) as w:
            w.append(data)
            w.commit(attrs)
        digests.append(store_digests(ZarrBag(tmp_path / f"{name}.zarr")))
    assert len({d[0][0] for d in digests}) == 1  # the pixels as cut: one digest
    assert len({str(d) for d in digests}) == 3
