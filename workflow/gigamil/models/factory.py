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

MODEL_DEFAULTS: dict[str, Any] = {
    "encoder": "resnet18",
    "weights": None,
    "freeze_encoder": False,
    "batchnorm": "frozen",
    "pool": "abmil",
    "att_dim": 128,
    "dropout": 0.0,
}


def model_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg`` with defaults filled in (the same defaults as the config schema)."""
    out = dict(MODEL_DEFAULTS)
    out.update(cfg or {})
    return out


def build_mil_model(
    model_cfg: Mapping[str, Any],
    n_classes: int,
    patch_px: int,
    augment: Mapping[str, Any] | None = None,
    loss_fn: nn.Module | None = None,
) -> MILModel:
    """Encoder (with preprocessing/augmentation in front) + attention head + loss.

    ``augment``: ``{flips, rot90, color_jitter}`` (applied in training mode only).
    """
    cfg = model_config(model_cfg)
    if cfg["pool"] not in POOLS:
        raise ConfigError(f"model.pool: {cfg['pool']!r} is not one of {', '.join(POOLS)}")
    encoder, dim = build_encoder(cfg["encoder"], cfg["weights"], patch_px, cfg["batchnorm"])
    if cfg["freeze_encoder"]:
        for p in encoder.parameters():
            p.requires_grad_(False)
    aug = dict(augment or {})
    pre = PatchPreprocess(
        flips=aug.get("flips", False),
        rot90=aug.get("rot90", False),
        color_jitter=aug.get("color_jitter", 0.0),
    )
    head = AttentionHead(
        dim,
        n_classes=n_classes,
        att_dim=int(cfg["att_dim"]),
        pool=cfg["pool"],
        dropout=float(cfg["dropout"]),
    )
    return MILModel(nn.Sequential(pre, encoder), head, loss_fn)
