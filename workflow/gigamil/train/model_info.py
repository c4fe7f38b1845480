"""What a ``model.pt`` is, for the person who receives it (``gigamil model-info``): a summary of
its header (:mod:`gigamil.train.model_file`) and the configuration keys a project needs to
predict with it (``trained_models``, :mod:`gigamil.train.trained_models`)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gigamil.errors import GigamilError
from gigamil.train.checkpoint import FINISHED, load_checkpoint

WEIGHT_KEYS = ("state_dict", "replicates")


def not_a_model(ckpt: Mapping[str, Any], path: str | Path) -> str | None:
    """Why the checkpoint ``ckpt`` of ``path`` is no fold's model.pt (the header keys it lacks;
    a trainer's last.pt said as such), or None."""
    missing = [k for k in ("model_config", "classes", "patch_px") if k not in ckpt]
    if not missing:
        return None
    last = "optimizer" in ckpt and "early_stopping" in ckpt
    return f"{path}: not a fold's model.pt (it lacks {missing})" + (
        "; it is a trainer's resumable state (a last.pt): use the fold's model.pt" if last else ""
    )


def model_header_of(path: str | Path, damaged_hint: str | None = None) -> dict[str, Any]:
    """The checkpoint of ``path`` (checksum verified) without its weights; a ``replicates``
    model keeps, per member, its seed, epoch, metrics and logit calibration.

    Raises:
        GigamilError: a missing, unreadable or damaged file
            (:func:`gigamil.train.checkpoint.load_checkpoint`, whose ``damaged_hint`` says
            what to do), or one that is no fold's model.pt (:func:`not_a_model`).
    """
    ckpt = load_checkpoint(path, damaged_hint)
    if problem := not_a_model(ckpt, path):
        raise GigamilError(problem)
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


def config_fragment(header: Mapping[str, Any], n_folds: int | None = None) -> dict[str, Any]:
    """The configuration keys that must match the model for a project to predict with it:
    ``classes`` and ``preprocessing`` (``patches.patch_px``, ``mpp``, ``stain_normalization``
    and what the training patches recorded: ``min_tissue``, ``stride_px``, ``codec``, the tissue
    mask settings), as nested config.yaml sections; keys the model does not record are left out
    (they take the config's own values). ``n_folds``: the folds of a folder of fold models,
    given as ``cv.folds`` (from 2: the schema's minimum), which trained_models compares with
    the models found."""
    patches: dict[str, Any] = {"patch_px": int(header["patch_px"])}
    if header.get("patch_mpp") is not None:
        patches["mpp"] = float(header["patch_mpp"])
    if header.get("stain_normalization") is not None:
        patches["stain_normalization"] = header["stain_normalization"]
    recorded = _nested(header.get("preprocessing") or {}).get("preprocessing", {})
    preprocessing = {**recorded, "patches": {**patches, **recorded.get("patches", {})}}
    fragment = {"classes": [str(c) for c in header["classes"]], "preprocessing": preprocessing}
    return {**fragment, "cv": {"folds": n_folds}} if n_folds and n_folds >= 2 else fragment


def _members(header: Mapping[str, Any]) -> str:
    members = header.get("replicates")
    if not members:
        return f"one model, the weights of epoch {header.get('epoch', '?')}"
    seeds = ", ".join(str(m.get("seed")) for m in members)
    epochs = ", ".join(str(m.get("epoch")) for m in members)
    return f"{len(members)} replicate models (seeds {seeds}; the weights of epochs {epochs})"


def _member_hint(path: str | Path) -> str:
    """For ``fold<k>/replicate<r>/model.pt``, one member of ``fold<k>/model.pt``: the file to
    share is the fold's, which averages the members' calibrated logits."""
    path = Path(path)
    fold_model = path.parent.parent / "model.pt"
    if path.parent.name.startswith("replicate") and fold_model.is_file():
        return f"; one member of {fold_model}, which averages the members: share that one"
    return ""


def _trained_on(header: Mapping[str, Any]) -> str:
    seen = header.get("training_slides")
    if not seen:
        return "not recorded (a model.pt from before 2026-12)"
    cohorts = sorted({c for c, _ in seen["slides"]})
    slides, patients = len(seen["slides"]), len(set(seen["patient_ids"]))
    metrics = [m.get("metrics") or {} for m in header.get("replicates") or [header]]
    val = [v for m in metrics for k, v in m.items() if k.startswith("val_")]
    which = (  # without validation slides every val_ metric is NaN (cv.val_fraction: 0)
        "training and validation"
        if any(isinstance(v, (int, float)) and math.isfinite(v) for v in val)
        else "training; no validation slides"
        if val
        else "training and validation, if any"
    )
    return (
        f"{slides} slide{'s' * (slides != 1)} of {patients} patient{'s' * (patients != 1)} "
        f"({which}; cohorts: {', '.join(cohorts)})"
    )


def describe_model(path: str | Path, header: Mapping[str, Any]) -> list[str]:
    """Human-readable lines about the model.pt at ``path`` (``header``: :func:`model_header_of`)."""
    cfg = header["model_config"]
    classes = [str(c) for c in header["classes"]]
    mpp = header.get("patch_mpp")
    if header.get("weights_sha256"):
        start = f"started from weights of sha256 {header['weights_sha256'][:12]}…"
    elif cfg.get("weights"):  # e.g. a torchvision name not yet in the cache when it was hashed
        start = f"started from weights {cfg['weights']} (checksum not recorded)"
    else:
        start = "trained from random initialisation"
    encoder = f"{cfg.get('encoder')}, {start}"
    if header.get("features"):
        encoder += f"; reads cached features of encoder {header['features']['encoder_id']}"
    finished = header.get(FINISHED)
    return [
        f"{path}: a gigamil {header.get('gigamil_version', '?')} fold model, {_members(header)}"
        + (" (training NOT finished)" if finished is False else "")
        + _member_hint(path),
        f"  classes: {', '.join(classes)} (output order"
        + (f"; positive class {classes[-1]})" if len(classes) == 2 else ")"),
        f"  input: patches of {header['patch_px']} px at "
        + (f"{mpp:g} µm/px" if mpp is not None else "an unrecorded µm/px")
        + f", stain normalisation {header.get('stain_normalization') or 'none'}",
        f"  encoder: {encoder}",
        f"  pool: {cfg.get('pool')}, att_dim {cfg.get('att_dim')}",
        f"  trained on: {_trained_on(header)}",
        *_learning_lines(header),
    ]


def _learning_lines(header: Mapping[str, Any]) -> list[str]:
    """One line per model: its training loss against the chance level (model.pt's ``learning``
    record, :func:`gigamil.train.learning.learning_record`), or that it is not recorded."""
    from gigamil.train.learning import recorded_verdicts, verdict_phrase

    verdicts = dict(recorded_verdicts(header))
    unrecorded = "learned: not recorded (a model.pt from before 2026-12-06)"
    if not verdicts:
        return [f"  {unrecorded}"]
    members = [None] if None in verdicts else range(len(header.get("replicates") or []))
    return [  # every member: one trained before the record existed is said so
        "  "
        + ("" if member is None else f"replicate{member} ")
        + (verdict_phrase(verdicts[member]) if member in verdicts else unrecorded)
        for member in members
    ]


MODEL_COLUMN = "model_sha256"  # of the prediction CSVs: the model.pt file that predicted


def model_digests(preds: Any) -> dict[str, str]:
    """``{fold: model_sha256}`` of prediction rows (a DataFrame with ``fold`` and
    :data:`MODEL_COLUMN`; folds whose files lack the column, written before 2026-12-06, are
    left out): the model.pt files behind a summary's figures, as ``sha256sum`` gives them."""
    if MODEL_COLUMN not in preds or "fold" not in preds:
        return {}
    rows = preds[["fold", MODEL_COLUMN]].dropna().drop_duplicates()
    rows = rows[rows[MODEL_COLUMN].astype(str).str.fullmatch(r"[0-9a-f]{64}")]
    return {str(int(f)): str(d) for f, d in sorted(rows.itertuples(index=False, name=None))}


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of the file's bytes: what sender and receiver compare for a shared
    model.pt (``sha256sum model.pt`` gives the same)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_warnings(models: Mapping[int, Path], digests: Mapping[int, str]) -> list[str]:
    """A folder of fold models (``models``: fold → model.pt; ``digests``: fold → its
    :func:`file_sha256`): fold numbers missing below the highest, and one file in two folds."""
    out = []
    gaps = sorted(set(range(max(models) + 1)) - set(models))
    if gaps:
        out.append(f"no model.pt for fold(s) {', '.join(map(str, gaps))}")
    first: dict[str, int] = {}
    for fold, digest in digests.items():
        if digest in first:
            out.append(f"{models[fold]} is the same file as fold {first[digest]}'s (copied twice?)")
        first.setdefault(digest, fold)
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None, so ``json.dumps`` writes standard
    JSON (``null``) that every parser reads (``NaN`` is Python's extension)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
