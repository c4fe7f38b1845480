"""What both demo generators (:mod:`gigamil.demo`, :mod:`gigamil.demo_tiles`) share: the patients
and their labels, and the slide files: pyramidal tiled-JPEG TIFFs that OpenSlide reads, and
ground-truth lesion masks (PNG + JSON sidecar) that the localisation AUC reads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gigamil.errors import GigamilError

if TYPE_CHECKING:
    import pandas as pd

TILE = 256  # TIFF tile side (px)
N_LEVELS = 3  # downsamples 1, 2, 4
JPEG_QUALITY = 85
LABELS = ("normal", "lesion")
SHEET_COLUMNS = ["slide_id", "patient_id", "label", "path", "lesion_mask"]
"""Columns of a demo sheet; ``lesion_mask`` is the slide's ground-truth PNG (all zero on normal
slides), so the sheet gives the localisation AUC also as a plain (``demo: false``) cohort."""


ID_PREFIX = "demo"
"""Default prefix of the generated slide and patient ids (``demo_p01_s1``, ``demo_p01``)."""


SHEET = "sheet.csv"  # a demo cohort's sheet, written last: a folder holding it is complete


def begin_cohort(outdir: Path) -> None:
    """Remove an earlier cohort's sheet from ``outdir`` before its slides are replaced, so a
    build that fails or is killed halfway leaves no sheet describing a mix of old and new
    slides (``gigamil demo --overwrite``)."""
    (Path(outdir) / SHEET).unlink(missing_ok=True)


def write_sheet(outdir: Path, sheet: pd.DataFrame) -> None:
    """Write the cohort's sheet (the last file of a build) atomically to ``outdir/sheet.csv``."""
    from gigamil.fileutil import atomic_write_bytes

    data = sheet.to_csv(index=False, lineterminator="\n").encode("utf-8")
    atomic_write_bytes(Path(outdir) / SHEET, data)


def check_prefix(prefix: str) -> str:
    """The id prefix if it is a safe name (letters, digits, ``_``, ``-``; starting with a
    letter or digit); else GigamilError."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", prefix or ""):
        raise GigamilError(
            f"id prefix {prefix!r} is not a safe name (letters, digits, '_' and '-', starting "
            "with a letter or digit)"
        )
    return prefix


DEMO_PATIENTS = 16
"""Patients of the default demo cohort (``gigamil demo``, rule demo_cohort), half of them lesion."""

DEMO_SLIDES_PER_PATIENT = (1, 2)
"""Slides per patient of the default demo cohort: 1 or 2, drawn per patient (:func:`slide_counts`)."""

SlidesPerPatient = int | str | tuple[int, int]


def slides_range(value: SlidesPerPatient) -> tuple[int, int]:
    """Slides per patient as an inclusive range: ``2`` or ``"2"`` gives (2, 2), ``"1-2"`` or
    ``(1, 2)`` gives (1, 2). GigamilError for anything else (the ``--slides-per-patient`` forms)."""
    if isinstance(value, str):  # ASCII digits, as the CLI's type (int() takes others, or fails)
        if m := re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", value.strip()):
            return int(m[1]), int(m[2] or m[1])
    elif isinstance(value, tuple | list) and len(value) == 2 and all(map(_is_int, value)):
        return int(value[0]), int(value[1])
    elif _is_int(value):
        return int(value), int(value)
    raise GigamilError(f"slides per patient: give N or LO-HI, e.g. 2 or 1-2 (got {value!r})")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_cohort_size(n_patients: int, slides_per_patient: SlidesPerPatient) -> None:
    """GigamilError unless 2..99 patients and 1..9 slides per patient, a range low to high (the
    id formats of both demo generators: ``demo_pNN_sK``)."""
    lo, hi = slides_range(slides_per_patient)
    if n_patients < 2:
        raise GigamilError(f"demo cohort needs at least 2 patients (got {n_patients})")
    if lo < 1:
        raise GigamilError(f"slides per patient must be >= 1 (got {lo})")
    if lo > hi:
        raise GigamilError(f"slides per patient: range {lo}-{hi} runs backwards")
    if n_patients > 99 or hi > 9:
        raise GigamilError("demo cohort is limited to 99 patients x 9 slides per patient")


def slide_counts(seed: int, n_patients: int, slides_per_patient: SlidesPerPatient) -> list[int]:
    """The number of slides of each demo patient: ``slides_per_patient`` for all, or with a
    range, drawn per patient (uniform over the range; with ``seed``, independent of the labels)."""
    lo, hi = slides_range(slides_per_patient)
    if lo == hi:
        return [lo] * n_patients
    return np.random.default_rng([seed, 5]).integers(lo, hi + 1, size=n_patients).tolist()


def patient_labels(seed: int, n_patients: int) -> list[str]:
    """The label of each demo patient: half of them (rounded down), drawn with ``seed``, are
    ``lesion`` (shared by both demo generators, so a seed labels the same patients)."""
    order = np.random.default_rng([seed, 1]).permutation(n_patients)
    lesion = set(order[: n_patients // 2].tolist())
    return [LABELS[1] if p in lesion else LABELS[0] for p in range(n_patients)]


def box_reduce(a: np.ndarray, f: int) -> np.ndarray:
    """Box-downsample a 2-D float array or an RGB uint8 image by an integer factor (PIL, fast)."""
    from PIL import Image

    mode = "F" if a.ndim == 2 else "RGB"
    arr = np.ascontiguousarray(a, dtype=np.float32 if a.ndim == 2 else np.uint8)
    return np.asarray(Image.fromarray(arr, mode=mode).reduce(f))


def _pyramid(rgb: np.ndarray) -> list[np.ndarray]:
    """Levels at downsample 1, 2, 4 by 2x2 box averaging."""
    levels = [rgb]
    for _ in range(N_LEVELS - 1):
        levels.append(box_reduce(levels[-1], 2))
    return levels


def write_pyramid_tiff(path: Path, rgb: np.ndarray, mpp: float, description: str = "") -> None:
    """Write uint8 RGB (H, W, 3) as a tiled-JPEG pyramidal generic TIFF that openslide reads.

    One IFD per level (NewSubfileType 0 for level 0, 1 for reduced levels), 256 x 256 tiles,
    X/YResolution in pixels per centimetre (1e4 / mpp, divided by the downsample per level).
    """
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        for i, level in enumerate(_pyramid(rgb)):
            ppcm = 1e4 / (mpp * 2**i)
            tw.write(
                level,
                photometric="rgb",
                tile=(TILE, TILE),
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                subfiletype=0 if i == 0 else 1,
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                description=description if i == 0 else None,
                metadata=None,
                software="gigamil",
            )


def write_lesion_mask(
    path: Path,
    mask: np.ndarray,
    slide_id: str,
    tissue_fraction: float,
    lesion_fraction: float,
    level0_mpp: float,
    downsample: int,
) -> None:
    """Write the lesion mask PNG (uint8 0/255) and its JSON sidecar (same stem).

    ``downsample``: level-0 px per mask px; ``level0_mpp``: the slide's level-0 µm/px.
    """
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, format="PNG")
    meta = {
        "slide_id": slide_id,
        "downsample": downsample,
        "mpp": level0_mpp * downsample,
        "level0_mpp": level0_mpp,
        "shape": list(mask.shape),
        "tissue_fraction": round(tissue_fraction, 4),
        "lesion_fraction_of_tissue": round(lesion_fraction, 4),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")


def load_lesion_mask(path: str | Path) -> tuple[np.ndarray, float]:
    """Read a ground-truth lesion mask PNG and its sidecar JSON.

    Returns ``(mask, mpp)``: mask bool (H, W) (True = lesion), mpp = µm per mask pixel.
    """
    from PIL import Image

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise GigamilError(f"lesion mask {path} or its sidecar {meta_path.name} is missing")
    mask = np.asarray(Image.open(path).convert("L")) > 127
    mpp = float(json.loads(meta_path.read_text())["mpp"])
    return mask, mpp
