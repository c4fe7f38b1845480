"""The built-in demo cohort: small pyramidal slides made from the CC0 CMU-1-Small-Region slide.

``make_demo_cohort(outdir)`` writes, deterministically for a given seed (same seed, same bytes)::

    outdir/slides/{slide_id}.tiff        pyramidal tiled-JPEG generic TIFF, 2048 x 2048 px level 0
                                         at 0.499 µm/px (≈1 mm²), 3 levels (downsample 1, 2, 4),
                                         256 x 256 tiles; one IFD per level (NewSubfileType 0, then 1),
                                         X/YResolution in pixels per cm (= 1e4 / mpp per level),
                                         so openslide opens it as ``generic-tiff`` with the real MPP.
    outdir/lesion_masks/{slide_id}.png   ground-truth lesion mask, uint8 0/255, at 1/16 of level 0
                                         (MASK_DOWNSAMPLE = 16, i.e. 128 x 128 px at 7.984 µm/px;
                                         mask pixel (r, c) covers level-0 rows 16r..16r+15, columns
                                         16c..16c+15): 255 where the mean lesion strength of that
                                         block exceeds 0.5; all zero on normal slides.
    outdir/lesion_masks/{slide_id}.json  {"slide_id", "downsample", "mpp", "level0_mpp", "shape",
                                         "lesion_fraction_of_tissue", "tissue_fraction"};
                                         read mask and MPP together with ``gigamil.demo_io.load_lesion_mask(png)``.
    outdir/sheet.csv                     slide_id, patient_id, label, path, lesion_mask (path =
                                         ``outdir/slides/{slide_id}.tiff``, lesion_mask =
                                         ``outdir/lesion_masks/{slide_id}.png``, as outdir was
                                         given).

Slides are built from real tissue only (:mod:`gigamil.demo_canvas`): the source's level 0 is cut
into fragments (random 90° rotations, flips, crop offsets) laid out as one, two or four tissue
pieces on a white background, covering 40-70 % of the slide. Every slide receives a random global stain variation in HED
(Ruifrok-Johnston) optical-density space, so slide colour does not give the label away.
Half of the patients (label ``lesion``; every slide of such a patient) get one or two planted
lesion blobs (together 15-30 % of the tissue area, confined to tissue) where hematoxylin is raised,
eosin lowered and dense, large, dark nucleus-like bodies are added, with a soft boundary. The
nuclei (radius 4.5-8.5 px at level 0, one per ~80 µm²) stay visible as 1-2 px dots in 32-px patches at 2 µm/px.
The lesion strength also follows the pixels' own optical density, so glass inside a lesion
stays white and the mask only covers tissue.

Byte-identical output for a seed holds on one machine and software stack (numpy/BLAS/libjpeg
builds may differ in the last bit elsewhere); the sheet never depends on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.demo_canvas import (
    LOW,
    SLIDE_PX,
    load_source,
    noisy_radius,
    plan_layout,
    render_od,
    upsample,
)
from gigamil.demo_io import (
    DEMO_PATIENTS,
    DEMO_SLIDES_PER_PATIENT,
    ID_PREFIX,
    LABELS,
    SHEET_COLUMNS,
    SlidesPerPatient,
    begin_cohort,
    box_reduce,
    check_cohort_size,
    check_prefix,
    patient_labels,
    slide_counts,
    write_lesion_mask,
    write_pyramid_tiff,
    write_sheet,
)

log = logging.getLogger(__name__)

SOURCE_MPP = 0.499  # µm/px of the CMU slide's (only) level
MASK_DOWNSAMPLE = 16  # the ground-truth lesion PNG is at 1/16 of level 0
LESION_RANGE = (0.17, 0.27)  # target lesion fraction of the tissue (realised: ~15-30 %)

# Ruifrok-Johnston H&E-DAB stain vectors (rows: H, E, DAB in optical-density RGB), as in skimage.
RGB_FROM_HED = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def _lesion_field(rng: np.random.Generator, tissue_lo: np.ndarray) -> np.ndarray:
    """Soft lesion field (0..1, low res) of one or two blobs covering LESION_RANGE of the tissue."""
    from scipy import ndimage as ndi

    h, w = tissue_lo.shape
    depth = ndi.distance_transform_edt(np.pad(tissue_lo, 1))[1:-1, 1:-1]
    p = (depth**2).ravel()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    n_blobs = 1 if rng.random() < 0.6 else 2
    centres = rng.choice(h * w, size=n_blobs, replace=False, p=p / p.sum())
    rho = np.full((h, w), np.inf)
    for c in centres:
        cy, cx = divmod(int(c), w)
        ang = rng.uniform(0, np.pi)
        aspect = rng.uniform(1.0, 1.8)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / aspect
        v = -dx * np.sin(ang) + dy * np.cos(ang)
        r = np.hypot(u, v) / noisy_radius(rng, np.arctan2(v, u), 0.35)
        rho = np.minimum(rho, r / rng.uniform(0.6, 1.0))
    target = int(round(rng.uniform(*LESION_RANGE) * tissue_lo.sum()))
    s = np.sort(rho[tissue_lo])[max(target - 1, 0)]  # blob scale that covers `target` tissue px
    edge = max(0.12 * s, 0.8)
    return 1.0 / (1.0 + np.exp(-(s - rho) / edge))


def _nucleus_bank(rng: np.random.Generator, n: int = 24) -> list[np.ndarray]:
    """Soft elliptical nucleus stamps (float32, peak 1) with radius 4.5-8.5 px at level 0."""
    bank = []
    for _ in range(n):
        r = rng.uniform(4.5, 8.5)
        aspect = rng.uniform(1.0, 1.6)
        ang = rng.uniform(0, np.pi)
        half = int(np.ceil(r * aspect)) + 2
        yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
        u = xx * np.cos(ang) + yy * np.sin(ang)
        v = -xx * np.sin(ang) + yy * np.cos(ang)
        d = np.hypot(u / aspect, v) / r
        stamp = np.clip((1.0 - d) * r / 1.5, 0, 1)  # ~1.5 px soft rim
        stamp *= 1.0 - 0.25 * rng.random(stamp.shape)  # chromatin texture
        bank.append(stamp.astype(np.float32))
    return bank


def _nuclei_map(rng: np.random.Generator, field_lo: np.ndarray) -> np.ndarray:
    """Level-0 map (float32, 0..1) of dense nucleus-like bodies inside the lesion field."""
    nuc = np.zeros((SLIDE_PX, SLIDE_PX), dtype=np.float32)
    weights = field_lo.ravel()
    area = float(weights.sum()) * LOW * LOW
    n = int(area / 320.0)  # one nucleus per ~320 px² (≈ 9 µm spacing)
    if n == 0:
        return nuc
    bank = _nucleus_bank(rng)
    cells = rng.choice(weights.size, size=n, p=weights / weights.sum())
    w_lo = field_lo.shape[1]
    ys = (cells // w_lo) * LOW + rng.integers(0, LOW, size=n)
    xs = (cells % w_lo) * LOW + rng.integers(0, LOW, size=n)
    kinds = rng.integers(len(bank), size=n)
    gains = rng.uniform(0.7, 1.0, size=n).astype(np.float32)
    for y, x, kind, g in zip(ys, xs, kinds, gains, strict=True):
        st = bank[kind]
        half = st.shape[0] // 2
        y0, x0 = y - half, x - half
        ty0, tx0 = max(0, -y0), max(0, -x0)
        y0c, x0c = max(y0, 0), max(x0, 0)
        y1c, x1c = min(y0 + st.shape[0], SLIDE_PX), min(x0 + st.shape[1], SLIDE_PX)
        if y1c <= y0c or x1c <= x0c:
            continue
        sub = st[ty0 : ty0 + y1c - y0c, tx0 : tx0 + x1c - x0c] * g
        np.maximum(nuc[y0c:y1c, x0c:x1c], sub, out=nuc[y0c:y1c, x0c:x1c])
    return nuc


@dataclass(frozen=True)
class DemoSlide:
    """One generated slide: level-0 RGB, lesion mask at 1/MASK_DOWNSAMPLE and tissue fraction."""

    rgb: np.ndarray  # uint8 (SLIDE_PX, SLIDE_PX, 3)
    lesion_mask: np.ndarray  # bool (SLIDE_PX/16, SLIDE_PX/16)
    tissue_fraction: float
    lesion_fraction_of_tissue: float


def _od_to_rgb(od: np.ndarray) -> np.ndarray:
    """Optical density planes (3, H, W) float32 -> uint8 (H, W, 3); overwrites ``od``."""
    np.negative(od, out=od)
    np.exp(od, out=od)
    od *= 255.0
    od += 0.5
    np.minimum(od, 255.0, out=od)
    return np.ascontiguousarray(od.astype(np.uint8).transpose(1, 2, 0))


def _mix(planes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Per-pixel colour transform of planes (3, H, W) by a 3x3 matrix (row-vector convention)."""
    mt = np.ascontiguousarray(m.T, dtype=np.float32)
    return (mt @ planes.reshape(3, -1)).reshape(planes.shape)


def make_slide(rng: np.random.Generator, lesion: bool) -> DemoSlide:
    """Generate one demo slide (level 0) from the CMU source with the given random generator.

    Stain edits happen in HED optical-density space (Ruifrok-Johnston vectors): globally
    H *= U(0.85, 1.2), E *= U(0.85, 1.2); inside a lesion (soft field ``a`` times the pixel's
    tissue weight) H += 0.35 a + 1.6 nuclei and E := E (1 - 0.35 a) + 0.25 nuclei.
    """
    src = load_source()
    frags, tissue_lo = plan_layout(rng, src)
    od = render_od(frags, src)  # (3, 2048, 2048) float32
    scale = np.diag([rng.uniform(0.85, 1.2), rng.uniform(0.85, 1.2), 1.0])
    full = (SLIDE_PX, SLIDE_PX)
    out = _mix(od, HED_FROM_RGB @ scale @ RGB_FROM_HED)  # OD after the global stain change
    if lesion:
        field_lo = _lesion_field(rng, tissue_lo)  # (256, 256) soft 0..1
        # tissue weight per pixel from its optical density (glass ≈ 0.13, pale stroma >= 0.5),
        # averaged over 8 x 8 px so the edit follows tissue but is not pixel-noisy
        w_pix = np.clip((od.sum(axis=0) - 0.2) / 0.3, 0.0, 1.0)
        weight_lo = np.clip(box_reduce(w_pix, LOW) * 1.5, 0.0, 1.0)  # (256, 256)
        alpha = upsample(field_lo * tissue_lo * weight_lo, full)  # (2048, 2048) strength 0..1
        # nuclei at full strength wherever the lesion is at least half-strength
        nuclei = _nuclei_map(rng, field_lo * tissue_lo) * np.minimum(2.0 * alpha, 1.0)
        eosin = sum(od[j] * float((HED_FROM_RGB @ scale)[j, 1]) for j in range(3))
        h_add = 0.35 * alpha + 1.6 * nuclei  # added hematoxylin OD
        e_sub = 0.35 * alpha * eosin - 0.25 * nuclei  # removed eosin OD
        for c in range(3):
            out[c] += h_add * float(RGB_FROM_HED[0, c])
            out[c] -= e_sub * float(RGB_FROM_HED[1, c])
        lesion_mask = box_reduce(alpha, MASK_DOWNSAMPLE) > 0.5
    else:
        lesion_mask = np.zeros((SLIDE_PX // MASK_DOWNSAMPLE,) * 2, dtype=bool)
    rgb = _od_to_rgb(out)
    tissue16 = box_reduce(tissue_lo.astype(np.float32), MASK_DOWNSAMPLE // LOW) >= 0.5
    tissue_frac = float(tissue_lo.mean())
    lesion_frac = float(lesion_mask.sum() / max(tissue16.sum(), 1))
    return DemoSlide(rgb, lesion_mask, tissue_frac, lesion_frac)


def make_demo_cohort(
    outdir: Path,
    seed: int = 0,
    n_patients: int = DEMO_PATIENTS,
    slides_per_patient: SlidesPerPatient = DEMO_SLIDES_PER_PATIENT,
    prefix: str = ID_PREFIX,
) -> pd.DataFrame:
    """Write the demo cohort to ``outdir`` (see module docstring) and return its sheet.

    Half of the patients (rounded down) are ``lesion`` patients; every one of their slides
    carries a planted lesion. The same seed and sizes give byte-identical files.
    """
    check_cohort_size(n_patients, slides_per_patient)
    check_prefix(prefix)
    outdir = Path(outdir)
    rows = []
    begin_cohort(outdir)
    counts = slide_counts(seed, n_patients, slides_per_patient)
    for p, label in enumerate(patient_labels(seed, n_patients)):
        for s in range(counts[p]):
            slide_id = f"{prefix}_p{p + 1:02d}_s{s + 1}"
            rng = np.random.default_rng([seed, 2, p, s])
            slide = make_slide(rng, lesion=label == LABELS[1])
            tiff = outdir / "slides" / f"{slide_id}.tiff"
            write_pyramid_tiff(
                tiff,
                slide.rgb,
                SOURCE_MPP,
                description=f"gigamil demo slide {slide_id} ({label}); tissue from CMU-1-Small-"
                f"Region.svs (CC0); mpp={SOURCE_MPP}",
            )
            write_lesion_mask(
                outdir / "lesion_masks" / f"{slide_id}.png",
                slide.lesion_mask,
                slide_id,
                slide.tissue_fraction,
                slide.lesion_fraction_of_tissue,
                level0_mpp=SOURCE_MPP,
                downsample=MASK_DOWNSAMPLE,
            )
            log.info(
                "%s: %s, tissue %.2f, lesion %.2f of tissue",
                slide_id,
                label,
                slide.tissue_fraction,
                slide.lesion_fraction_of_tissue,
            )
            rows.append(
                {
                    "slide_id": slide_id,
                    "patient_id": f"{prefix}_p{p + 1:02d}",
                    "label": label,
                    "path": tiff.as_posix(),
                    "lesion_mask": (outdir / "lesion_masks" / f"{slide_id}.png").as_posix(),
                }
            )
    sheet = pd.DataFrame(rows, columns=SHEET_COLUMNS)
    write_sheet(outdir, sheet)
    return sheet
