"""Checkpoints: ``model.pt`` (best model, docs/architecture.md) and ``last.pt`` (resumable state).

Both load with ``torch.load(path, weights_only=True)``: they hold only tensors, numbers,
strings, lists and dicts. Files are written to a temporary name and renamed, so a killed run
never leaves a truncated checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gigamil import __version__
from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.models.mil import MILModel


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path.tmp-<pid>`` then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)
    return path


def model_state_dict(model: MILModel) -> dict[str, torch.Tensor]:
    """A copy of the model's weights without the loss function's buffers (class weights)."""
    return {
        k: v.detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not k.startswith("loss_fn.")
    }


def model_checkpoint(
    model: MILModel,
    model_config: Mapping[str, Any],
    classes: list[str],
    patch_px: int,
    epoch: int,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """The content of ``model.pt`` (docs/architecture.md), weights copied to the CPU."""
    return {
        "state_dict": model_state_dict(model),
        "model_config": dict(model_config),
        "classes": [str(c) for c in classes],
        "patch_px": int(patch_px),
        "gigamil_version": __version__,
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def save_model(
    path: str | Path,
    model: MILModel,
    model_config: Mapping[str, Any],
    classes: list[str],
    patch_px: int,
    epoch: int,
    metrics: Mapping[str, float],
) -> Path:
    """Write ``model.pt`` in the format of docs/architecture.md."""
    return atomic_save(
        model_checkpoint(model, model_config, classes, patch_px, epoch, metrics), path
    )


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with a clear error for missing/corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise GigamilError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise GigamilError(f"{path}: not a readable gigamil checkpoint ({exc})") from exc


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MILModel, dict[str, Any]]:
    """Rebuild the model of a ``model.pt``; returns ``(model in eval mode, checkpoint dict)``."""
    ckpt = load_checkpoint(path)
    missing = [k for k in ("state_dict", "model_config", "classes", "patch_px") if k not in ckpt]
    if missing:
        raise GigamilError(f"{path}: checkpoint lacks {missing}")
    model_cfg = dict(ckpt["model_config"])
    model_cfg["weights"] = None  # the state dict holds the trained weights
    model = build_mil_model(model_cfg, len(ckpt["classes"]), int(ckpt["patch_px"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.to(device).eval(), ckpt
