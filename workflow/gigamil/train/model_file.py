"""What ``model.pt`` holds (docs/architecture.md): the weights of the best epoch and a header
saying what the model reads (classes, patch size, µm/px, stain normalisation, the preprocessing
of the training patches), what it started from and what it has seen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gigamil import __version__
from gigamil.models.mil import MILModel


def model_state_dict(model: MILModel) -> dict[str, torch.Tensor]:
    """A copy of the model's weights without the loss function's buffers (class weights)."""
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("loss_fn.")
    }


def model_header(  # noqa: PLR0913 - one argument per header key
    model_config: Mapping[str, Any],
    classes: Sequence[str],
    patch_px: int,
    patch_mpp: float | None = None,
    weights_sha256: str | None = None,
    features: Mapping[str, Any] | None = None,
    stain_normalization: str | None = None,
    training_slides: Mapping[str, Sequence[Any]] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What ``model.pt`` holds besides the weights, epoch and metrics (``patch_mpp``: µm/px of
    the training patches, None if the stores did not say; ``weights_sha256``: sha256 of the file
    of ``model.weights`` the encoder started from, None for random initialisation;
    ``features``: ``{encoder_id, dim}`` of a head trained on cached features, whose state dict
    holds no encoder; ``stain_normalization``: that of the training patches, None if the stores
    did not say; ``training_slides``: ``{slides: [[cohort, slide_id], ...], patient_ids}`` of
    the training and validation slides, :func:`gigamil.train.fold_data.seen_slides`;
    ``preprocessing``: the other settings the training stores record, by config key, e.g.
    ``{"preprocessing.patches.min_tissue": 0.5, "preprocessing.tissue.threshold": "otsu"}``,
    :func:`gigamil.train.fold_data.store_preprocessing`; ``gigamil predict`` warns about a store
    cut otherwise)."""
    header = {
        "model_config": dict(model_config),
        "classes": [str(c) for c in classes],
        "patch_px": int(patch_px),
        "patch_mpp": None if patch_mpp is None else float(patch_mpp),
        "stain_normalization": stain_normalization,
        "weights_sha256": weights_sha256,
        "gigamil_version": __version__,
    }
    if preprocessing is not None:
        header["preprocessing"] = dict(preprocessing)
    if training_slides is not None:
        header["training_slides"] = {
            "slides": [[str(c), str(s)] for c, s in training_slides["slides"]],
            "patient_ids": [str(p) for p in training_slides["patient_ids"]],
        }
    if features is not None:
        header["features"] = {
            "encoder_id": str(features["encoder_id"]),
            "dim": int(features["dim"]),
            **{k: str(v) for k, v in features.items() if k == "encoder_sha256"},
        }
    return header


def model_checkpoint(
    model: MILModel, header: Mapping[str, Any], epoch: int, metrics: Mapping[str, float]
) -> dict[str, Any]:
    """The content of ``model.pt`` (docs/architecture.md), weights copied to the CPU;
    ``header`` from :func:`model_header`."""
    return {
        "state_dict": model_state_dict(model),
        **header,
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


# buffers of constants (the H&E stain matrices of the augmentation, since 2026-11-30): not
# learned, so a model.pt written before they existed gets the freshly built model's
CONSTANT_BUFFERS = (".rgb_from_hed", ".hed_from_rgb")


def load_weights(model: MILModel, state_dict: Mapping[str, Any], path: Any, version: Any) -> None:
    """``model.load_state_dict(state_dict, strict=True)``, the :data:`CONSTANT_BUFFERS` a
    model.pt written before them lacks taken from ``model``. Weights that do not fit (a tensor
    missing, unexpected or of another shape: a model.pt of another gigamil version, or edited)
    are a GigamilError naming the file and the gigamil ``version`` that wrote it, not
    torch's traceback."""
    from gigamil.errors import GigamilError

    own = model.state_dict()
    state = dict(state_dict)
    for key in own.keys() - state.keys():
        if key.endswith(CONSTANT_BUFFERS):
            state[key] = own[key]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing, extra = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        parts = [
            f"{what} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for what, keys in (("lacks", missing), ("has unexpected", extra))
            if keys
        ]
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = "; ".join(parts) or (shapes[0] if shapes else str(exc).splitlines()[0])
        other = f"written by gigamil {version or '?'}, this is {__version__}"
        hint = (
            "predict with that version, or ask for a model.pt written by this one"
            if version != __version__
            else "damaged or edited: ask for a fresh copy (compare its sha256 with the sender's)"
        )
        raise GigamilError(
            f"{path}: its weights do not fit the model its header describes ({detail}; "
            f"{other}): {hint}"
        ) from None
