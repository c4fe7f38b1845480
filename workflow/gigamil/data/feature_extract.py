"""Extraction of the feature cache (rule ``extract_features``): the frozen encoder of a
configuration (:func:`build_feature_encoder`) encodes every patch of a patch store once
(:func:`encode_bag`, float16) and :func:`write_feature_store` writes the feature store (format:
gigamil.data.features) under a temporary name and renames it into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
from torch import nn

from gigamil import __version__
from gigamil.data.bags import ZarrBag, store_stain_normalization
from gigamil.data.feature_spec import (
    RANDOM_INIT_SEED,
    encoder_id,
    encoder_spec,
    parse_encoder_id,
)
from gigamil.data.features import KIND, is_feature_store
from gigamil.data.store import CHUNK_CRC_ATTR, chunk_crcs
from gigamil.data.store_writer import _jsonable
from gigamil.errors import GigamilError
from gigamil.fileutil import check_replaceable_store, remove_stale_temporaries, temp_path
from gigamil.nn.weights import weights_sha256
from gigamil.settings import ModelConfig, PatchConfig

log = logging.getLogger(__name__)

CHUNK_ROWS = 4096  # rows per zarr chunk of ``features``
EXTRACT_CHUNK = 256  # patches per encoder forward pass during extraction


def build_feature_encoder(
    model_cfg: Mapping[str, Any] | ModelConfig, patch_px: int
) -> tuple[nn.Module, int]:
    """The frozen encoder of the cache with its input normalisation in front (no
    augmentation), in eval mode: uint8 (n, H, W, 3) → float (n, D); with
    ``model.colour_histogram: k`` its features are followed by the patch's colour histogram at
    initialisation (:class:`gigamil.nn.histogram.WithColourHistogram`, frozen as in the uncached
    model: D + 3 k). A random-init encoder is initialised under
    ``torch.manual_seed(RANDOM_INIT_SEED)`` (the global RNG is restored)."""
    from gigamil.nn.augment import PatchPreprocess
    from gigamil.nn.encoders import build_encoder, encoder_normalisation
    from gigamil.nn.histogram import WithColourHistogram

    cfg = ModelConfig.from_dict(model_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        encoder, dim = build_encoder(
            cfg.encoder, cfg.weights, patch_px, cfg.batchnorm, trainable_blocks=0
        )
    mean, std = encoder_normalisation(cfg.encoder)
    if cfg.colour_histogram:
        encoder = WithColourHistogram(encoder, cfg.colour_histogram, mean, std)
        dim += 3 * cfg.colour_histogram
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
    log_every_s: float | None = 30.0,
    progress: Any = None,
) -> np.ndarray:
    """float16 features (N, D) of every patch of ``bag``, chunk by chunk (autocast on CUDA when
    ``amp``), with a progress line (patches done, patches/s) at most every ``log_every_s``
    seconds (0: after every chunk; None: none). ``progress``: a
    :class:`gigamil.train.loop.ProgressCounter` of a pass over several slides to count the
    patches on instead (one per slide would stay silent on slides shorter than its interval).

    Raises:
        GigamilError: the encoder gives NaN or inf, or values beyond float16's range (65504,
            which the cast would turn into inf), naming the slide's store.
    """
    from gigamil.train.loop import ProgressCounter

    dtype = _amp_dtype(device) if amp else None
    out = []
    slide_id = bag.attrs.get("slide_id", bag.path.stem)
    if progress is None:
        progress = ProgressCounter(f"{slide_id}: encoding", len(bag), log_every_s, "patches", log)
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
        progress.update(len(h32))  # a line at least every 30 s (it ran 8 min silent)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float16)


def encode_bags(
    encoder: nn.Module,
    bags: Sequence[ZarrBag],
    device: torch.device,
    chunk: int = EXTRACT_CHUNK,
    amp: bool = True,
    log_every_s: float | None = 30.0,
) -> list[np.ndarray]:
    """:func:`encode_bag` of each of ``bags`` as one pass, with a progress line (patches of the
    pass done, patches/s) at most every ``log_every_s`` seconds: a counter per slide would stay
    silent through a pass over many slides that each take less (training.strategy em encodes
    every training and validation slide each round)."""
    from gigamil.train.loop import ProgressCounter

    n = sum(len(b) for b in bags)
    progress = ProgressCounter("encoding", n, log_every_s, "patches", log)
    return [encode_bag(encoder, b, device, chunk, amp, progress=progress) for b in bags]


def write_feature_store(
    out: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    grid: np.ndarray,
    attrs: Mapping[str, Any],
) -> Path:
    """Write a feature store under a temporary name and rename it into place."""
    out = Path(out)
    check_replaceable_store(out, is_feature_store, "feature store")
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
        crcs = {name: chunk_crcs(tmp, group[name]) for name in arrays}  # gigamil.data.store
        # one write of zarr.json (attrs.update rewrites it once per key: ~5 ms each)
        group.update_attributes(
            _jsonable({"kind": KIND, **dict(attrs), "n_patches": n, CHUNK_CRC_ATTR: crcs})
        )
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


def check_store_matches_spec(store: str | Path, bag: ZarrBag, spec: Mapping[str, Any]) -> None:
    """The patches of ``store`` are what :func:`encoder_spec` ``spec`` names (the cache's
    ``encoder_id`` is computed from it): their size, µm/px (1 %), codec (with its JPEG quality)
    and stain normalisation.
    A store extracted with other settings (stale, or copied in) would be cached under the id of
    the configured ones. Raises GigamilError naming the first difference."""
    from gigamil.train.fold_data import MPP_TOLERANCE, store_mpp

    mpp = store_mpp(bag)
    found = {
        "patch_px": (int(bag.patch_shape[0]), spec["patch_px"]),
        "mpp": (mpp, spec["patch_mpp"]),
        "codec": (bag.attrs.get("codec", spec["codec"]), spec["codec"]),
        "jpeg_quality": (
            bag.attrs.get("jpeg_quality") if spec["codec"] == "jpeg" else None,
            spec["jpeg_quality"],
        ),
        "stain_normalization": (
            store_stain_normalization(bag),
            spec.get("stain_normalization", "none"),
        ),
    }
    for key, (have, want) in found.items():
        if have is None:  # a store that does not record it (written by another tool)
            continue
        differs = (
            abs(float(have) - float(want)) > MPP_TOLERANCE * float(want)
            if key == "mpp"
            else have != want
        )
        if differs:
            raise GigamilError(
                f"{store}: patches have {key} {have} but preprocessing.patches.{key} is {want}; "
                "extract the patches again (delete the store)"
            )


def _check_planned_id(out: str | Path, actual: str, model_cfg: Any) -> None:
    """GigamilError when ``out`` lies in the workflow's cache folder of another id of the same
    encoder (``results/features/<encoder>-<12 hex>/<cohort>/``): the id was planned from the
    weights file as it was when snakemake started, so the file was replaced during the run,
    and the folder would mix features of two weights."""
    ids = [(folder.name, parse_encoder_id(folder.name)) for folder in list(Path(out).parents)[:2]]
    own = parse_encoder_id(actual)
    for planned, parsed in ids:
        if own and parsed and planned != actual and parsed[0] == own[0]:
            weights = dict(model_cfg).get("weights") if isinstance(model_cfg, Mapping) else None
            raise GigamilError(
                f"{out}: the feature cache {planned} was planned for other encoder settings "
                f"than those read now ({actual}): was model.weights ({weights}) replaced during "
                "the run? Run snakemake again: it plans the cache of the file as it is now"
            )


def encoder_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state (every parameter and buffer: name, dtype, shape, bytes):
    the encoder that actually encoded a feature store. ``encoder_id`` names a random-init
    encoder by its seed, and a torchvision encoder by its weight name, which a torch, timm or
    torchvision upgrade may turn into other weights under the same id; the training and
    prediction compare this instead (:func:`gigamil.train.fold_data.FoldData`)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def patch_store_attrs(store: str | Path, bag: ZarrBag) -> dict[str, Any]:
    """What a feature store records of its patch store ``store`` (``bag``): slide_id, patch
    size, µm/px, stain normalisation, path, ``patches_sha256``, ``codec`` and ``jpeg_quality``
    (:func:`~gigamil.data.bags.store_digests`), and ``min_tissue``, ``stride_px`` and
    ``mask_params``: the rest of its preprocessing, for model.pt's record and the warning of a
    prediction on features of patches cut otherwise
    (:func:`~gigamil.train.fold_data.store_preprocessing`)."""
    return {
        "slide_id": bag.attrs.get("slide_id", Path(store).stem),
        "patch_px": int(bag.patch_shape[0]),
        **{k: bag.attrs.get(k) for k in ("target_mpp", "effective_mpp")},
        "stain_normalization": store_stain_normalization(bag),
        "patch_store": str(store),
        **{k: bag.attrs.get(k) for k in ("patches_sha256", "codec", "jpeg_quality")},
        **{k: bag.attrs.get(k) for k in ("min_tissue", "stride_px", "mask_params")},
    }


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
    patch store, provenance attrs with what it records of the patch store,
    :func:`patch_store_attrs`). ``device``: auto, cpu or cuda."""
    from gigamil.train.fold_data import resolve_device

    torch.set_num_threads(max(1, int(threads)))
    t0 = time.perf_counter()
    check_replaceable_store(out, is_feature_store, "feature store")  # before the work
    spec = encoder_spec(model_cfg, patch_cfg)
    _check_planned_id(out, encoder_id(spec), model_cfg)
    cfg = ModelConfig.from_dict(model_cfg)
    bag = ZarrBag(store, prefetch=2)
    patch_px = int(bag.patch_shape[0])
    check_store_matches_spec(store, bag, spec)
    dev = resolve_device(device)
    encoder, dim = build_feature_encoder(cfg, patch_px)
    feats = encode_bag(encoder.to(dev), bag, dev, chunk, amp) if len(bag) else np.zeros((0, dim))
    attrs = {
        "encoder_id": encoder_id(spec),
        "encoder_spec": spec,
        "encoder": cfg.encoder,
        "weights": cfg.weights,
        "weights_sha256": weights_sha256(cfg.weights, cfg.encoder),
        "encoder_sha256": encoder_fingerprint(encoder),
        "feature_dim": int(dim),
        **patch_store_attrs(store, bag),
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
