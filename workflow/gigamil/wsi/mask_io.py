"""The files of a tissue mask (:mod:`gigamil.wsi.tissue`): the mask PNG (uint8 0/255, one pixel =
mask_mpp µm), the QC PNG (the slide at mask resolution with the mask outline drawn on it, a title
and a scale bar; :mod:`gigamil.wsi.qc`) and the JSON sidecar (tissue_fraction, mask_mpp,
warnings, params, ...); reading a mask PNG and its provenance back (``extract_patches``)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gigamil.errors import GigamilError
from gigamil.fileutil import atomic_write_bytes

if TYPE_CHECKING:
    from gigamil.wsi.slide import SlideReader
    from gigamil.wsi.tissue import TissueMask, TissueParams

OUTLINE_RGB = (0, 200, 0)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of ``mask`` (mask minus its 4-connected erosion)."""
    from scipy import ndimage

    if not mask.any():
        return np.zeros_like(mask)
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


QC_MAX_SIDE = 8192  # the upscaling stops here (a JPEG copy for the report takes 65,535 px)


def qc_image(rgb: np.ndarray, mask: np.ndarray, min_side: int = 512) -> np.ndarray:
    """The slide image with the mask outline drawn (upscaled so the short side >= min_side,
    the long side staying within :data:`QC_MAX_SIDE` px: a narrow strip of tissue is not blown
    up past what an image file can hold), thickened on large images (about 1 px per 400 px of
    the long side)."""
    from PIL import Image

    h, w = mask.shape
    scale = int(np.ceil(min_side / max(1, min(h, w))))
    scale = max(1, min(scale, QC_MAX_SIDE // max(1, h, w)))
    if scale > 1:
        big = (w * scale, h * scale)
        rgb = np.asarray(Image.fromarray(rgb).resize(big, Image.Resampling.NEAREST))
        mask = np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)
    from scipy import ndimage

    edge = outline(mask)
    width = max(scale // 3, max(mask.shape) // 400)  # visible on large images too
    if width > 0:
        edge = ndimage.binary_dilation(edge, iterations=width)
    out = rgb.copy()
    out[edge] = OUTLINE_RGB
    return out


def write_png(path: str | Path, image: np.ndarray, mpp: float | None = None) -> None:
    """Write a PNG (creating the directory); ``mpp`` goes into the pHYs chunk as dpi."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {"dpi": (25400.0 / mpp, 25400.0 / mpp)} if mpp else {}
    buf = io.BytesIO()
    fmt = Image.registered_extensions().get(path.suffix.lower())  # as save(path) picks it
    Image.fromarray(image).save(buf, format=fmt, **kw)
    atomic_write_bytes(path, buf.getbuffer())  # a kill mid-write leaves no PNG cut short


def read_mask_png(path: str | Path) -> np.ndarray:
    """A mask PNG -> (H, W) bool (nonzero = tissue)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L"))
    except (OSError, ValueError) as exc:
        raise GigamilError(f"{path}: cannot read the mask PNG ({exc})") from exc
    return arr > 0


def mask_summary(
    reader: SlideReader, tm: TissueMask, params: TissueParams, seconds: float | None = None
) -> dict[str, Any]:
    """The JSON sidecar content."""
    from gigamil import __version__

    return {
        "slide": reader.name,
        "tissue_fraction": tm.tissue_fraction,
        "mask_mpp": params.mask_mpp,
        "mask_mpp_xy": [tm.mpp_x, tm.mpp_y],
        "mask_shape": list(tm.mask.shape),
        "slide_mpp": reader.mpp,
        "slide_mpp_xy": list(reader.mpp_xy),
        "slide_mpp_source": reader.mpp_source,
        "slide_dimensions": list(reader.dimensions),
        "level_read": tm.level,
        "threshold_value": tm.threshold_value,
        "params": asdict(params),
        "warnings": list(tm.warnings),
        "seconds": seconds,
        "gigamil_version": __version__,
    }


QC_LONG_SIDE = 1024  # px: a mask raster smaller than this gets the slide's own thumbnail


def _qc_background(reader: SlideReader, tm: TissueMask) -> tuple[np.ndarray, np.ndarray]:
    """The QC image's background and the mask at its size. Where the mask raster's long side is
    under :data:`QC_LONG_SIDE` px (small slides, e.g. the demo's 864 px at 0.972 µm/px give
    105 mask px at 8 µm/px), the slide's thumbnail of up to that many px (never beyond level 0)
    with the mask enlarged to it (nearest), so the tissue stays recognisable; else the RGB the
    mask was computed on."""
    from PIL import Image

    rgb = tm.rgb if tm.rgb is not None else np.full((*tm.mask.shape, 3), 255, np.uint8)
    if max(tm.mask.shape) >= QC_LONG_SIDE:
        return rgb, tm.mask
    side = min(QC_LONG_SIDE, max(reader.dimensions))  # never enlarged beyond level 0
    thumb = np.ascontiguousarray(reader.get_thumbnail((side, side))[..., :3])
    if max(thumb.shape[:2]) <= max(tm.mask.shape):
        return rgb, tm.mask
    size = (thumb.shape[1], thumb.shape[0])
    big = Image.fromarray(tm.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
    return thumb, np.asarray(big) > 127


def write_mask_outputs(
    reader: SlideReader,
    tm: TissueMask,
    params: TissueParams,
    out_png: str | Path,
    qc_png: str | Path | None = None,
    json_path: str | Path | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Write the mask PNG and optionally the QC PNG and JSON sidecar; return the summary.
    An earlier ``json_path`` is deleted first and the sidecar written last: a failure between
    the writes (e.g. the QC image's folder) leaves no sidecar rather than the earlier mask's
    settings beside this mask, which gigamil patches would record as this mask's."""
    mpp = (tm.mpp_x + tm.mpp_y) / 2
    if json_path is not None:
        Path(json_path).unlink(missing_ok=True)
    write_png(out_png, (tm.mask.astype(np.uint8) * 255), mpp)
    summary = mask_summary(reader, tm, params, seconds)
    if qc_png is not None:
        from gigamil.wsi.qc import annotate_qc_image, qc_caption

        rgb, mask = _qc_background(reader, tm)
        qc = qc_image(rgb, mask)
        qc_mpp = mpp * tm.mask.shape[1] / qc.shape[1]  # finer than the mask on small slides
        title = Path(str(reader.name)).name
        write_png(qc_png, annotate_qc_image(qc, qc_mpp, title, qc_caption(summary)))
    if json_path is not None:
        atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


# the key of mask_params_for's result holding the level-0 size of the slide the mask was made
# from (its JSON sidecar's slide_dimensions); extract_patches checks it and leaves it out of
# the store's attrs
MASK_SLIDE_DIMENSIONS = "_mask_slide_dimensions"


def mask_sidecar(mask_png: str | Path) -> Path:
    """The JSON sidecar of a tissue-mask PNG (``MASK.png`` -> ``MASK.json``): where ``gigamil
    mask --json`` must write, and where :func:`mask_params_for` looks."""
    return Path(mask_png).with_suffix(".json")


def mask_params_for(mask_png: str | Path) -> dict[str, Any]:
    """Provenance of a mask PNG: its path plus, if present, its JSON sidecar's params and (as
    :data:`MASK_SLIDE_DIMENSIONS`) the size of the slide it was made from."""
    params: dict[str, Any] = {"mask_file": str(Path(mask_png).resolve())}
    sidecar = mask_sidecar(mask_png)
    if sidecar.is_file():
        meta = read_mask_json(sidecar)  # a damaged one is an error, not "no sidecar"
        with contextlib.suppress(ValueError, AttributeError, TypeError):  # not gigamil's
            params.update(meta.get("params", {}))
            if meta.get("slide_dimensions"):
                params[MASK_SLIDE_DIMENSIONS] = [int(v) for v in meta["slide_dimensions"]]
    return params


def read_mask_json(path: str | Path) -> Any:
    """The parsed JSON sidecar of a tissue mask (``gigamil mask --json``, rule tissue_mask).
    A file that does not parse (cut short, damaged) is a :class:`GigamilError` naming it and
    what to do: read as absent, it dropped the mask's settings from the store it cut and the
    check of the slide size it records."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise GigamilError(
            f"tissue-mask sidecar {path} is damaged or cut short ({type(exc).__name__}: {exc}); "
            "delete it and its mask PNG and rerun (snakemake's rule tissue_mask, or gigamil "
            "mask --json, writes both again)"
        ) from exc
