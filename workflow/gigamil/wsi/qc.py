"""Quality control: the per-cohort QC table (one row per slide from the mask JSON and the patch
store attrs; CSV and an HTML page for the report) and the annotation of the tissue-mask QC
thumbnail (title with tissue fraction and threshold, scale bar in µm)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gigamil.fileutil import atomic_write_csv
from gigamil.wsi.mask_io import read_mask_json

if TYPE_CHECKING:  # pandas and the store (zarr) are imported where the QC table needs them: the
    import pandas as pd  # tissue_mask job imports this module only to annotate its thumbnail


COLUMNS = [
    "slide_id",
    "patient_id",
    "label",
    "source_path",
    "width",
    "height",
    "slide_mpp",
    "slide_mpp_source",
    "tissue_fraction",
    "tissue_threshold",
    "mask_mpp",
    "n_patches",
    "target_mpp",
    "effective_mpp",
    "patch_px",
    "level",
    "mask_seconds",
    "extract_seconds",
    "warnings",
]
# the HTML page's headers, with units (the CSV keeps the column names)
HEADERS = {
    "patient_id": "patient",
    "width": "width (px)",
    "height": "height (px)",
    "slide_mpp": "slide µm/px",
    "slide_mpp_source": "µm/px from",
    "tissue_fraction": "tissue (%)",
    "tissue_threshold": "saturation threshold (0–255)",
    "mask_mpp": "mask µm/px",
    "n_patches": "patches",
    "target_mpp": "target µm/px",
    "effective_mpp": "patch µm/px",
    "patch_px": "patch (px)",
    "level": "pyramid level",
    "mask_seconds": "mask (s)",
    "extract_seconds": "patches (s)",
}


def qc_row(slide_id: str, mask_json: str | Path, store: str | Path) -> dict:
    """One QC row from a mask JSON sidecar and a patch store."""
    from gigamil.data.store import open_store

    info = read_mask_json(mask_json)
    attrs = dict(open_store(store).attrs)
    width, height = attrs.get("slide_dimensions", info.get("slide_dimensions", [None, None]))
    warnings = list(dict.fromkeys([*info.get("warnings", []), *attrs.get("warnings", [])]))
    return {
        "slide_id": slide_id,
        "source_path": attrs.get("source_path", info.get("slide")),
        "width": width,
        "height": height,
        "slide_mpp": attrs.get("slide_mpp", info.get("slide_mpp")),
        "slide_mpp_source": attrs.get("slide_mpp_source", info.get("slide_mpp_source")),
        "tissue_fraction": info.get("tissue_fraction"),
        "tissue_threshold": info.get("threshold_value"),
        "mask_mpp": info.get("mask_mpp"),
        "n_patches": attrs.get("n_patches"),
        "target_mpp": attrs.get("target_mpp"),
        "effective_mpp": attrs.get("effective_mpp"),
        "patch_px": attrs.get("patch_px"),
        "level": attrs.get("level"),
        "mask_seconds": info.get("seconds"),
        "extract_seconds": attrs.get("seconds"),
        "warnings": " | ".join(warnings),
    }


def qc_table(
    slide_ids: Sequence[str],
    mask_jsons: Sequence[str | Path],
    stores: Sequence[str | Path],
    sheet: pd.DataFrame | Mapping[str, Sequence[Any]] | None = None,
) -> pd.DataFrame:
    """The QC table of a cohort (rows in the given slide order); ``sheet`` (the cohort's sheet,
    or its columns as lists: slide_id, patient_id and, if any, label) fills the patient_id and
    label columns, which stay empty without it."""
    import pandas as pd

    if not len(slide_ids) == len(mask_jsons) == len(stores):
        raise ValueError("slide_ids, mask_jsons and stores must have the same length")
    rows = [qc_row(s, m, z) for s, m, z in zip(slide_ids, mask_jsons, stores, strict=True)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    if sheet is not None:
        sheet = pd.DataFrame(sheet)
        by_slide = sheet.set_index(sheet["slide_id"].astype(str))
        for col in ("patient_id", "label"):
            if col in by_slide.columns:
                df[col] = df["slide_id"].astype(str).map(by_slide[col]).to_numpy()
    return df


def write_qc_table(
    out_csv: str | Path,
    slide_ids: Sequence[str],
    mask_jsons: Sequence[str | Path],
    stores: Sequence[str | Path],
    out_html: str | Path | None = None,
    title: str = "QC",
    sheet: pd.DataFrame | Mapping[str, Sequence[Any]] | None = None,
) -> pd.DataFrame:
    """Write the QC CSV (and, with ``out_html``, the same table as an HTML page, with each
    slide's tissue-mask QC image beside its row: ``{slide_id}.qc.png`` next to its mask JSON,
    which the tissue_mask job writes with it); return the table. ``sheet``: see
    :func:`qc_table`."""
    df = qc_table(slide_ids, mask_jsons, stores, sheet)
    atomic_write_csv(df, out_csv)
    if out_html is not None:
        pairs = zip(slide_ids, mask_jsons, strict=True)
        thumbs = {s: Path(m).with_name(f"{s}.qc.png") for s, m in pairs}
        write_qc_html(df, out_html, title, thumbs)
    return df


def qc_labels(mask_json: str | Path) -> dict[str, str]:
    """Report labels of a QC thumbnail from its mask JSON: tissue fraction, threshold, warnings."""
    info = read_mask_json(mask_json)
    return {
        "tissue fraction": f"{100 * float(info.get('tissue_fraction') or 0.0):.1f} %",
        "threshold": _threshold_text(
            {**info, "threshold_value": info.get("threshold_value") or 0.0}
        ),
        "warnings": "; ".join(info.get("warnings") or []) or "none",
    }


def _threshold_text(summary: Mapping[str, Any]) -> str:
    """The saturation threshold of a mask JSON summary to one decimal, as the QC table shows
    it, and how it was chosen: ``27.9 (Otsu)``, ``40 (fixed)``; ``Otsu`` alone without one."""
    how = (
        "Otsu" if str((summary.get("params") or {}).get("threshold", "otsu")) == "otsu" else "fixed"
    )
    thr = summary.get("threshold_value")
    return f"{round(float(thr), 1):g} ({how})" if thr is not None else how


MAX_THUMBNAILS = 400  # QC images embedded in the page (about 4 kB each); more: none, and a note
THUMBNAIL_PX = 160  # their width


def write_qc_html(
    table: pd.DataFrame,
    path: str | Path,
    title: str,
    thumbnails: Mapping[str, str | Path] | None = None,
) -> None:
    """The QC table as a small standalone HTML page (the Snakemake report shows it inline):
    one row per slide, headers with units (:data:`HEADERS`), the tissue fraction in %, numbers
    rounded, slides with warnings highlighted; with ``thumbnails`` ({slide_id: QC image}), each
    slide's image in a first column, embedded as a :data:`THUMBNAIL_PX`-wide JPEG (a missing
    file leaves its cell empty; more than :data:`MAX_THUMBNAILS` slides: none, and a note
    saying where the images are)."""
    from gigamil.evaluate.tables import html_page

    digits = {"slide_mpp": 4, "target_mpp": 4, "effective_mpp": 4, "tissue_fraction": 1}
    digits |= {"tissue_threshold": 1, "mask_mpp": 2}
    digits |= {"mask_seconds": 1, "extract_seconds": 1}

    def cell(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        if col in digits and isinstance(v, (int, float, np.number)):
            return f"{float(v) * (100 if col == 'tissue_fraction' else 1):.{digits[col]}f}"
        return html.escape(str(v))

    shown = [c for c in table.columns if c != "source_path"]
    embed = bool(thumbnails) and len(table) <= MAX_THUMBNAILS
    head = "<th>tissue mask</th>" if embed else ""
    head += "".join(f"<th>{html.escape(HEADERS.get(c, c))}</th>" for c in shown)
    rows = []
    for rec in table.to_dict(orient="records"):
        warn = " style='background:#fff3cd'" if rec.get("warnings") else ""
        image = ""
        if embed:
            image = f"<td>{_thumbnail_img((thumbnails or {}).get(str(rec['slide_id'])))}</td>"
        cells = "".join(f"<td>{cell(c, rec[c])}</td>" for c in shown)
        rows.append(f"<tr{warn}>{image}{cells}</tr>")
    n_warn = int((table["warnings"].fillna("") != "").sum()) if "warnings" in table else 0
    note = f"<p>{len(table)} slide(s), {n_warn} with warnings (highlighted)."
    if thumbnails and not embed:
        where = html.escape(str(Path(next(iter(thumbnails.values()))).parent))
        note += f" QC images not embedded (more than {MAX_THUMBNAILS} slides): see {where}/."
    body = f"{note}</p><table class='qc'><tr>{head}</tr>{''.join(rows)}</table>"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(html_page(title, body))


def _thumbnail_img(path: str | Path | None) -> str:
    """An ``<img>`` of the image at ``path`` scaled to :data:`THUMBNAIL_PX` wide, as an embedded
    JPEG; "" when there is no such file."""
    import base64
    import io

    from PIL import Image

    if path is None or not Path(path).is_file():
        return ""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    height = max(1, round(rgb.height * THUMBNAIL_PX / rgb.width))
    buf = io.BytesIO()
    rgb.resize((THUMBNAIL_PX, height), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=80)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img src='data:image/jpeg;base64,{data}' alt='{html.escape(Path(path).name)}'>"


# ----------------------------------------------------------------------------- QC thumbnail


def qc_caption(summary: Mapping[str, Any]) -> str:
    """The second title line of a QC thumbnail from a mask JSON summary: tissue fraction,
    threshold (value and how it was chosen) and the thumbnail's resolution."""
    return (
        f"tissue {100 * float(summary.get('tissue_fraction') or 0.0):.1f} % · "
        f"saturation threshold {_threshold_text(summary)} · "
        f"mask {float(summary.get('mask_mpp', 0)):g} µm/px"
    )


def scale_bar_um(mpp: float, width_px: int, fraction: float = 0.2) -> float:
    """A round scale-bar length in µm (1, 2 or 5 × 10^k) about ``fraction`` of the image width,
    for an image of ``mpp`` µm per pixel."""
    target = max(mpp, fraction * width_px * mpp)
    k = math.floor(math.log10(target))
    return max((m * 10.0**k for m in (1, 2, 5) if m * 10.0**k <= target), default=10.0**k)


def um_text(um: float) -> str:
    """A length in µm as text, in mm from 1,000 µm on (``500 µm``, ``2 mm``)."""
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def _font(size: int):  # noqa: ANN202 - a PIL font
    """DejaVu Sans (shipped with matplotlib; it has µ), else Pillow's default font."""
    from PIL import ImageFont

    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def annotate_qc_image(image: np.ndarray, mpp: float | None, title: str, caption: str) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with a white title band on top (``title``, ``caption``) and,
    when ``mpp`` (µm per pixel of ``image``) is known, a scale bar at the bottom left."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    size = int(min(28, max(11, w // 48)))
    font = _font(size)
    band = int(2.6 * size) + 8
    out = Image.new("RGB", (w, h + band), "white")
    out.paste(Image.fromarray(image), (0, band))
    draw = ImageDraw.Draw(out)
    draw.text((6, 3), title, fill="black", font=font)
    draw.text((6, 5 + int(1.3 * size)), caption, fill=(60, 60, 60), font=font)
    if mpp:
        um = scale_bar_um(mpp, w)
        bar = max(1, round(um / mpp))
        text = um_text(um)
        tw = draw.textlength(text, font=font)
        pad, thick = max(4, size // 3), max(3, size // 4)
        box_w = int(max(bar, tw)) + 2 * pad
        box_h = thick + size + 3 * pad
        x0, y1 = 8, h + band - 8
        draw.rectangle((x0, y1 - box_h, x0 + box_w, y1), fill="white", outline=(90, 90, 90))
        draw.rectangle((x0 + pad, y1 - pad - thick, x0 + pad + bar - 1, y1 - pad), fill="black")
        draw.text((x0 + pad, y1 - box_h + pad), text, fill="black", font=font)
    return np.asarray(out)
