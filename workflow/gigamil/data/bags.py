"""``ZarrBag``: a lazy bag of patches read chunk by chunk from a zarr patch store.

A bag never has to sit in memory at once: :meth:`ZarrBag.chunks` yields consecutive chunks as
uint8 torch tensors (n, H, W, 3), read and decoded by a pool of ``workers`` threads up to
``max(workers, prefetch)`` chunks ahead (decompression overlaps with the encoder), in order. With
``pin_memory`` (and CUDA present) the chunks arrive in pinned (page-locked) host memory, so the
model's ``.to(device, non_blocking=True)`` copies them asynchronously. :meth:`ZarrBag.with_cache` gives a view that keeps a
small bag (≤ ``cache_bytes``) in memory after its first pass, so the two passes of the
accumulating trainer do not read it twice; the trainer drops that view after the bag's step, so
memory never grows with the cohort. Rows keep the store's order (grid raster order), which
SmABMIL's adjacency needs.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigamil.data.store import read_patches, read_store


def pinnable() -> bool:
    """Whether host memory can be pinned (a CUDA build with a device; pinning raises without)."""
    return torch.cuda.is_available()


def checked_indices(indices: np.ndarray | None, store_len: int) -> np.ndarray | None:
    """``indices`` as int64 rows of a store of ``store_len`` rows (None: every row); ValueError
    unless strictly increasing and inside the store (the grid's raster order, which SmABMIL's
    adjacency and the chunked reads rely on)."""
    if indices is None:
        return None
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (
        np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= store_len
    ):
        raise ValueError("indices must be strictly increasing store rows")
    return indices


class ZarrBag:
    """A (possibly subsampled) bag of patches from ``{slide_id}.zarr``.

    ``indices``: sorted store rows to use (None = all rows). ``grid`` (n, 2) and ``coords``
    (n, 2) follow ``indices``. ``workers``: threads reading and decoding chunks concurrently;
    ``prefetch``: chunks read ahead (0 with one worker: read in the caller's thread);
    ``pin_memory``: deliver chunks in pinned host memory when CUDA is available (ignored
    otherwise). Implements the ``BagSource`` protocol of ``MILModel``.
    """

    def __init__(  # noqa: PLR0913 - reading options, all with defaults
        self,
        path: str | Path,
        indices: np.ndarray | None = None,
        prefetch: int = 2,
        cache_bytes: int = 0,
        workers: int = 1,
        pin_memory: bool = False,
    ) -> None:
        self.path = Path(path)
        patches, coords, grid, attrs = read_store(self.path)
        self._patches = patches
        self.attrs: dict[str, Any] = attrs
        self.store_len = int(patches.shape[0])
        self.indices = indices = checked_indices(indices, self.store_len)
        self.coords = coords if indices is None else coords[indices]
        self.grid = grid if indices is None else grid[indices]
        self.prefetch = int(prefetch)
        self.workers = max(1, int(workers))
        self.pin_memory = bool(pin_memory) and pinnable()
        self.cache_bytes = int(cache_bytes)
        self._cache: np.ndarray | None = None
        self._chunk_cache: tuple[int, list[torch.Tensor]] | None = None

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.store_len if self.indices is None else len(self.indices)

    def __repr__(self) -> str:
        return f"ZarrBag({str(self.path)!r}, n={len(self)})"

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of one patch."""
        return tuple(int(s) for s in self._patches.shape[1:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return len(self) * int(np.prod(self.patch_shape))

    def with_cache(self, cache_bytes: int = 256 * 2**20) -> ZarrBag:
        """A view of the same rows that keeps them in memory after the first pass if the bag
        holds at most ``cache_bytes`` of pixels (drop the view to free them). A bag that
        already keeps all its rows (``cache_bytes`` of its own at least its size) is returned
        as it is, with what it has read."""
        if 0 < self.nbytes <= self.cache_bytes:
            return self
        view = copy.copy(self)
        view.cache_bytes = int(cache_bytes)
        view._cache = None
        view._chunk_cache = None
        return view

    def subsample(self, n: int, generator: torch.Generator | None = None) -> ZarrBag:
        """A view of at most ``n`` random instances (drawn with ``generator``), order kept; it
        reads its rows from the store (the cache of this bag is not shared)."""
        if n >= len(self):
            return self
        pick = torch.randperm(len(self), generator=generator)[:n].sort().values.numpy()
        rows = pick if self.indices is None else self.indices[pick]
        return ZarrBag(
            self.path, rows, self.prefetch, self.cache_bytes, self.workers, self.pin_memory
        )

    # ------------------------------------------------------------------ reading
    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the bag, uint8 (n, H, W, 3)."""
        stop = min(stop, len(self))
        if self._cache is None and self._chunk_cache is not None:
            self._cache = torch.cat(self._chunk_cache[1]).numpy()
        if self._cache is not None:
            return self._cache[start:stop]
        if self.indices is None:
            return self._read(slice(start, stop))
        rows = self.indices[start:stop]
        if len(rows) == 0:
            return np.zeros((0, *self.patch_shape), dtype=np.uint8)
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        if hi - lo <= 2 * len(rows):  # dense selection: read the covering block
            return self._read(slice(lo, hi))[rows - lo]
        return self._read(rows)

    def _read(self, selection: slice | np.ndarray) -> np.ndarray:
        slide_id = str(self.attrs.get("slide_id", self.path.stem))
        return read_patches(self._patches, self.path, slide_id, selection)

    def load(self) -> torch.Tensor:
        """The whole bag as one uint8 tensor (n, H, W, 3)."""
        return torch.from_numpy(np.ascontiguousarray(self.read(0, len(self))))

    def _tensor(self, rows: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(rows))
        return t.pin_memory() if self.pin_memory else t

    def _read_chunk(self, start: int, size: int) -> torch.Tensor:
        return self._tensor(self.read(start, start + size))

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive chunks of ``size`` rows as uint8 tensors (pinned with ``pin_memory``),
        in order, read ahead by the worker pool. An error reading a chunk (e.g. a chunk that
        fails its checksum) is raised here, unchanged, when its turn comes. A bag of at most
        ``cache_bytes`` keeps the chunks of a complete pass and yields them again on the next
        pass with the same ``size`` (the two GradCache passes read and pin it once)."""
        if size < 1:
            raise ValueError("chunk size must be >= 1")
        if self._chunk_cache is not None and self._chunk_cache[0] == size:
            yield from self._chunk_cache[1]
            return
        keep: list[torch.Tensor] | None = None
        if self._cache is None and 0 < self.nbytes <= self.cache_bytes:
            keep = []
        for chunk in self._stream(size):
            if keep is not None:
                keep.append(chunk)
            yield chunk
        if keep is not None:
            self._chunk_cache = (size, keep)

    def _stream(self, size: int) -> Iterator[torch.Tensor]:
        starts = range(0, len(self), size)
        depth = max(self.workers, self.prefetch)
        if (
            (self.workers == 1 and self.prefetch <= 0)
            or self._cache is not None
            or len(starts) <= 1
        ):
            for s in starts:
                yield self._read_chunk(s, size)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"decode-{self.path.name}")
        pending: deque[Future[torch.Tensor]] = deque()
        todo = iter(starts)
        try:
            for s in todo:  # fill the pipeline
                pending.append(pool.submit(self._read_chunk, s, size))
                if len(pending) >= depth:
                    break
            while pending:
                chunk = pending.popleft().result()  # re-raises a worker's exception as it was
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._read_chunk, nxt, size))
                yield chunk
        finally:  # also on an early break (generator closed): no thread outlives the loop
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


def store_stain_normalization(bag: Any) -> str | None:
    """``preprocessing.patches.stain_normalization`` of the patches behind ``bag`` (a
    :class:`ZarrBag` or a feature bag): its store's ``stain_normalization`` attribute; ``"none"``
    for a patch store written before gigamil recorded it (scanned colours); None for a feature
    store that does not say."""
    value = bag.attrs.get("stain_normalization")
    if value is None:
        return "none" if isinstance(bag, ZarrBag) else None
    return str(value)


class ConcatBag:
    """The instances of several bags one after another, as one bag (a ``BagSource``).

    ``chunks(size)`` yields each part's chunks in turn (a chunk never spans two parts), so both
    GradCache passes see the same chunks. ``grid`` stacks the parts' grids side by side with a
    gap of two columns, so no patch of one part is adjacent to a patch of another (SmABMIL
    smooths within each part only).
    """

    def __init__(self, parts: Sequence[Any]) -> None:
        if not parts:
            raise ValueError("ConcatBag needs at least one bag")
        self.parts = list(parts)
        grids, offset = [], 0
        for part in self.parts:
            g = np.asarray(part.grid, dtype=np.int64).reshape(-1, 2)
            if len(g):
                g = g - g.min(axis=0) + np.array([0, offset])
                offset = int(g[:, 1].max()) + 3
            grids.append(g)
        self.grid = np.concatenate(grids)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __repr__(self) -> str:
        return f"ConcatBag({self.parts!r})"

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        for part in self.parts:
            yield from part.chunks(size)


def store_digests(bag: Any) -> list[list[Any]]:
    """``[[patches_sha256, codec, jpeg_quality]]`` of a bag's patch store (one per part of a
    :class:`ConcatBag`): the store's digest of its pixels as cut and how they are encoded, so a
    store re-cut with other pixels (a replaced slide, another codec) is told apart from one of
    the same patch count; a feature store gives its patch store's (recorded since 2026-12-05).
    ``[]`` when a store has no digest (written before stores, or feature stores, had one)."""
    out = []
    for part in getattr(bag, "parts", [bag]):
        attrs = getattr(part, "attrs", None) or {}
        if not attrs.get("patches_sha256"):
            return []
        out.append([attrs["patches_sha256"], attrs.get("codec"), attrs.get("jpeg_quality")])
    return out


def swapped_store(
    slide_ids: Sequence[str], stores: Sequence[str | Path], recorded: Sequence[Any]
) -> str | None:
    """The problem of a table whose slide's store (``stores``, aligned with ``slide_ids``) was
    extracted from another slide of the same table (its ``recorded`` ``slide_id`` attribute;
    None: not recorded): each slide would be trained on, or predicted and scored, under the
    other's id and label. None when there is no such slide."""
    listed = {str(i) for i in slide_ids}
    for slide_id, store, own in zip(slide_ids, stores, recorded, strict=True):
        cut_from = str(own) if own is not None else str(slide_id)
        if cut_from != str(slide_id) and cut_from in listed:
            return (
                f"slide {slide_id}'s store {store} was extracted from slide {cut_from}, another "
                "slide of this table: are stores swapped? Each would be used under the other's "
                "id and label"
            )
    return None
