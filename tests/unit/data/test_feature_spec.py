"""gigamil.data.feature_spec: the encoder_id of the feature cache and whether a configuration
reads it."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
from fresh_python import modules_loaded_by

from gigamil import layout
from gigamil.config import validate_config
from gigamil.data.feature_spec import (
    cache_enabled,
    config_encoder_id,
    encoder_id,
    encoder_spec,
    train_params,
)
from gigamil.settings import TrainingConfig, ordered_params
from gigamil.strategy import resolve_strategy

PATCHES = {"mpp": 0.5, "patch_px": 32}


def test_encoder_id_changes_only_with_what_changes_the_features(tmp_path: Path) -> None:
    base = {"encoder": "smallcnn", "trainable_blocks": 0}
    ref = encoder_id(encoder_spec(base, PATCHES))
    assert ref == encoder_id(encoder_spec(base, PATCHES))  # stable
    assert ref.startswith("smallcnn-") and len(ref) == len("smallcnn-") + 12
    # head, training-side and cache switches: the same features
    for head in (
        {"att_dim": 8},
        {"pool": "smabmil"},
        {"pool": "smabmil", "sm_alpha": 0.9},
        {"dropout": 0.5},
        {"feature_norm": False},
        {"instance_loss": 0.5},
        {"freeze_encoder": True},
    ):
        assert encoder_id(encoder_spec({**base, **head}, PATCHES)) == ref, head
    assert encoder_id(encoder_spec(base, {**PATCHES, "stride_px": 16, "min_tissue": 0.9})) == ref
    # what changes the features changes the id
    w1, w2 = tmp_path / "a.pt", tmp_path / "b.pt"
    w1.write_bytes(b"one")
    w2.write_bytes(b"two")
    changed = [
        encoder_spec({**base, "encoder": "resnet18"}, PATCHES),
        encoder_spec({**base, "batchnorm": "groupnorm"}, PATCHES),
        encoder_spec(base, {**PATCHES, "mpp": 1.0}),
        encoder_spec(base, {**PATCHES, "patch_px": 64}),
        encoder_spec(base, {**PATCHES, "codec": "jpeg"}),
        encoder_spec({**base, "encoder": "resnet18", "weights": str(w1)}, PATCHES),
        encoder_spec({**base, "encoder": "resnet18", "weights": str(w2)}, PATCHES),
        encoder_spec({**base, "encoder": "resnet18", "weights": "IMAGENET1K_V1"}, PATCHES),
    ]
    ids = [encoder_id(s) for s in changed]
    assert ref not in ids and len(set(ids)) == len(ids)
    # the same weights file elsewhere: the same id (by content)
    w3 = tmp_path / "sub" / "a.pt"
    w3.parent.mkdir()
    w3.write_bytes(b"one")
    same = encoder_spec({**base, "encoder": "resnet18", "weights": str(w3)}, PATCHES)
    assert encoder_id(same) == ids[5]


def test_cache_enabled_only_for_a_frozen_encoder() -> None:
    assert cache_enabled({"trainable_blocks": 0})
    assert cache_enabled({"freeze_encoder": True})
    assert not cache_enabled({"trainable_blocks": 0, "feature_cache": False})
    assert not cache_enabled({"trainable_blocks": "all"})
    assert not cache_enabled({"encoder": "resnet18", "trainable_blocks": 2})
    # batch statistics: a patch's features depend on its chunk, so they cannot be cached once
    assert not cache_enabled({"trainable_blocks": 0, "batchnorm": "train"})
    assert cache_enabled({"trainable_blocks": 0, "batchnorm": "groupnorm"})
    cfg = {"model": {"trainable_blocks": 0}, "preprocessing": {"patches": PATCHES}}
    assert config_encoder_id(cfg) == encoder_id(encoder_spec(cfg["model"], PATCHES))
    assert config_encoder_id({"model": {}, "preprocessing": {"patches": PATCHES}}) is None
    slides = pd.DataFrame({"cohort": ["c"], "slide_id": ["s1"]})
    eid = config_encoder_id(cfg)
    assert layout.with_stores(slides, eid)["store"].tolist() == [
        f"results/features/{eid}/c/s1.zarr"
    ]
    assert layout.with_stores(slides)["store"].tolist() == ["results/patches/c/s1.zarr"]
    # training.strategy: frozen caches too (trainable_blocks left at all); em and end_to_end not
    frozen = {
        "model": {},
        "training": {"strategy": "frozen"},
        "preprocessing": {"patches": PATCHES},
    }
    assert config_encoder_id(frozen) == eid
    for strategy in ("em", "end_to_end"):
        cfg = {**frozen, "training": {"strategy": strategy}}
        assert config_encoder_id(cfg) is None


def _config(base: dict, model: dict | None = None, training: dict | None = None) -> dict:
    cfg = copy.deepcopy(base)
    cfg["model"] = {**cfg.get("model", {}), **(model or {})}
    cfg["training"] = {**cfg.get("training", {}), **(training or {})}
    return validate_config(cfg)


def test_train_params_spell_one_training_one_way(base_config: dict) -> None:
    """Three spellings of a frozen encoder retrained every fold ('params have changed'); so did
    an augmentation change while training on cached features (not applied to them). The
    shipped end-to-end settings keep the params they had (no retraining on upgrade)."""
    cfg = _config(base_config)
    model, training = train_params(cfg)
    assert model == ordered_params(("model",), cfg["model"])
    assert training == TrainingConfig.from_dict(cfg["training"]).resume_signature()
    assert "augment" in training
    spellings = [
        _config(base_config, None, {"strategy": "frozen"}),
        _config(base_config, {"freeze_encoder": True}),
        _config(base_config, {"trainable_blocks": 0}),
        _config(base_config, {"trainable_blocks": 0}, {"strategy": "frozen"}),
        _config(base_config, None, {"strategy": "frozen", "augment": {"grayscale": 0.5}}),
    ]
    params = [train_params(c) for c in spellings]
    assert all(p == params[0] for p in params), params
    assert params[0][1]["strategy"] == "frozen" and "augment" not in params[0][1]
    assert params[0][0]["trainable_blocks"] == 0 and params[0][0]["freeze_encoder"] is False
    # each spelling's job (model section from the params, training from the config) trains
    # the frozen strategy
    for c, (m, _) in zip(spellings, params, strict=True):
        assert resolve_strategy(m, c["training"])[0] == "frozen"
    # without the cache the encoder reads patches: augmentation counts
    a = train_params(_config(base_config, {"feature_cache": False}, {"strategy": "frozen"}))
    b = train_params(
        _config(
            base_config,
            {"feature_cache": False},
            {"strategy": "frozen", "augment": {"grayscale": 0.5}},
        )
    )
    assert "augment" in a[1] and a != b


def test_the_workflow_imports_no_torch_to_parse_the_snakefile():
    """common.smk imports feature_spec (and so gigamil.nn.weights) at every start, also inside
    each SLURM job: without torch (2.5 s) there; only the main process checks the encoder."""
    parse = (
        "gigamil.data.feature_spec",
        "gigamil.layout",
        "gigamil.cohorts",
        "gigamil.splits",
        "gigamil.wsi.preflight",
        "gigamil.wsi.qc",
        "gigamil.settings",
        "gigamil.demo_tiles",
        "gigamil.evaluate.ensemble",
        "gigamil.wsi.patching",
    )
    assert "torch" not in modules_loaded_by(*parse)


def test_a_weights_file_replaced_in_place_changes_the_train_params(
    base_config: dict, tmp_path: Path
) -> None:
    """model.weights entered the params by its path only: writing other weights to the same
    file retrained nothing and the old fold models were used. Without a weights file the params
    are as before (no retraining on upgrade)."""
    import os

    import torch

    from gigamil.models.factory import build_mil_model
    from gigamil.nn.weights import file_sha256

    path = tmp_path / "enc.pt"
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_mil_model({"encoder": "smallcnn"}, 2, 32).feature_encoder[1]
        torch.save(net.state_dict(), path)
        os.utime(path, ns=(seed + 1, seed + 1))  # distinct mtimes, as two writes would have
        _, training = train_params(_config(base_config, {"weights": str(path)}))
        assert training["encoder_weights_sha256"] == file_sha256(path)
        if seed == 0:
            first = training["encoder_weights_sha256"]
    assert training["encoder_weights_sha256"] != first
    assert "encoder_weights_sha256" not in train_params(_config(base_config))[1]


def test_hf_hub_weights_count_by_name_only() -> None:
    """hf-hub weights are looked up by the training job, in its cache (README): the workflow's
    main process, whose cache may lack them, hashes nothing."""
    from gigamil.nn.weights import weights_signature

    assert weights_signature("hf-hub:org/name") == {}
    assert weights_signature(None) == {} and weights_signature("IMAGENET1K_V1") == {}


def test_parse_encoder_id_reads_what_encoder_id_writes() -> None:
    """The feature-cache check of extract_features parsed folder names by rpartition("-"); a
    cohort folder named like an id but with other digits counted as one."""
    from gigamil.data.feature_spec import encoder_id, parse_encoder_id

    made = encoder_id({"encoder": "timm:vit_small_patch16_224", "weights": None})
    name, digest = parse_encoder_id(made)
    assert made == f"{name}-{digest}" and name == "timm_vit_small_patch16_224"
    for other in ["smallcnn", "smallcnn-0123456789ab-x", "smallcnn-0123456789AB", "a-0123"]:
        assert parse_encoder_id(other) is None


def test_encoder_id_changes_with_the_histogram_stain_and_jpeg_quality() -> None:
    """A cache of other histogram bins, of stain-normalised patches or of patches of another
    JPEG quality holds other features: it must have another id (it was reused otherwise)."""
    base = {"encoder": "smallcnn", "trainable_blocks": 0}
    jpeg = {**PATCHES, "codec": "jpeg"}
    specs = [
        encoder_spec(base, PATCHES),
        encoder_spec({**base, "colour_histogram": 4}, PATCHES),
        encoder_spec({**base, "colour_histogram": 8}, PATCHES),
        encoder_spec(base, {**PATCHES, "stain_normalization": "macenko"}),
        encoder_spec(base, {**jpeg, "jpeg_quality": 90}),
        encoder_spec(base, {**jpeg, "jpeg_quality": 50}),
    ]
    ids = [encoder_id(s) for s in specs]
    assert len(set(ids)) == len(ids), ids
    # the JPEG quality of a zstd store changes nothing
    assert encoder_id(encoder_spec(base, {**PATCHES, "jpeg_quality": 50})) == ids[0]


def test_the_identity_encoder_is_never_cached() -> None:
    """identity passes the pixels through: caching them as float16 features would store every
    patch again at twice its size."""
    assert not cache_enabled({"encoder": "identity", "weights": None, "trainable_blocks": 0})
    assert not cache_enabled({"encoder": "identity", "weights": None, "freeze_encoder": True})
