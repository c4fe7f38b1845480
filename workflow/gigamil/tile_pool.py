"""Pools of labelled tiles (``0/`` normal, ``1/`` tumour) for the real-tissue demo and benchmarks:
reading a folder or zip, the packaged CC0 PatchCamelyon subset (``data/pcam_demo_tiles.zip``, its
manifest), tissue filtering and de-duplication, and packing a subset."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import re
import zipfile
from collections import Counter
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from gigamil.errors import GigamilError

log = logging.getLogger(__name__)

PACKAGED_TILES = "pcam_demo_tiles.zip"
TILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
CLASS_DIRS = ("0", "1")  # folder of normal and of tumour tiles
MIN_TILE_TISSUE = 0.5  # a tile is used only if at least this fraction of it is tissue
_PCAM_INDEX = re.compile(r"patch(\d+)")


@dataclass(frozen=True)
class Tile:
    """One tile of a pool: its file (``<class dir>/<name>``), class (0/1), JPEG bytes, sha256."""

    file: str
    label: int
    data: bytes
    sha256: str


def packaged_tiles_path() -> Path:
    """Path of the packaged CC0 PatchCamelyon tile subset (a zip of ``0/``, ``1/``, manifest)."""
    return Path(str(resources.files("gigamil") / "data" / PACKAGED_TILES))


def read_tile_pool(source: str | Path | None = None) -> list[Tile]:
    """All tiles of a labelled tile folder (``0/*.jpg|png|...``, ``1/*``, see
    :data:`TILE_SUFFIXES`) or zip, sorted by file.

    ``source`` None = the packaged subset. A zip may hold ``0/`` and ``1/`` at its top or in one
    folder (a zipped tile folder). Other files in ``0/`` and ``1/`` (a README, a ``.DS_Store``)
    are skipped, with a warning that names them unless they are hidden files. Raises
    GigamilError for a source that is neither, one without tiles, or a folder inside ``0/`` or
    ``1/`` (hidden ones aside: their tiles would be left out).
    """
    source = packaged_tiles_path() if source is None else Path(source)
    if source.is_file() and zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            root = _zip_root(zf.namelist())
            entries = {n[len(root) :]: n for n in zf.namelist() if n.startswith(root)}
            names = _tile_names(source, list(entries))
            items = [(name, zf.read(entries[name])) for name in names]
    elif source.is_dir():
        files = [  # folders end with "/", as in a zip
            f"{d}/{p.relative_to(source / d).as_posix()}{'/' if p.is_dir() else ''}"
            for d in CLASS_DIRS
            for p in sorted((source / d).rglob("*"))
        ]
        items = [(name, (source / name).read_bytes()) for name in _tile_names(source, files)]
    else:
        raise GigamilError(f"tile source {source}: not a folder with 0/ and 1/ or a zip of them")
    tiles = [
        Tile(name, int(name.split("/")[0]), data, hashlib.sha256(data).hexdigest())
        for name, data in sorted(items)
    ]
    if not tiles:
        raise GigamilError(f"tile source {source}: no tiles in 0/ or 1/")
    return tiles


def _zip_root(names: Collection[str]) -> str:
    """The folder (``""`` or ``"name/"``) of a zip's entries that holds ``0/`` or ``1/``: its top,
    else the one top folder that does (macOS's ``__MACOSX/`` aside)."""
    if any(n.split("/")[0] in CLASS_DIRS for n in names):
        return ""
    tops = {
        n.split("/")[0] + "/"
        for n in names
        if n.count("/") >= 2 and n.split("/")[1] in CLASS_DIRS and not n.startswith("__MACOSX/")
    }
    return tops.pop() if len(tops) == 1 else ""


_SKIPPED_SAID: set[tuple[str, tuple[str, ...]]] = set()  # (source, skipped files) warned of


def _tile_names(source: Path, files: Collection[str]) -> list[str]:
    """The tiles among ``files`` (paths ``<class dir>/...`` relative to the source, folders
    ending with ``/``): files directly in ``0/`` or ``1/`` with a :data:`TILE_SUFFIXES` suffix.
    Hidden files and folders are ignored, other files skipped with a warning; a folder inside a
    class folder is a GigamilError (e.g. a folder per batch: its tiles would be left out)."""
    tiles, skipped, nested = [], [], set()
    for name in files:
        parts = name.rstrip("/").split("/")
        if parts[0] not in CLASS_DIRS or any(p.startswith(".") for p in parts[1:]):
            continue
        if len(parts) > 2 or (len(parts) == 2 and name.endswith("/")):
            nested.add(f"{parts[0]}/{parts[1]}/")
        elif len(parts) == 1:
            continue  # the class folder itself
        elif Path(name).suffix.lower() in TILE_SUFFIXES:
            tiles.append(name)
        else:
            skipped.append(name)
    if nested:
        raise GigamilError(
            f"tile source {source}: {', '.join(sorted(nested)[:3])}"
            f"{f' and {len(nested) - 3} more' if len(nested) > 3 else ''} "
            f"{'is a folder' if len(nested) == 1 else 'are folders'}; tiles are read from "
            f"directly inside 0/ and 1/ only: move {'its' if len(nested) == 1 else 'their'} "
            "tiles up"
        )
    said = (str(source), tuple(sorted(skipped)))  # a folder read twice in a run: said once
    if skipped and said not in _SKIPPED_SAID:
        _SKIPPED_SAID.add(said)
        log.warning(
            "tile source %s: skipped %d file(s) that are not %s tiles, e.g. %s",
            source,
            len(skipped),
            "/".join(x.lstrip(".") for x in TILE_SUFFIXES),
            ", ".join(sorted(skipped)[:3]),
        )
    return tiles


def packaged_tile_hashes() -> set[str]:
    """sha256 of every tile in the packaged subset (to build cohorts from other tiles)."""
    return {t.sha256 for t in read_tile_pool(None)}


def pcam_index(file: str) -> int | None:
    """PatchCamelyon index in a file name like ``0/patch0029847.jpg`` (None if none)."""
    m = _PCAM_INDEX.search(file)
    return int(m.group(1)) if m else None


@contextmanager
def _readable(tile: Tile) -> Iterator[None]:
    """Turns PIL's errors on reading ``tile`` into one GigamilError naming its file."""
    from PIL import UnidentifiedImageError

    try:
        yield
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        why = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc))  # no repr
        raise GigamilError(f"tile {tile.file}: not a readable image ({why})") from None


def decode_tile(tile: Tile) -> np.ndarray:
    """The tile's pixels (H, W, 3) uint8 RGB; GigamilError naming the file if it is not an image."""
    from PIL import Image

    with _readable(tile):
        return np.asarray(Image.open(io.BytesIO(tile.data)).convert("RGB"))


def tile_side(tiles: list[Tile]) -> int:
    """The side in px of the tiles, which must all be square and of one size (read from the
    image headers, so every tile is checked, not only those a cohort happens to draw).

    Raises GigamilError naming a file of each size found, an unreadable file, or no tiles.
    """
    from PIL import Image

    if not tiles:
        raise GigamilError("no tiles to measure")
    sizes: Counter[tuple[int, int]] = Counter()
    example: dict[tuple[int, int], str] = {}
    for t in tiles:
        with _readable(t), Image.open(io.BytesIO(t.data)) as im:
            size = im.size  # (width, height)
        sizes[size] += 1
        example.setdefault(size, t.file)
    if len(sizes) > 1:
        found = "; ".join(
            f"{n} of {w} x {h} px (e.g. {example[(w, h)]})" for (w, h), n in sizes.most_common()
        )
        raise GigamilError(f"the tiles must all have one size, found {found}")
    ((w, h),) = sizes
    if w != h:
        raise GigamilError(f"tile {example[(w, h)]}: {w} x {h} px, the mosaic needs square tiles")
    return int(w)


def tile_tissue_fraction(rgb: np.ndarray) -> float:
    """Fraction of a tile's pixels that are tissue: HSV saturation > 15 (0..255) after a 5-px
    median blur, the floor of the tissue mask's threshold (gigamil.wsi.tissue). PCam's normal
    tiles include glass and fat with little tissue; on a slide those are not tissue patches.
    Unlike the tissue mask it has no darkness test: a dark grey tile without tissue can pass
    (one packaged tile does; the tissue mask drops it from its slide)."""
    import cv2

    sat = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)[..., 1]
    return float((cv2.medianBlur(sat, 5) > 15).mean())


def unique_tiles(tiles: list[Tile]) -> list[Tile]:
    """The first of tiles with identical bytes (PCam holds byte-identical duplicates: 80 tumour
    images appear 173 times in pcam-valid); the same image twice is still one tile."""
    seen: set[str] = set()
    out = []
    for t in tiles:
        if t.sha256 not in seen:
            seen.add(t.sha256)
            out.append(t)
    if len(out) < len(tiles):  # said: the counts of later messages are of distinct tiles
        log.info(
            "%d tile file(s) are byte-identical copies of others: one of each is used",
            len(tiles) - len(out),
        )
    return out


def usable_tiles(tiles: list[Tile], min_tile_tissue: float) -> list[Tile]:
    if min_tile_tissue <= 0:
        return tiles
    return [t for t in tiles if tile_tissue_fraction(decode_tile(t)) >= min_tile_tissue]


def usable_pool(
    source: str | Path | None,
    exclude: Collection[str] = (),
    min_tile_tissue: float = MIN_TILE_TISSUE,
) -> list[Tile]:
    """The tiles a mosaic cohort draws from: those of ``source`` (:func:`read_tile_pool`), one
    of each identical image, without the sha256 digests in ``exclude``, with at least
    ``min_tile_tissue`` tissue (:func:`usable_tiles`); when ``exclude`` holds every packaged
    tile's digest, also without resized or re-encoded copies of them (:func:`_without_copies`)."""
    excluded = set(exclude)
    pool = [t for t in unique_tiles(read_tile_pool(source)) if t.sha256 not in excluded]
    pool = usable_tiles(pool, min_tile_tissue)
    if source is not None:  # the packaged tiles excluded: their copies too (other bytes)
        packaged = read_tile_pool(None)
        if excluded >= {t.sha256 for t in packaged}:
            pool = _without_copies(pool, packaged)
    return pool


def _without_copies(pool: list[Tile], packaged: list[Tile]) -> list[Tile]:
    """``pool`` without resized or re-encoded copies of the ``packaged`` tiles (excluded by
    content: :func:`gigamil.tile_match.lookalikes`; their bytes differ), which are logged."""
    from gigamil.tile_match import lookalikes

    copies = {t.file for t in lookalikes(pool, packaged, decode_tile)}
    if copies:
        log.warning(
            "left out %d tile(s) that are resized or re-encoded copies of the packaged demo "
            "tiles (e.g. %s): the packaged tiles are excluded by content, not only by bytes",
            len(copies),
            min(copies),
        )
    return [t for t in pool if t.file not in copies]


def pack_tiles(
    source: str | Path,
    out_zip: str | Path,
    n_per_class: tuple[int, int],
    seed: int = 0,
    manifest: str | Path | None = None,
    min_tile_tissue: float = MIN_TILE_TISSUE,
) -> pd.DataFrame:
    """Write a random subset of the usable tiles (``min_tile_tissue``) of a labelled tile folder
    to a zip (how the packaged subset was made).

    The zip holds ``0/...``, ``1/...`` (the original bytes) and ``manifest.csv`` (file, label,
    pcam_index, bytes, sha256), with fixed timestamps so the same input gives the same zip.
    ``manifest``: an optional CSV with a ``file`` column (e.g. PCam's manifest.csv) whose other
    columns are carried over. Returns the manifest.
    """
    pool = usable_tiles(unique_tiles(read_tile_pool(source)), min_tile_tissue)
    rng = np.random.default_rng(seed)
    chosen: list[Tile] = []
    for c, n in zip((0, 1), n_per_class, strict=True):
        tiles = [t for t in pool if t.label == c]
        if n > len(tiles):
            raise GigamilError(f"{source}: {len(tiles)} tiles in {CLASS_DIRS[c]}/, asked for {n}")
        chosen += [tiles[i] for i in sorted(rng.choice(len(tiles), size=n, replace=False))]
    rows = [
        {
            "file": t.file,
            "label": t.label,
            "pcam_index": pcam_index(t.file),
            "bytes": len(t.data),
            "sha256": t.sha256,
        }
        for t in chosen
    ]
    table = pd.DataFrame(rows)
    if manifest is not None:
        extra = pd.read_csv(manifest)
        keep = [c for c in extra.columns if c not in table.columns or c == "file"]
        table = table.merge(extra[keep], on="file", how="left")
    buf = io.StringIO()
    table.to_csv(buf, index=False, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out_zip, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(
            zipfile.ZipInfo("manifest.csv", date_time=(2018, 1, 1, 0, 0, 0)), buf.getvalue()
        )
        for t in chosen:
            zf.writestr(zipfile.ZipInfo(t.file, date_time=(2018, 1, 1, 0, 0, 0)), t.data)
    return table


def packaged_manifest() -> pd.DataFrame:
    """The manifest of the packaged subset (file, label, pcam_index, bytes, sha256, ...)."""
    with zipfile.ZipFile(packaged_tiles_path()) as zf:
        return pd.read_csv(io.BytesIO(zf.read("manifest.csv")))
