"""Fast pixel path for tiled TIFF slides (generic tiled TIFF, Aperio SVS): decode tiles directly.

OpenSlide remains the authority for opening, levels and metadata; this module only replaces its
pixel reads when every level is a plain tiled 8-bit RGB/YCbCr TIFF page that tifffile/imagecodecs
decode (JPEG, deflate, LZW, none). Decoding a JPEG tile this way is several times faster than
``openslide_read_region`` (no ARGB conversion, no Cairo painting) and level coordinates are whole
pixels (OpenSlide interpolates when a level's downsample is not an integer). A self-check against
OpenSlide at open time disables the fast path if the pixels ever disagree.

Decoded tiles go through a :class:`TileCache` that several readers (threads) can share.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.errors import SlideError

log = logging.getLogger(__name__)

JPEG = 7  # TIFF compression tag of JPEG tiles
SUPPORTED_COMPRESSION = {1, 5, JPEG, 8, 32946}  # none, LZW, JPEG, deflate (Adobe, old)
SELF_CHECK_MAX_MEAN_DIFF = 1.0  # grey levels, mean over the checked tile


class TileCache:
    """A thread-safe LRU cache of decoded tiles, bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Any) -> np.ndarray | None:
        with self._lock:
            tile = self._data.get(key)
            if tile is not None:
                self._data.move_to_end(key)
            return tile

    def put(self, key: Any, tile: np.ndarray) -> None:
        if tile.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self._bytes -= old.nbytes


def check_jpeg_markers(data: bytes, index: int, level: int) -> None:
    """ValueError unless the JPEG data of tile ``index`` starts with the start-of-image marker
    and ends, zero padding aside, with the end-of-image one: libjpeg decodes a tile whose end
    was overwritten or zeroed into grey pixels with only a warning, where OpenSlide refuses it
    ("Premature end of JPEG file"). Damage inside the entropy-coded data is not seen."""
    if data[:2] != b"\xff\xd8" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        raise ValueError(
            f"tile {index} of level {level} is damaged: its JPEG data does not run from a "
            "start-of-image to an end-of-image marker (overwritten or cut inside the file?)"
        )


class TiffTileSource:
    """Tile-decoding reads of the levels of one tiled TIFF, matched to OpenSlide's levels."""

    def __init__(
        self,
        path: str,
        level_dimensions: tuple[tuple[int, int], ...],
        cache: TileCache | None = None,
    ):
        import tifffile

        self.path = path
        self._tif = tifffile.TiffFile(path)
        self._fd = -1
        try:  # any failure (a page layout it cannot read, ...) closes what was opened
            self.pages = [self._match_page(w, h) for (w, h) in level_dimensions]
            self._fd = os.open(path, os.O_RDONLY)
            self._decode = [p.decode for p in self.pages]
            self._tables = [p.jpegtables for p in self.pages]
            self._jpeg = [int(p.compression) == JPEG for p in self.pages]
            self._offsets = [np.asarray(p.dataoffsets, np.int64) for p in self.pages]
            self._counts = [np.asarray(p.databytecounts, np.int64) for p in self.pages]
            self.tile_shape = [(int(p.tilelength), int(p.tilewidth)) for p in self.pages]
            self._key = (os.path.realpath(path), os.stat(path).st_mtime_ns)
        except BaseException:
            self.close()
            raise
        self.cache = cache if cache is not None else TileCache(64 * 2**20)

    def _match_page(self, w: int, h: int) -> Any:
        for page in self._tif.pages:
            if (int(page.imagewidth), int(page.imagelength)) != (w, h) or not page.is_tiled:
                continue
            ok = (
                int(page.compression) in SUPPORTED_COMPRESSION
                # RGB, or YCbCr in JPEG (libjpeg converts it; other codecs give raw Y, Cb, Cr)
                and (
                    int(page.photometric) == 2
                    or (int(page.photometric), int(page.compression)) == (6, JPEG)
                )
                and int(page.samplesperpixel) == 3
                and int(page.bitspersample) == 8
                and int(page.planarconfig) == 1
                and int(page.imagedepth) == 1
            )
            if ok:
                return page
            raise ValueError(f"level {w}x{h}: unsupported TIFF page layout")
        raise ValueError(f"no tiled TIFF page of {w}x{h}")

    def tile(self, level: int, ty: int, tx: int) -> np.ndarray:
        """Decoded tile (th, tw, 3) uint8 at tile row ``ty``, column ``tx`` of ``level``."""
        th, tw = self.tile_shape[level]
        page = self.pages[level]
        ntx = math.ceil(int(page.imagewidth) / tw)
        index = ty * ntx + tx
        key = (self._key, level, index)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        count = int(self._counts[level][index])
        if count == 0:  # sparse TIFF: missing tile = background
            tile = np.full((th, tw, 3), 255, np.uint8)
        else:
            data = os.pread(self._fd, count, int(self._offsets[level][index]))
            if len(data) != count:  # the file ends before the tile: never decode a part of it
                raise SlideError(
                    f"{self.path}: the file is truncated: tile {index} of level {level} needs "
                    f"{count:,} bytes, {len(data):,} are left (was it changed while being read?)",
                    reason="truncated",
                )
            if self._jpeg[level]:
                check_jpeg_markers(data, index, level)
            seg = self._decode[level](data, index, jpegtables=self._tables[level])[0]
            tile = np.asarray(seg).reshape(th, tw, 3)
        self.cache.put(key, tile)
        return tile

    def read(
        self, level: int, lx: int, ly: int, w: int, h: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Level pixels [lx, lx+w) x [ly, ly+h) as (h, w, 3) uint8 (into ``out`` if given);
        white outside the level."""
        page = self.pages[level]
        lw, lh = int(page.imagewidth), int(page.imagelength)
        th, tw = self.tile_shape[level]
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, lw), min(ly + h, lh)
        if x1 <= x0 or y1 <= y0:
            out.fill(255)
            return out
        if x0 > lx or y0 > ly or x1 < lx + w or y1 < ly + h:
            out.fill(255)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self.tile(level, ty, tx)
                # intersection of this tile with the request, in level coordinates
                ax0, ay0 = max(x0, tx * tw), max(y0, ty * th)
                ax1, ay1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[ay0 - ly : ay1 - ly, ax0 - lx : ax1 - lx] = tile[
                    ay0 - ty * th : ay1 - ty * th, ax0 - tx * tw : ax1 - tx * tw
                ]
        return out

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._tif.close()


def try_tile_source(
    path: str,
    level_dimensions: tuple[tuple[int, int], ...],
    openslide_read: Any,
    cache: TileCache | None = None,
) -> TiffTileSource | None:
    """A :class:`TiffTileSource` for ``path`` if it applies and agrees with OpenSlide, else None.

    ``openslide_read(x, y, level, w, h) -> (h, w, 3)`` is OpenSlide's read, used for the check.
    Set the environment variable ``GIGAMIL_NO_FAST_TIFF=1`` to always use OpenSlide.
    """
    if os.environ.get("GIGAMIL_NO_FAST_TIFF"):
        return None
    try:
        src = TiffTileSource(path, level_dimensions, cache)
    except Exception as exc:  # noqa: BLE001 - not a TIFF, unsupported layout, ...: OpenSlide reads it
        log.debug("%s: no fast TIFF path (%s)", path, exc)
        return None
    try:  # level 0's centre tile, and every other level's first (at level-0 origin 0, 0)
        w0, h0 = level_dimensions[0]
        th, tw = src.tile_shape[0]
        x, y = (w0 // 2 // tw) * tw, (h0 // 2 // th) * th
        boxes = [(0, x, y, min(tw, w0 - x), min(th, h0 - y))]
        for level in range(1, len(level_dimensions)):
            (lw, lh), (th, tw) = level_dimensions[level], src.tile_shape[level]
            boxes.append((level, 0, 0, min(tw, lw), min(th, lh)))
        diff = 0.0
        for level, x, y, w, h in boxes:
            ours = src.read(level, x, y, w, h).astype(np.int16)
            theirs = np.asarray(openslide_read(x, y, level, w, h)).astype(np.int16)
            diff = max(diff, float(np.abs(ours - theirs).mean()))
    except Exception as exc:  # noqa: BLE001 - any failure means: read through OpenSlide
        log.debug("%s: fast TIFF self-check failed (%s)", path, exc)
        src.close()
        return None
    if diff > SELF_CHECK_MAX_MEAN_DIFF:
        log.warning("%s: direct tile decoding differs from OpenSlide (%.2f); not used", path, diff)
        src.close()
        return None
    return src


def check_generic_tiff_samples(path: Path, name: str) -> None:
    """A tiled TIFF of greyscale samples wider than 8 bits is refused: OpenSlide garbles its
    partial edge tiles (a 16-bit grey 1000 x 1000 px TIFF of 256-px tiles: the last, partial
    tile column a mean 32 grey levels off, the others exact; 8-bit grey and 16-bit RGB read
    exactly, OpenSlide 4.0). Raises SlideError (reason ``unsupported``); the plain-image
    fallback of :func:`gigamil.wsi.reader.open_slide` then reads such a file whole, exactly, if
    it is small enough."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            bad = [
                page
                for page in tif.pages
                if int(page.samplesperpixel) == 1 and int(page.bitspersample) > 8
            ]
    except Exception:  # noqa: BLE001 - OpenSlide opened it: its reading decides
        return
    if bad:
        raise SlideError(
            f"{name}: {int(bad[0].bitspersample)}-bit greyscale TIFF, which OpenSlide misreads at "
            "the slide's edges; convert it to 8-bit RGB",
            reason="unsupported",
        )
