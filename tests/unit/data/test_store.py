"""gigamil.data.store: the zarr v3 patch store (layout, codecs, atomic replacement)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from gigamil.data.store import open_store, read_store
from gigamil.data.store_writer import StoreWriter
from gigamil.errors import GigamilError


def _grid(row_major_grid, n):
    grid = row_major_grid(n, 7)
    return grid, grid[:, ::-1] * 16


def _smooth_patches(n, px=16, seed=0):
    """Tissue-like patches: a smooth random field plus mild noise (hard for zstd, easy for
    JPEG)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((n, px, px, 3), np.uint8)
    for i in range(n):
        low = rng.integers(60, 220, (4, 4, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(low).resize((px, px), Image.Resampling.BILINEAR))
        out[i] = np.clip(smooth + rng.integers(-3, 4, (px, px, 3)), 0, 255)
    return out


def test_roundtrip_zstd_exact_with_layout(s1_attrs, row_major_grid, tmp_path):
    n = 150
    patches = np.random.default_rng(0).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    grid, coords = _grid(row_major_grid, n)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, n, 16, coords, grid, chunk=64) as w:
        w.append(patches[:10])  # uneven appends are re-chunked
        w.append(patches[10:100])
        w.append(patches[100:])
        w.commit(s1_attrs(codec="zstd"))
    p, c, g, attrs = read_store(out)
    assert p.shape == (n, 16, 16, 3) and p.dtype == np.uint8 and p.chunks == (64, 16, 16, 3)
    np.testing.assert_array_equal(p[...], patches)
    np.testing.assert_array_equal(c, coords)
    np.testing.assert_array_equal(g, grid)
    assert c.dtype == np.int64 and g.dtype == np.int64
    assert attrs["slide_id"] == "s1" and attrs["slide_dimensions"] == [10, 20]
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    codecs = json.loads((out / "patches" / "zarr.json").read_text())["codecs"]
    assert any(c_["name"] == "zstd" for c_ in codecs)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_jpeg_codec_is_lossy_but_close_and_smaller(s1_attrs, row_major_grid, tmp_path):
    n = 70
    patches = _smooth_patches(n, px=32)
    grid, coords = _grid(row_major_grid, n)
    for codec in ("zstd", "jpeg"):
        with StoreWriter(
            tmp_path / f"{codec}.zarr", n, 32, coords, grid, codec=codec, jpeg_quality=90, chunk=64
        ) as w:
            w.append(patches)
            w.commit(s1_attrs(codec=codec))
    pj = read_store(tmp_path / "jpeg.zarr")[0][...]
    assert pj.shape == patches.shape
    assert np.abs(pj.astype(int) - patches).mean() < 3.0

    def size(d):
        return sum(f.stat().st_size for f in (d / "patches").rglob("*") if f.is_file())

    assert size(tmp_path / "jpeg.zarr") < size(tmp_path / "zstd.zarr")
    # a fresh plain-zarr open works once gigamil.data.store is imported (codec registered)
    z = zarr.open_group(str(tmp_path / "jpeg.zarr"), mode="r")
    assert z["patches"][5].shape == (32, 32, 3)


def test_empty_store(s1_attrs, tmp_path):
    out = tmp_path / "empty.zarr"
    with StoreWriter(out, 0, 8, np.zeros((0, 2)), np.zeros((0, 2))) as w:
        w.commit(s1_attrs())
    p, c, g, _ = read_store(out)
    assert p.shape == (0, 8, 8, 3) and c.shape == (0, 2) and g.shape == (0, 2)


def test_open_store_errors(s1_attrs, tmp_path):
    with pytest.raises(GigamilError, match="not a gigamil patch store"):
        open_store(tmp_path / "missing.zarr")
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3)
    with pytest.raises(GigamilError, match="lacks arrays"):
        open_store(tmp_path / "other.zarr")
    with pytest.raises(GigamilError, match="unknown patch codec"):
        StoreWriter(tmp_path / "c.zarr", 1, 8, np.zeros((1, 2)), np.zeros((1, 2)), codec="png")
    # a damaged zarr.json (an unknown codec): an error naming the store, not zarr's traceback
    out = tmp_path / "meta.zarr"
    with StoreWriter(out, 0, 8, np.zeros((0, 2)), np.zeros((0, 2))) as w:
        w.commit(s1_attrs())
    meta = out / "patches" / "zarr.json"
    meta.write_text(meta.read_text().replace("crc32c", "crc32x"))
    with pytest.raises(GigamilError, match=r"metadata of its patches array is damaged .*crc32x"):
        read_store(out)


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    elif how == "bit-flipped":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))
    else:  # truncated
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


@pytest.mark.parametrize("codec", ["zstd", "jpeg"])
@pytest.mark.parametrize(
    "how, what",
    [("deleted", "is missing"), ("bit-flipped", "fails its checksum"), ("truncated", "fails its")],
)
def test_damaged_chunk_fails_with_one_message_naming_slide_store_and_chunk(
    s1_attrs, row_major_grid, tmp_path, codec, how, what
):
    from gigamil.data.bags import ZarrBag

    n = 150
    grid, coords = _grid(row_major_grid, n)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, n, 16, coords, grid, codec=codec, chunk=64) as w:
        w.append(_smooth_patches(n))
        w.commit(s1_attrs(codec=codec))
    ZarrBag(out).load()  # intact: reads
    _damage(out / "patches" / "c" / "1" / "0" / "0" / "0", how)
    msg = rf"slide s1: patch store .*s\.zarr is damaged: chunk patches/c/1/0/0/0 {what}"
    with pytest.raises(GigamilError, match=msg):
        bag = ZarrBag(out)
        for _ in bag.chunks(50):  # the prefetching reader used in training and prediction
            pass
    if how != "deleted":
        with pytest.raises(GigamilError, match=msg):
            ZarrBag(out, indices=np.array([0, 70, 149])).load()  # a subsample


def test_damaged_coords_chunk_is_named(s1_attrs, row_major_grid, tmp_path):
    grid, coords = _grid(row_major_grid, 5)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, 5, 8, coords, grid) as w:
        w.append(np.zeros((5, 8, 8, 3), np.uint8))
        w.commit(s1_attrs())
    (out / "coords" / "c" / "0" / "0").unlink()
    with pytest.raises(GigamilError, match=r"chunk coords/c/0/0 is missing"):
        read_store(out)


def test_stores_written_before_the_checksums_still_read(s1_attrs, tmp_path, caplog):
    out = tmp_path / "old.zarr"
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    patches = np.arange(4 * 8 * 8 * 3, dtype=np.uint8).reshape(4, 8, 8, 3)
    group.create_array("patches", data=patches, chunks=(2, 8, 8, 3), write_data=True)
    group.create_array("coords", data=np.zeros((4, 2), np.int64))  # all zero: no chunk file
    group.create_array("grid", data=np.zeros((4, 2), np.int64))
    group.attrs.update(s1_attrs())
    p, c, _, _ = read_store(out)
    np.testing.assert_array_equal(p[...], patches)
    assert c.shape == (4, 2)
    assert "no chunk checksums" in caplog.text


@pytest.mark.parametrize("name", ["coords", "grid"])
def test_coords_or_grid_of_another_length_than_the_patches_is_damage(
    s1_attrs, row_major_grid, rewrite_array, tmp_path, name
):
    from gigamil.data.bags import ZarrBag

    grid, coords = _grid(row_major_grid, 10)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, 10, 8, coords, grid) as w:
        w.append(np.zeros((10, 8, 8, 3), np.uint8))
        w.commit(s1_attrs())
    rewrite_array(out, name, lambda a: a[:7])  # 7 places for 10 patches
    msg = rf"slide s1: patch store .*s\.zarr is damaged: {name} is int64 \(7, 2\), not .*\(10, 2\)"
    with pytest.raises(GigamilError, match=msg):
        read_store(out)
    with pytest.raises(GigamilError, match=msg):
        ZarrBag(out)


def test_arrays_that_contradict_the_recorded_attributes_are_damage(
    s1_attrs, row_major_grid, tmp_path
):
    """The shape of all three arrays edited to 100 rows (a truncated bag), the patches re-cut
    to 32 x 128 px, or coords and grid swapped were read as data: only the arrays' agreement
    with each other was checked."""
    grid, coords = _grid(row_major_grid, 10)

    def store(name, patches, grid=grid, **attrs):
        out = tmp_path / f"{name}.zarr"
        with StoreWriter(out, len(patches), patches.shape[1], coords, grid) as w:
            w.append(patches)
            w.commit({**s1_attrs(), "n_patches": 10, "patch_px": 8, "grid_shape": [2, 7], **attrs})
        return out

    read_store(store("ok", np.zeros((10, 8, 8, 3), np.uint8)))
    cases = {
        "n": ({"n_patches": 12}, "it holds 10 patches but records n_patches 12"),
        "px": ({"patch_px": 16}, r"its patches are \(8, 8\) px but it records 16 px"),
        "grid": ({"grid_shape": [2, 4]}, r"3 grid cell\(s\) outside its grid_shape \[2, 4\]"),
    }
    for name, (attrs, message) in cases.items():
        with pytest.raises(GigamilError, match=rf"slide s1: patch store .* is damaged: {message}"):
            read_store(store(name, np.zeros((10, 8, 8, 3), np.uint8), **attrs))
    swapped = store("swapped", np.zeros((10, 8, 8, 3), np.uint8), grid=coords)  # coords as grid
    with pytest.raises(GigamilError, match=r"outside its grid_shape \[2, 7\]"):
        read_store(swapped)


def test_patches_cut_narrower_than_the_recorded_patch_px_are_damage(
    s1_attrs, row_major_grid, tmp_path, rewrite_array
):
    """Patches re-cut to 8 x 4 px (only the width changed) under patch_px 8 are not square
    patches of the recorded size."""
    grid, coords = _grid(row_major_grid, 10)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, 10, 8, coords, grid) as w:
        w.append(np.full((10, 8, 8, 3), 7, np.uint8))
        w.commit({**s1_attrs(), "n_patches": 10, "patch_px": 8})
    read_store(out)
    rewrite_array(out, "patches", lambda a: np.ascontiguousarray(a[:, :, :4]))
    with pytest.raises(
        GigamilError, match=r"is damaged: its patches are \(8, 4\) px but it records 8 px"
    ):
        read_store(out)


def test_patches_of_another_dtype_or_shape_are_damage(s1_attrs, row_major_grid, tmp_path):
    """A store whose patches array is not uint8 (N, H, W, 3), e.g. float or greyscale, is
    refused by name, not read as data (the chunk checksums usually see it first; this is the
    check behind them)."""
    from gigamil.data.store import _check_shapes

    grid, coords = _grid(row_major_grid, 4)
    for label, data in (
        ("float32", np.zeros((4, 8, 8, 3), np.float32)),
        ("uint8", np.zeros((4, 8, 8), np.uint8)),
    ):
        out = tmp_path / f"{label}.zarr"
        with StoreWriter(out, 4, 8, coords, grid) as w:
            w.append(np.zeros((4, 8, 8, 3), np.uint8))
            w.commit(s1_attrs())
        group = zarr.open_group(str(out), mode="a", zarr_format=3)
        _check_shapes(out, group, "s1")  # as written: fine
        del group["patches"]
        group.create_array("patches", data=data, write_data=True)
        with pytest.raises(GigamilError, match=rf"is damaged: patches is {label} .*not uint8"):
            _check_shapes(out, group, "s1")
        with pytest.raises(GigamilError, match="is damaged"):
            read_store(out)


def test_a_negative_grid_cell_is_damage(s1_attrs, row_major_grid, tmp_path):
    """A grid cell with a negative row or column lies outside the recorded grid_shape as much as
    one past its end: read as data it would place a patch off the slide (SmABMIL, heatmaps)."""
    grid, coords = _grid(row_major_grid, 10)
    bad = grid.copy()
    bad[3] = (0, -1)
    out = tmp_path / "neg.zarr"
    with StoreWriter(out, 10, 8, coords, bad) as w:
        w.append(np.zeros((10, 8, 8, 3), np.uint8))
        w.commit({**s1_attrs(), "n_patches": 10, "patch_px": 8, "grid_shape": [2, 7]})
    with pytest.raises(GigamilError, match=r"1 grid cell\(s\) outside its grid_shape \[2, 7\]"):
        read_store(out)


@pytest.mark.parametrize("name", ["coords", "grid"])
def test_coords_or_grid_that_are_not_integers_are_damage(
    s1_attrs, row_major_grid, rewrite_array, tmp_path, name
):
    """coords/grid of the right shape but float (an array rewritten by another tool) are refused
    by name: they would be truncated silently to other places."""
    grid, coords = _grid(row_major_grid, 6)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, 6, 8, coords, grid) as w:
        w.append(np.zeros((6, 8, 8, 3), np.uint8))
        w.commit(s1_attrs())
    rewrite_array(out, name, lambda a: a.astype(np.float64) + 0.5)
    with pytest.raises(
        GigamilError, match=rf"is damaged: {name} is float64 \(6, 2\), not integers"
    ):
        read_store(out)


def test_jpeg_codec_refuses_a_quality_outside_1_to_100():
    """The codec of a JPEG store (also as read back from its zarr.json) only takes qualities
    imagecodecs accepts."""
    from gigamil.data.store import JpegPatchCodec

    assert JpegPatchCodec(quality=1).quality == 1 and JpegPatchCodec(quality=100).quality == 100
    for bad in (0, 101):
        with pytest.raises(ValueError, match="JPEG quality must be in 1..100"):
            JpegPatchCodec(quality=bad)
        with pytest.raises(ValueError, match="JPEG quality must be in 1..100"):
            JpegPatchCodec.from_dict({"name": "gigamil.jpeg", "configuration": {"quality": bad}})


def test_a_store_without_the_attributes_commit_writes_is_refused(
    s1_attrs, row_major_grid, tmp_path
):
    """Every chunk written but the attributes not (an interrupted extraction's <store>.tmp-<pid>
    given as a store): training and prediction read it and skipped the µm/px and patch-size
    checks, the heatmap failed with a raw KeyError (a review, 2026-12-06)."""
    grid, coords = _grid(row_major_grid, 4)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, 4, 8, coords, grid) as w:
        w.append(np.zeros((4, 8, 8, 3), np.uint8))
        w.commit(s1_attrs())
    read_store(out)  # as written: fine
    group = zarr.open_group(str(out), mode="a", zarr_format=3)
    attrs = dict(group.attrs)
    group.attrs.clear()
    group.attrs.update({"slide_id": attrs["slide_id"]})
    with pytest.raises(
        GigamilError, match=r"lacks the attributes extraction records last .*not a finished"
    ):
        read_store(out)


def _edit_array_json(path: Path, edit) -> None:  # noqa: ANN001
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_a_jpeg_chunk_holding_fewer_patches_than_the_chunks_is_damage(
    s1_attrs, row_major_grid, tmp_path
):
    """patches/zarr.json edited to chunks of 32 over JPEG chunks of 16 patches: the decoder
    filled the rows it had no patch for with black, and 84 of 100 rows read wrong without a
    word (a review); zstd fails there already."""
    from gigamil.data.bags import ZarrBag

    n = 100
    grid, coords = _grid(row_major_grid, n)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, n, 16, coords, grid, codec="jpeg", chunk=16) as w:
        w.append(_smooth_patches(n))
        w.commit(s1_attrs(codec="jpeg"))
    ZarrBag(out).load()

    def double(meta: dict) -> None:
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = 32

    _edit_array_json(out / "patches" / "zarr.json", double)
    with pytest.raises(GigamilError, match="holds 16 JPEG patches, the array's chunks 32"):
        ZarrBag(out).load()


def test_chunk_files_are_looked_for_as_zarr_json_names_them(s1_attrs, row_major_grid, tmp_path):
    """zarr.json's chunk key encoding edited to v2 ('0.0.0.0'): the check that every chunk file
    exists looked for c/0/0/0/0 and passed, zarr found no file and read fill values (100 black
    patches)."""
    from gigamil.data.bags import ZarrBag

    n = 100
    grid, coords = _grid(row_major_grid, n)
    out = tmp_path / "s.zarr"
    with StoreWriter(out, n, 16, coords, grid, chunk=64) as w:
        w.append(_smooth_patches(n))
        w.commit(s1_attrs())

    def v2_keys(meta: dict) -> None:
        meta["chunk_key_encoding"] = {"name": "v2", "configuration": {"separator": "."}}

    _edit_array_json(out / "patches" / "zarr.json", v2_keys)
    with pytest.raises(GigamilError, match=r"chunk patches/0\.0\.0\.0 is missing"):
        ZarrBag(out).load()
