"""The per-slide zarr v3 patch store (layout: docs/architecture.md, "Zarr patch store").

Arrays: ``patches`` uint8 (N, H, W, 3), ``coords`` int64 (N, 2) level-0 (x, y) of each patch's
top-left, ``grid`` int64 (N, 2) (row, col) on the patch grid; rows in grid raster order.
Attributes: see :data:`REQUIRED_ATTRS`.

Writing goes through :class:`gigamil.data.store_writer.StoreWriter`: everything is written under
``<out>.tmp-<pid>`` and renamed to ``<out>`` only by its ``commit``, so a crash never leaves a
store that looks complete. Reading: :func:`read_store` (or :func:`open_store` for the zarr group).

Integrity: every chunk ends in a CRC-32C (zarr's ``crc32c`` codec), so a damaged chunk fails
to read instead of giving noise; :func:`read_store` checks that every chunk file exists (zarr
would read a missing one as black patches) and that ``coords`` and ``grid`` have one row per
patch, and :func:`read_patches` turns a chunk that fails its
checksum or cannot be decoded into one :class:`GigamilError` naming the slide, store and chunk.
Stores written before the checksums existed still read (without that protection).

Codecs: ``zstd`` (lossless, default) or ``jpeg`` (each patch a baseline JPEG inside the chunk;
the codec ``gigamil.jpeg`` is registered with zarr when this module is imported, so import
``gigamil.data.store`` before opening a JPEG store with plain zarr).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from gigamil.errors import GigamilError

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

REQUIRED_ATTRS = (
    "slide_id",
    "source_path",
    "source_size",
    "source_mtime",
    "slide_mpp",
    "target_mpp",
    "effective_mpp",
    "patch_px",
    "stride_px",
    "patch_size_level0",
    "level",
    "level_downsample",
    "mask_params",
    "codec",
    "gigamil_version",
    "slide_dimensions",
)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JpegPatchCodec(ArrayBytesCodec):
    """Array->bytes codec for uint8 (C, H, W, 3) chunks: one baseline JPEG per patch.

    Chunk bytes: uint32 count, count uint32 lengths (little endian), then the JPEG streams.
    """

    is_fixed_size = False
    quality: int = 90

    def __init__(self, *, quality: int = 90) -> None:
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, "gigamil.jpeg", require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": "gigamil.jpeg", "configuration": {"quality": self.quality}}

    def encode_patches(self, arr: np.ndarray) -> bytes:
        """(C, H, W, 3) uint8 -> the chunk bytes."""
        import imagecodecs

        streams = [
            bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(p), level=self.quality))
            for p in arr
        ]
        header = struct.pack(f"<I{len(streams)}I", len(streams), *(len(s) for s in streams))
        return header + b"".join(streams)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        arr = np.asarray(chunk_array.as_ndarray_like())  # (C, H, W, 3) uint8
        data = np.frombuffer(self.encode_patches(arr), dtype=np.uint8)
        return chunk_spec.prototype.buffer.from_array_like(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return self._encode_sync(chunk_array, chunk_spec)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        import imagecodecs

        raw = chunk_bytes.to_bytes()
        (count,) = struct.unpack_from("<I", raw, 0)
        if count != chunk_spec.shape[0]:  # rows left black, not data (another chunking)
            raise ValueError(
                f"holds {count} JPEG patches, the array's chunks {chunk_spec.shape[0]}"
            )
        lengths = struct.unpack_from(f"<{count}I", raw, 4)
        out = np.zeros(chunk_spec.shape, dtype=np.uint8)
        pos = 4 + 4 * count
        for i, n in enumerate(lengths):
            out[i] = imagecodecs.jpeg8_decode(raw[pos : pos + n])
            pos += n
        if pos != len(raw):
            raise ValueError(f"{len(raw) - pos} bytes after its {count} JPEG patches")
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        # off zarr's event-loop thread, as zarr's own zstd codec: chunks decode in parallel
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is data dependent")


register_codec("gigamil.jpeg", JpegPatchCodec)


def open_store(path: str | Path, mode: str = "r") -> zarr.Group:
    """Open a patch store's zarr group; GigamilError if it is missing or not a patch store."""
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise GigamilError(f"{path}: not a gigamil patch store ({exc})") from exc
    for key in ("patches", "coords", "grid"):  # each array is there and its zarr.json parses
        try:
            present = key in group
        except (zarr.errors.BaseZarrError, ValueError, KeyError, TypeError) as exc:
            raise GigamilError(
                f"{path}: the metadata of its {key} array is damaged ({type(exc).__name__}: "
                f"{exc}); delete the store and rerun to extract it again"
            ) from exc
        if not present:
            missing = [k for k in ("patches", "coords", "grid") if k not in group]
            raise GigamilError(f"{path}: patch store lacks arrays {missing}")
    return group


def _has_checksums(arr: zarr.Array) -> bool:
    return any(c.get("name") == "crc32c" for c in arr.metadata.to_dict().get("codecs", []))


def chunk_key(arr: zarr.Array, index: tuple[int, ...]) -> str:
    """The file of chunk ``index`` of ``arr`` inside its store, e.g. ``patches/c/3/0/0/0``, by
    the chunk key encoding its zarr.json records (the one zarr reads by: a check of files
    named otherwise passed while zarr found none and read fill values)."""
    return f"{arr.basename}/" + arr.metadata.encode_chunk_key(index)


def damaged_store_error(
    path: str | Path, slide_id: str, key: str, what: str, kind: str = "patch"
) -> GigamilError:
    """The error for a damaged chunk of a ``kind`` (``patch`` or ``feature``) store."""
    redo = "extract" if kind == "patch" else "encode"
    return GigamilError(
        f"slide {slide_id}: {kind} store {path} is damaged: chunk {key} {what}; delete the store "
        f"and rerun to {redo} it again"
    )


def _check_chunks_exist(path: Path, group: zarr.Group, slide_id: str) -> None:
    """Every chunk file of the arrays is present (``patches`` is always written whole; coords
    and grid are since the checksums, so older stores are only checked for ``patches``)."""
    for name in ("patches", "coords", "grid"):
        arr = group[name]
        if name != "patches" and not _has_checksums(arr):
            continue
        for index in itertools.product(*(range(n) for n in arr.cdata_shape)):
            key = chunk_key(arr, index)
            if not (path / key).is_file():
                raise damaged_store_error(path, slide_id, key, "is missing")


_UNCHECKED_WARNED: set[str] = set()


def patch_sides(size: float | Sequence[float]) -> tuple[float, float]:
    """(width, height) of a patch side given as one number (square) or as (w, h)."""
    if isinstance(size, int | float):
        return float(size), float(size)
    w, h = size
    return float(w), float(h)


def patch_size_xy(attrs: Mapping[str, Any]) -> tuple[float, float]:
    """A store's patch (width, height) in level-0 pixels: ``patch_size_level0_xy`` (they
    differ on a slide whose pixels are not square, e.g. 0.25 x 0.26 µm), else the scalar
    ``patch_size_level0`` (their mean; stores written before the _xy attribute)."""
    xy = attrs.get("patch_size_level0_xy")
    if (
        isinstance(xy, list | tuple)
        and len(xy) == 2
        and all(isinstance(v, int | float) and v > 0 for v in xy)
    ):
        return float(xy[0]), float(xy[1])
    return patch_sides(float(attrs["patch_size_level0"]))


def read_store(path: str | Path) -> tuple[zarr.Array, np.ndarray, np.ndarray, dict[str, Any]]:
    """(patches: lazy zarr array (N, H, W, 3) uint8, coords (N, 2) int64, grid (N, 2) int64,
    attrs dict). A missing chunk, a damaged coords/grid chunk or coords/grid that are not one
    (x, y) / (row, col) per patch raise GigamilError naming the slide, the store and what is
    wrong; read the patches with :func:`read_patches`."""
    path = Path(path)
    group = open_store(path)
    attrs = dict(group.attrs)
    slide_id = str(attrs.get("slide_id", path.stem))
    if missing := [k for k in REQUIRED_ATTRS if k not in attrs]:  # written on commit, last
        raise GigamilError(
            f"slide {slide_id}: patch store {path} lacks the attributes extraction records last "
            f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}): not a finished "
            "store (an interrupted gigamil patches leaves <store>.tmp-<pid>); delete it and "
            "extract the slide again"
        )
    _check_chunks_exist(path, group, slide_id)
    patches = group["patches"]
    if not _has_checksums(patches) and str(path) not in _UNCHECKED_WARNED:
        _UNCHECKED_WARNED.add(str(path))
        log.warning(
            "%s has no chunk checksums (written by an older gigamil): damage cannot be detected; "
            "delete it and rerun to extract it with checksums",
            path,
        )
    _check_shapes(path, group, slide_id)
    out = []
    for name in ("coords", "grid"):
        out.append(np.asarray(read_patches(group[name], path, slide_id), dtype=np.int64))
    _check_against_attrs(path, patches, out[1], attrs, slide_id)
    check_chunk_crcs(path, group, attrs, slide_id)
    return patches, out[0], out[1], attrs


def _check_against_attrs(
    path: Path, patches: zarr.Array, grid: np.ndarray, attrs: dict[str, Any], slide_id: str
) -> None:
    """The arrays agree with the attributes the extraction recorded, where it recorded them:
    ``n_patches`` rows, ``patch_px`` square patches, grid cells inside ``grid_shape``. An
    edited array shape (a truncated bag, patches re-cut to another shape) or swapped chunk
    files would otherwise be read as data."""
    problems = []
    n, px = attrs.get("n_patches"), attrs.get("patch_px")
    if isinstance(n, int) and n != patches.shape[0]:
        problems.append(f"it holds {patches.shape[0]} patches but records n_patches {n}")
    if isinstance(px, int) and px > 0 and tuple(patches.shape[1:3]) != (px, px):
        problems.append(f"its patches are {tuple(patches.shape[1:3])} px but it records {px} px")
    shape = attrs.get("grid_shape")
    if isinstance(shape, list) and len(shape) == 2 and len(grid):
        inside = (grid >= 0).all(axis=1) & (grid[:, 0] < shape[0]) & (grid[:, 1] < shape[1])
        if not inside.all():
            problems.append(f"{int((~inside).sum())} grid cell(s) outside its grid_shape {shape}")
    if problems:
        raise GigamilError(
            f"slide {slide_id}: patch store {path} is damaged: {'; '.join(problems)}; delete "
            "the store and rerun to extract it again"
        )


def _check_shapes(path: Path, group: zarr.Group, slide_id: str) -> None:
    """``patches`` is (N, H, W, 3) uint8 and ``coords`` and ``grid`` are (N, 2) integers: a
    store whose arrays disagree would pair patches with the wrong places (or none)."""
    patches = group["patches"]
    if patches.ndim != 4 or patches.shape[3] != 3 or patches.dtype != np.uint8:
        raise GigamilError(
            f"slide {slide_id}: patch store {path} is damaged: patches is {patches.dtype} "
            f"{tuple(patches.shape)}, not uint8 (N, H, W, 3); delete the store and rerun to "
            "extract it again"
        )
    n = int(patches.shape[0])
    for name in ("coords", "grid"):
        arr = group[name]
        if tuple(arr.shape) != (n, 2) or arr.dtype.kind not in "iu":
            raise GigamilError(
                f"slide {slide_id}: patch store {path} is damaged: {name} is {arr.dtype} "
                f"{tuple(arr.shape)}, not integers ({n}, 2) for its {n} patches; delete the "
                "store and rerun to extract it again"
            )


def read_patches(
    arr: zarr.Array,
    path: str | Path,
    slide_id: str,
    selection: Any = slice(None),
    kind: str = "patch",
) -> np.ndarray:
    """``arr[selection]`` (or ``arr.oindex[...]`` for an index array), with a chunk that fails
    its checksum or cannot be decoded reported as one GigamilError naming the slide, the
    ``kind`` of store (``patch`` or ``feature``), the store and the chunk."""
    try:
        if isinstance(selection, np.ndarray):
            return np.asarray(arr.oindex[selection])
        return np.asarray(arr[selection])
    except GigamilError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure: find and name the chunk
        key, err = _find_bad_chunk(arr)
        if key is None:
            raise
        what = (
            "fails its checksum"
            if "checksum" in str(err)
            else f"cannot be decoded ({type(err).__name__}: {err})"
        )
        raise damaged_store_error(path, slide_id, key, what, kind) from exc


CHUNK_CRC_ATTR = "chunk_crc32c"  # {array: the CRC-32C each chunk file ends in, as hex}
_NO_CRC = "--------"  # a chunk file that is missing or shorter than its CRC


def chunk_crcs(path: str | Path, arr: zarr.Array) -> str:
    """The last 4 bytes (the CRC-32C of a checksummed chunk) of every chunk file of ``arr``,
    in chunk order, 8 hex digits each: the writers record it (:data:`CHUNK_CRC_ATTR`) so a
    chunk file at another chunk's place (swapped, or copied from another store), which passes
    its own checksum, is not read as the patches or features of the rows it stands for."""
    out = []
    for index in itertools.product(*(range(n) for n in arr.cdata_shape)):
        try:
            with (Path(path) / chunk_key(arr, index)).open("rb") as fh:
                size = fh.seek(0, 2)
                fh.seek(max(0, size - 4))
                tail = fh.read(4)
        except OSError:
            tail = b""
        out.append(tail.hex() if len(tail) == 4 else _NO_CRC)
    return "".join(out)


def check_chunk_crcs(
    path: Path, group: zarr.Group, attrs: Mapping[str, Any], slide_id: str, kind: str = "patch"
) -> None:
    """GigamilError naming the first chunk file whose CRC-32C is not the one the writer
    recorded for its place (:func:`chunk_crcs`); a store without the record is not checked."""
    recorded = attrs.get(CHUNK_CRC_ATTR)
    if not isinstance(recorded, Mapping):
        return
    for name, want in recorded.items():
        if not isinstance(want, str) or name not in group:
            continue
        arr = group[name]
        have = chunk_crcs(path, arr)
        if have == want:
            continue
        for i, index in enumerate(itertools.product(*(range(n) for n in arr.cdata_shape))):
            if have[8 * i : 8 * i + 8] == want[8 * i : 8 * i + 8]:
                continue
            sel = _chunk_selection(arr, index)
            read_patches(arr, path, slide_id, sel, kind)  # a damaged chunk: named as such
            what = (
                "is not the chunk written there (chunk files swapped, or copied from another store)"
            )
            raise damaged_store_error(path, slide_id, chunk_key(arr, index), what, kind)
        if arr.shape[0]:  # other chunking (an edited zarr.json): a chunk that fails, named
            read_patches(arr, path, slide_id, slice(0, arr.chunks[0]), kind)
        what = f"count ({len(have) // 8}) is not the {len(want) // 8} written"
        raise damaged_store_error(path, slide_id, f"{name}/c", what, kind)


def _chunk_selection(arr: zarr.Array, index: tuple[int, ...]) -> tuple[slice, ...]:
    """The part of ``arr`` its chunk at grid ``index`` holds (the last one may be short)."""
    bounds = zip(index, arr.chunks, arr.shape, strict=True)
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in bounds)


def _find_bad_chunk(arr: zarr.Array) -> tuple[str | None, BaseException | None]:
    """The first chunk of ``arr`` that does not read (key, error), or (None, None)."""
    for index in itertools.product(*(range(n) for n in arr.cdata_shape)):
        try:
            arr[_chunk_selection(arr, index)]
        except Exception as exc:  # noqa: BLE001 - that is the chunk we are looking for
            return chunk_key(arr, index), exc
    return None, None
