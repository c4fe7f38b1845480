"""Fold-level entry points: :func:`train_fold` and :func:`predict_slides`.

Called by the Snakemake scripts (rules train_fold / predict_fold) and by ``gigamil train`` /
``gigamil predict``. DataFrames have the columns ``cohort, slide_id, patient_id, label, store``.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from gigamil.config import LOG_ONLY_TRAINING_KEYS
from gigamil.data.bags import ZarrBag
from gigamil.errors import ConfigError, GigamilError
from gigamil.models.factory import build_mil_model, model_config
from gigamil.nn.losses import BagLoss, balanced_class_weights
from gigamil.train import distributed as ddp
from gigamil.train.checkpoint import (
    atomic_save,
    load_checkpoint,
    load_model,
    model_checkpoint,
)
from gigamil.train.loop import (
    BagItem,
    bag_probabilities,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
    validate,
)

log = logging.getLogger(__name__)

TRAINING_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "seed": 0,
    "epochs": 20,
    "lr": 1e-4,
    "weight_decay": 1e-4,
    "schedule": "cosine",
    "bags_per_step": 1,
    "max_instances_per_forward_pass": 256,
    "max_instances_per_bag": None,
    "loss": "ce",
    "class_weights": "balanced",
    "amp": False,
    "early_stopping": {"metric": "auc", "patience": 5},
    "augment": {"flips": True, "rot90": True, "color_jitter": 0.05},
    "tensorboard": False,
}
TB_SCALARS = ("train_loss", "val_loss", "val_auc", "val_balanced_accuracy", "lr", "seconds")
REQUIRED_COLUMNS = ("cohort", "slide_id", "patient_id", "label", "store")
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
)


def training_config(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg`` over the defaults (nested sections merged)."""
    out = copy.deepcopy(TRAINING_DEFAULTS)
    for key, value in (cfg or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def _check_columns(df: pd.DataFrame, what: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        need = ", ".join(REQUIRED_COLUMNS)
        raise GigamilError(f"{what}: missing columns {missing} (need {need})")


def _label_index(label: Any, classes: Sequence[str], slide_id: str) -> int:
    names = [str(c) for c in classes]
    if str(label) not in names:
        raise ConfigError(f"slide {slide_id}: label {label!r} is not one of classes {names}")
    return names.index(str(label))


def _open_bags(
    df: pd.DataFrame, classes: Sequence[str], what: str, prefetch: int = 2
) -> list[BagItem]:
    """Open every store; bags without instances (no tissue) are skipped with a warning."""
    items = []
    for row in df.itertuples(index=False):
        label = _label_index(row.label, classes, row.slide_id)
        bag = ZarrBag(row.store, prefetch=prefetch)
        if len(bag) == 0:
            log.warning("%s: slide %s has no patches (no tissue); skipped", what, row.slide_id)
            continue
        items.append(BagItem(str(row.slide_id), bag, label))
    return items


def _patch_px(items: Sequence[BagItem]) -> int:
    shapes = {it.bag.patch_shape for it in items}
    if len(shapes) != 1:
        raise GigamilError(
            f"patch stores have different patch shapes {sorted(shapes)}; "
            "extract all slides with the same preprocessing.patches settings"
        )
    return int(next(iter(shapes))[0])


def _scalar_metric(metrics: Mapping[str, float], name: str, train_loss: float) -> float:
    """Higher-is-better score for early stopping. Falls back to -val_loss when the metric is
    undefined (e.g. AUC of a one-class validation set), and to -train_loss without validation."""
    value = metrics.get(name, float("nan"))
    if name == "loss":
        value = -value
    if not math.isfinite(value):
        value = -metrics.get("loss", float("nan"))
    if not math.isfinite(value):
        value = -train_loss
    return float(value)


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def train_fold(
    train: pd.DataFrame,
    val: pd.DataFrame,
    classes: list[str],
    model_cfg: dict,
    training_cfg: dict,
    out_dir: Path,
    resume: bool = True,
    threads: int = 1,
) -> Path:
    """Train one fold end to end (encoder included) with the accumulating trainer.

    Writes ``out_dir/model.pt`` (best epoch by ``training.early_stopping.metric``),
    ``out_dir/last.pt`` (model, optimizer, scheduler, epoch, RNG and early-stopping state,
    written after every epoch; ``resume=True`` continues from it) and ``out_dir/train_log.csv``.
    Slides without patches are skipped with a warning. Under torchrun (WORLD_SIZE > 1) the bags
    of every optimizer step are shared out across ranks and gradients summed. Returns the path
    of ``model.pt``.
    """
    out_dir = Path(out_dir)
    mcfg, tcfg = model_config(model_cfg), training_config(training_cfg)
    if len(classes) < 2:
        raise ConfigError("classes: need at least two classes")
    _check_columns(train, "training slides")
    _check_columns(val, "validation slides")
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(tcfg["device"])
    info = ddp.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    try:
        return _train(
            train, val, [str(c) for c in classes], mcfg, tcfg, out_dir, resume, device, info
        )
    finally:
        ddp.shutdown(info)


def _train(
    train: pd.DataFrame,
    val: pd.DataFrame,
    classes: list[str],
    mcfg: dict[str, Any],
    tcfg: dict[str, Any],
    out_dir: Path,
    resume: bool,
    device: torch.device,
    info: ddp.DistInfo,
) -> Path:
    n_classes = len(classes)
    train_items = _open_bags(train, classes, "training")
    val_items = _open_bags(val, classes, "validation")
    if not train_items:
        raise GigamilError("no training slide has patches; nothing to train on")
    patch_px = _patch_px(train_items + val_items)
    seed = int(tcfg["seed"])

    weights = None
    if tcfg["class_weights"] == "balanced":
        weights = balanced_class_weights([it.label for it in train_items], n_classes)
    torch.manual_seed(seed)
    model = build_mil_model(
        mcfg, n_classes, patch_px, tcfg["augment"], BagLoss(tcfg["loss"], weights)
    ).to(device)
    val_loss_fn = BagLoss(tcfg["loss"]).to(device)
    scaler = None
    if tcfg["amp"]:
        model.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        if device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"])
    )
    epochs = int(tcfg["epochs"])
    bps = int(tcfg["bags_per_step"])
    scheduler = make_scheduler(
        optimizer, tcfg["schedule"], epochs * steps_per_epoch(len(train_items), bps, info.world)
    )
    es = tcfg["early_stopping"]
    state: dict[str, Any] = {
        "best_score": None,
        "best_tiebreak": None,
        "best_epoch": 0,
        "bad_epochs": 0,
        "epoch": 0,
        "finished": False,
    }
    signature = {
        "model": mcfg,
        "classes": classes,
        "training": {k: v for k, v in tcfg.items() if k not in LOG_ONLY_TRAINING_KEYS},
        "train": sorted(it.slide_id for it in train_items),
        "val": sorted(it.slide_id for it in val_items),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, model_path, log_path = (
        out_dir / "last.pt",
        out_dir / "model.pt",
        out_dir / "train_log.csv",
    )
    best_ckpt: dict[str, Any] | None = None  # model.pt's content, also kept in last.pt
    rows: list[dict[str, Any]] = []  # train_log.csv's rows, also kept in last.pt
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if ckpt.get("signature") != signature:
            log.warning(
                "%s was written with another configuration or other slides; starting from scratch",
                last_path,
            )
        else:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            state.update(ckpt["early_stopping"])
            torch.set_rng_state(ckpt["rng"]["cpu"])
            if device.type == "cuda" and "cuda" in ckpt["rng"]:
                torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
            best_ckpt, rows = ckpt.get("best"), list(ckpt.get("log_rows", []))
            log.info("resuming from %s after epoch %d", last_path, state["epoch"])
            if info.is_main:  # Snakemake deletes the declared outputs of a failed job
                if best_ckpt is not None and not model_path.is_file():
                    atomic_save(best_ckpt, model_path)
                _write_log(log_path, rows)
    if state["finished"] or state["epoch"] >= epochs:
        log.info("training already finished (epoch %d); nothing to do", state["epoch"])
        return model_path

    chunk = tcfg["max_instances_per_forward_pass"]
    chunk = int(chunk) if chunk is not None else None
    max_inst = tcfg["max_instances_per_bag"]
    tb = (
        tensorboard_writer(out_dir / "tensorboard", state["epoch"] + 1)
        if tcfg["tensorboard"] and info.is_main
        else None
    )
    try:
        for epoch in range(state["epoch"] + 1, epochs + 1):
            t0 = time.time()
            lr = optimizer.param_groups[0]["lr"]
            train_loss = train_epoch(
                model,
                train_items,
                optimizer,
                scheduler,
                epoch,
                seed,
                bps,
                chunk,
                int(max_inst) if max_inst else None,
                info,
                scaler,
            )
            metrics = validate(model, val_items, chunk, n_classes, val_loss_fn)
            score = _scalar_metric(metrics, es["metric"], train_loss)
            tiebreak = _scalar_metric(metrics, "loss", train_loss)  # equal AUC: lower loss wins
            best, best_tb = state["best_score"], state.get("best_tiebreak")
            improved = (
                best is None
                or score > best + 1e-12
                or (
                    abs(score - best) <= 1e-12
                    and best_tb is not None
                    and tiebreak > best_tb + 1e-12
                )
            )
            if improved:
                state.update(
                    best_score=score, best_tiebreak=tiebreak, best_epoch=epoch, bad_epochs=0
                )
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            stop = state["bad_epochs"] >= int(es["patience"])
            state["finished"] = stop or epoch == epochs
            seconds = time.time() - t0
            log.info(
                "epoch %d: train_loss %.4f val_loss %.4f val_auc %.4f (%.1f s)%s",
                epoch,
                train_loss,
                metrics["loss"],
                metrics["auc"],
                seconds,
                " *" if improved else "",
            )
            if info.is_main:
                if improved:
                    best_ckpt = model_checkpoint(
                        model,
                        mcfg,
                        classes,
                        patch_px,
                        epoch,
                        {"train_loss": train_loss, **{f"val_{k}": v for k, v in metrics.items()}},
                    )
                    atomic_save(best_ckpt, model_path)
                rows.append(
                    {
                        "epoch": epoch,
                        "train_loss": train_loss,
                        "val_loss": metrics["loss"],
                        "val_auc": metrics["auc"],
                        "val_balanced_accuracy": metrics["balanced_accuracy"],
                        "lr": lr,
                        "seconds": round(seconds, 3),
                        "best_epoch": state["best_epoch"],
                        "n_train_bags": len(train_items),
                        "n_val_bags": len(val_items),
                    }
                )
                _write_log(log_path, rows)
                if tb is not None:
                    for key in TB_SCALARS:
                        tb.add_scalar(key, rows[-1][key], epoch)
                    tb.flush()
                last = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "early_stopping": dict(state),
                    "rng": _rng_state(device),
                    "signature": signature,
                    "best": best_ckpt,
                    "log_rows": rows,
                }
                if scaler is not None:
                    last["scaler"] = scaler.state_dict()
                atomic_save(last, last_path)
            ddp.barrier(info)
            if stop:
                log.info(
                    "early stopping after epoch %d (best epoch %d)", epoch, state["best_epoch"]
                )
                break
    finally:
        if tb is not None:
            tb.close()
    return model_path


def tensorboard_writer(log_dir: Path, first_epoch: int) -> Any:
    """A TensorBoard ``SummaryWriter`` for ``log_dir``; events of epochs >= ``first_epoch`` left
    by a killed run are purged, so a resumed run does not draw them twice."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(
            "training.tensorboard: true needs the tensorboard package "
            "(pip install 'gigamil[tensorboard]' or pip install tensorboard)"
        ) from exc
    return SummaryWriter(str(log_dir), purge_step=first_epoch if first_epoch > 1 else None)


def predict_slides(
    model_path: Path,
    slides: pd.DataFrame,
    out_csv: Path,
    attention_dir: Path,
    device: str = "auto",
    threads: int = 1,
    max_instances_per_forward_pass: int = 512,
) -> pd.DataFrame:
    """Predict every slide with the model of ``model_path`` (eval mode, inference mode).

    Writes ``out_csv`` (slide_id, patient_id, cohort, label, prob_<class>..., pred; the caller
    adds the fold) and ``attention_dir/{slide_id}.npy`` (float32 (N,), softmax attention in the
    store's row order). A slide without patches gets NaN probabilities, an empty ``pred`` and an
    empty attention array (there is nothing to classify; no guess is made).
    """
    torch.set_num_threads(max(1, int(threads)))
    _check_columns(slides, "slides to predict")
    dev = resolve_device(device)
    model, ckpt = load_model(model_path, dev)
    classes = [str(c) for c in ckpt["classes"]]
    attention_dir = Path(attention_dir)
    attention_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in slides.itertuples(index=False):
        bag = ZarrBag(row.store)
        if len(bag) and bag.patch_shape[0] != int(ckpt["patch_px"]):
            raise GigamilError(
                f"slide {row.slide_id}: patches are {bag.patch_shape[0]} px but "
                f"the model was trained on {ckpt['patch_px']} px"
            )
        if len(bag) == 0:
            log.warning("slide %s has no patches; predicted probabilities are NaN", row.slide_id)
            prob = np.full(len(classes), np.nan)
            att = np.zeros(0, dtype=np.float32)
            pred = ""
        else:
            with torch.inference_mode():
                logits, att_t = model(
                    bag, max_instances_per_forward_pass=max_instances_per_forward_pass
                )
            prob = bag_probabilities(logits).cpu().numpy().astype(np.float64)
            att = att_t.float().cpu().numpy().astype(np.float32)
            pred = classes[int(prob.argmax())]
        np.save(attention_dir / f"{row.slide_id}.npy", att)
        rows.append(
            {
                "slide_id": row.slide_id,
                "patient_id": row.patient_id,
                "cohort": row.cohort,
                "label": row.label,
                **{f"prob_{c}": float(p) for c, p in zip(classes, prob, strict=True)},
                "pred": pred,
            }
        )
    columns = ["slide_id", "patient_id", "cohort", "label", *[f"prob_{c}" for c in classes], "pred"]
    df = pd.DataFrame(rows, columns=columns)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    return df
