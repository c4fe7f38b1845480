"""The feature cache of frozen encoders: ``results/features/{encoder_id}/{cohort}/{slide_id}.zarr``.

When the encoder is frozen (``training.strategy: frozen``, or its older spelling
``model.trainable_blocks: 0`` / ``freeze_encoder: true``) and
``model.feature_cache`` is on, rule ``extract_features`` runs the encoder once per slide
(:func:`extract_features`) and training, prediction (hence ensembles and heatmaps, which read
the predictions' attention) read these stores through :class:`FeatureBag` instead of
re-encoding every patch in every epoch. The model is then the attention head alone.

``encoder_id`` (:func:`encoder_id`) is a short hash of everything that changes the features
(:func:`encoder_spec`): the encoder name, its weights (the file's sha256; a torchvision weight
name; random initialisation with :data:`RANDOM_INIT_SEED`), the BatchNorm mode, the input
normalisation and the patch settings (µm/px, size, codec). Training and head settings are not
part of it, so changing them re-extracts nothing.

Feature store (zarr v3 group): ``features`` float16 (N, D), ``coords`` and ``grid`` int64 (N, 2)
copied from the patch store (same rows, same order), every chunk checksummed (CRC-32C); attrs
``kind: "features"``, ``encoder_id``, ``encoder_spec``, ``encoder``, ``weights_sha256``,
``feature_dim``, ``slide_id``, ``patch_px``, ``target_mpp``, ``effective_mpp``,
``patch_store``, ``gigamil_version``, ``seconds``, ``device``, ``amp``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from gigamil import __version__
from gigamil.data.bags import ZarrBag
from gigamil.data.store import chunk_key, damaged_store_error, read_patches
from gigamil.data.store_writer import _jsonable
from gigamil.errors import GigamilError
from gigamil.fileutil import remove_stale_temporaries, temp_path
from gigamil.nn.weights import is_weights_file, weights_sha256
from gigamil.settings import ModelConfig, PatchConfig, resolve_strategy

log = logging.getLogger(__name__)

KIND = "features"
FORMAT = 1  # bump when the stored features of the same encoder change meaning
RANDOM_INIT_SEED = 0  # torch seed of a random-init encoder whose features are cached
CHUNK_ROWS = 4096  # rows per zarr chunk of ``features``
EXTRACT_CHUNK = 256  # patches per encoder forward pass during extraction
ID_LENGTH = 12


def frozen_encoder(model_cfg: Mapping[str, Any] | ModelConfig) -> bool:
    """The encoder learns nothing: ``trainable_blocks: 0`` or ``freeze_encoder: true``."""
    cfg = ModelConfig.from_dict(model_cfg)
    return cfg.freeze_encoder or cfg.trainable_blocks == 0


def cache_enabled(model_cfg: Mapping[str, Any] | ModelConfig) -> bool:
    """Train and predict from cached features: a frozen encoder and ``model.feature_cache``."""
    cfg = ModelConfig.from_dict(model_cfg)
    return frozen_encoder(cfg) and cfg.feature_cache and cfg.encoder != "identity"


def encoder_spec(
    model_cfg: Mapping[str, Any] | ModelConfig, patch_cfg: Mapping[str, Any] | PatchConfig
) -> dict[str, Any]:
    """Everything that changes the cached features (and nothing else): the input of
    :func:`encoder_id`. A weights file enters by its sha256 (moving it changes nothing), a
    torchvision weight by its name, random initialisation by :data:`RANDOM_INIT_SEED`."""
    from gigamil.nn.encoders import encoder_normalisation
    from gigamil.nn.histogram import MAX_PIXELS

    m, p = ModelConfig.from_dict(model_cfg), PatchConfig.from_dict(patch_cfg)
    if m.weights is None:
        weights: str = f"random-init:seed={RANDOM_INIT_SEED}"
    elif is_weights_file(m.weights):
        weights = f"sha256:{weights_sha256(m.weights, m.encoder)}"
    else:
        weights = f"name:{m.weights}"
    mean, std = encoder_normalisation(m.encoder)
    return {
        "format": FORMAT,
        "encoder": m.encoder,
        "weights": weights,
        "batchnorm": m.batchnorm,
        "colour_histogram": int(m.colour_histogram),
        # how many pixels the histogram samples (gigamil.nn.histogram); only when it is on, so
        # the ids of caches without it stay as they were
        **({"colour_histogram_max_pixels": MAX_PIXELS} if m.colour_histogram else {}),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "patch_mpp": float(p.mpp),
        "patch_px": int(p.patch_px),
        "codec": p.codec,
        "jpeg_quality": int(p.jpeg_quality) if p.codec == "jpeg" else None,
    }


def encoder_id(spec: Mapping[str, Any]) -> str:
    """``<encoder>-<12 hex digits>``: a short stable hash of :func:`encoder_spec`."""
    text = json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]
    name = "".join(c if c.isalnum() else "_" for c in str(spec["encoder"]))
    return f"{name}-{digest}"


def config_encoder_id(config: Mapping[str, Any]) -> str | None:
    """The ``encoder_id`` of a whole (validated) configuration when its training reads the
    feature cache (``training.strategy: frozen``, or its older spelling, with
    ``model.feature_cache``), else None."""
    strategy, model = resolve_strategy(config.get("model", {}), config.get("training", {}))
    if strategy != "frozen" or not cache_enabled(model):
        return None
    return encoder_id(encoder_spec(model, config.get("preprocessing", {}).get("patches", {})))


# ----------------------------------------------------------------------------- extraction


def build_feature_encoder(
    model_cfg: Mapping[str, Any] | ModelConfig, patch_px: int
) -> tuple[nn.Module, int]:
    """The frozen encoder of the cache with its input normalisation in front (no
    augmentation), in eval mode: uint8 (n, H, W, 3) → float (n, D). A random-init encoder is
    initialised under ``torch.manual_seed(RANDOM_INIT_SEED)`` (the global RNG is restored)."""
    from gigamil.nn.augment import PatchPreprocess
    from gigamil.nn.encoders import build_encoder, encoder_normalisation

    cfg = ModelConfig.from_dict(model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        encoder, dim = build_encoder(
            cfg.encoder, cfg.weights, patch_px, cfg.batchnorm, trainable_blocks=0
        )
    mean, std = encoder_normalisation(cfg.encoder)
    module = nn.Sequential(PatchPreprocess(mean=mean, std=std), encoder)
    module.requires_grad_(False)
    return module.eval(), dim


FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


def _amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.inference_mode()
def encode_bag(
    encoder: nn.Module,
    bag: ZarrBag,
    device: torch.device,
    chunk: int = EXTRACT_CHUNK,
    amp: bool = True,
) -> np.ndarray:
    """float16 features (N, D) of every patch of ``bag``, chunk by chunk (autocast on CUDA when
    ``amp``).

    Raises:
        GigamilError: the encoder gives NaN or inf, or values beyond float16's range (65504,
            which the cast would turn into inf), naming the slide's store.
    """
    dtype = _amp_dtype(device) if amp else None
    out = []
    for x in bag.chunks(chunk):
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            h = encoder(x.to(device, non_blocking=True))
        h32 = h.float().cpu().numpy()
        if not np.isfinite(h32).all():
            raise GigamilError(
                f"{bag.path}: the encoder gives NaN or inf features for this slide's patches "
                "(damaged or diverged weights?); nothing was cached"
            )
        peak = float(np.abs(h32).max()) if h32.size else 0.0
        if peak > FLOAT16_MAX:
            raise GigamilError(
                f"{bag.path}: the encoder's features reach {peak:.4g}, beyond the float16 range "
                f"of the feature cache ({FLOAT16_MAX:g}): they would be stored as inf; the "
                "encoder's output is not normalised (train end to end instead of caching features)"
            )
        out.append(h32.astype(np.float16))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float16)


def write_feature_store(
    out: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    grid: np.ndarray,
    attrs: Mapping[str, Any],
) -> Path:
    """Write a feature store under a temporary name and rename it into place."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = temp_path(out)
    n = int(len(features))
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays = {
            "features": np.ascontiguousarray(features, dtype=np.float16),
            "coords": np.asarray(coords, dtype=np.int64).reshape(n, 2),
            "grid": np.asarray(grid, dtype=np.int64).reshape(n, 2),
        }
        for name, arr in arrays.items():
            z = group.create_array(
                name,
                shape=arr.shape,
                chunks=(max(1, min(n, CHUNK_ROWS)), *arr.shape[1:]),
                dtype=arr.dtype,
                compressors=[zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()],
                config={"write_empty_chunks": True},
            )
            if n:
                z[...] = arr
        # one write of zarr.json (attrs.update rewrites it once per key: ~5 ms each)
        group.update_attributes(_jsonable({"kind": KIND, **dict(attrs), "n_patches": n}))
        if out.exists():
            old = temp_path(out, "old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def extract_features(  # noqa: PLR0913 - one rule's inputs
    store: str | Path,
    out: str | Path,
    model_cfg: Mapping[str, Any] | ModelConfig,
    patch_cfg: Mapping[str, Any] | PatchConfig,
    device: str = "auto",
    chunk: int = EXTRACT_CHUNK,
    amp: bool = True,
    threads: int = 1,
) -> Path:
    """Encode every patch of the patch store ``store`` once with the frozen encoder of
    ``model_cfg`` and write the feature store ``out`` (float16 (N, D), coords and grid of the
    patch store, provenance attrs). ``device``: auto (CUDA when present), cpu or cuda."""
    from gigamil.train.run import resolve_device

    torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    spec = encoder_spec(model_cfg, patch_cfg)
    cfg = ModelConfig.from_dict(model_cfg)
    bag = ZarrBag(store, prefetch=2)
    patch_px = int(bag.patch_shape[0])
    if patch_px != spec["patch_px"]:
        raise GigamilError(
            f"{store}: patches are {patch_px} px but preprocessing.patches.patch_px is "
            f"{spec['patch_px']}; extract the patches again"
        )
    dev = resolve_device(device)
    encoder, dim = build_feature_encoder(cfg, patch_px)
    encoder.to(dev)
    feats = encode_bag(encoder, bag, dev, chunk, amp) if len(bag) else np.zeros((0, dim))
    attrs = {
        "encoder_id": encoder_id(spec),
        "encoder_spec": spec,
        "encoder": cfg.encoder,
        "weights": cfg.weights,
        "weights_sha256": weights_sha256(cfg.weights, cfg.encoder),
        "feature_dim": int(dim),
        "slide_id": bag.attrs.get("slide_id", Path(store).stem),
        "patch_px": patch_px,
        "target_mpp": bag.attrs.get("target_mpp"),
        "effective_mpp": bag.attrs.get("effective_mpp"),
        "patch_store": str(store),
        "gigamil_version": __version__,
        "device": str(dev),
        "amp": bool(amp and _amp_dtype(dev) is not None),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    path = write_feature_store(out, feats, bag.coords, bag.grid, attrs)
    log.info(
        "%s: %d patches -> features (%d, %d) with %s [%s] on %s in %.1f s",
        attrs["slide_id"],
        len(bag),
        len(feats),
        dim,
        cfg.encoder,
        attrs["encoder_id"],
        dev,
        attrs["seconds"],
    )
    return path


# ----------------------------------------------------------------------------- reading


def is_feature_store(path: str | Path) -> bool:
    """Whether ``path`` is a feature store (a zarr group with ``kind: features``)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("kind") == KIND
    except (OSError, ValueError):
        return False


class FeatureBag:
    """A bag of cached features (``{slide_id}.zarr`` of :func:`write_feature_store`); chunks are
    float32 tensors (n, D) in the store's row order. Implements the ``BagSource`` protocol of
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
        for name in ("coords", "grid"):
            _check_rows(self.path, group, name, self._array, self.slide_id)
        rows = {
            name: np.asarray(read_patches(group[name], self.path, self.slide_id), np.int64)
            for name in ("coords", "grid")
        }
        if indices is not None:
            indices = np.asarray(indices, dtype=np.int64)
        self.indices = indices
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
        """The bag's rows of the stored features (float16 (n, D)), from disk."""
        if self.indices is None:
            return read_patches(self._array, self.path, self.slide_id)
        if len(self.indices) == 0:
            return np.zeros((0, *self._array.shape[1:]), np.float16)
        return read_patches(self._array, self.path, self.slide_id, self.indices)

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
            raise damaged_store_error(path, slide_id, key, "is missing")


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
