"""Training strategies (``training.strategy`` and the older encoder keys) resolved into one
spelling: which strategy a configuration trains, the contradictions refused before any job runs,
and the signature of one training (rule train_fold's params, ``last.pt``'s resume check)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gigamil.errors import ConfigError
from gigamil.settings import ModelConfig, TrainingConfig


def training_signature(
    model: Mapping[str, Any], training: TrainingConfig, frozen: bool, cached: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model section, training signature)`` of one training, spelled one way: rule
    train_fold's params and ``last.pt``'s resume signature. A ``frozen`` encoder (however the
    configuration says it) is ``freeze_encoder: false``, ``trainable_blocks: 0`` and strategy
    ``frozen``; training on ``cached`` features leaves out ``augment`` (not applied to them); a
    local weights file adds its content (:func:`gigamil.nn.weights.weights_signature`)."""
    from gigamil.nn.weights import weights_signature

    model = dict(model)
    if frozen:
        model.update(freeze_encoder=False, trainable_blocks=0)
        training = dataclasses.replace(training, strategy="frozen")
    sig = training.resume_signature(batch_statistics=model.get("batchnorm") == "train")
    if cached:
        sig.pop("augment", None)
    return model, {**sig, **weights_signature(model.get("weights"))}


def _check_warmup(t: TrainingConfig) -> None:
    """ConfigError for ``warmup_epochs`` with ``schedule: onecycle`` or ``strategy: em``, or >= epochs."""
    if not t.warmup_epochs:
        return
    if t.schedule == "onecycle":
        raise ConfigError(
            "training.warmup_epochs: schedule onecycle warms up itself (30 % of the steps); "
            "set warmup_epochs: 0 or schedule: cosine"
        )
    if t.strategy == "em":  # first: under em, training.epochs is not used
        raise ConfigError(
            "training.warmup_epochs warms up the end_to_end and frozen strategies; "
            "strategy em trains in rounds of its own: set warmup_epochs: 0"
        )
    if t.warmup_epochs >= t.epochs:
        raise ConfigError(
            f"training.warmup_epochs ({t.warmup_epochs:g}) must be below training.epochs "
            f"({t.epochs}): the learning rate would never reach training.lr"
        )


def check_instance_loss(m: ModelConfig) -> None:
    """ConfigError for ``model.instance_loss`` with ``pool: instance``, which has no attention
    to add a patch loss to (:func:`resolve_strategy` for a config, ``build_mil_model`` for a
    model built directly)."""
    if m.pool == "instance" and m.instance_loss > 0:
        raise ConfigError(
            "model.instance_loss applies to the attention pools; model.pool: instance already "
            "trains every patch on its slide's label (set instance_loss: 0)"
        )


def _check_for(strategy: str, m: ModelConfig, t: TrainingConfig) -> None:
    """ConfigError for keys that ``strategy`` cannot train with (see :func:`resolve_strategy`)."""
    if strategy == "em":
        if m.freeze_encoder or m.trainable_blocks == 0:
            what = "freeze_encoder: true" if m.freeze_encoder else "trainable_blocks: 0"
            raise ConfigError(
                f"training.strategy: em fine-tunes the encoder but model.{what} freezes it; "
                "use training.strategy: frozen, or let the encoder learn"
            )
        if m.encoder == "identity":
            raise ConfigError(
                "training.strategy: em needs an encoder with weights to fine-tune; "
                "model.encoder: identity has none"
            )
        if t.ema_decay:
            raise ConfigError(
                "training.ema_decay averages the weights of the end_to_end and frozen "
                "strategies; strategy em trains in rounds of its own: set ema_decay: 0"
            )
        if t.recalibrate_every:  # EMTrainer calibrates the encoder once, before round 1
            raise ConfigError(
                "training.recalibrate_every recalibrates before epochs of the end_to_end and "
                "frozen strategies; strategy em trains in rounds of its own: set "
                "recalibrate_every: 0"
            )
    for key, off in (("encoder_lr", None), ("head_first_epochs", 0)):
        if getattr(t, key) != off and strategy != "end_to_end":
            raise ConfigError(
                f"training.{key} sets how the encoder learns under strategy end_to_end; "
                + (
                    "a frozen encoder learns nothing"
                    if strategy == "frozen"
                    else "em has training.em.encoder_lr and rounds of its own"
                )
                + f": set it to {'null' if off is None else off}"
            )
    if t.head_first_epochs >= t.epochs:
        raise ConfigError(
            f"training.head_first_epochs ({t.head_first_epochs}) must be below training.epochs "
            f"({t.epochs}), or the encoder never learns: lower it (e.g. to {t.epochs // 2}), or "
            "set training.strategy: frozen to train the head alone"
        )
    check_instance_loss(m)  # build_mil_model's check, before any job
    if t.device == "cpu" and t.amp == "fp16":  # what AmpScaler refuses, before any job
        raise ConfigError("training.amp: fp16 needs a CUDA device (training.device is cpu)")
    # the encoder runs on ConcatBag's parts, each chunked on its own: end to end, and frozen too
    # (batch statistics are never cached: feature_spec.cache_enabled); em's head rounds do not
    if t.bag_mixing and m.batchnorm == "train" and strategy != "em":
        raise ConfigError(
            "training.bag_mixing needs model.batchnorm frozen or groupnorm, not train (under "
            f"strategy {strategy} the encoder encodes each mixed-in part as a batch of its own, "
            "down to 1 patch); set bag_mixing: 0, or batchnorm: frozen"
        )


def resolve_strategy(
    model_cfg: Mapping[str, Any] | ModelConfig, training_cfg: Mapping[str, Any] | TrainingConfig
) -> tuple[str, ModelConfig]:
    """The training strategy and the model section it trains: ``(strategy, model config)``.

    ``training.strategy`` and the older keys ``model.freeze_encoder`` / ``trainable_blocks``
    describe the encoder together: ``end_to_end`` with ``trainable_blocks: 0`` or
    ``freeze_encoder: true`` is ``frozen`` (configs from before the strategy keep working);
    ``frozen`` sets ``trainable_blocks: 0`` in the returned model config. Raises ConfigError
    for contradictions: ``frozen`` with ``trainable_blocks: N`` (N > 0), ``em`` with a frozen
    encoder, the parameter-free ``identity`` encoder, ``ema_decay``, ``warmup_epochs`` or
    ``recalibrate_every``,
    ``freeze_encoder: true`` with ``trainable_blocks`` other than ``all`` or 0, ``bag_mixing``
    under ``batchnorm: train`` (strategies end_to_end and frozen), ``instance_loss`` with ``pool: instance``, ``amp:
    fp16`` with ``device: cpu``, ``warmup_epochs`` under onecycle or not below
    ``epochs``, ``encoder_lr`` or ``head_first_epochs`` under another strategy than ``end_to_end``,
    ``head_first_epochs`` not below ``epochs``."""
    m, t = ModelConfig.from_dict(model_cfg), TrainingConfig.from_dict(training_cfg)
    _check_warmup(t)
    blocks = m.trainable_blocks
    if m.freeze_encoder and blocks not in ("all", 0):
        raise ConfigError(
            f"model.freeze_encoder: true contradicts model.trainable_blocks: {blocks}"
        )
    frozen_keys = m.freeze_encoder or blocks == 0
    strategy = t.strategy
    if strategy == "end_to_end" and frozen_keys:
        strategy = "frozen"
    elif strategy == "frozen" and blocks not in ("all", 0):
        raise ConfigError(
            f"training.strategy: frozen contradicts model.trainable_blocks: {blocks} (the "
            "encoder learns nothing under frozen); use trainable_blocks: all (or 0), or "
            "strategy end_to_end / em to fine-tune those blocks"
        )
    _check_for(strategy, m, t)
    if strategy == "frozen":
        m = dataclasses.replace(m, trainable_blocks=0)
    return strategy, m
