"""The name of a frozen encoder's feature cache: ``results/features/{encoder_id}/...``.

``encoder_id`` (:func:`encoder_id`) is a short hash of everything that changes the features
(:func:`encoder_spec`): the encoder name, its weights (the file's sha256; a torchvision weight
name; random initialisation with :data:`RANDOM_INIT_SEED`), the BatchNorm mode, the input
normalisation and the patch settings (µm/px, size, codec). Training and head settings are not
part of it, so changing them re-extracts nothing. Whether a configuration reads the cache at
all: :func:`cache_enabled`, :func:`config_encoder_id`. The stores themselves:
gigamil.data.features (reading), gigamil.data.feature_extract (writing).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from gigamil.nn.weights import is_weights_file, weights_sha256
from gigamil.settings import (
    ModelConfig,
    PatchConfig,
    TrainingConfig,
    ordered_params,
)
from gigamil.strategy import resolve_strategy, training_signature

FORMAT = 1  # bump when the stored features of the same encoder change meaning
RANDOM_INIT_SEED = 0  # torch seed of a random-init encoder whose features are cached
ID_LENGTH = 12


def frozen_encoder(model_cfg: Mapping[str, Any] | ModelConfig) -> bool:
    """The encoder learns nothing: ``trainable_blocks: 0`` or ``freeze_encoder: true``."""
    cfg = ModelConfig.from_dict(model_cfg)
    return cfg.freeze_encoder or cfg.trainable_blocks == 0


def cache_enabled(model_cfg: Mapping[str, Any] | ModelConfig) -> bool:
    """Train and predict from cached features: a frozen encoder and ``model.feature_cache``,
    not under ``model.batchnorm: train`` (batch statistics: a patch's features depend on the
    patches it is encoded with, so they cannot be stored once)."""
    cfg = ModelConfig.from_dict(model_cfg)
    return (
        frozen_encoder(cfg)
        and cfg.feature_cache
        and cfg.encoder != "identity"
        and cfg.batchnorm != "train"
    )


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
        # "histogram_stored": caches written before 2026-12-05 named the histogram but held
        # the encoder's features only; their ids change, so they are extracted again
        **(
            {"colour_histogram_max_pixels": MAX_PIXELS, "histogram_stored": True}
            if m.colour_histogram
            else {}
        ),
        "mean": [round(float(v), 6) for v in mean],
        "std": [round(float(v), 6) for v in std],
        "patch_mpp": float(p.mpp),
        "patch_px": int(p.patch_px),
        "codec": p.codec,
        "jpeg_quality": int(p.jpeg_quality) if p.codec == "jpeg" else None,
        # only when on, so the ids of caches of scanned colours stay as they were
        **(
            {"stain_normalization": p.stain_normalization}
            if p.stain_normalization != "none"
            else {}
        ),
    }


def encoder_id_name(encoder: str) -> str:
    """How :func:`encoder_id` spells ``model.encoder``: every character but letters and digits
    as ``_`` (``timm:resnet50`` -> ``timm_resnet50``)."""
    return "".join(c if c.isalnum() else "_" for c in str(encoder))


def encoder_id(spec: Mapping[str, Any]) -> str:
    """``<encoder>-<12 hex digits>``: a short stable hash of :func:`encoder_spec`."""
    text = json.dumps(dict(spec), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]
    return f"{encoder_id_name(spec['encoder'])}-{digest}"


def parse_encoder_id(text: str) -> tuple[str, str] | None:
    """``(encoder name, digest)`` of a string in the form :func:`encoder_id` writes
    (``<name>-<12 lowercase hex digits>``, the name of a feature-cache folder), else None."""
    match = re.fullmatch(rf"(\w+)-([0-9a-f]{{{ID_LENGTH}}})", text)
    return (match.group(1), match.group(2)) if match else None


def reads_feature_cache(config: Mapping[str, Any]) -> bool:
    """Whether a whole (validated) configuration's training reads the feature cache
    (``training.strategy: frozen``, or its older spelling, with ``model.feature_cache``); cheap:
    no weights are read."""
    strategy, model = resolve_strategy(config.get("model", {}), config.get("training", {}))
    return strategy == "frozen" and cache_enabled(model)


def config_encoder_id(config: Mapping[str, Any]) -> str | None:
    """The ``encoder_id`` of a whole (validated) configuration when its training reads the
    feature cache (:func:`reads_feature_cache`), else None."""
    if not reads_feature_cache(config):
        return None
    _, model = resolve_strategy(config.get("model", {}), config.get("training", {}))
    return encoder_id(encoder_spec(model, config.get("preprocessing", {}).get("patches", {})))


def train_params(
    config: Mapping[str, Any], cached: bool | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``model`` and ``training`` params of rule train_fold (what retrains a fold when it
    changes) for a whole validated configuration whose training reads the feature cache when
    ``cached`` (None: whether :func:`config_encoder_id` is not None; the workflow passes what it
    computed already), one spelling per training
    (:func:`gigamil.strategy.training_signature`): ``strategy: frozen``, ``freeze_encoder:
    true`` and ``trainable_blocks: 0`` train the same folds. The job reads its model section from
    these params and its training section from the configuration, so either way it trains the
    frozen strategy."""
    if cached is None:
        cached = config_encoder_id(config) is not None
    training = TrainingConfig.from_dict(config["training"])
    strategy, _ = resolve_strategy(config["model"], training)
    model, sig = training_signature(config["model"], training, strategy == "frozen", cached)
    return ordered_params(("model",), model), sig
