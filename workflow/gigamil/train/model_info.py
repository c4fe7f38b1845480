"""What a ``model.pt`` is, for the person who receives it (``gigamil model-info``): a summary of
its header (:mod:`gigamil.train.model_file`) and the configuration keys a project needs to
predict with it (``trained_models``, :mod:`gigamil.train.trained_models`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gigamil.train.checkpoint import FINISHED, load_checkpoint

WEIGHT_KEYS = ("state_dict", "replicates")


def model_header_of(path: str | Path) -> dict[str, Any]:
    """The checkpoint of ``path`` (checksum verified) without its weights; a ``replicates``
    model keeps, per member, its seed, epoch, metrics and logit calibration.

    Raises:
        GigamilError: a missing, unreadable or damaged file
            (:func:`gigamil.train.checkpoint.load_checkpoint`).
    """
    ckpt = load_checkpoint(path)
    header = {k: v for k, v in ckpt.items() if k not in WEIGHT_KEYS}
    if ckpt.get("replicates") is not None:
        header["replicates"] = [
            {k: v for k, v in m.items() if k != "state_dict"} for m in ckpt["replicates"]
        ]
    return header


def _nested(dotted: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def config_fragment(header: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration keys that must match the model for a project to predict with it:
    ``classes`` and ``preprocessing`` (``patches.patch_px``, ``mpp``, ``stain_normalization``
    and what the training patches recorded: ``min_tissue``, ``stride_px``, ``codec``, the tissue
    mask settings), as nested config.yaml sections; keys the model does not record are left out
    (they take the config's own values)."""
    patches: dict[str, Any] = {"patch_px": int(header["patch_px"])}
    if header.get("patch_mpp") is not None:
        patches["mpp"] = float(header["patch_mpp"])
    if header.get("stain_normalization") is not None:
        patches["stain_normalization"] = header["stain_normalization"]
    recorded = _nested(header.get("preprocessing") or {}).get("preprocessing", {})
    preprocessing = {**recorded, "patches": {**patches, **recorded.get("patches", {})}}
    return {"classes": [str(c) for c in header["classes"]], "preprocessing": preprocessing}


def _members(header: Mapping[str, Any]) -> str:
    members = header.get("replicates")
    if not members:
        return f"one model, epoch {header.get('epoch', '?')}"
    seeds = ", ".join(str(m.get("seed")) for m in members)
    epochs = ", ".join(str(m.get("epoch")) for m in members)
    return f"{len(members)} replicate models (seeds {seeds}; epochs {epochs})"


def _trained_on(header: Mapping[str, Any]) -> str:
    seen = header.get("training_slides")
    if not seen:
        return "not recorded (a model.pt from before 2026-12)"
    cohorts = sorted({c for c, _ in seen["slides"]})
    slides, patients = len(seen["slides"]), len(set(seen["patient_ids"]))
    return (
        f"{slides} slide{'s' * (slides != 1)} of {patients} patient{'s' * (patients != 1)} "
        f"(training and validation; cohorts: {', '.join(cohorts)})"
    )


def describe_model(path: str | Path, header: Mapping[str, Any]) -> list[str]:
    """Human-readable lines about the model.pt at ``path`` (``header``: :func:`model_header_of`)."""
    cfg = header["model_config"]
    classes = [str(c) for c in header["classes"]]
    mpp = header.get("patch_mpp")
    encoder = f"{cfg.get('encoder')}, " + (
        f"started from weights of sha256 {header['weights_sha256'][:12]}…"
        if header.get("weights_sha256")
        else "trained from random initialisation"
    )
    if header.get("features"):
        encoder += f"; reads cached features of encoder {header['features']['encoder_id']}"
    finished = header.get(FINISHED)
    return [
        f"{path}: a gigamil {header.get('gigamil_version', '?')} fold model, {_members(header)}"
        + (" (training NOT finished)" if finished is False else ""),
        f"  classes: {', '.join(classes)} (output order"
        + (f"; positive class {classes[-1]})" if len(classes) == 2 else ")"),
        f"  input: patches of {header['patch_px']} px at "
        + (f"{mpp:g} µm/px" if mpp is not None else "an unrecorded µm/px")
        + f", stain normalisation {header.get('stain_normalization') or 'none'}",
        f"  encoder: {encoder}",
        f"  pool: {cfg.get('pool')}, att_dim {cfg.get('att_dim')}",
        f"  trained on: {_trained_on(header)}",
    ]
