"""Slide ingestion: readers with physical resolution, tissue masks, patch extraction.

- :mod:`gigamil.wsi.reader`: ``open_slide`` (OpenSlide + plain-image fallback), ``ArrayReader``.
- :mod:`gigamil.wsi.tissue`: tissue masks at a given µm/px.
- :mod:`gigamil.wsi.patching`: patches at an exact µm/px into a zarr store.
"""

from __future__ import annotations

from gigamil.wsi.reader import ArrayReader, SlideReader, open_slide

__all__ = ["ArrayReader", "SlideReader", "open_slide"]
