"""The :class:`SlideReader` interface every reader implements (OpenSlide, in-memory arrays)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def composite_on_white(rgba: np.ndarray, premultiplied: bool = False) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8 RGB over a white background. ``premultiplied``:
    the colours are already multiplied by alpha (a TIFF's associated alpha, ExtraSamples 1, as
    OpenSlide's pixels are): c + (255 - a), not c·a/255 + (255 - a), which darkens them twice."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    if premultiplied:
        return (rgb.astype(np.uint16) + (255 - a)).clip(0, 255).astype(np.uint8)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class SlideReader:
    """Common interface of all readers. Coordinates follow OpenSlide: ``location`` is level 0.

    Attributes: ``path``, ``name``, ``dimensions`` (w, h) at level 0, ``level_count``,
    ``level_dimensions``, ``level_downsamples``, ``mpp`` (µm/px at level 0, the mean of x and y),
    ``mpp_xy`` ((x, y) µm/px at level 0; pixels need not be square), ``mpp_source``,
    ``tile_size`` ((w, h) of the storage tiles, for aligning reads; (0, 0) if unknown).
    Readers set the MPP with :meth:`set_mpp`.
    """

    path: str
    name: str
    mpp: float
    mpp_source: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    tile_size: tuple[int, int] = (0, 0)

    _mpp_xy: tuple[float, float] | None = None

    def set_mpp(self, mpp_xy: tuple[float, float], source: str) -> None:
        """Set the level-0 (x, y) µm/px and where they came from (``mpp`` is their mean)."""
        self._mpp_xy = (float(mpp_xy[0]), float(mpp_xy[1]))
        self.mpp = (self._mpp_xy[0] + self._mpp_xy[1]) / 2.0
        self.mpp_source = source

    @property
    def mpp_xy(self) -> tuple[float, float]:
        """(x, y) µm/px at level 0 (``(mpp, mpp)`` for a reader that set only ``mpp``)."""
        return self._mpp_xy if self._mpp_xy is not None else (self.mpp, self.mpp)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_mpp(self, level: int) -> tuple[float, float]:
        """(x, y) µm/px of ``level``, from the exact level-0/level size ratio per axis."""
        w0, h0 = self.dimensions
        w, h = self.level_dimensions[level]
        mpp_x, mpp_y = self.mpp_xy
        return mpp_x * w0 / w, mpp_y * h0 / h

    def best_level_for_mpp(self, target_mpp: float, tolerance: float = 0.01) -> int:
        """The level whose MPP is the coarsest one still finer than or equal to ``target_mpp``.

        A level up to ``tolerance`` (relative) coarser than the target still counts as equal.
        Level 0 if every level is coarser (the caller then upsamples).
        """
        best = 0
        for level in range(self.level_count):
            mpp = max(self.level_mpp(level))
            if mpp <= target_mpp * (1.0 + tolerance) and mpp >= max(self.level_mpp(best)):
                best = level
        return best

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """RGB uint8 (h, w, 3) of ``size`` (w, h) level pixels at level-0 ``location`` (x, y).

        Pixels outside the slide are white.
        """
        return np.ascontiguousarray(self.read_region_view(location, level, size))

    def read_region_view(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Like :meth:`read_region` but may return a non-contiguous (h, w, 3) view (no copy)."""
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.name}: empty region size {size}")
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.name}: level {level} not in 0..{self.level_count - 1}")
        return self._read(int(location[0]), int(location[1]), level, w, h)

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        raise NotImplementedError

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        """Level coordinates (may be fractional) where ``read_region(location, level, ...)`` starts.

        OpenSlide divides the level-0 location by the level's (mean) downsample. A negative
        location is not divided: OpenSlide reads from 0 and shifts the slide's edge right/down by
        ``trunc(-location / downsample)`` whole level pixels, so the region starts at minus that.
        """
        ds = self.level_downsamples[level]

        def origin(v: float) -> float:
            return v / ds if v >= 0 else -float(int(-v / ds))

        return origin(location[0]), origin(location[1])

    def nearest_level_pixel(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        """The whole level pixel nearest ``location / downsample``: where readers that cut a
        level's own pixels (no sub-pixel interpolation) start a read. Rounding, not flooring: a
        level-0 location rounded from ``lx * downsample`` may lie just below it (downsample
        4.01) and must still give ``lx``, not ``lx - 1``."""
        ds = self.level_downsamples[level]
        return float(round(location[0] / ds)), float(round(location[1] / ds))

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) image of the whole slide fitting in ``max_size`` (w, h), box-averaged
        from the smallest level at least that large, read in blocks of at most 4096² level
        pixels (:func:`gigamil.wsi.raster.read_raster_image`): a slide without a pyramid is
        not read into memory whole."""
        from gigamil.wsi.raster import read_raster_blocks

        w0, h0 = self.dimensions
        scale = min(max_size[0] / w0, max_size[1] / h0)
        level = self.level_count - 1
        while level > 0 and max(self.level_downsamples[level], 1e-9) > 1.0 / max(scale, 1e-9):
            level -= 1
        out = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        return read_raster_blocks(self, level, w0 / out[0], h0 / out[1], out)

    def properties(self) -> Mapping[str, str]:
        """Vendor properties (empty for non-OpenSlide readers)."""
        return {}

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, dims={self.dimensions}, "
            f"levels={self.level_count}, mpp={self.mpp:.4g} [{self.mpp_source}])"
        )
