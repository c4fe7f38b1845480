"""Build a ``MILModel`` from the ``model:`` section of config.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from gigamil.errors import ConfigError
from gigamil.models.mil import MILModel
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import build_encoder, encoder_normalisation
from gigamil.nn.histogram import WithColourHistogram
from gigamil.nn.pooling import POOLS, AttentionHead
from gigamil.settings import AugmentConfig, ModelConfig
from gigamil.strategy import check_instance_loss


def build_mil_model(
    model_cfg: Mapping[str, Any] | ModelConfig,
    n_classes: int,
    patch_px: int,
    augment: Mapping[str, Any] | AugmentConfig | None = None,
    loss_fn: nn.Module | None = None,
    feature_dim: int | None = None,
) -> MILModel:
    """Encoder (with preprocessing/augmentation in front) + attention head + loss.

    ``model_cfg``: the ``model:`` section (missing keys take the schema defaults).
    ``augment``: ``{flips, rot90, color_jitter, stain_jitter, hue_jitter,
    grayscale, scale, blur}`` (applied in training mode only; None: none).
    ``feature_dim``: the model reads cached features (n, feature_dim) of the frozen encoder
    (gigamil.data.features): its feature encoder is the identity, only the head is built.
    """
    cfg = ModelConfig.from_dict(model_cfg)
    if cfg.pool not in POOLS:
        raise ConfigError(f"model.pool: {cfg.pool!r} is not one of {', '.join(POOLS)}")
    if feature_dim is not None:
        return MILModel(nn.Identity(), _head(cfg, int(feature_dim), n_classes), loss_fn)
    trainable = cfg.trainable_blocks
    if cfg.freeze_encoder:  # the older spelling of trainable_blocks: 0
        if trainable not in ("all", 0):
            raise ConfigError(
                f"model.freeze_encoder: true contradicts model.trainable_blocks: {trainable}"
            )
        trainable = 0
    encoder, dim = build_encoder(
        cfg.encoder, cfg.weights, patch_px, cfg.batchnorm, trainable_blocks=trainable
    )
    mean, std = encoder_normalisation(cfg.encoder)  # the encoder's own, not always ImageNet's
    if cfg.colour_histogram:
        encoder = WithColourHistogram(encoder, cfg.colour_histogram, mean, std)
        dim += 3 * cfg.colour_histogram
        if trainable == 0:
            encoder.histogram.requires_grad_(False)
    if augment is None:
        pre = PatchPreprocess(mean=mean, std=std)
    else:
        aug = AugmentConfig.from_dict(augment)
        pre = PatchPreprocess(
            flips=aug.flips,
            rot90=aug.rot90,
            color_jitter=aug.color_jitter,
            stain_jitter=aug.stain_jitter,
            hue_jitter=aug.hue_jitter,
            grayscale=aug.grayscale,
            scale=aug.scale,
            blur=aug.blur,
            mean=mean,
            std=std,
        )
    model = MILModel(nn.Sequential(pre, encoder), _head(cfg, dim, n_classes), loss_fn)
    return model.train()  # applies the BatchNorm mode (frozen layers stay in eval mode) now


def _head(cfg: ModelConfig, dim: int, n_classes: int) -> AttentionHead:
    check_instance_loss(cfg)
    return AttentionHead(
        dim,
        n_classes=n_classes,
        att_dim=cfg.att_dim,
        pool=cfg.pool,
        sm_alpha=cfg.sm_alpha,
        sm_features=cfg.sm_features,
        dropout=cfg.dropout,
        feature_norm=cfg.feature_norm,
        instance_loss=cfg.instance_loss,
        instance_top_k=cfg.instance_top_k,
        top_fraction=cfg.top_fraction,
    )
