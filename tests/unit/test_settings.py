"""The typed config sections (gigamil.settings) and the schema agree: same keys, same defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gigamil.config import read_yaml, validate_config
from gigamil.errors import ConfigError
from gigamil.settings import (
    SECTIONS,
    EarlyStoppingConfig,
    EMConfig,
    ModelConfig,
    PatchConfig,
    TissueConfig,
    TrainingConfig,
    ordered_params,
    schema_section,
)
from gigamil.wsi.patching import PatchParams
from gigamil.wsi.tissue import TissueParams

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_dataclass_fields_are_the_schema_keys_with_the_schema_defaults(cls) -> None:
    props = schema_section(cls.SCHEMA_PATH)["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == set(props)
    instance = cls()
    for key, sub in props.items():
        value = getattr(instance, key)
        if sub.get("type") == "object":  # a nested section: its own class, default {}
            assert sub["default"] == {}
            assert value == type(value)() and dataclasses.is_dataclass(value)
        else:
            assert value == sub["default"], key
            assert type(value) is type(sub["default"]), key


def test_every_schema_section_read_by_the_package_is_typed() -> None:
    paths = {cls.SCHEMA_PATH for cls in SECTIONS}
    assert {("training",), ("model",), ("preprocessing", "patches")} <= paths
    assert {("preprocessing", "tissue"), ("training", "early_stopping")} <= paths
    assert ("training", "augment") in paths


def test_a_filled_config_equals_the_dataclass_defaults() -> None:
    cfg = validate_config({"cohorts": {"a": {"sheet": "a.csv"}}})
    assert TrainingConfig.from_dict(cfg["training"]) == TrainingConfig()
    assert TrainingConfig().to_dict() == cfg["training"]
    assert ModelConfig().to_dict() == cfg["model"]
    assert PatchConfig().to_dict() == cfg["preprocessing"]["patches"]
    assert TissueConfig().to_dict() == cfg["preprocessing"]["tissue"]


def test_wsi_params_take_their_defaults_from_the_schema() -> None:
    assert dataclasses.asdict(TissueParams()) == TissueConfig().to_dict()
    patch = dataclasses.asdict(PatchParams())
    assert {k: patch[k] for k in PatchConfig().to_dict()} == PatchConfig().to_dict()


def test_from_dict_fills_nested_sections_and_checks_the_schema() -> None:
    cfg = TrainingConfig.from_dict({"epochs": 3, "early_stopping": {"patience": 2}})
    assert cfg.epochs == 3 and cfg.lr == TrainingConfig().lr
    assert cfg.early_stopping == EarlyStoppingConfig(patience=2)
    assert TrainingConfig.from_dict(cfg) is cfg
    with pytest.raises(ConfigError, match="unknown key training.epoch "):
        TrainingConfig.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="training.early_stopping.metric: 'x' is not one of"):
        TrainingConfig.from_dict({"early_stopping": {"metric": "x"}})
    with pytest.raises(ConfigError, match="model.pool: 'max' is not one of"):
        ModelConfig.from_dict({"pool": "max"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4  # type: ignore[misc]


def test_resume_signature_leaves_out_the_log_only_keys() -> None:
    a = TrainingConfig.from_dict({"tensorboard": False})
    b = TrainingConfig.from_dict({"tensorboard": True})
    assert a.resume_signature() == b.resume_signature()
    assert "tensorboard" not in a.resume_signature()
    # end_to_end without weight averaging, one model per fold: as before these keys existed
    other = {*TrainingConfig.LOG_ONLY_KEYS, "strategy", "em", "ema_decay", "replicates"}
    other |= {"warmup_epochs", "recalibrate_every"}  # 0: as before these keys existed
    other |= {"encoder_lr", "head_first_epochs"}  # one rate from the start, as before
    other |= {"device", "max_instances_per_forward_pass"}  # where and in what chunks
    other.add("replicate_validation")  # fixed: the fold's own validation slides
    assert set(a.resume_signature()) == set(a.to_dict()) - other
    assert TrainingConfig.from_dict({"ema_decay": 0.99}).resume_signature()["ema_decay"] == 0.99
    warm = TrainingConfig.from_dict({"warmup_epochs": 2}).resume_signature()
    assert warm["warmup_epochs"] == 2 and "warmup_epochs" not in a.resume_signature()
    # em settings change what em trains, and nothing else
    em2 = {"em": {"rounds": 2}}
    assert a.resume_signature() == TrainingConfig.from_dict(em2).resume_signature()
    em = TrainingConfig.from_dict({"strategy": "em"}).resume_signature()
    assert em["strategy"] == "em" and em["em"] == EMConfig().to_dict()
    assert em != TrainingConfig.from_dict({"strategy": "em", **em2}).resume_signature()
    assert TrainingConfig.from_dict({"strategy": "frozen"}).resume_signature()["strategy"]
    assert a.resume_signature() != TrainingConfig.from_dict({"epochs": 3}).resume_signature()
    chunk = TrainingConfig.from_dict({"max_instances_per_forward_pass": 7, "device": "cpu"})
    assert chunk.resume_signature() == a.resume_signature()
    # under batch statistics (model.batchnorm: train) the chunk size changes the model
    assert chunk.resume_signature(True) != a.resume_signature(True)
    assert chunk.resume_signature(True)["max_instances_per_forward_pass"] == 7


def test_unknown_strategy_and_em_keys_are_schema_errors() -> None:
    with pytest.raises(ConfigError, match="strategy"):
        TrainingConfig.from_dict({"strategy": "alternating"})
    with pytest.raises(ConfigError, match="pseudo_label"):
        TrainingConfig.from_dict({"em": {"pseudo_label": "majority"}})
    with pytest.raises(ConfigError, match="rounds"):
        TrainingConfig.from_dict({"em": {"rounds": 0}})


def test_patch_rule_params_leave_out_stain_normalization_when_off() -> None:
    """Rule extract_patches' params: a workspace extracted before the key existed is not
    redone (its recorded params are exactly these keys), one that turns it on is."""
    before = {"mpp", "patch_px", "stride_px", "min_tissue", "codec", "jpeg_quality"}
    assert set(PatchConfig().rule_params()) == before
    on = PatchConfig.from_dict({"stain_normalization": "macenko"}).rule_params()
    assert on["stain_normalization"] == "macenko" and set(on) == before | {"stain_normalization"}


def test_patch_rule_params_hold_jpeg_quality_only_for_jpeg_stores() -> None:
    """jpeg_quality changed the params of zstd stores, which do not depend on it, so editing it
    re-extracted every store; the default's params are unchanged (no store redone on update)."""
    default = PatchConfig().rule_params()
    assert default["jpeg_quality"] == 90 and default["codec"] == "zstd"
    assert PatchConfig.from_dict({"jpeg_quality": 70}).rule_params() == default
    jpeg = PatchConfig.from_dict({"codec": "jpeg", "jpeg_quality": 70}).rule_params()
    assert jpeg["jpeg_quality"] == 70 and list(jpeg) == list(default)


def test_patch_rule_params_spell_a_stride_of_patch_px_as_null() -> None:
    """``stride_px`` equal to ``patch_px`` extracts the very patches of ``null``, so it must not
    change the params (writing it out re-extracted every store); any other stride does."""
    default = PatchConfig().rule_params()
    assert default["stride_px"] is None
    assert PatchConfig.from_dict({"stride_px": default["patch_px"]}).rule_params() == default
    same = PatchConfig.from_dict({"patch_px": 96, "stride_px": 96}).rule_params()
    assert same == PatchConfig.from_dict({"patch_px": 96}).rule_params()
    assert same["stride_px"] is None
    assert PatchConfig.from_dict({"patch_px": 96, "stride_px": 48}).rule_params()["stride_px"] == 48


# The key order of the params in the metadata of a demo workspace finished before the params had
# a fixed order (snakemake compares params by repr): the shipped config.yaml must still give it.
_RECORDED_ORDER = {
    ("model",): "encoder weights freeze_encoder trainable_blocks batchnorm pool att_dim sm_alpha "
    "dropout feature_cache feature_norm sm_features colour_histogram instance_loss "
    "instance_top_k top_fraction",
    ("preprocessing", "tissue"): "mask_mpp threshold median_px close_um open_um min_area_um2 "
    "dark_value pen_ink",
    ("cv",): "folds val_fraction stratify_by seed",
    ("heatmaps",): "slides normalize weights top_k alpha cmap",
}


def _section(config: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        config = config[key]
    return config


@pytest.mark.parametrize("path", list(_RECORDED_ORDER), ids=".".join)
def test_rule_params_do_not_depend_on_the_order_of_the_keys(path: tuple[str, ...]) -> None:
    shipped = _section(validate_config(read_yaml(REPO / "config.yaml")), path)
    params = ordered_params(path, shipped)
    # finished workspaces stay up to date: the same dict, in the order recorded before
    assert params == shipped and list(params) == _RECORDED_ORDER[path].split()
    # reordered keys (as written by hand or by yaml.safe_dump) give the same repr
    for keys in (sorted(shipped), list(reversed(shipped))):
        assert repr(ordered_params(path, {k: shipped[k] for k in keys})) == repr(params)
    # a partial section keeps the same relative order; a key the schema lacks goes last
    partial = {"zz_extra": 1, **{k: shipped[k] for k in reversed(list(shipped)[:3])}}
    assert list(ordered_params(path, partial)) == [*list(shipped)[:3], "zz_extra"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bags_per_step", 2),
        ("replicates", 2),
        ("replicate_validation", "rotate"),
        ("recalibrate_every", 2),
        ("warmup_epochs", 2),
        ("ema_decay", 0.99),
        ("encoder_lr", 3e-5),
        ("head_first_epochs", 2),
    ],
)
def test_every_key_that_changes_training_is_in_the_resume_signature(key, value) -> None:
    """A fold resumes last.pt (and rule train_fold is not rerun) only under the same signature:
    a key that changes what is trained, at a value other than the one that trained as before
    the key existed, must be in it, or the folds keep the models of the old value. Only these
    four keys change where, how fast or what is logged (the list is written out here: the test
    above derives it from the class constants, so it could not catch a key added to them)."""
    assert set(TrainingConfig.LOG_ONLY_KEYS) | set(TrainingConfig.EXECUTION_KEYS) == {
        "tensorboard",
        "compile",
        "device",
        "max_instances_per_forward_pass",
    }
    sig = TrainingConfig.from_dict({key: value}).resume_signature()
    assert sig[key] == value
    assert sig != TrainingConfig().resume_signature()


def test_keys_the_schema_lacks_follow_sorted() -> None:
    params = ordered_params(("preprocessing", "tissue"), {"zz": 1, "aa": 2, "mask_mpp": 8.0})
    assert list(params) == ["mask_mpp", "aa", "zz"]


def test_from_dict_reports_the_outermost_problem_first() -> None:
    """Of several problems, the one nearest the section's top is named (a misspelt key before
    a bad value inside a nested section)."""
    with pytest.raises(ConfigError, match="unknown key training.epoch "):
        TrainingConfig.from_dict({"early_stopping": {"metric": "x"}, "epoch": 3})
