"""Typed, frozen views of the config sections the package reads.

Every default is read from ``workflow/schemas/config.schema.yaml`` (the one place defaults are
written); ``tests/unit/test_settings.py`` checks that each dataclass has exactly the keys of its
schema section. ``from_dict`` validates a (possibly partial) section against the same schema, so
direct Python callers get the errors and the defaults of the pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from gigamil.errors import ConfigError
from gigamil.schemas import SchemaValidator, describe_error, load_schema

_SCHEMA = load_schema("config")


def schema_section(path: tuple[str, ...]) -> dict[str, Any]:
    """The schema node of the config section at ``path`` (e.g. ``("training", "augment")``)."""
    node = _SCHEMA
    for key in path:
        node = node["properties"][key]
    return node


def _default(path: tuple[str, ...], key: str) -> Any:
    return schema_section(path)["properties"][key]["default"]


# Keys a rule's params list first, in this order, before the section's other schema keys: the
# order the shipped config.yaml gave ``model`` (its keys, then the schema defaults) before params
# had a fixed order, so that workspaces finished before keep their trained models.
_PARAMS_FIRST: dict[tuple[str, ...], tuple[str, ...]] = {
    ("model",): (
        "encoder",
        "weights",
        "freeze_encoder",
        "trainable_blocks",
        "batchnorm",
        "pool",
        "att_dim",
        "sm_alpha",
        "dropout",
    ),
}


def ordered_params(path: tuple[str, ...], section: Mapping[str, Any]) -> dict[str, Any]:
    """The config section at ``path`` (e.g. ``("preprocessing", "tissue")``) with its keys in
    one fixed order, for a rule's ``params``.

    Snakemake compares params by their ``repr``, i.e. a dict in the order the user wrote its keys:
    writing ``tissue: {threshold: otsu, mask_mpp: 8}`` instead of the documented order would
    redo every mask, store and model with the same values. The order here is the schema's
    (``model`` first lists the keys of ``_PARAMS_FIRST``); keys the schema does not know follow,
    sorted. Nested values are kept as they are.
    """
    first = _PARAMS_FIRST.get(path, ())
    order = [*first, *(k for k in schema_section(path)["properties"] if k not in first)]
    order += sorted(k for k in section if k not in order)
    return {k: section[k] for k in order if k in section}


class _Section:
    """``from_dict``/``to_dict`` of a frozen config dataclass whose schema node is ``SCHEMA_PATH``."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | Self | None) -> Self:
        """Validate ``d`` against the schema section; missing keys take the schema defaults."""
        if isinstance(d, cls):
            return d
        values = dict(d or {})
        wrapped: dict[str, Any] = values
        schema: dict[str, Any] = schema_section(cls.SCHEMA_PATH)
        for key in reversed(cls.SCHEMA_PATH):  # errors name the full key, e.g. training.epochs
            wrapped, schema = {key: wrapped}, {"type": "object", "properties": {key: schema}}
        validator = SchemaValidator(schema)
        errors = sorted(validator.iter_errors(wrapped), key=lambda e: len(e.absolute_path))
        if errors:
            raise ConfigError(describe_error(errors[0]))
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            sub = _SECTIONS.get(f.name)
            if sub is not None and f.name in values:
                values[f.name] = sub.from_dict(values[f.name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the form config.yaml and ``model.pt`` hold)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


_ES = ("training", "early_stopping")
_AUG = ("training", "augment")
_EM = ("training", "em")
_TRAIN = ("training",)
_MODEL = ("model",)
_PATCH = ("preprocessing", "patches")
_TISSUE = ("preprocessing", "tissue")


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """``training.early_stopping``."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _ES
    metric: str = _default(_ES, "metric")
    patience: int = _default(_ES, "patience")
    min_epochs: int = _default(_ES, "min_epochs")


@dataclass(frozen=True)
class AugmentConfig(_Section):
    """``training.augment``."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _AUG
    flips: bool = _default(_AUG, "flips")
    rot90: bool = _default(_AUG, "rot90")
    color_jitter: float = _default(_AUG, "color_jitter")
    stain_jitter: float = _default(_AUG, "stain_jitter")
    hue_jitter: float = _default(_AUG, "hue_jitter")
    grayscale: float = _default(_AUG, "grayscale")
    scale: float = _default(_AUG, "scale")
    blur: float = _default(_AUG, "blur")


@dataclass(frozen=True)
class EMConfig(_Section):
    """``training.em`` (the rounds of ``training.strategy: em``, :mod:`gigamil.train.em`)."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _EM
    rounds: int = _default(_EM, "rounds")
    head_epochs: int = _default(_EM, "head_epochs")
    encoder_steps: int = _default(_EM, "encoder_steps")
    instances_per_round: int = _default(_EM, "instances_per_round")
    instance_batch: int = _default(_EM, "instance_batch")
    encoder_lr: float | None = _default(_EM, "encoder_lr")
    pseudo_label: str = _default(_EM, "pseudo_label")
    temperature: float = _default(_EM, "temperature")
    threshold: float = _default(_EM, "threshold")


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """``training``."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _TRAIN
    # keys that change what is logged or how fast, not what is trained: not part of the resume
    # signature (nor of rule train_fold's params), so switching them retrains nothing
    LOG_ONLY_KEYS: ClassVar[tuple[str, ...]] = ("tensorboard", "compile")
    # keys that choose where and in how many pieces the same computation runs (GradCache is
    # exact): lowering the chunk size after an out-of-memory error, or moving to a GPU, resumes
    # last.pt and retrains no fold; under model.batchnorm: train the chunk size stays in
    EXECUTION_KEYS: ClassVar[tuple[str, ...]] = ("device", "max_instances_per_forward_pass")
    # keys at the value that trains as before they existed: left out of the resume signature
    # then, so that no fold trained before a key existed is retrained
    AS_BEFORE: ClassVar[dict[str, Any]] = {
        "ema_decay": 0,
        "warmup_epochs": 0,
        "recalibrate_every": 0,
        "replicates": 1,
        "replicate_validation": "fixed",
        "encoder_lr": None,
        "head_first_epochs": 0,
    }
    strategy: str = _default(_TRAIN, "strategy")
    device: str = _default(_TRAIN, "device")
    seed: int = _default(_TRAIN, "seed")
    epochs: int = _default(_TRAIN, "epochs")
    lr: float = _default(_TRAIN, "lr")
    encoder_lr: float | None = _default(_TRAIN, "encoder_lr")
    head_first_epochs: int = _default(_TRAIN, "head_first_epochs")
    weight_decay: float = _default(_TRAIN, "weight_decay")
    schedule: str = _default(_TRAIN, "schedule")
    warmup_epochs: float = _default(_TRAIN, "warmup_epochs")
    bags_per_step: int = _default(_TRAIN, "bags_per_step")
    max_instances_per_forward_pass: int | None = _default(_TRAIN, "max_instances_per_forward_pass")
    max_instances_per_bag: int | None = _default(_TRAIN, "max_instances_per_bag")
    loss: str = _default(_TRAIN, "loss")
    label_smoothing: float = _default(_TRAIN, "label_smoothing")
    bag_mixing: float = _default(_TRAIN, "bag_mixing")
    ema_decay: float = _default(_TRAIN, "ema_decay")
    logit_calibration: str = _default(_TRAIN, "logit_calibration")
    replicates: int = _default(_TRAIN, "replicates")
    replicate_validation: str = _default(_TRAIN, "replicate_validation")
    class_weights: str | None = _default(_TRAIN, "class_weights")
    amp: str | bool = _default(_TRAIN, "amp")
    compile: bool = _default(_TRAIN, "compile")
    tensorboard: bool = _default(_TRAIN, "tensorboard")
    calibration_patches: int = _default(_TRAIN, "calibration_patches")
    recalibrate_every: int = _default(_TRAIN, "recalibrate_every")
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    em: EMConfig = field(default_factory=EMConfig)

    def resume_signature(self, batch_statistics: bool = False) -> dict[str, Any]:
        """The settings that change what is trained (all but ``LOG_ONLY_KEYS`` and
        ``EXECUTION_KEYS``; ``max_instances_per_forward_pass`` with ``batch_statistics``, i.e.
        ``model.batchnorm: train``): ``last.pt`` resumes only under the same signature, and
        rule train_fold takes it as params. ``em`` only under ``strategy: em`` (its settings
        train nothing otherwise), ``strategy`` not when it is ``end_to_end``, and no key of
        ``AS_BEFORE`` at its value there: folds trained before the key existed (or with other
        em settings) are not retrained."""
        left_out = {*self.LOG_ONLY_KEYS, *self.EXECUTION_KEYS}
        if batch_statistics:
            left_out.discard("max_instances_per_forward_pass")
        sig = {k: v for k, v in self.to_dict().items() if k not in left_out}
        if self.strategy != "em":
            del sig["em"]
        if self.strategy == "end_to_end":
            del sig["strategy"]
        return {k: v for k, v in sig.items() if k not in self.AS_BEFORE or v != self.AS_BEFORE[k]}


@dataclass(frozen=True)
class ModelConfig(_Section):
    """``model``."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _MODEL
    encoder: str = _default(_MODEL, "encoder")
    weights: str | None = _default(_MODEL, "weights")
    freeze_encoder: bool = _default(_MODEL, "freeze_encoder")
    trainable_blocks: str | int = _default(_MODEL, "trainable_blocks")
    feature_cache: bool = _default(_MODEL, "feature_cache")
    batchnorm: str = _default(_MODEL, "batchnorm")
    feature_norm: bool = _default(_MODEL, "feature_norm")
    pool: str = _default(_MODEL, "pool")
    att_dim: int = _default(_MODEL, "att_dim")
    sm_alpha: float = _default(_MODEL, "sm_alpha")
    sm_features: float = _default(_MODEL, "sm_features")
    dropout: float = _default(_MODEL, "dropout")
    instance_loss: float = _default(_MODEL, "instance_loss")
    colour_histogram: int = _default(_MODEL, "colour_histogram")
    instance_top_k: int = _default(_MODEL, "instance_top_k")
    top_fraction: float = _default(_MODEL, "top_fraction")


@dataclass(frozen=True)
class PatchConfig(_Section):
    """``preprocessing.patches`` (``gigamil.wsi.patching.PatchParams`` adds tuning knobs)."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _PATCH
    mpp: float = _default(_PATCH, "mpp")
    patch_px: int = _default(_PATCH, "patch_px")
    stride_px: int | None = _default(_PATCH, "stride_px")
    min_tissue: float = _default(_PATCH, "min_tissue")
    codec: str = _default(_PATCH, "codec")
    jpeg_quality: int = _default(_PATCH, "jpeg_quality")
    stain_normalization: str = _default(_PATCH, "stain_normalization")

    def rule_params(self) -> dict[str, Any]:
        """Rule extract_patches' params: the section without ``stain_normalization`` if ``none``,
        ``jpeg_quality`` at its default unless ``codec`` is ``jpeg``, ``stride_px`` null if it is
        ``patch_px``: settings giving the same patches give the same params (no store redone)."""
        params = self.to_dict()
        if params["stain_normalization"] == "none":
            del params["stain_normalization"]
        if params["codec"] != "jpeg":
            params["jpeg_quality"] = _default(_PATCH, "jpeg_quality")
        if params["stride_px"] == params["patch_px"]:
            params["stride_px"] = None
        return params


@dataclass(frozen=True)
class TissueConfig(_Section):
    """``preprocessing.tissue`` (the defaults of ``gigamil.wsi.tissue.TissueParams``)."""

    SCHEMA_PATH: ClassVar[tuple[str, ...]] = _TISSUE
    mask_mpp: float = _default(_TISSUE, "mask_mpp")
    threshold: str | float = _default(_TISSUE, "threshold")
    median_px: int = _default(_TISSUE, "median_px")
    close_um: float = _default(_TISSUE, "close_um")
    open_um: float = _default(_TISSUE, "open_um")
    min_area_um2: float = _default(_TISSUE, "min_area_um2")
    dark_value: int = _default(_TISSUE, "dark_value")
    pen_ink: bool = _default(_TISSUE, "pen_ink")


# nested sections by field name (from_dict turns their dicts into dataclasses)
_SECTIONS: dict[str, type[_Section]] = {
    "early_stopping": EarlyStoppingConfig,
    "augment": AugmentConfig,
    "em": EMConfig,
}
# every typed section, for the schema/dataclass sync test
SECTIONS: tuple[type[_Section], ...] = (
    TrainingConfig,
    EarlyStoppingConfig,
    AugmentConfig,
    EMConfig,
    ModelConfig,
    PatchConfig,
    TissueConfig,
)

STRATEGIES = ("end_to_end", "frozen", "em")
