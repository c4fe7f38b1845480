"""``ZarrBag``: a lazy bag of patches read chunk by chunk from a zarr patch store.

A bag never has to sit in memory at once: :meth:`ZarrBag.chunks` yields consecutive chunks as
uint8 torch tensors (n, H, W, 3), read by a background thread ``prefetch`` chunks ahead
(decompression overlaps with the encoder). :meth:`ZarrBag.with_cache` gives a view that keeps a
small bag (≤ ``cache_bytes``) in memory after its first pass, so the two passes of the
accumulating trainer do not read it twice; the trainer drops that view after the bag's step, so
memory never grows with the cohort. Rows keep the store's order (grid raster order), which
SmABMIL's adjacency needs.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigamil.data.store import read_patches, read_store

_END = object()


class ZarrBag:
    """A (possibly subsampled) bag of patches from ``{slide_id}.zarr``.

    ``indices``: sorted store rows to use (None = all rows). ``grid`` (n, 2) and ``coords``
    (n, 2) follow ``indices``. Implements the ``BagSource`` protocol of ``MILModel``.
    """

    def __init__(
        self,
        path: str | Path,
        indices: np.ndarray | None = None,
        prefetch: int = 2,
        cache_bytes: int = 0,
    ) -> None:
        self.path = Path(path)
        patches, coords, grid, attrs = read_store(self.path)
        self._patches = patches
        self.attrs: dict[str, Any] = attrs
        self.store_len = int(patches.shape[0])
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
            if indices.size and (
                np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= self.store_len
            ):
                raise ValueError("indices must be strictly increasing store rows")
        self.indices = indices
        self.coords = coords if indices is None else coords[indices]
        self.grid = grid if indices is None else grid[indices]
        self.prefetch = int(prefetch)
        self.cache_bytes = int(cache_bytes)
        self._cache: np.ndarray | None = None

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
        holds at most ``cache_bytes`` of pixels (drop the view to free them)."""
        view = copy.copy(self)
        view.cache_bytes = int(cache_bytes)
        view._cache = None
        return view

    def subsample(self, n: int, generator: torch.Generator | None = None) -> ZarrBag:
        """A view of at most ``n`` random instances (drawn with ``generator``), order kept."""
        if n >= len(self):
            return self
        pick = torch.randperm(len(self), generator=generator)[:n].sort().values.numpy()
        rows = pick if self.indices is None else self.indices[pick]
        return ZarrBag(self.path, rows, self.prefetch, self.cache_bytes)

    # ------------------------------------------------------------------ reading
    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the bag, uint8 (n, H, W, 3)."""
        stop = min(stop, len(self))
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

    def _fill_cache(self) -> None:
        if self._cache is None and 0 < self.nbytes <= self.cache_bytes:
            self._cache = self.read(0, len(self))

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        """Consecutive chunks of ``size`` rows as uint8 tensors, prefetched in a thread."""
        if size < 1:
            raise ValueError("chunk size must be >= 1")
        self._fill_cache()
        starts = range(0, len(self), size)
        if self.prefetch <= 0 or self._cache is not None or len(starts) <= 1:
            for s in starts:
                yield torch.from_numpy(np.ascontiguousarray(self.read(s, s + size)))
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def worker() -> None:
            try:
                for s in starts:
                    if not put(np.ascontiguousarray(self.read(s, s + size))):
                        return
                put(_END)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                put(exc)

        thread = threading.Thread(target=worker, name=f"prefetch-{self.path.name}", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield torch.from_numpy(item)
        finally:
            stop.set()
            thread.join(timeout=10)
