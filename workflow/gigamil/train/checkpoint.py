"""Checkpoints: ``model.pt`` (best model, docs/architecture.md) and ``last.pt`` (resumable state).

:class:`CheckpointSaver` owns a fold directory's files. Both load with ``torch.load(path,
weights_only=True)``: only tensors, numbers, strings, lists and dicts. Files are written to a
temporary name and renamed: a killed run never leaves a truncated checkpoint (nor, on a full
disk, a temporary). Every checkpoint carries ``sha256``, a digest of its content
(:func:`content_digest`), verified by :func:`load_checkpoint`: a damaged file (a flipped bit)
stops with a message saying what to do instead of loading and predicting differently. Files
written before the digest existed load unverified.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gigamil.errors import GigamilError
from gigamil.fileutil import atomic_write_bytes
from gigamil.models.ensemble import ReplicateEnsemble
from gigamil.models.factory import build_mil_model
from gigamil.models.mil import MILModel
from gigamil.train.learning import (
    LEARNING_KEY,
    learning_record,
    recorded_verdicts,
    verdict_phrase,
)
from gigamil.train.model_file import load_weights
from gigamil.train.signature import changed_keys, compared_part

log = logging.getLogger(__name__)

# model.pt key: False while its training runs (the best epoch so far), True once it has ended;
# absent in model.pt files written before gigamil marked them (read as finished)
FINISHED = "training_finished"
DIGEST_KEY = "sha256"


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(obj, Mapping):
        h.update(b"D%d" % len(obj))
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d" % len(obj))
        for item in obj:
            _feed(h, item)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content (tensor bytes, dtypes, shapes, keys and values), the
    same before ``torch.save`` and after ``torch.load``."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def atomic_save(obj: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save`` of ``obj`` plus its ``sha256`` digest, written atomically
    (:func:`gigamil.fileutil.atomic_write_bytes`: temporary then rename; a full disk raises
    ``no space left on device: <path>`` and leaves no temporary)."""
    content = {k: v for k, v in obj.items() if k != DIGEST_KEY}
    buf = io.BytesIO()
    torch.save({**content, DIGEST_KEY: content_digest(content)}, buf)
    return atomic_write_bytes(path, buf.getbuffer())


def _damaged_hint(path: Path) -> str:
    if path.name == "last.pt":
        return (
            "delete it and rerun: the fold trains again from its first epoch (model.pt and "
            "train_log.csv, if intact, are kept until then)"
        )
    return (
        "delete it and rerun snakemake: train_fold writes it again (from last.pt when that is "
        "intact, else by training the fold) and the fold is predicted again; a model.pt "
        "shared from another project: ask for a fresh copy (compare its sha256 with the sender's)"
    )


def _load_failure(exc: Exception) -> str:
    """The first line of a ``torch.load`` failure, without torch's advice for the weights-only
    unpickler (to retry with ``weights_only=False``: never right for a damaged file)."""
    if isinstance(exc, pickle.UnpicklingError) or str(exc).startswith("Weights only load"):
        return "its pickled data does not load as plain weights: damaged, edited or not gigamil's"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    cut = isinstance(exc, OSError) or "central directory" in first  # a zip archive cut short
    return f"damaged or cut short: {first.split('. ')[0]}" if cut else first


def load_checkpoint(path: str | Path, damaged_hint: str | None = None) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)``, its ``sha256`` digest verified (and removed from
    the returned dict); :class:`GigamilError` for a missing, unreadable or damaged file, whose
    message ends with what to do (``damaged_hint`` when given: e.g. for a model.pt that no rule
    writes again)."""
    path = Path(path)
    if path.is_dir():
        inside, folds = "", sorted(path.glob("fold*/model.pt"))
        if (path / "model.pt").is_file():
            inside = " (give its model.pt)"
        elif folds:
            inside = (
                f" ({len(folds)} fold models: give one fold's model.pt, e.g. {folds[0]}, once "
                "per fold; gigamil ensemble averages their predictions)"
            )
        raise GigamilError(f"{path}: is a folder, not a checkpoint file{inside}")
    if not path.is_file():
        raise GigamilError(f"{path}: checkpoint not found")
    ours = path.name in ("model.pt", "last.pt")  # names train_fold writes
    with path.open("rb") as fh:
        archive = fh.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if not archive and not ours:
        raise GigamilError(  # e.g. a train_log.csv given for a model: not damaged, just not one
            f"{path}: not a gigamil model file (the models are PyTorch archives named model.pt, "
            "e.g. results/models/<experiment>/fold0/model.pt)"
        )
    try:
        if not archive:
            raise ValueError("not a PyTorch archive: damaged or cut short")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        reason = _load_failure(exc)
        if not ours:  # not a file train_fold wrote: no hint to delete it
            raise GigamilError(
                f"{path}: not a readable gigamil model file ({reason}); give a fold's model.pt"
            ) from exc
        raise GigamilError(
            f"{path}: not a readable gigamil checkpoint ({reason}); {damaged_hint or _damaged_hint(path)}"
        ) from exc
    if not isinstance(ckpt, dict):
        raise GigamilError(f"{path}: not a gigamil checkpoint (a {type(ckpt).__name__})")
    stored = ckpt.pop(DIGEST_KEY, None)
    if stored is None:
        log.warning("%s has no checksum (written by an older gigamil); not verified", path)
    elif content_digest(ckpt) != stored:
        raise GigamilError(
            f"{path}: checkpoint is damaged (checksum mismatch); {damaged_hint or _damaged_hint(path)}"
        )
    return ckpt


def load_model(
    path: str | Path, device: str | torch.device = "cpu", unfinished: bool = False
) -> tuple[MILModel | ReplicateEnsemble, dict[str, Any]]:
    """Rebuild the model of a ``model.pt``; returns ``(model in eval mode, checkpoint dict)``
    (the attention head alone when the checkpoint has ``features``: it reads cached features).
    A model.pt of ``training.replicates`` > 1 (key ``replicates``: one entry per member with its
    ``state_dict`` and ``logit_calibration``) gives a
    :class:`~gigamil.models.ensemble.ReplicateEnsemble` of its members. A model.pt whose
    training has not finished (``training_finished: False``) is a GigamilError unless
    ``unfinished`` (the calibration that ends the training); one that recorded it did not learn
    (``learning``, :func:`gigamil.train.learning.learning_record`) is logged as a warning."""
    ckpt = load_checkpoint(path)
    if ckpt.get(FINISHED) is False and not unfinished:
        raise GigamilError(
            f"{path}: the training that writes this model.pt has not finished (it holds the "
            f"best epoch so far, {ckpt.get('epoch', '?')}, without the calibration of a "
            "finished model): run the same gigamil train command again (it resumes from "
            "last.pt), or let snakemake finish the fold"
        )
    _warn_unlearned(path, ckpt)  # it predicts, but says what it is worth
    members = ckpt.get("replicates")
    weights_key = "replicates" if members is not None else "state_dict"
    missing = [k for k in (weights_key, "model_config", "classes", "patch_px") if k not in ckpt]
    if missing:
        hint = (
            "; it is a trainer's resumable state (last.pt), not a model: use the fold's model.pt"
            if "optimizer" in ckpt and "early_stopping" in ckpt
            else ""
        )
        raise GigamilError(f"{path}: checkpoint lacks {missing}{hint}")
    model_cfg = dict(ckpt["model_config"])
    model_cfg["weights"] = None  # the state dict holds the trained weights
    model_cfg.setdefault("feature_norm", False)  # model.pt files written before the key existed
    model_cfg.setdefault("sm_alpha", 0.5)  # (the value every older smabmil model was trained with)
    features = ckpt.get("features")

    def build(state_dict: Mapping[str, Any]) -> MILModel:
        model = build_mil_model(
            model_cfg,
            len(ckpt["classes"]),
            int(ckpt["patch_px"]),
            feature_dim=None if features is None else int(features["dim"]),
        )
        load_weights(model, state_dict, path, ckpt.get("gigamil_version"))  # GigamilError
        return model

    if members is None:
        return build(ckpt["state_dict"]).to(device).eval(), ckpt
    if not members or any("state_dict" not in m for m in members):
        raise GigamilError(f"{path}: checkpoint has a replicate without weights")
    ensemble = ReplicateEnsemble(
        [build(m["state_dict"]) for m in members],
        [m.get("logit_calibration") for m in members],
    )
    return ensemble.to(device).eval(), ckpt


def _warn_unlearned(path: str | Path, ckpt: Mapping[str, Any]) -> None:
    """A warning per model of ``ckpt`` that recorded it did not learn."""
    for member, record in recorded_verdicts(ckpt):
        if record["learned"] is False:  # None: not judged
            log.warning(
                "%s%s: %s: its predictions mean nothing (README, 'When a fold does not learn')",
                path,
                "" if member is None else f" replicate{member}",
                verdict_phrase(record),
            )


class CheckpointSaver:
    """The files of one fold directory (after timm's ``CheckpointSaver``): ``model.pt`` (the best
    epoch), ``train_log.csv`` (one row per epoch) and ``last.pt`` (everything needed to resume:
    the caller's state plus this saver's ``state_dict()``: ``signature``, ``best`` = model.pt's
    content and ``log_rows``), each written atomically.

    Rows of the ``em`` strategy are rounds and add ``encoder_loss`` (empty in other rows).
    ``chance_loss`` and ``flag_loss`` are the model's constant levels
    (:func:`gigamil.train.learning.log_columns`; empty in rows of a log resumed from a
    ``last.pt`` written before 2026-12-06).

    ``last.pt`` is not a declared Snakemake output, so it survives a failed job while model.pt and
    train_log.csv are deleted; :meth:`restore_outputs` writes them back from it. ``enabled=False``
    (DDP ranks other than 0) writes nothing.
    """

    LOG_COLUMNS = (
        "epoch",
        "train_loss",
        "val_loss",
        "val_auc",
        "val_balanced_accuracy",
        "lr",
        "seconds",
        "best_epoch",
        "n_train_bags",
        "n_val_bags",
        "encoder_loss",  # training.strategy: em (pseudo-label loss of the round's E-step)
        "chance_loss",  # the levels of gigamil.train.learning.log_columns: a model whose
        "flag_loss",  # training loss ends at or above flag_loss did not learn
    )

    def __init__(
        self, out_dir: str | Path, signature: Mapping[str, Any], enabled: bool = True
    ) -> None:
        out_dir = Path(out_dir)
        self.model_path = out_dir / "model.pt"
        self.last_path = out_dir / "last.pt"
        self.log_path = out_dir / "train_log.csv"
        self.signature = dict(signature)
        self.enabled = enabled
        self.best: dict[str, Any] | None = None  # model.pt's content
        self.rows: list[dict[str, Any]] = []  # train_log.csv's rows
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)

    def load_last(self) -> dict[str, Any] | None:
        """``last.pt`` when it exists and was written with this signature (but for the keys
        strategy em does not use, :func:`gigamil.train.signature.compared_part`), else None."""
        if not self.last_path.is_file():
            return None
        ckpt = load_checkpoint(self.last_path)
        old, new = compared_part(ckpt.get("signature")), compared_part(self.signature)
        if old != new:
            log.warning(
                "%s was written with other settings or slides (changed: %s); starting from scratch",
                self.last_path,
                changed_keys(old, new),
            )
            return None
        return ckpt

    def state_dict(self) -> dict[str, Any]:
        return {"signature": self.signature, "best": self.best, "log_rows": self.rows}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state.get("best")
        self.rows = list(state.get("log_rows", []))

    def restore_outputs(self, header: Mapping[str, Any] | None = None) -> None:
        """Write model.pt (when missing or not the loaded best model) and train_log.csv again
        from the loaded state; the best model gets the ``training_slides`` of ``header``
        (:func:`gigamil.train.model_file.model_header`): the slides' current cohorts and patients (a ``last.pt`` written
        before gigamil recorded them has none; a sheet may have renamed a patient since)."""
        if self.best is not None and header and "training_slides" in header:  # the sheet's now
            self.best["training_slides"] = header["training_slides"]  # (e.g. renamed patients)
        if not self.enabled:
            return
        if self.best is not None and not self._model_pt_is_best():
            atomic_save({**self.best, FINISHED: False}, self.model_path)
        self._write_log()

    def _model_pt_is_best(self) -> bool:
        """model.pt exists and holds :attr:`best` (its finished mark and logit calibration
        aside): not a model of another run in the same folder (``gigamil train`` with other
        settings), nor a newer best epoch saved just before a kill, nor a damaged file."""
        if not self.model_path.is_file():
            return False
        skip = {FINISHED, "logit_calibration", DIGEST_KEY, LEARNING_KEY}
        try:
            on_disk = load_checkpoint(self.model_path)
        except GigamilError as exc:
            log.warning("%s; written again from %s", exc, self.last_path)
            return False

        def digest(ckpt: Mapping[str, Any]) -> str:
            return content_digest({k: v for k, v in ckpt.items() if k not in skip})

        same = digest(on_disk) == digest(self.best or {})
        if not same:
            log.info(
                "%s is not the best model of %s: written again", self.model_path, self.last_path
            )
        return same

    def save_best(self, ckpt: dict[str, Any]) -> None:
        """A new best epoch: ``ckpt`` (from :func:`gigamil.train.model_file.model_checkpoint`) becomes model.pt, marked
        ``training_finished: False`` until :meth:`finish`."""
        self.best = ckpt
        if self.enabled:
            atomic_save({**ckpt, FINISHED: False}, self.model_path)

    def finish(self) -> None:
        """The training has ended: model.pt (the best epoch) is marked ``training_finished:
        True`` (rewritten only when it is missing or not yet marked, so a finished and
        calibrated model.pt is left as it is), with its ``learning`` record
        (:func:`gigamil.train.learning.learning_record` of the log's rows). :func:`load_model`
        refuses a model.pt marked
        False: a killed ``gigamil train`` left its best epoch so far, which looked finished."""
        if not self.enabled or self.best is None:
            return
        on_disk = load_checkpoint(self.model_path) if self.model_path.is_file() else None
        if on_disk is not None and on_disk.get(FINISHED, True):
            return
        # the file on disk, when there, is the best epoch (with its calibration, if fitted)
        record = learning_record(self.rows)  # the training loss against chance, with the model
        extra = {LEARNING_KEY: record} if record else {}
        atomic_save({**(on_disk or self.best), FINISHED: True, **extra}, self.model_path)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Append one row (keys ``LOG_COLUMNS``) and rewrite train_log.csv."""
        self.rows.append(dict(row))
        if self.enabled:
            self._write_log()

    def save_last(self, state: Mapping[str, Any]) -> None:
        """Write last.pt: ``state`` (model, optimizer, ...) plus this saver's state."""
        if self.enabled:
            atomic_save({**state, **self.state_dict()}, self.last_path)

    def _write_log(self) -> None:
        write_train_log(self.log_path, self.rows, self.LOG_COLUMNS)


def write_train_log(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Write ``rows`` (dicts; a missing key or NaN is an empty cell) as a CSV with header
    ``columns`` to ``path``, atomically: the one writer of train_log.csv (a fold's and a
    replicate ensemble's). Raises ValueError for a key not in ``columns``."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v != v else v for k, v in row.items()} for row in rows)
    atomic_write_bytes(Path(path), text.getvalue().encode())
