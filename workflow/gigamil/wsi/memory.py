"""In-memory slides: :class:`ArrayReader` wraps an RGB array (tests, generated data) and
:class:`ImageReader` reads a plain (untiled) TIFF/PNG/JPEG that OpenSlide refuses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gigamil.errors import SlideError
from gigamil.wsi.mpp import check_mpp, mpp_from_resolution, resolve_mpp_xy, tiff_page_mpp
from gigamil.wsi.slide import SlideReader, composite_on_white

FALLBACK_MAX_PIXELS = 2**28  # plain images read fully into memory by the fallback reader


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
    image (x; ``mpp_y`` for y if the pixels are not square); ``downsamples``: extra pyramid
    levels made by box downsampling, e.g. (2, 4).
    """

    def __init__(
        self,
        image: np.ndarray,
        mpp: float,
        downsamples: Sequence[float] = (),
        name: str = "<array>",
        mpp_source: str = "array",
        mpp_y: float | None = None,
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
        mpp_y = float(mpp if mpp_y is None else mpp_y)
        check_mpp(name, float(mpp), mpp_y, mpp_source)
        self.set_mpp((float(mpp), mpp_y), mpp_source)
        self._levels, self.level_downsamples = _downsample_levels(image, downsamples)
        self.level_dimensions = tuple((a.shape[1], a.shape[0]) for a in self._levels)

    def level_origin(self, location: tuple[int, int], level: int) -> tuple[float, float]:
        """Whole level pixels (no sub-pixel interpolation), as the fast TIFF path."""
        return self.nearest_level_pixel(location, level)

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
        name = str(path)
        image, tiff_mpp, _ = _load_plain_image(Path(path), name)
        (mpp_x, mpp_y), source = resolve_mpp_xy(name, mpp_override, None, tiff_mpp)
        super().__init__(image, mpp_x, _auto_downsamples(image.shape[:2]), name, source, mpp_y)
        self.path = str(path)


def _auto_downsamples(shape: tuple[int, ...]) -> list[float]:
    """Powers of 4 while the level stays above ~512 px (a small pyramid for mask reads)."""
    out, d = [], 4.0
    while min(shape[0], shape[1]) / d >= 512:
        out.append(d)
        d *= 4.0
    return out


def plain_image_header(
    path: str | Path, mpp_override: float | None = None
) -> tuple[float, tuple[int, int]]:
    """(level-0 MPP, (width, height) in px) of a plain image as :class:`ImageReader` resolves
    them, from the file's header alone (the pixels are not decoded). Raises SlideError like
    ImageReader."""
    name = str(path)
    _, tiff_mpp, size = _load_plain_image(Path(path), name, decode=False)
    (mpp_x, mpp_y), _ = resolve_mpp_xy(name, mpp_override, None, tiff_mpp)
    return (mpp_x + mpp_y) / 2.0, size


def _load_plain_image(
    path: Path, name: str, decode: bool = True
) -> tuple[np.ndarray | None, tuple[float, float] | None, tuple[int, int]]:
    """Read a plain image as RGB uint8 plus the MPP its resolution metadata implies (or None)
    and its (width, height) in px; ``decode`` False checks the header (format, size) and, for
    a TIFF, that its first strip or tile decodes, and returns no pixels (None)."""
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
                        "pyramidal TIFF",
                        reason="too_large",
                    )
                mpp = tiff_page_mpp(page)
                premultiplied = tuple(page.extrasamples or ())[:1] == (1,)  # associated alpha
                size = int(page.imagewidth), int(page.imagelength)
                _check_not_truncated(path, name, page)
                if decode:
                    arr = _tiff_colours(page, _samples_last(page, page.asarray()), name)
                else:  # the first strip/tile only: an undecodable file fails here, not later
                    arr = None
                    next(iter(page.segments()), None)
                    _check_tiff_kind(page, name, premultiplied)
        except SlideError:
            raise
        except Exception as exc:  # tifffile raises many types for corrupt/unsupported files
            raise SlideError(
                f"{name}: cannot read the TIFF: {exc}", reason=_decode_reason(exc, path)
            ) from exc
        return (_to_rgb(arr, name, premultiplied) if arr is not None else None), mpp, size
    try:
        with Image.open(path) as img:
            if img.width * img.height > FALLBACK_MAX_PIXELS:
                raise SlideError(
                    f"{name}: image of {img.width} x {img.height} px is too large",
                    reason="too_large",
                )
            mpp = _pillow_mpp(img)
            size = int(img.width), int(img.height)
            arr = _pillow_rgba(img, name) if decode else None
    except SlideError:
        raise
    except Exception as exc:
        reason = _decode_reason(exc, path)
        hint = "; copy the slide again" if reason == "truncated" else ""
        raise SlideError(f"{name}: cannot read the image: {exc}{hint}", reason=reason) from exc
    return (composite_on_white(arr) if arr is not None else None), mpp, size


def _pillow_mpp(img: Any) -> tuple[float, float] | None:
    """µm/px (x, y) of an image Pillow opened: a JPEG's JFIF density when it has a unit (1 dots
    per inch, 2 per cm), else its EXIF XResolution / YResolution in their ResolutionUnit (EXIF's
    default inch; 1, no absolute unit, gives none: Pillow's ``dpi`` reads it as inches, and took
    XResolution for both axes); other formats' ``dpi`` (a PNG's pHYs). None when there is none."""
    if img.format == "JPEG" and img.info.get("jfif_unit") not in (1, 2):
        exif = img.getexif()
        x_res, y_res = exif.get(0x011A), exif.get(0x011B)
        if x_res is None or y_res is None:
            return None
        return mpp_from_resolution(float(x_res), float(y_res), exif.get(0x0128, 2))
    dpi = img.info.get("dpi")
    return mpp_from_resolution(dpi[0], dpi[1], "inch") if dpi else None


def _decode_reason(exc: Exception, path: Path) -> str:
    """:class:`~gigamil.errors.SlideError` reason of an image library's decoding error: Pillow
    reports a file cut short as "image file is truncated" and refuses an image or text chunk
    over its limits as a ``DecompressionBombError`` or "... too large ..."; anything else is
    ``"unreadable"``. The file's ``path``, which the message may quote, is not searched."""
    from PIL import Image

    text = str(exc).replace(str(path), "").replace(path.name, "").lower()
    if isinstance(exc, Image.DecompressionBombError) or "too large" in text:
        return "too_large"
    if "truncated" in text:
        return "truncated"
    return "unreadable"


def _ifd_past_the_end(path: Path) -> int | None:
    """Offset of the first image file directory (IFD) of the TIFF ``path`` whose entries run
    past the end of the file (TIFF 6.0 section 2; BigTIFF: 8-byte offsets and counts, 20-byte
    entries), or None (none does, or ``path`` is not a TIFF)."""
    import struct

    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return None
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        offset_fmt, count_fmt, entry = ("Q", "Q", 20) if big else ("I", "H", 12)
        offset_len, count_len = struct.calcsize(offset_fmt), struct.calcsize(count_fmt)
        offset = struct.unpack(order + offset_fmt, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        while offset and offset not in seen:
            seen.add(offset)
            fh.seek(offset)
            raw = fh.read(count_len)
            n = struct.unpack(order + count_fmt, raw)[0] if len(raw) == count_len else 0
            end = offset + count_len + n * entry + offset_len  # entries, then the next offset
            if end > size:
                return offset
            fh.seek(end - offset_len)
            offset = struct.unpack(order + offset_fmt, fh.read(offset_len))[0]
    return None


def check_tiff_not_truncated(path: Path, name: str) -> None:
    """SlideError if the TIFF-based file ``path`` (e.g. an Aperio .svs) is cut short: an image
    file directory of its chain (:func:`_ifd_past_the_end`) or the image data of a page
    (:func:`_check_not_truncated`) lies past the end of the file. Nothing if it is not a TIFF
    or nothing is cut short."""
    import logging

    import tifffile

    if (offset := _ifd_past_the_end(path)) is not None:
        raise SlideError(
            f"{name}: the file is truncated: an image directory at byte {offset:,} runs past its "
            f"end ({path.stat().st_size:,} bytes; an interrupted copy or download?); copy the "
            "slide again",
            reason="truncated",
        )
    tiff_log = logging.getLogger("tifffile")
    level, tiff_log.level = tiff_log.level, logging.CRITICAL  # its own complaints: ours follow
    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
    except Exception:  # noqa: BLE001 - a TIFF tifffile cannot list: OpenSlide's error stands
        return
    finally:
        tiff_log.level = level
    for page in pages:
        _check_not_truncated(path, name, page)


def _check_not_truncated(path: Path, name: str, page: Any) -> None:
    """SlideError if the image data of a TIFF page (``tifffile.TiffPage``) runs past the end of
    the file: a copy or download cut short, whose header still reads fine."""
    size = path.stat().st_size
    ends = [
        int(o) + int(n) for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n
    ]
    if ends and max(ends) > size:
        raise SlideError(
            f"{name}: the file is truncated: its image data runs to byte {max(ends):,} but the "
            f"file has {size:,} bytes (an interrupted copy or download?); copy the slide again",
            reason="truncated",
        )


def _to_rgb(arr: np.ndarray, name: str, premultiplied: bool = False) -> np.ndarray:
    """tifffile page array -> (H, W, 3) uint8 (RGBA over white: :func:`composite_on_white`)."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise SlideError(
            f"{name}: unsupported image layout {arr.shape} (expected RGB)", reason="unsupported"
        )
    if arr.dtype != np.uint8:
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        else:
            raise SlideError(
                f"{name}: unsupported sample type {arr.dtype} (expected 8-bit RGB)",
                reason="unsupported",
            )
    if arr.shape[2] == 4:
        return composite_on_white(arr, premultiplied)
    return np.ascontiguousarray(arr)


def _samples_last(page: Any, arr: np.ndarray) -> np.ndarray:
    """A tifffile page array with its samples last: tifffile returns a planar page's
    (PlanarConfiguration 2, separate) samples first, (S, H, W)."""
    if int(page.planarconfig) == 2 and arr.ndim == 3:
        return np.moveaxis(arr, 0, -1)
    return arr


def _check_tiff_kind(page: Any, name: str, premultiplied: bool) -> None:
    """Refuse, from its header alone, a TIFF page that :func:`_tiff_colours` or :func:`_to_rgb`
    would refuse once decoded (photometric kind, sample layout or type): they are run on one
    pixel of the page's sample layout, so that a header check (:func:`plain_image_header`, the
    run's preflight) names what reading the slide would."""
    if page.dtype is None:  # a sample format tifffile cannot decode: reading it will say
        return
    spp = int(page.samplesperpixel)
    probe = np.zeros((1, 1, spp) if spp > 1 else (1, 1), page.dtype)
    _to_rgb(_tiff_colours(page, probe, name), name, premultiplied)


# TIFF PhotometricInterpretation values the reader turns into RGB
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _YCBCR = 0, 1, 2, 3, 6


def _tiff_colours(page: Any, arr: np.ndarray, name: str) -> np.ndarray:
    """A plain TIFF page's decoded samples as colours: a palette image's indices through its
    colour map (tifffile decodes the indices), a min-is-white image inverted; RGB, grey and
    JPEG-compressed YCbCr (decoded to RGB by the JPEG decoder) as they are; other kinds (CMYK,
    CIELab, uncompressed YCbCr, whose samples tifffile returns as Y, Cb, Cr) refused."""
    kind = int(page.photometric)
    if kind == _PALETTE and page.colormap is not None and arr.ndim == 2:
        return np.moveaxis(np.asarray(page.colormap)[:, arr], 0, -1)  # uint16 (H, W, 3)
    if kind == _MINISWHITE and arr.dtype.kind == "u":
        return np.iinfo(arr.dtype).max - arr
    if kind in (_MINISBLACK, _RGB) or (kind == _YCBCR and int(page.compression) in (6, 7)):
        return arr  # 6, 7: old- and new-style JPEG
    raise SlideError(
        f"{name}: TIFF of photometric interpretation {page.photometric.name} is not supported "
        "(expected RGB, greyscale or palette); convert it to RGB",
        reason="unsupported",
    )


def _pillow_rgba(img: Any, name: str) -> np.ndarray:
    """(H, W, 4) uint8 of a Pillow image. 16-bit greyscale keeps its upper 8 bits (Pillow's
    ``convert`` clips it to white); other integer or float images are refused."""
    mode = str(img.mode)
    if mode.startswith("I;16"):
        grey = (np.asarray(img).astype(np.uint16) >> 8).astype(np.uint8)
        return np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    if mode in ("I", "F") or mode.startswith("I;"):
        raise SlideError(
            f"{name}: image mode {mode} (32-bit integer or float samples) is not supported "
            "(expected 8- or 16-bit RGB or greyscale); convert it to 8-bit RGB",
            reason="unsupported",
        )
    return np.asarray(img.convert("RGBA"))
