"""Whole-slide image readers with a physical resolution (microns per pixel, MPP).

``open_slide(path)`` returns a :class:`SlideReader`: OpenSlide for every format it opens (SVS,
tiled TIFF, NDPI, MRXS, SCN, ...), a Pillow/tifffile fallback for small plain images OpenSlide
refuses, and :class:`ArrayReader` wraps an in-memory image (tests, generated data).

MPP trust order: the caller's override (sheet ``mpp`` column / ``--slide-mpp``) > OpenSlide's
``openslide.mpp-x/-y`` > TIFF resolution tags (unit centimetre or inch). An MPP outside
[MPP_MIN, MPP_MAX] or with x/y differing by more than 5 % is rejected (typical of a 72 dpi default
written by image editors), as is a slide without any MPP: :class:`~gigamil.errors.SlideError`
says which slide and how to fix it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.errors import SlideError

log = logging.getLogger(__name__)

MPP_MIN = 0.05  # µm/px; finer than any optical scanner
MPP_MAX = 100.0  # µm/px; coarser than any useful slide scan
MPP_XY_TOLERANCE = 0.05  # relative x/y difference accepted
FALLBACK_MAX_PIXELS = 2**28  # plain images read fully into memory by the fallback reader
FIX_HINT = "set the `mpp` column in the cohort sheet (or --slide-mpp)"


def _slide_name(path: str | Path) -> str:
    return str(path)


def check_mpp(name: str, mpp_x: float, mpp_y: float, source: str) -> float:
    """Validate an (x, y) MPP pair read from ``source``; return their mean.

    Raises SlideError if either value is not finite, outside [MPP_MIN, MPP_MAX], or if x and y
    differ by more than MPP_XY_TOLERANCE (relative).
    """
    for v in (mpp_x, mpp_y):
        if not (math.isfinite(v) and MPP_MIN <= v <= MPP_MAX):
            raise SlideError(
                f"{name}: implausible microns-per-pixel {mpp_x:g} x {mpp_y:g} from {source} "
                f"(expected {MPP_MIN:g}..{MPP_MAX:g}; a 72/96 dpi image default?); {FIX_HINT}"
            )
    if abs(mpp_x - mpp_y) > MPP_XY_TOLERANCE * max(mpp_x, mpp_y):
        raise SlideError(
            f"{name}: non-square pixels, MPP x={mpp_x:g} y={mpp_y:g} from {source}; {FIX_HINT}"
        )
    return (mpp_x + mpp_y) / 2.0


def mpp_from_resolution(
    x_res: float | None, y_res: float | None, unit: str | int | None
) -> tuple[float, float] | None:
    """MPP (x, y) from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit.

    ``unit`` is the TIFF code (2 inch, 3 centimetre) or a name ("inch", "centimeter", ...).
    Returns None when the resolution is absent or has no absolute unit.
    """
    if x_res is None or y_res is None:
        return None
    name = str(unit).strip().lower() if unit is not None else ""
    if name in ("2", "inch", "in", "resunit.inch"):
        microns = 25400.0
    elif name in ("3", "centimeter", "centimetre", "cm", "resunit.centimeter"):
        microns = 10000.0
    elif name in ("4", "millimeter", "millimetre", "mm"):
        microns = 1000.0
    elif name in ("5", "micrometer", "micrometre", "um"):
        microns = 1.0
    else:
        return None
    x_res, y_res = float(x_res), float(y_res)
    if x_res <= 0 or y_res <= 0:
        return None
    return microns / x_res, microns / y_res


def resolve_mpp(
    name: str,
    override: float | None,
    vendor_mpp: tuple[float, float] | None,
    tiff_mpp: tuple[float, float] | None,
) -> tuple[float, str]:
    """Pick the level-0 MPP by trust order; return (mpp, source description)."""
    if override is not None:
        mpp = check_mpp(name, float(override), float(override), "the override (sheet/--slide-mpp)")
        return mpp, "override"
    if vendor_mpp is not None:
        return check_mpp(name, *vendor_mpp, "openslide.mpp-x/y"), "openslide"
    if tiff_mpp is not None:
        source = "the resolution tags (TIFF resolution / image dpi)"
        return check_mpp(name, *tiff_mpp, source), "tiff"
    raise SlideError(f"{name}: no microns-per-pixel (MPP) in the file; {FIX_HINT}")


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA (not premultiplied) -> (H, W, 3) uint8 RGB over a white background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class SlideReader:
    """Common interface of all readers. Coordinates follow OpenSlide: ``location`` is level 0.

    Attributes: ``path``, ``name``, ``dimensions`` (w, h) at level 0, ``level_count``,
    ``level_dimensions``, ``level_downsamples``, ``mpp`` (µm/px at level 0), ``mpp_source``,
    ``tile_size`` ((w, h) of the storage tiles, for aligning reads; (0, 0) if unknown).
    """

    path: str
    name: str
    mpp: float
    mpp_source: str
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    tile_size: tuple[int, int] = (0, 0)

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
        return self.mpp * w0 / w, self.mpp * h0 / h

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

        OpenSlide divides the level-0 location by the level's (mean) downsample.
        """
        ds = self.level_downsamples[level]
        return location[0] / ds, location[1] / ds

    def get_thumbnail(self, max_size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) image of the whole slide fitting in ``max_size`` (w, h)."""
        from PIL import Image

        w0, h0 = self.dimensions
        scale = min(max_size[0] / w0, max_size[1] / h0)
        level = self.level_count - 1
        while level > 0 and max(self.level_downsamples[level], 1e-9) > 1.0 / max(scale, 1e-9):
            level -= 1
        lw, lh = self.level_dimensions[level]
        img = Image.fromarray(self.read_region((0, 0), level, (lw, lh)))
        out = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
        return np.asarray(img.resize(out, Image.Resampling.BOX))

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


def _raw_reader() -> Any:
    """openslide's low-level ``openslide_read_region`` (ctypes, releases the GIL), or None."""
    import sys

    if sys.byteorder != "little":
        return None
    try:
        from openslide import lowlevel

        return lowlevel._read_region
    except (ImportError, AttributeError):
        return None


try:
    import ctypes as _ctypes

    _c_uint32_p = _ctypes.POINTER(_ctypes.c_uint32)
    _RAW_READ = _raw_reader()
except Exception:  # pragma: no cover - openslide not importable: the public API raises later
    _RAW_READ = None


FAST_TIFF_VENDORS = ("generic-tiff", "aperio")


@dataclass(frozen=True)
class SlideCache:
    """Decoded-tile caches shared by the handles of one slide (see :func:`shared_tile_cache`)."""

    openslide: Any
    tiles: Any


class OpenSlideReader(SlideReader):
    """Any format OpenSlide opens. OpenSlide errors become SlideError naming the file."""

    def __init__(
        self,
        path: str | Path,
        mpp_override: float | None = None,
        cache_mb: int = 0,
        cache: SlideCache | None = None,
        fast_tiff: bool = True,
    ):
        import openslide

        self.path = str(path)
        self.name = _slide_name(path)
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(
                f"{self.name}: not a slide format OpenSlide recognises ({exc})"
            ) from exc
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.name}: OpenSlide cannot open it: {exc}") from exc
        if cache is None and cache_mb > 0:
            cache = shared_tile_cache(cache_mb)
        if cache is not None:
            self._slide.set_cache(cache.openslide)
        props = dict(self._slide.properties)
        self._props = props
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        tw = props.get("openslide.level[0].tile-width")
        th = props.get("openslide.level[0].tile-height")
        self.tile_size = (int(tw), int(th)) if tw and th else (0, 0)
        vendor = None
        if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
            try:
                vendor = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
            except ValueError:
                vendor = None
        tiff = mpp_from_resolution(
            _float_or_none(props.get("tiff.XResolution")),
            _float_or_none(props.get("tiff.YResolution")),
            props.get("tiff.ResolutionUnit"),
        )
        try:
            self.mpp, self.mpp_source = resolve_mpp(self.name, mpp_override, vendor, tiff)
        except SlideError:
            self._slide.close()
            raise
        self._tiles = None
        if fast_tiff and props.get("openslide.vendor") in FAST_TIFF_VENDORS:
            from gigamil.wsi.tiff_tiles import try_tile_source

            self._tiles = try_tile_source(
                self.path,
                self.level_dimensions,
                self._openslide_read,
                cache.tiles if cache is not None else None,
            )

    @property
    def fast_tiff(self) -> bool:
        """Whether pixels are decoded directly from the TIFF tiles (see gigamil.wsi.tiff_tiles)."""
        return self._tiles is not None

    def read_level_into(self, level: int, lx: int, ly: int, out: np.ndarray) -> None:
        """Fast path only: level pixels at level coordinates (lx, ly) straight into ``out``
        (h, w, 3), one copy from the decoded tiles."""
        if self._tiles is None:
            raise RuntimeError("read_level_into needs the fast TIFF path")
        h, w = out.shape[:2]
        try:
            self._tiles.read(level, lx, ly, w, h, out=out)
        except Exception as exc:
            raise SlideError(f"{self.name}: cannot read pixels: {exc}") from exc

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        if self._tiles is None:
            return super().level_origin(location, level)
        ds = self.level_downsamples[level]
        return float(round(location[0] / ds)), float(round(location[1] / ds))

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        if self._tiles is not None:
            lx, ly = (int(v) for v in self.level_origin((x, y), level))
            try:
                return self._tiles.read(level, lx, ly, w, h)
            except Exception as exc:  # corrupt tile data; tifffile/imagecodecs raise many types
                raise SlideError(f"{self.name}: cannot read pixels: {exc}") from exc
        return self._openslide_read(x, y, level, w, h)

    def _openslide_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        import openslide

        try:
            if _RAW_READ is None:
                img = self._slide.read_region((x, y), level, (w, h))
                return composite_on_white(np.asarray(img))
            # Fast path: OpenSlide paints premultiplied ARGB32 into our buffer (bytes B, G, R, A
            # on little-endian machines); skip openslide-python's RGBA conversion and PIL.
            buf = np.empty((h, w), np.uint32)
            _RAW_READ(self._slide._osr, buf.ctypes.data_as(_c_uint32_p), x, y, level, w, h)
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.name}: OpenSlide cannot read pixels: {exc}") from exc
        bgra = buf.view(np.uint8).reshape(h, w, 4)
        alpha = bgra[..., 3]
        if alpha.min(initial=255) < 255:  # premultiplied over white: c + (255 - a)
            rgb = bgra[..., 2::-1].astype(np.uint16) + (255 - alpha[..., None].astype(np.uint16))
            return rgb.clip(0, 255).astype(np.uint8)
        from PIL import Image

        # BGRX -> RGB in Pillow's C loop: faster than numpy's reversed-stride copy
        return np.asarray(Image.frombuffer("RGB", (w, h), buf, "raw", "BGRX", 0, 1))

    def properties(self) -> Mapping[str, str]:
        return self._props

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._slide.close()


def _float_or_none(v: Any) -> float | None:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _downsample_levels(
    image: np.ndarray, downsamples: Sequence[float]
) -> tuple[list[np.ndarray], tuple[float, ...]]:
    """Pyramid levels of ``image`` (H, W, 3) by area (box) resampling; actual downsamples."""
    from PIL import Image

    h0, w0 = image.shape[:2]
    levels = [np.ascontiguousarray(image)]
    actual = [1.0]
    base = Image.fromarray(image)
    for d in downsamples:
        if d <= 1.0:
            continue
        size = (max(1, round(w0 / d)), max(1, round(h0 / d)))
        levels.append(np.asarray(base.resize(size, Image.Resampling.BOX)))
        actual.append((w0 / size[0] + h0 / size[1]) / 2.0)
    return levels, tuple(actual)


class ArrayReader(SlideReader):
    """An in-memory RGB image as a slide (like TIAToolbox's VirtualWSIReader).

    ``image``: (H, W, 3) uint8, or (H, W, 4) RGBA (composited on white); ``mpp``: µm/px of the
    image; ``downsamples``: extra pyramid levels made by box downsampling, e.g. (2, 4).
    """

    def __init__(
        self,
        image: np.ndarray,
        mpp: float,
        downsamples: Sequence[float] = (),
        name: str = "<array>",
        mpp_source: str = "array",
    ):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise SlideError(f"{name}: expected an (H, W, 3) uint8 image, got {image.shape}")
        if image.shape[2] == 4:
            image = composite_on_white(image)
        self.path = name
        self.name = name
        self.mpp = check_mpp(name, float(mpp), float(mpp), mpp_source)
        self.mpp_source = mpp_source
        self._levels, self.level_downsamples = _downsample_levels(image, downsamples)
        self.level_dimensions = tuple((a.shape[1], a.shape[0]) for a in self._levels)

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        """Whole level pixels: floor(location / downsample) (no sub-pixel interpolation)."""
        ds = self.level_downsamples[level]
        return (
            float(math.floor(location[0] / ds + 1e-6)),
            float(math.floor(location[1] / ds + 1e-6)),
        )

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        arr = self._levels[level]
        lh, lw = arr.shape[:2]
        lx, ly = (int(v) for v in self.level_origin((x, y), level))
        out = np.full((h, w, 3), 255, np.uint8)
        sx0, sy0 = max(lx, 0), max(ly, 0)
        sx1, sy1 = min(lx + w, lw), min(ly + h, lh)
        if sx1 > sx0 and sy1 > sy0:
            out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = arr[sy0:sy1, sx0:sx1]
        return out


class ImageReader(ArrayReader):
    """Fallback for plain (untiled) TIFF/PNG/JPEG images OpenSlide refuses, read fully in memory."""

    def __init__(self, path: str | Path, mpp_override: float | None = None):
        name = _slide_name(path)
        image, tiff_mpp = _load_plain_image(Path(path), name)
        mpp, source = resolve_mpp(name, mpp_override, None, tiff_mpp)
        super().__init__(image, mpp, _auto_downsamples(image.shape[:2]), name, source)
        self.path = str(path)


def _auto_downsamples(shape: tuple[int, ...]) -> list[float]:
    """Powers of 4 while the level stays above ~512 px (a small pyramid for mask reads)."""
    out, d = [], 4.0
    while min(shape[0], shape[1]) / d >= 512:
        out.append(d)
        d *= 4.0
    return out


def _load_plain_image(path: Path, name: str) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read a plain image as RGB uint8 plus the MPP its resolution metadata implies (or None)."""
    from PIL import Image

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                if page.imagewidth * page.imagelength > FALLBACK_MAX_PIXELS:
                    raise SlideError(
                        f"{name}: untiled image of {page.imagewidth} x {page.imagelength} px "
                        "is too large for the in-memory reader; convert it to a tiled "
                        "pyramidal TIFF"
                    )
                tags = page.tags
                xr = tags.get("XResolution")
                yr = tags.get("YResolution")
                unit = tags.get("ResolutionUnit")
                mpp = mpp_from_resolution(
                    _rational(xr.value) if xr else None,
                    _rational(yr.value) if yr else None,
                    int(unit.value) if unit else None,
                )
                arr = page.asarray()
        except SlideError:
            raise
        except Exception as exc:  # tifffile raises many types for corrupt/unsupported files
            raise SlideError(f"{name}: cannot read the TIFF: {exc}") from exc
        return _to_rgb(arr, name), mpp
    try:
        with Image.open(path) as img:
            if img.width * img.height > FALLBACK_MAX_PIXELS:
                raise SlideError(f"{name}: image of {img.width} x {img.height} px is too large")
            dpi = img.info.get("dpi")
            arr = np.asarray(img.convert("RGBA"))
    except SlideError:
        raise
    except Exception as exc:
        raise SlideError(f"{name}: cannot read the image: {exc}") from exc
    mpp = mpp_from_resolution(dpi[0], dpi[1], "inch") if dpi else None
    return composite_on_white(arr), mpp


def _rational(v: Any) -> float:
    if isinstance(v, tuple):
        return v[0] / v[1] if v[1] else 0.0
    return float(v)


def _to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    """tifffile page array -> (H, W, 3) uint8."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise SlideError(f"{name}: unsupported image layout {arr.shape} (expected RGB)")
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            raise SlideError(f"{name}: unsupported sample type {arr.dtype} (expected 8-bit RGB)")
    return composite_on_white(arr) if arr.shape[2] == 4 else np.ascontiguousarray(arr)


def shared_tile_cache(mb: int) -> SlideCache:
    """Tile caches of ``mb`` MiB each (OpenSlide's and the fast TIFF path's) that several
    handles (threads) of the same slide can share."""
    import openslide

    from gigamil.wsi.tiff_tiles import TileCache

    return SlideCache(openslide.OpenSlideCache(int(mb) * 2**20), TileCache(int(mb) * 2**20))


def open_slide(
    path: str | Path,
    mpp_override: float | None = None,
    cache_mb: int = 0,
    cache: SlideCache | None = None,
    fast_tiff: bool = True,
) -> SlideReader:
    """Open ``path`` with OpenSlide, or the plain-image fallback if OpenSlide refuses it.

    ``mpp_override`` (sheet ``mpp`` column / ``--slide-mpp``) wins over the file's own MPP.
    ``cache_mb`` > 0 gives this handle its own tile caches of that size; ``cache`` (from
    :func:`shared_tile_cache`) shares them between handles. ``fast_tiff`` lets tiled TIFF/SVS
    pixels be decoded directly (gigamil.wsi.tiff_tiles) instead of through OpenSlide.
    Raises SlideError (naming the file and the problem) if the slide cannot be opened or has no
    plausible MPP.
    """
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{path}: slide file not found")
    if p.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    try:
        return OpenSlideReader(p, mpp_override, cache_mb=cache_mb, cache=cache, fast_tiff=fast_tiff)
    except SlideError as os_err:
        if p.suffix.lower() not in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
            raise
        if "microns-per-pixel" in str(os_err) or "MPP" in str(os_err):
            raise  # OpenSlide opened it fine; the MPP is the problem
        try:
            reader = ImageReader(p, mpp_override)
        except SlideError as fb_err:
            if any(k in str(fb_err) for k in ("microns-per-pixel", "MPP", "too large")):
                raise  # the fallback understood the file: its message is the useful one
            raise os_err from fb_err
        log.info("%s: OpenSlide refused it; read as a plain image", path)
        return reader
