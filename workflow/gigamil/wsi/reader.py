"""Whole-slide image readers with a physical resolution (microns per pixel, MPP).

``open_slide(path)`` returns a :class:`~gigamil.wsi.slide.SlideReader`: OpenSlide for every
format it opens (SVS, tiled TIFF, NDPI, MRXS, SCN, ...), else the in-memory fallback
(:class:`~gigamil.wsi.memory.ImageReader`) for small plain images OpenSlide refuses. The MPP
comes from :mod:`gigamil.wsi.mpp` (override > OpenSlide > TIFF resolution tags).

DICOM whole-slide images are checked for colour when opened (:func:`dicom_colour_mode`): some
writers store YCbCr-coded JPEG frames under a header that says RGB, which OpenSlide believes
(pink glass, teal tissue); gigamil then converts OpenSlide's pixels from YCbCr to RGB.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from gigamil.errors import DAMAGED_PIXELS as DAMAGED
from gigamil.errors import SlideError
from gigamil.wsi.memory import ImageReader, check_tiff_not_truncated, plain_image_header
from gigamil.wsi.mpp import property_mpps, resolve_mpp_xy
from gigamil.wsi.slide import SlideReader, composite_on_white
from gigamil.wsi.tiff_tiles import check_generic_tiff_samples

log = logging.getLogger(__name__)


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
except (
    ImportError,
    OSError,
    AttributeError,
):  # pragma: no cover - openslide not importable: the public API raises later
    _RAW_READ = None


FAST_TIFF_VENDORS = ("generic-tiff", "aperio")
CONVERT_HINT = (  # README, "OpenSlide cannot open"
    "convert it to a pyramidal tiled TIFF (e.g. `vips tiffsave SLIDE out.tif --tile --pyramid`), "
    "or remove the slide from its cohort sheet"
)
# TIFF-based slide formats other than .tif/.tiff (Aperio, Hamamatsu, Leica, Ventana, Philips)
TIFF_BASED = (".svs", ".ndpi", ".scn", ".bif")
# DICOM transfer syntaxes whose frames are baseline/extended JPEG (colour space in the stream)
DICOM_JPEG_SYNTAXES = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
# mean absolute difference (0..255) below which OpenSlide's pixels "match" a frame decoded by
# Pillow (both libjpeg; JPEG rounding and chroma upsampling differ by a few levels at most)
DICOM_COLOUR_MATCH = 4.0


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 full-range YCbCr (JPEG/JFIF) -> RGB uint8."""
    import cv2

    ycc = np.ascontiguousarray(ycc, dtype=np.uint8)
    shape = ycc.shape
    ycrcb = ycc.reshape(-1, 1, 3)[..., [0, 2, 1]]  # OpenCV wants Y, Cr, Cb
    return cv2.cvtColor(np.ascontiguousarray(ycrcb), cv2.COLOR_YCrCb2RGB).reshape(shape)


def _dicom_first_frame(path: Path) -> tuple[Any, bytes] | None:
    """(header dataset, first frame's bytes) of an encapsulated (compressed) DICOM image, read
    without loading the rest of the pixel data; None if it has no encapsulated pixel data."""
    import pydicom
    from pydicom.encaps import get_frame

    with open(path, "rb") as f:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        head = f.read(12)  # (7FE0,0010) OB, reserved, undefined length
        if len(head) < 12 or head[:4] != b"\xe0\x7f\x10\x00" or head[8:] != b"\xff" * 4:
            return None
        frame = get_frame(f, 0, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    return ds, frame


def dicom_colour_mode(reader: OpenSlideReader) -> str:
    """How OpenSlide's pixels of a DICOM slide relate to true colour: ``"rgb"`` (right as they
    are) or ``"ycbcr"`` (the JPEG frames are YCbCr-coded while the header says RGB, and
    OpenSlide passed the YCbCr values through as RGB).

    The first frame of the opened file is decoded by Pillow, which reads the colour space from
    the JPEG stream itself (JFIF/Adobe markers, component ids), and compared with OpenSlide's
    pixels of the same tile. Raises SlideError if neither reading matches.
    """
    from io import BytesIO

    from PIL import Image

    props = reader.properties()
    if props.get("dicom.PhotometricInterpretation") != "RGB":
        return "rgb"  # YBR_* frames: OpenSlide converts them itself
    if props.get("dicom.TransferSyntaxUID") not in DICOM_JPEG_SYNTAXES:
        return "rgb"
    try:
        first = _dicom_first_frame(Path(reader.path))
    except (OSError, ValueError, ImportError) as exc:
        raise SlideError(f"{reader.name}: cannot read the DICOM header/frames ({exc})") from exc
    if first is None:
        return "rgb"
    ds, frame = first
    width = int(ds.get("TotalPixelMatrixColumns", 0) or 0)
    levels = [i for i, (lw, _) in enumerate(reader.level_dimensions) if lw == width]
    if not levels:
        return "rgb"
    level = levels[0]
    with Image.open(BytesIO(frame)) as img:
        truth = np.asarray(img.convert("RGB"), np.int16)
    lw, lh = reader.level_dimensions[level]
    w, h = min(truth.shape[1], lw), min(truth.shape[0], lh)
    raw = np.asarray(reader._slide.read_region((0, 0), level, (w, h)))[..., :3]
    truth = truth[:h, :w]
    as_is = float(np.abs(raw.astype(np.int16) - truth).mean())
    converted = float(np.abs(ycbcr_to_rgb(raw).astype(np.int16) - truth).mean())
    log.debug("%s: DICOM colour check: %.2f as is, %.2f as YCbCr", reader.name, as_is, converted)
    if as_is <= DICOM_COLOUR_MATCH:
        return "rgb"
    if converted <= DICOM_COLOUR_MATCH:
        log.info(
            "%s: DICOM frames are YCbCr-coded JPEG though the header says RGB; "
            "converting OpenSlide's pixels to RGB",
            reader.name,
        )
        return "ycbcr"
    raise SlideError(
        f"{reader.name}: OpenSlide's colours differ from the DICOM frames' own JPEG decoding "
        f"(mean difference {as_is:.1f}, {converted:.1f} read as YCbCr); convert the slide "
        f"(e.g. to a pyramidal TIFF) and check its colours"
    )


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
        self.name = str(path)
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            # OpenSlide says "Unsupported or missing image file": the file exists (open_slide
            # checks it first), so "missing" only misleads
            raise SlideError(
                f"{self.name}: the file exists but is not a slide OpenSlide can read (no format "
                f"it recognises); {CONVERT_HINT}"
            ) from exc
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"{self.name}: OpenSlide cannot open it: {exc}; {CONVERT_HINT}"
            ) from exc
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
        self._tiles, self._ycbcr, vendor = None, False, props.get("openslide.vendor")
        try:  # the slide's MPP, and what its format needs checked (closed if refused)
            mpps = property_mpps(props, self.path if vendor == "generic-tiff" else None)
            self.set_mpp(*resolve_mpp_xy(self.name, mpp_override, *mpps))
            if vendor == "generic-tiff":
                check_generic_tiff_samples(self.path, self.name)
            if vendor == "dicom":
                self._ycbcr = dicom_colour_mode(self) == "ycbcr"
        except SlideError:
            self._slide.close()
            raise
        if fast_tiff and vendor in FAST_TIFF_VENDORS:
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
            raise SlideError(f"{self.name}: cannot read pixels: {exc}{DAMAGED}") from exc

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        if self._tiles is None:
            return super().level_origin(location, level)
        return self.nearest_level_pixel(location, level)

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        if self._tiles is not None:
            lx, ly = (int(v) for v in self.level_origin((x, y), level))
            try:
                return self._tiles.read(level, lx, ly, w, h)
            except Exception as exc:  # corrupt tile data; tifffile/imagecodecs raise many types
                raise SlideError(f"{self.name}: cannot read pixels: {exc}{DAMAGED}") from exc
        return self._openslide_read(x, y, level, w, h)

    def _openslide_read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        import openslide

        try:
            if self._ycbcr:  # YCbCr values passed through as RGB: convert, then composite
                rgba = np.array(self._slide.read_region((x, y), level, (w, h)))
                rgba[..., :3] = ycbcr_to_rgb(rgba[..., :3])
                return composite_on_white(rgba)
            if _RAW_READ is None:
                img = self._slide.read_region((x, y), level, (w, h))
                return composite_on_white(np.asarray(img))
            # Fast path: OpenSlide paints premultiplied ARGB32 into our buffer (bytes B, G, R, A
            # on little-endian machines); skip openslide-python's RGBA conversion and PIL.
            buf = np.empty((h, w), np.uint32)
            _RAW_READ(self._slide._osr, buf.ctypes.data_as(_c_uint32_p), x, y, level, w, h)
        except openslide.OpenSlideError as exc:
            raise SlideError(f"{self.name}: OpenSlide cannot read pixels: {exc}{DAMAGED}") from exc
        bgra = buf.view(np.uint8).reshape(h, w, 4)
        alpha = bgra[..., 3]
        if alpha.min(initial=255) < 255:  # premultiplied over white: c + (255 - a)
            return composite_on_white(bgra[..., [2, 1, 0, 3]], premultiplied=True)
        from PIL import Image

        # BGRX -> RGB in Pillow's C loop: faster than numpy's reversed-stride copy
        return np.asarray(Image.frombuffer("RGB", (w, h), buf, "raw", "BGRX", 0, 1))

    def properties(self) -> Mapping[str, str]:
        return self._props

    def close(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._slide.close()


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
    p = _existing_slide_file(path)
    try:
        return OpenSlideReader(p, mpp_override, cache_mb=cache_mb, cache=cache, fast_tiff=fast_tiff)
    except SlideError as os_err:
        _check_fallback(p, os_err)
        try:
            reader = ImageReader(p, mpp_override)
        except SlideError as fb_err:
            _raise_fallback_error(os_err, fb_err)
        log.info("%s: OpenSlide refused it; read as a plain image", path)
        return reader


def slide_mpp(path: str | Path, mpp_override: float | None = None) -> float:
    """The level-0 MPP (µm/px) :func:`open_slide` would give ``path`` (:func:`slide_header`)."""
    return slide_header(path, mpp_override)[0]


def slide_header(
    path: str | Path, mpp_override: float | None = None
) -> tuple[float, tuple[int, int]]:
    """``(level-0 MPP in µm/px, level-0 (width, height) in px)`` as :func:`open_slide` would give
    them, from headers only: OpenSlide reads the TIFF directory, not the tiles; a plain image is
    not decoded (:func:`gigamil.wsi.memory.plain_image_header`). Raises SlideError as open_slide
    does; damaged pixel data is found only when the pixels are read."""
    p = _existing_slide_file(path)
    try:
        with OpenSlideReader(p, mpp_override, fast_tiff=False) as reader:
            return float(reader.mpp), (int(reader.dimensions[0]), int(reader.dimensions[1]))
    except SlideError as os_err:
        _check_fallback(p, os_err)
        try:
            return plain_image_header(p, mpp_override)
        except SlideError as fb_err:
            _raise_fallback_error(os_err, fb_err)


def _existing_slide_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{path}: slide file not found")
    if p.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")
    return p


def _check_fallback(p: Path, os_err: SlideError) -> None:
    """Re-raise OpenSlide's error unless the plain-image fallback may try ``p``; a TIFF-based
    slide (e.g. .svs, or a .tif pyramid) whose image data runs past the end of the file is
    named truncated instead (OpenSlide calls it a format it does not recognise, and the
    fallback, which reads level 0 only, would take a cut-short pyramid for a plain image)."""
    suffix = p.suffix.lower()
    if os_err.reason != "mpp" and suffix in (*TIFF_BASED, ".tif", ".tiff"):
        check_tiff_not_truncated(p, str(p))
    if suffix not in (".tif", ".tiff", ".png", ".jpg", ".jpeg"):
        raise os_err
    if os_err.reason == "mpp":
        raise os_err  # OpenSlide opened it fine; the MPP is the problem


def _raise_fallback_error(os_err: SlideError, fb_err: SlideError) -> NoReturn:
    """The error of a slide both OpenSlide and the fallback refused."""
    if os_err.reason == "unsupported":  # gigamil's reader refused it, naming the kind
        raise os_err from None
    if fb_err.reason in ("mpp", "too_large", "truncated", "unsupported"):
        # the fallback understood the file: its message is the useful one, without
        # OpenSlide's refusal chained in front of it (a red herring in the job's log)
        raise fb_err from None
    raise os_err from fb_err
