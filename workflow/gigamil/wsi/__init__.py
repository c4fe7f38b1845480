"""Slide ingestion: readers with physical resolution, tissue masks, patch extraction.

- :mod:`gigamil.wsi.slide`: the ``SlideReader`` interface.
- :mod:`gigamil.wsi.mpp`: microns per pixel, validated, by trust order (override > vendor > TIFF).
- :mod:`gigamil.wsi.reader`: ``open_slide`` (OpenSlide, else the plain-image fallback).
- :mod:`gigamil.wsi.memory`: ``ArrayReader`` (in-memory image), ``ImageReader`` (the fallback).
- :mod:`gigamil.wsi.tiff_tiles`: direct decoding of tiled TIFF/SVS tiles.
- :mod:`gigamil.wsi.raster`: regions at an exact µm/px from the best pyramid level.
- :mod:`gigamil.wsi.tissue`: tissue masks at a given µm/px.
- :mod:`gigamil.wsi.mask_io`: a mask's files (mask PNG, QC PNG, JSON sidecar) and reading them back.
- :mod:`gigamil.wsi.patching`: the patch grid at an exact µm/px (``PatchParams``, ``plan_patches``).
- :mod:`gigamil.wsi.extract`: ``extract_patches``, the planned patches into a zarr store.
- :mod:`gigamil.wsi.qc`: the per-cohort QC table.
"""

from __future__ import annotations

from gigamil.wsi.memory import ArrayReader
from gigamil.wsi.reader import open_slide
from gigamil.wsi.slide import SlideReader

__all__ = ["ArrayReader", "SlideReader", "open_slide"]
