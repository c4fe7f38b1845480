"""Tiny slide files written by the tests (importable from every test: pytest puts ``tests/`` on
``sys.path`` for its conftest.py)."""

from __future__ import annotations

from pathlib import Path


def write_svs(  # noqa: PLR0913 - one keyword per property of the file
    path: Path,
    seed: int = 0,
    mpp: float | None = 0.5,
    unreadable: bool = False,
    size: int = 320,
    quality: int = 90,
) -> Path:
    """An Aperio-style SVS of ``size`` x ``size`` random pixels (``seed``) in 64 x 64 JPEG tiles
    of ``quality``. The default 320 px at 0.5 µm/px (160 µm) holds one patch of the schema's
    defaults (256 px at 0.5 µm/px: 128 µm) and of the repository's config.yaml (96 px at 0.972
    µm/px: 93 µm): a cohort of slides smaller than one patch is refused before any job.

    ``mpp`` None leaves the MPP out (the workflow's pre-flight check refuses it); ``unreadable``
    turns the tile's start-of-scan marker into a quantisation-table marker (with the scan header
    as its "length"): OpenSlide opens the slide (the pre-flight check passes), but reading its
    pixels fails ("Bogus marker length").
    """
    import numpy as np
    import tifffile

    desc = f"Aperio Image Library v12.2.2 \r\n{size}x{size} (64x64) JPEG/RGB Q={quality}"
    if mpp is not None:
        desc += f"|AppMag = 20|MPP = {mpp}"
    img = np.random.default_rng(seed).integers(100, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        img,
        photometric="rgb",
        tile=(64, 64),
        compression="jpeg",
        compressionargs={"level": quality},
        description=desc,
        metadata=None,
    )
    if unreadable:
        with tifffile.TiffFile(path) as tf:
            start, n = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
        data = bytearray(path.read_bytes())
        data[data.index(b"\xff\xda", start, start + n) + 1] = 0xDB  # SOS -> DQT marker
        path.write_bytes(bytes(data))
    return path
