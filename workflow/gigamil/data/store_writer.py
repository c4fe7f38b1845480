"""Writing the per-slide zarr v3 patch store (layout: gigamil.data.store, docs/architecture.md).

Writing goes through :class:`StoreWriter`: everything is written under ``<out>.tmp-<pid>`` and
renamed to ``<out>`` only by :meth:`StoreWriter.commit`, so a crash never leaves a store that looks
complete. Every chunk file is written (also all-zero ones) and ends in a CRC-32C; the attributes
:data:`gigamil.data.store.REQUIRED_ATTRS` are checked on commit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr

from gigamil.data.store import CHUNK_CRC_ATTR, REQUIRED_ATTRS, JpegPatchCodec, chunk_crcs
from gigamil.errors import GigamilError
from gigamil.fileutil import (
    check_replaceable_store,
    is_no_space,
    no_space_error,
    remove_stale_temporaries,
    temp_path,
    zarr_attributes,
)

CODECS = ("zstd", "jpeg")
ZSTD_LEVEL = -1  # zstd fast mode: H&E pixels compress ~1.1x at any level; level 3 is 4x slower


def chunk_patches(patch_px: int, target_bytes: int = 24 * 2**20) -> int:
    """Patches per chunk: about ``target_bytes`` raw, clipped to 64..256."""
    per = patch_px * patch_px * 3
    return int(min(256, max(64, target_bytes // per)))


def _crc32c(data: bytes) -> bytes:
    """The 4 bytes zarr's ``crc32c`` codec appends to a chunk."""
    return np.uint32(google_crc32c.value(data)).tobytes()


def unresampled_store_attrs(
    slide_id: str, patch_px: int, mpp: float, slide_dimensions: list[int], source_path: str = ""
) -> dict[str, Any]:
    """Store attributes for patches written as they are, at their own ``mpp`` (level 0, no
    resampling, no tissue mask): tile cohorts and benchmarks that build stores without a
    slide. ``slide_dimensions`` [width, height] in pixels."""
    from gigamil import __version__

    return {
        "slide_id": slide_id,
        "source_path": source_path,
        "source_size": 0,
        "source_mtime": 0.0,
        "slide_mpp": mpp,
        "target_mpp": mpp,
        "effective_mpp": mpp,
        "patch_px": patch_px,
        "stride_px": patch_px,
        "patch_size_level0": float(patch_px),
        "level": 0,
        "level_downsample": 1.0,
        "mask_params": {},
        "codec": "zstd",
        "gigamil_version": __version__,
        "slide_dimensions": list(slide_dimensions),
    }


def is_patch_store(path: str | Path) -> bool:
    """Whether ``path`` is a patch store (a zarr group with a slide_id and patch_px, not a
    feature store's ``kind``)."""
    attrs = zarr_attributes(path)
    return (
        attrs is not None and attrs.get("kind") is None and {"slide_id", "patch_px"} <= set(attrs)
    )


class StoreWriter:
    """Writes a patch store under a temporary name; :meth:`commit` renames it into place.

    Use as a context manager: leaving the block without ``commit()`` (e.g. on an exception)
    deletes the temporary directory. Patches must be appended in row order
    (:meth:`append`), they are flushed in whole chunks.
    """

    def __init__(
        self,
        out: str | Path,
        n: int,
        patch_px: int,
        coords: np.ndarray,
        grid: np.ndarray,
        codec: str = "zstd",
        jpeg_quality: int = 90,
        chunk: int | None = None,
    ):
        if codec not in CODECS:
            raise GigamilError(f"unknown patch codec {codec!r}; choose one of {CODECS}")
        self.out = Path(out)
        check_replaceable_store(self.out, is_patch_store, "patch store")
        self.tmp = temp_path(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.out)  # ours and those of killed extractions
        self.n = int(n)
        self.chunk = int(chunk or chunk_patches(patch_px))
        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.patches = self._create_patches(patch_px, codec, jpeg_quality)
        self._write_rows(coords, grid)
        self.codec = codec
        self.jpeg_quality = int(jpeg_quality)
        if codec == "zstd":
            from numcodecs import Zstd

            self._zstd = Zstd(level=ZSTD_LEVEL)
        meta = self.group["patches"].metadata.to_dict()
        if meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator") != "/":
            raise RuntimeError("unexpected zarr chunk key encoding")  # pragma: no cover
        self._lock = threading.Lock()
        self._buf: list[np.ndarray] = []
        self._buffered = 0
        self._written = 0
        self._committed = False
        self._digests: dict[int, bytes] = {}  # per chunk: each patch's sha256, as cut

    def _create_patches(self, patch_px: int, codec: str, jpeg_quality: int) -> zarr.Array:
        """The empty ``patches`` array (n, patch_px, patch_px, 3) uint8 in chunks of
        ``self.chunk`` rows: zstd (or one JPEG per patch), then a CRC-32C."""
        shape = (self.n, patch_px, patch_px, 3)
        chunks = (self.chunk, patch_px, patch_px, 3)
        if codec == "zstd":
            return self.group.create_array(
                "patches",
                shape=shape,
                chunks=chunks,
                dtype="uint8",
                compressors=[zarr.codecs.ZstdCodec(level=ZSTD_LEVEL), zarr.codecs.Crc32cCodec()],
                fill_value=0,
                config={"write_empty_chunks": True},  # skip the all-fill-value scan per chunk
            )
        return self.group.create_array(
            "patches",
            shape=shape,
            chunks=chunks,
            dtype="uint8",
            serializer=JpegPatchCodec(quality=jpeg_quality),
            compressors=[zarr.codecs.Crc32cCodec()],
            fill_value=0,
            config={"write_empty_chunks": True},
        )

    def _write_rows(self, coords: np.ndarray, grid: np.ndarray) -> None:
        """Create and write ``coords`` and ``grid`` (n, 2) int64 (zstd, then a CRC-32C)."""
        for name, arr in (("coords", coords), ("grid", grid)):
            arr = np.asarray(arr, dtype=np.int64).reshape(self.n, 2)
            z = self.group.create_array(
                name,
                shape=arr.shape,
                chunks=(max(1, min(self.n, 65536)), 2),
                dtype="int64",
                compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()],
                config={"write_empty_chunks": True},  # every chunk on disk: a missing one is damage
            )
            if self.n:
                z[...] = arr

    def _check_patches(self, patches: np.ndarray) -> None:
        """ValueError unless ``patches`` are uint8 (k, patch_px, patch_px, 3): a cast would turn
        float patches in 0..1 into zeros and wrap uint16 values, and another shape would be read
        back scrambled."""
        want = tuple(self.patches.shape[1:])
        if patches.dtype != np.uint8 or tuple(patches.shape[1:]) != want:
            raise ValueError(
                f"patches must be uint8 of shape (k, {', '.join(map(str, want))}); got "
                f"{patches.dtype} {tuple(patches.shape)}"
            )

    def append(self, patches: np.ndarray) -> None:
        """Append (k, H, W, 3) uint8 patches (the next k rows); ValueError for another dtype or
        patch shape."""
        if len(patches) == 0:
            return
        self._check_patches(patches)
        self._buf.append(patches)
        self._buffered += len(patches)
        if self._buffered >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buf:
            return
        data = self._buf[0] if len(self._buf) == 1 else np.concatenate(self._buf)
        k = len(data) if final else (len(data) // self.chunk) * self.chunk
        for a in range(0, k, self.chunk):
            self._write_chunk(self._written // self.chunk, data[a : min(a + self.chunk, k)])
            self._written += min(self.chunk, k - a)
        rest = data[k:]
        self._buf = [rest] if len(rest) else []
        self._buffered = len(rest)

    def write_chunk(self, index: int, data: np.ndarray) -> None:
        """Write chunk ``index`` (rows index*C .. index*C + len(data)) directly; thread-safe for
        different chunks. Use either this or :meth:`append`, not both."""
        n = min(self.chunk, self.n - index * self.chunk)
        self._check_patches(data)
        if len(data) != n:
            raise ValueError(f"chunk {index} needs {n} patches, got {len(data)}")
        self._write_chunk(index, data)
        with self._lock:
            self._written += n

    def _write_chunk(self, index: int, data: np.ndarray) -> None:
        """Encode and write chunk ``index`` of ``patches`` as a zarr v3 chunk file.

        Equivalent to ``self.patches[index*C : ...] = data`` for a whole (or the last) chunk, but
        without zarr's asynchronous store machinery, which costs several times the encoding on
        large uint8 chunks: the chunk key is ``c/<index>/0/0/0`` (default encoding, "/"), the
        bytes are the C-order chunk padded with the fill value through the array's codecs.
        """
        data = np.ascontiguousarray(data, dtype=np.uint8)
        self._digests[index] = b"".join(hashlib.sha256(row).digest() for row in data)
        if len(data) < self.chunk:  # the last chunk is stored at full size, padded
            pad = np.zeros((self.chunk - len(data), *data.shape[1:]), np.uint8)
            data = np.concatenate([data, pad])
        if self.codec == "zstd":
            encoded = self._zstd.encode(data)
        else:
            encoded = JpegPatchCodec(quality=self.jpeg_quality).encode_patches(data)
        encoded += _crc32c(encoded)
        path = self.tmp / "patches" / "c" / str(index) / "0" / "0" / "0"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encoded)
        except OSError as exc:
            if is_no_space(exc):
                raise no_space_error(self.out, exc) from exc
            raise

    def commit(self, attrs: dict[str, Any]) -> Path:
        """Flush, write ``attrs`` and ``patches_sha256`` (a digest of the patches' pixels as cut,
        before the codec: the sha256 of every patch in row order, hashed, so it does not depend
        on the chunking; the trainer's resume check compares it), and atomically replace
        ``out`` with the finished store."""
        self._flush(final=True)
        n_chunks = -(-self.n // self.chunk)
        if self._written != self.n or sorted(self._digests) != list(range(n_chunks)):
            raise RuntimeError(  # a chunk written twice counts its rows twice: check both
                f"{self.out}: wrote {self._written} of {self.n} patches, chunks "
                f"{sorted(self._digests)} of 0..{n_chunks - 1}"
            )
        missing = [k for k in REQUIRED_ATTRS if k not in attrs]
        if missing:
            raise ValueError(f"patch store attrs missing {missing}")
        chunks = b"".join(self._digests[i] for i in range(len(self._digests)))
        crcs = {k: chunk_crcs(self.tmp, self.group[k]) for k in ("patches", "coords", "grid")}
        attrs = {
            **attrs,
            "patches_sha256": hashlib.sha256(chunks).hexdigest(),
            CHUNK_CRC_ATTR: crcs,  # what each chunk file ends in: a swapped one is told apart
        }
        self.group.update_attributes(_jsonable(attrs))  # one write (attrs.update: one per key)
        if self.out.exists():
            old = temp_path(self.out, "old")
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        self._committed = True
        return self.out

    def abort(self) -> None:
        """Delete the temporary store."""
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


def _jsonable(v: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v
