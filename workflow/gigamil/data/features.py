"""The feature cache of frozen encoders: ``results/features/{encoder_id}/{cohort}/{slide_id}.zarr``.

When the encoder is frozen (``training.strategy: frozen``, or its older spelling
``model.trainable_blocks: 0`` / ``freeze_encoder: true``) and
``model.feature_cache`` is on, rule ``extract_features`` runs the encoder once per slide
(:func:`gigamil.data.feature_extract.extract_features`) and training, prediction (hence
ensembles and heatmaps, which read the predictions' attention) read these stores through
:class:`FeatureBag` instead of re-encoding every patch in every epoch. The model is then the
attention head alone.

``encoder_id`` (:func:`gigamil.data.feature_spec.encoder_id`) is a short hash of everything that
changes the features (:func:`gigamil.data.feature_spec.encoder_spec`, which lists them).

Feature store (zarr v3 group): ``features`` float16 (N, D), ``coords`` and ``grid`` int64 (N, 2)
copied from the patch store (same rows, same order), every chunk checksummed (CRC-32C); attrs
``kind: "features"``, ``encoder_id``, ``encoder_spec``, ``encoder``, ``weights_sha256``,
``encoder_sha256`` (the encoder's state as it encoded; stores of one id must agree on it),
``feature_dim``, ``slide_id``, ``patch_px``, ``target_mpp``, ``effective_mpp``,
``patch_store``, ``gigamil_version``, ``seconds``, ``device``, ``amp``.
"""

from __future__ import annotations

import copy
import itertools
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from gigamil.data.bags import ZarrBag, checked_indices
from gigamil.data.store import check_chunk_crcs, chunk_key, damaged_store_error, read_patches
from gigamil.errors import GigamilError
from gigamil.fileutil import zarr_attributes

KIND = "features"


def is_feature_store(path: str | Path) -> bool:
    """Whether ``path`` is a feature store (a zarr group with ``kind: features``)."""
    attrs = zarr_attributes(path)
    return attrs is not None and attrs.get("kind") == KIND


class FeatureBag:
    """A bag of cached features (``{slide_id}.zarr`` of
    :func:`gigamil.data.feature_extract.write_feature_store`); chunks are float32 tensors
    (n, D) in the store's row order. Implements the ``BagSource`` protocol of
    ``MILModel`` and what the trainer needs of a :class:`~gigamil.data.bags.ZarrBag`
    (``subsample``, ``with_cache``, ``attrs``, ``grid``, ``coords``, ``patch_shape``).

    The features of the bags a process opens are kept in memory (read once, at open) while they
    total at most :data:`RESIDENT_BYTES`; the bags opened after that read their features from
    disk when used (:meth:`with_cache` reads them once for a training step), so memory stays
    bounded on large cohorts while small ones never touch the disk again.
    """

    RESIDENT_BYTES = 4 * 2**30  # features kept in memory by all open FeatureBags together
    _resident = [0]  # bytes held now (shared by every instance; released when a bag is freed)

    def __init__(self, path: str | Path, indices: np.ndarray | None = None) -> None:
        self.path = Path(path)
        try:
            group = zarr.open_group(str(self.path), mode="r", zarr_format=3)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise GigamilError(f"{self.path}: not a gigamil feature store ({exc})") from exc
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("kind") != KIND or "features" not in group:
            raise GigamilError(f"{self.path}: not a gigamil feature store")
        self.slide_id = str(self.attrs.get("slide_id", self.path.stem))
        self._array = group["features"]
        _check_chunks_exist(self.path, self._array, self.slide_id)
        self.store_len = int(self._array.shape[0])
        if self._array.dtype != np.float16:  # what write_feature_store writes; else garbage
            raise GigamilError(
                f"slide {self.slide_id}: feature store {self.path} is damaged: features of dtype "
                f"{self._array.dtype}, not float16; delete the store and rerun to encode it again"
            )
        if self.attrs.get("n_patches", self.store_len) != self.store_len:  # cut short
            raise GigamilError(
                f"slide {self.slide_id}: feature store {self.path} is damaged: features of "
                f"{self.store_len} rows, n_patches {self.attrs['n_patches']}; delete the store "
                "and rerun to encode it again"
            )
        for name in ("coords", "grid"):
            _check_rows(self.path, group, name, self._array, self.slide_id)
        check_chunk_crcs(self.path, group, self.attrs, self.slide_id, "feature")
        rows = {
            name: np.asarray(
                read_patches(group[name], self.path, self.slide_id, kind="feature"), np.int64
            )
            for name in ("coords", "grid")
        }
        self.indices = indices = checked_indices(indices, self.store_len)
        pick = slice(None) if indices is None else indices
        self.coords = rows["coords"].reshape(-1, 2)[pick]
        self.grid = rows["grid"].reshape(-1, 2)[pick]
        self._features: np.ndarray | None = None
        self._adjacency: torch.Tensor | None = None
        nbytes = len(self) * int(np.prod(self._array.shape[1:])) * 2
        if FeatureBag._resident[0] + nbytes <= self.RESIDENT_BYTES:
            self._features = self._read()
            FeatureBag._resident[0] += nbytes
            weakref.finalize(self, FeatureBag._release, nbytes)

    @classmethod
    def in_memory(
        cls,
        features: np.ndarray,
        coords: np.ndarray,
        grid: np.ndarray,
        attrs: Mapping[str, Any],
    ) -> FeatureBag:
        """A bag of features (N, D) held in memory only (no store on disk), e.g. the features
        the ``em`` strategy encodes each round; ``coords``/``grid`` (N, 2) as in a feature
        store, ``attrs`` at least ``slide_id`` and ``patch_px`` (``encoder_id`` names the
        encoder). Not counted in :data:`RESIDENT_BYTES` (the caller holds the array)."""
        feats = np.ascontiguousarray(features, dtype=np.float16)
        n = len(feats)
        if feats.ndim != 2 or len(coords) != n or len(grid) != n:
            raise ValueError(
                f"features (N, D), coords and grid (N, 2) must have N rows: {feats.shape}, "
                f"{np.shape(coords)}, {np.shape(grid)}"
            )
        bag = cls.__new__(cls)
        bag.attrs = {"kind": KIND, **dict(attrs), "feature_dim": int(feats.shape[1])}
        bag.attrs["n_patches"] = n
        bag.slide_id = str(bag.attrs["slide_id"])
        bag.path = Path(f"<memory>/{bag.slide_id}")
        bag._array = feats
        bag.store_len, bag.indices = n, None
        bag.coords = np.asarray(coords, np.int64).reshape(n, 2)
        bag.grid = np.asarray(grid, np.int64).reshape(n, 2)
        bag._features, bag._adjacency = feats, None
        return bag

    @staticmethod
    def _release(nbytes: int) -> None:
        FeatureBag._resident[0] -= nbytes

    def _read(self) -> np.ndarray:
        """The bag's rows of the stored features (float16 (n, D)), from disk, checked to be
        finite (:func:`_check_finite`)."""
        if self.indices is None:
            rows = read_patches(self._array, self.path, self.slide_id, kind="feature")
        elif len(self.indices) == 0:
            return np.zeros((0, *self._array.shape[1:]), np.float16)
        else:
            rows = read_patches(self._array, self.path, self.slide_id, self.indices, "feature")
        _check_finite(self.path, rows, self.slide_id, self.indices)
        return rows

    def _rows(self) -> np.ndarray:
        return self._features if self._features is not None else self._read()

    def __len__(self) -> int:
        return self.store_len if self.indices is None else len(self.indices)

    def __repr__(self) -> str:
        return f"FeatureBag({str(self.path)!r}, n={len(self)})"

    @property
    def resident(self) -> bool:
        """Whether the features are held in memory."""
        return self._features is not None

    @property
    def encoder_id(self) -> str:
        return str(self.attrs.get("encoder_id"))

    @property
    def dim(self) -> int:
        return int(self.attrs.get("feature_dim", self._array.shape[-1]))

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """(H, W, 3) of the patches the features were computed from."""
        px = int(self.attrs["patch_px"])
        return (px, px, 3)

    def with_cache(self, cache_bytes: int = 0) -> FeatureBag:  # noqa: ARG002 - ZarrBag's API
        """The bag itself when its features are in memory, else a view holding them (read once
        from disk; drop it to free them)."""
        if self._features is not None:
            return self
        view = copy.copy(self)
        view._features = self._read()
        return view

    def subsample(self, n: int, generator: torch.Generator | None = None) -> FeatureBag:
        """A view of at most ``n`` random instances (drawn with ``generator``), order kept."""
        if n >= len(self):
            return self
        pick = torch.randperm(len(self), generator=generator)[:n].sort().values.numpy()
        view = copy.copy(self)
        view.indices = pick if self.indices is None else self.indices[pick]
        view._features = None if self._features is None else self._features[pick]
        view.coords, view.grid = self.coords[pick], self.grid[pick]
        view._adjacency = None
        return view

    def adjacency(self) -> torch.Tensor:
        """The grid adjacency of the bag's rows (SmABMIL), computed once and kept: with cached
        features, building it in every step would cost about as much as the head itself."""
        if self._adjacency is None:
            from gigamil.nn.pooling import grid_adjacency

            self._adjacency = grid_adjacency(self.grid)
        return self._adjacency

    def read(self, start: int, stop: int) -> np.ndarray:
        return self._rows()[start:stop]

    def load(self) -> torch.Tensor:
        """All features as one float32 tensor (N, D)."""
        return torch.from_numpy(self._rows().astype(np.float32))

    def chunks(self, size: int) -> Iterator[torch.Tensor]:
        if size < 1:
            raise ValueError("chunk size must be >= 1")
        data = self._rows()
        for s in range(0, len(self), size):
            yield torch.from_numpy(data[s : s + size].astype(np.float32))


def _check_chunks_exist(path: Path, arr: zarr.Array, slide_id: str) -> None:
    """Every chunk file of ``features`` is present (each is written, also all-zero ones)."""
    for index in itertools.product(*(range(n) for n in arr.cdata_shape)):
        key = chunk_key(arr, index)
        if not (path / key).is_file():
            raise damaged_store_error(path, slide_id, key, "is missing", "feature")


FINITE_CHECK_ROWS = 4096  # rows checked at once (bounds the temporary boolean array)


def _check_finite(
    path: Path, rows: np.ndarray, slide_id: str, indices: np.ndarray | None = None
) -> None:
    """Every feature read is a finite number: a store written before the extraction refused
    values float16 cannot hold (beyond 65504, cast to inf) or by another tool may hold inf or
    NaN, which made a validation slide's loss NaN (the best epoch then chosen by the training
    loss, without a word) or a training slide's diverge the head ("lower training.lr")."""
    for start in range(0, len(rows), FINITE_CHECK_ROWS):
        block = rows[start : start + FINITE_CHECK_ROWS]
        bad = ~np.isfinite(block).all(axis=tuple(range(1, block.ndim)))
        if bad.any():
            row = start + int(np.argmax(bad))
            row = int(indices[row]) if indices is not None else row
            raise GigamilError(
                f"slide {slide_id}: feature store {path} is damaged: features that are not "
                f"finite numbers (NaN or inf), e.g. in row {row} (values beyond float16's "
                "range, cached by an older gigamil?); delete the store and rerun to encode it "
                "again"
            )


def _check_rows(
    path: Path, group: zarr.Group, name: str, features: zarr.Array, slide_id: str
) -> None:
    """``name`` (coords or grid) is in the store, (N, 2) integers for the N rows of a 2-D
    ``features``, every chunk file present: else the features would be paired with the wrong
    places (SmABMIL's adjacency, heatmaps, localisation)."""
    n = int(features.shape[0])
    arr = group.get(name) if name in group else None
    if (
        features.ndim != 2
        or arr is None
        or tuple(arr.shape) != (n, 2)
        or arr.dtype.kind not in "iu"
    ):
        what = "missing" if arr is None else f"{arr.dtype} {tuple(arr.shape)}"
        raise GigamilError(
            f"slide {slide_id}: feature store {path} is damaged: features {tuple(features.shape)}"
            f" and {name} {what}, not integers ({n}, 2) for its {n} rows; delete the store and "
            "rerun to extract it again"
        )
    _check_chunks_exist(path, arr, slide_id)


def open_bag(
    path: str | Path, prefetch: int = 2, workers: int = 1, pin_memory: bool = False
) -> ZarrBag | FeatureBag:
    """A :class:`FeatureBag` for a feature store, else a :class:`ZarrBag` (patch store) decoded
    ahead by ``workers`` threads (pinned memory when ``pin_memory``)."""
    if is_feature_store(path):
        return FeatureBag(path)
    return ZarrBag(path, prefetch=prefetch, workers=workers, pin_memory=pin_memory)


def check_encoder_weights(slide_id: str, bag: Any, features: Mapping[str, Any] | None) -> None:
    """GigamilError when the feature store ``bag`` was encoded by other weights than the
    features a model trained on (``features``: model.pt's record), under the same encoder id:
    both record ``encoder_sha256`` (:func:`gigamil.data.feature_extract.encoder_fingerprint`)
    and they differ, e.g. after a torch/timm upgrade. Nothing to compare: no error."""
    mine = bag.attrs.get("encoder_sha256") if features is not None else None
    theirs = (features or {}).get("encoder_sha256")
    if mine and theirs and mine != theirs:
        raise GigamilError(
            f"slide {slide_id}: {bag.path} was encoded by other weights than the features the "
            f"model trained on, under the same encoder id {features['encoder_id']} (a torch, "
            "timm or torchvision upgrade between them?); extract it again where the model's "
            "features were extracted, or retrain the model on features encoded here"
        )
