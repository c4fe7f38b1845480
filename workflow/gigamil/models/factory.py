"""Build a ``MILModel`` from the ``model:`` section of config.yaml."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from gigamil.errors import ConfigError
from gigamil.models.mil import MILModel
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import build_encoder
from gigamil.nn.pooling import POOLS, AttentionHead
from gigamil.settings import AugmentConfig, ModelConfig


def build_mil_model(
    model_cfg: Mapping[str, Any] | ModelConfig,
    n_classes: int,
    patch_px: int,
    augment: Mapping[str, Any] | AugmentConfig | None = None,
    loss_fn: nn.Module | None = None,
) -> MILModel:
    """Encoder (with preprocessing/augmentation in front) + attention head + loss.

    ``model_cfg``: the ``model:`` section (missing keys take the schema defaults).
    ``augment``: ``{flips, rot90, color_jitter, stain_jitter}`` (applied in training mode only; None: none).
    """
    cfg = ModelConfig.from_dict(model_cfg)
    if cfg.pool not in POOLS:
        raise ConfigError(f"model.pool: {cfg.pool!r} is not one of {', '.join(POOLS)}")
    encoder, dim = build_encoder(cfg.encoder, cfg.weights, patch_px, cfg.batchnorm)
    if cfg.freeze_encoder:
        for p in encoder.parameters():
            p.requires_grad_(False)
    if augment is None:
        pre = PatchPreprocess(flips=False, rot90=False, color_jitter=0.0)
    else:
        aug = AugmentConfig.from_dict(augment)
        pre = PatchPreprocess(
            flips=aug.flips,
            rot90=aug.rot90,
            color_jitter=aug.color_jitter,
            stain_jitter=aug.stain_jitter,
        )
    head = AttentionHead(
        dim,
        n_classes=n_classes,
        att_dim=cfg.att_dim,
        pool=cfg.pool,
        dropout=cfg.dropout,
        feature_norm=cfg.feature_norm,
        instance_loss=cfg.instance_loss,
        instance_top_k=cfg.instance_top_k,
    )
    return MILModel(nn.Sequential(pre, encoder), head, loss_fn)
