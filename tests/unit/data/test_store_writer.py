"""gigamil.data.store_writer: writing the patch store (atomic replacement, checks on commit,
chunk size, leftovers of killed extractions, a full disk)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gigamil.data.store import read_store
from gigamil.data.store_writer import StoreWriter, chunk_patches
from gigamil.errors import GigamilError


def _grid(row_major_grid, n):
    grid = row_major_grid(n, 7)
    return grid, grid[:, ::-1] * 16


def test_crash_leaves_no_store_and_keeps_the_old_one(s1_attrs, row_major_grid, tmp_path):
    out = tmp_path / "s.zarr"
    old = np.full((5, 8, 8, 3), 7, np.uint8)
    grid, coords = _grid(row_major_grid, 5)
    with StoreWriter(out, 5, 8, coords, grid) as w:
        w.append(old)
        w.commit(s1_attrs(slide_id="old"))
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(out, 5, 8, coords, grid) as w:
        w.append(old[:3])
        raise RuntimeError("boom")
    assert not list(tmp_path.glob("*.tmp-*"))  # temporary store removed
    p, _, _, attrs = read_store(out)  # the previous complete store is untouched
    assert attrs["slide_id"] == "old"
    np.testing.assert_array_equal(p[...], old)
    # replacing a complete store with a new one
    with StoreWriter(out, 5, 8, coords, grid) as w:
        w.append(old + 1)
        w.commit(s1_attrs(slide_id="new"))
    p, _, _, attrs = read_store(out)
    assert attrs["slide_id"] == "new" and int(p[0, 0, 0, 0]) == 8
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.zarr"]


def test_commit_checks_counts_and_attrs(s1_attrs, row_major_grid, tmp_path):
    grid, coords = _grid(row_major_grid, 4)
    with StoreWriter(tmp_path / "a.zarr", 4, 8, coords, grid) as w:
        w.append(np.zeros((3, 8, 8, 3), np.uint8))
        with pytest.raises(RuntimeError, match="wrote 3 of 4"):
            w.commit(s1_attrs())
    with StoreWriter(tmp_path / "b.zarr", 4, 8, coords, grid) as w:
        w.append(np.zeros((4, 8, 8, 3), np.uint8))
        with pytest.raises(ValueError, match="slide_mpp"):
            w.commit({"slide_id": "x"})
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_a_chunk_written_short_is_refused(s1_attrs, row_major_grid, tmp_path):
    """A worker that hands over fewer rows than its chunk holds must not commit a store that
    reads the missing rows back as black patches."""
    grid, coords = _grid(row_major_grid, 4)
    with StoreWriter(tmp_path / "a.zarr", 4, 8, coords, grid, chunk=64) as w:
        with pytest.raises(ValueError, match="chunk 0 needs 4 patches, got 2"):
            w.write_chunk(0, np.full((2, 8, 8, 3), 9, np.uint8))
        with pytest.raises(RuntimeError, match="wrote 0 of 4"):
            w.commit(s1_attrs())
    assert not (tmp_path / "a.zarr").exists()


@pytest.mark.parametrize(
    "bad",
    [
        np.full((4, 8, 8, 3), 0.5, np.float32),  # would be cast to zeros
        np.full((4, 8, 8, 3), 300, np.uint16),  # would wrap
        np.full((4, 4, 4, 3), 9, np.uint8),  # another patch size
        np.full((4, 16, 4, 3), 9, np.uint8),  # as many values, read back scrambled
        np.full((4, 8, 8, 4), 9, np.uint8),  # RGBA
    ],
    ids=["float", "uint16", "smaller", "same_count", "rgba"],
)
@pytest.mark.parametrize("how", ["append", "write_chunk"])
def test_patches_of_another_dtype_or_shape_are_refused(
    s1_attrs, row_major_grid, tmp_path, bad, how
):
    """The writer takes uint8 (k, patch_px, patch_px, 3) only: anything else is an error, not
    pixels quietly cast, wrapped or scrambled into the store."""
    grid, coords = _grid(row_major_grid, 4)
    with StoreWriter(tmp_path / "a.zarr", 4, 8, coords, grid, chunk=64) as w:
        with pytest.raises(ValueError, match=r"patches must be uint8 of shape \(k, 8, 8, 3\)"):
            w.append(bad) if how == "append" else w.write_chunk(0, bad)
        w.write_chunk(0, np.full((4, 8, 8, 3), 9, np.uint8))  # the right ones still go in
        w.commit(s1_attrs())
    assert (tmp_path / "a.zarr").is_dir()


def test_chunk_size_between_64_and_256():
    assert chunk_patches(256) == 128  # 24 MiB / 192 KiB
    assert chunk_patches(32) == 256
    assert chunk_patches(1024) == 64


def test_redoing_a_store_removes_leftovers_of_killed_extractions(
    s1_attrs, row_major_grid, tmp_path
):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for name in (f"s.zarr.tmp-{dead.pid}", f"s.zarr.old-{dead.pid}", f"s.zarr.tmp-{live.pid}"):
            (tmp_path / name / "patches").mkdir(parents=True)
        grid, coords = _grid(row_major_grid, 3)
        with StoreWriter(tmp_path / "s.zarr", 3, 8, coords, grid) as w:
            w.append(np.zeros((3, 8, 8, 3), np.uint8))
            w.commit(s1_attrs())
        # the killed process's temporaries are gone, a running writer's are left alone
        assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", f"s.zarr.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_full_disk_while_writing_a_store(s1_attrs, row_major_grid, tmp_path, monkeypatch):
    grid, coords = _grid(row_major_grid, 3)

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with StoreWriter(tmp_path / "s.zarr", 3, 8, coords, grid) as w:
        monkeypatch.setattr(Path, "write_bytes", full_disk)
        with pytest.raises(GigamilError, match=r"no space left on device: .*s\.zarr"):
            w.append(np.zeros((3, 8, 8, 3), np.uint8))
            w.commit(s1_attrs())
    assert not list(tmp_path.iterdir())


def test_the_pixel_digest_depends_on_the_pixels_not_on_chunks_order_or_codec(
    s1_attrs, row_major_grid, tmp_path
):
    """patches_sha256: the patches as cut (the trainer's resume check compares it), whatever
    the chunk size or the order chunks are written in; other pixels change it."""
    import hashlib

    rng = np.random.default_rng(0)
    px = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    grid, coords = _grid(row_major_grid, 10)
    digests = []
    for name, chunk, pixels in (("a", 4, px), ("b", 3, px), ("c", 4, px[::-1].copy())):
        with StoreWriter(tmp_path / f"{name}.zarr", 10, 8, coords, grid, chunk=chunk) as w:
            if name == "b":  # chunks written in reverse order, as threads may
                for i in reversed(range(4)):
                    w.write_chunk(i, pixels[i * 3 : i * 3 + 3])
            else:
                w.append(pixels)
            w.commit(s1_attrs())
        digests.append(read_store(tmp_path / f"{name}.zarr")[3]["patches_sha256"])
    expected = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in px)).hexdigest()
    assert digests[0] == digests[1] == expected != digests[2]
    # a lossy JPEG store records the digest of the pixels as cut, not as decoded
    with StoreWriter(tmp_path / "j.zarr", 10, 8, coords, grid, codec="jpeg", chunk=4) as w:
        w.append(px)
        w.commit(s1_attrs())
    jpeg_patches, _, _, jpeg_attrs = read_store(tmp_path / "j.zarr")
    assert not np.array_equal(np.asarray(jpeg_patches), px)  # lossy
    assert jpeg_attrs["patches_sha256"] == expected


@pytest.mark.parametrize("extra", [1, -1])
def test_coords_and_grid_of_another_length_than_declared_are_refused(
    row_major_grid, tmp_path, extra
):
    """n patches need n coords and n grid cells: a longer or shorter list (a plan of another
    slide, rows dropped) is refused before anything is written, not cut to length."""
    grid, coords = _grid(row_major_grid, 10 + extra)
    out = tmp_path / "s.zarr"
    with pytest.raises(ValueError):
        StoreWriter(out, 10, 8, coords, grid)
    assert not out.exists()


def test_more_patches_than_declared_are_refused(s1_attrs, row_major_grid, tmp_path):
    """A caller appending one patch too many must not commit a store whose extra row is
    dropped (its patches would no longer line up with coords and grid)."""
    grid, coords = _grid(row_major_grid, 4)
    with StoreWriter(tmp_path / "a.zarr", 4, 8, coords, grid, chunk=64) as w:
        w.append(np.zeros((5, 8, 8, 3), np.uint8))
        with pytest.raises(RuntimeError, match="wrote 5 of 4"):
            w.commit(s1_attrs())
    assert not (tmp_path / "a.zarr").exists()


def test_a_chunk_written_twice_does_not_stand_in_for_another(s1_attrs, row_major_grid, tmp_path):
    """write_chunk counted the rows of a chunk written twice again, so a store with a chunk
    never written passed the count and was committed (over a good store at that path); it
    was only found damaged when read."""
    grid, coords = _grid(row_major_grid, 8)
    with StoreWriter(tmp_path / "s.zarr", 8, 8, coords, grid, chunk=4) as w:
        w.write_chunk(0, np.zeros((4, 8, 8, 3), np.uint8))
        w.write_chunk(0, np.zeros((4, 8, 8, 3), np.uint8))  # chunk 1 never written
        with pytest.raises(RuntimeError, match=r"wrote 8 of 8 patches, chunks \[0\] of 0..1"):
            w.commit(s1_attrs())
    assert not (tmp_path / "s.zarr").exists()
    with StoreWriter(tmp_path / "s.zarr", 8, 8, coords, grid, chunk=4) as w:
        w.write_chunk(1, np.ones((4, 8, 8, 3), np.uint8))  # any order, each chunk once
        w.write_chunk(0, np.zeros((4, 8, 8, 3), np.uint8))
        w.commit(s1_attrs())
    assert int(read_store(tmp_path / "s.zarr")[0][4:].min()) == 1


def test_a_feature_store_is_never_replaced_by_a_patch_store(s1_attrs, row_major_grid, tmp_path):
    """A feature store has slide_id and patch_px too: `gigamil patches --out` naming it must
    not delete it as if it were an earlier patch store."""
    from gigamil.data.feature_extract import write_feature_store

    grid, coords = _grid(row_major_grid, 3)
    feats = write_feature_store(
        tmp_path / "f.zarr", np.ones((3, 4)), coords, grid, {"slide_id": "s1", "patch_px": 8}
    )
    with pytest.raises(GigamilError, match=r"f\.zarr: exists and is not a patch store"):
        StoreWriter(feats, 3, 8, coords, grid)
    assert (feats / "features").is_dir()


def test_a_store_of_one_patch_at_the_origin_reads(s1_attrs, tmp_path):
    """coords and grid all zero (one patch at (0, 0)) are still written as chunk files: a
    skipped all-zero chunk would be read back as a missing chunk (damage)."""
    with StoreWriter(tmp_path / "o.zarr", 1, 8, np.zeros((1, 2)), np.zeros((1, 2))) as w:
        w.append(np.full((1, 8, 8, 3), 5, np.uint8))
        w.commit(s1_attrs())
    p, c, g, _ = read_store(tmp_path / "o.zarr")
    assert int(p[0, 0, 0, 0]) == 5 and c.tolist() == [[0, 0]] and g.tolist() == [[0, 0]]
