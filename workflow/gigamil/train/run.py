"""Fold-level entry points: :func:`train_fold` and :func:`predict_slides`.

Called by the Snakemake scripts (rules train_fold / predict_fold) and by ``gigamil train`` /
``gigamil predict``. DataFrames have the columns ``cohort, slide_id, patient_id, label, store``.

``train_fold`` runs a :class:`FoldTrainer`: an epoch loop over parts that each own their state
(``state_dict()``/``load_state_dict()``): :class:`~gigamil.train.amp.Optimization` (optimizer,
scheduler, AMP scaler), :class:`~gigamil.train.early_stopping.EarlyStopping` and
:class:`~gigamil.train.checkpoint.CheckpointSaver` (model.pt, last.pt, train_log.csv).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from gigamil.data.bags import ZarrBag
from gigamil.data.features import FeatureBag, open_bag
from gigamil.errors import ConfigError, GigamilError
from gigamil.logutil import log_context
from gigamil.models.factory import build_mil_model
from gigamil.models.mil import MILModel
from gigamil.nn.losses import BagLoss, balanced_class_weights
from gigamil.nn.rng import get_rng_state, set_rng_state
from gigamil.nn.weights import weights_sha256
from gigamil.settings import ModelConfig, TrainingConfig, resolve_strategy
from gigamil.train import distributed as ddp
from gigamil.train.accel import prepare_model
from gigamil.train.amp import AmpScaler, Optimization
from gigamil.train.calibration import calibrate_model
from gigamil.train.checkpoint import (
    CheckpointSaver,
    model_checkpoint,
    model_header,
)
from gigamil.train.early_stopping import EarlyStopping
from gigamil.train.em import EMTrainer
from gigamil.train.logit_calibration import calibrate_fold_model
from gigamil.train.loop import (
    PROGRESS_EVERY_S,
    BagItem,
    EpochSettings,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
    validate,
    weight_average,
)
from gigamil.train.replicates import (
    combine_replicates,
    replicate_config,
    replicate_dir,
    rotated_validation,
)

log = logging.getLogger(__name__)

TB_SCALARS = ("train_loss", "val_loss", "val_auc", "val_balanced_accuracy", "lr", "seconds")
REQUIRED_COLUMNS = ("cohort", "slide_id", "patient_id", "label", "store")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("training.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def check_columns(df: pd.DataFrame, what: str) -> None:
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
    df: pd.DataFrame, classes: Sequence[str], what: str, feed: Feed | None = None
) -> list[BagItem]:
    """Open every store; bags without instances (no tissue) are skipped with a warning."""
    feed = feed or Feed()
    items = []
    for row in df.itertuples(index=False):
        label = _label_index(row.label, classes, row.slide_id)
        bag = open_bag(row.store, workers=feed.workers, pin_memory=feed.pin_memory)
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


class Feed(NamedTuple):
    """How bags are read: ``workers`` decoding threads, chunks in pinned memory or not."""

    workers: int = 1
    pin_memory: bool = False

    @classmethod
    def for_device(cls, device: torch.device, threads: int) -> Feed:
        """``threads`` decoding workers; pinned memory when the model runs on CUDA."""
        return cls(max(1, int(threads)), device.type == "cuda")


MPP_TOLERANCE = 0.01  # relative: patches of two slides (or slide and model) must agree to 1 %


def store_mpp(bag: ZarrBag | FeatureBag) -> float | None:
    """The µm/px of a store's patches (``effective_mpp``, else ``target_mpp``); None if the
    store does not say (a positive number is required)."""
    for key in ("effective_mpp", "target_mpp"):
        value = bag.attrs.get(key)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None


def _patch_mpp(items: Sequence[BagItem]) -> float | None:
    """The common µm/px of the fold's patches (median); GigamilError when two stores differ by
    more than 1 % (training on a mix of resolutions is an error, not a silent average)."""
    known = {it.slide_id: m for it in items if (m := store_mpp(it.bag)) is not None}
    if not known:
        return None
    lo = min(known, key=known.__getitem__)
    hi = max(known, key=known.__getitem__)
    if known[hi] > known[lo] * (1 + MPP_TOLERANCE):
        raise GigamilError(
            f"patch stores at different resolutions: slide {lo} at {known[lo]:g} µm/px, slide "
            f"{hi} at {known[hi]:g} µm/px; extract all slides with the same "
            "preprocessing.patches.mpp"
        )
    return float(np.median(list(known.values())))


def _features(items: Sequence[BagItem]) -> dict[str, Any] | None:
    """``{encoder_id, dim}`` when every bag is a feature store of one encoder, None when every
    bag is a patch store; GigamilError for a mix."""
    kinds = {isinstance(it.bag, FeatureBag) for it in items}
    if kinds == {False}:
        return None
    if kinds != {True}:
        raise GigamilError("some slides are patch stores and some feature stores; use one kind")
    ids = {(it.bag.encoder_id, it.bag.dim) for it in items}  # type: ignore[union-attr]
    if len(ids) != 1:
        raise GigamilError(
            f"feature stores of different encoders {sorted(i for i, _ in ids)}; "
            "extract every slide with the same encoder"
        )
    encoder, dim = next(iter(ids))
    return {"encoder_id": encoder, "dim": dim}


@dataclass(frozen=True)
class FoldData:
    """The opened bags of one fold."""

    classes: list[str]
    train: list[BagItem]
    val: list[BagItem]
    patch_px: int
    patch_mpp: float | None = None
    features: dict[str, Any] | None = None  # {encoder_id, dim}: bags of cached features

    @classmethod
    def open(
        cls,
        train: pd.DataFrame,
        val: pd.DataFrame,
        classes: Sequence[str],
        feed: Feed | None = None,
    ) -> FoldData:
        """Open the fold's stores; ``feed``: how their chunks are read (one worker, no pinning
        by default)."""
        train_items = _open_bags(train, classes, "training", feed)
        val_items = _open_bags(val, classes, "validation", feed)
        if not train_items:
            raise GigamilError("no training slide has patches; nothing to train on")
        seen = {it.label for it in train_items}
        if len(seen) < 2:
            only = classes[next(iter(seen))]
            raise GigamilError(
                f"training slides hold only class {only!r}: a fold must train on every class "
                f"({', '.join(map(str, classes))}); give it slides of each"
            )
        items = train_items + val_items
        return cls(
            list(classes),
            train_items,
            val_items,
            _patch_px(items),
            _patch_mpp(items),
            _features(items),
        )


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


class Runtime(NamedTuple):
    """Where training runs: the torch device and the DDP ranks; ``name`` names the fold on every
    log line (``fold 2``), ``log_every_s`` the most seconds between progress lines in an epoch."""

    device: torch.device
    info: ddp.DistInfo
    name: str = ""
    log_every_s: float = PROGRESS_EVERY_S


def train_fold(  # noqa: PLR0913 - public API (scripts, CLI, tests)
    train: pd.DataFrame,
    val: pd.DataFrame,
    classes: list[str],
    model_cfg: Mapping[str, Any] | ModelConfig,
    training_cfg: Mapping[str, Any] | TrainingConfig,
    out_dir: Path,
    resume: bool = True,
    threads: int = 1,
    fold: int | str | None = None,
    log_every_s: float = PROGRESS_EVERY_S,
) -> Path:
    """Train one fold with the strategy of ``training.strategy`` (:func:`gigamil.settings.
    resolve_strategy`): ``end_to_end`` (encoder included, the accumulating trainer), ``frozen``
    (the head alone, on cached features when the stores are feature stores) or ``em``
    (:class:`gigamil.train.em.EMTrainer`: rounds of head training on re-extracted features and
    encoder fine-tuning on pseudo-labelled patches; a row of train_log.csv is then a round).

    ``model_cfg``/``training_cfg``: the ``model:``/``training:`` sections of config.yaml (missing
    keys take the schema defaults). Writes ``out_dir/model.pt`` (best epoch by
    ``training.early_stopping.metric``), ``out_dir/last.pt`` (model, optimizer, scheduler, epoch,
    RNG and early-stopping state, written after every epoch; ``resume=True`` continues from it)
    and ``out_dir/train_log.csv``. Slides without patches are skipped with a warning. Under
    torchrun (WORLD_SIZE > 1) the bags of every optimizer step are shared out across ranks and
    gradients summed. ``threads``: torch's CPU threads and the threads decoding patch chunks
    ahead of the model (on CUDA into pinned memory). Returns the path of ``model.pt``. With
    ``training.replicates`` N > 1 the fold trains N models (seeds ``seed``..``seed + N - 1``) in
    ``out_dir/replicate{r}/`` and model.pt / train_log.csv hold them all
    (:mod:`gigamil.train.replicates`).

    Every log line names the fold (``fold``, default the name of ``out_dir``) and, within an
    epoch, ``epoch k/total``; an epoch logs progress (bags done, bags/s, loss so far) at least
    every ``log_every_s`` seconds (:func:`gigamil.logutil.log_context`).
    """
    tcfg = TrainingConfig.from_dict(training_cfg)
    strategy, mcfg = resolve_strategy(model_cfg, tcfg)
    if len(classes) < 2:
        raise ConfigError("classes: need at least two classes")
    check_columns(train, "training slides")
    check_columns(val, "validation slides")
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(tcfg.device)
    info = ddp.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    name = f"fold {fold}" if fold is not None else Path(out_dir).name
    if info.world > 1:
        name += f" rank {info.rank}"
    try:
        with log_context(name):
            feed = Feed.for_device(device, threads)
            data = FoldData.open(train, val, [str(c) for c in classes], feed)
            runtime = Runtime(device, info, name, log_every_s)
            if tcfg.replicates == 1:
                return _train_model(data, mcfg, tcfg, Path(out_dir), runtime, strategy, resume)
            dirs, seeds = [], []
            for r in range(tcfg.replicates):
                rcfg = replicate_config(tcfg, r)
                rname = f"{name} replicate {r + 1}/{tcfg.replicates}"
                dirs.append(replicate_dir(out_dir, r))
                seeds.append(rcfg.seed)
                with log_context(rname):
                    log.info(
                        "training member %d of %d (seed %d)", r + 1, tcfg.replicates, rcfg.seed
                    )
                    member_data = data
                    if tcfg.replicate_validation == "rotate":
                        member_data = _member_data(data, train, val, r, int(tcfg.seed))
                    _train_model(
                        member_data,
                        mcfg,
                        rcfg,
                        dirs[-1],
                        runtime._replace(name=rname),
                        strategy,
                        resume,
                    )
            if info.is_main:
                combine_replicates(dirs, seeds, out_dir)
            return Path(out_dir) / "model.pt"
    finally:
        ddp.shutdown(info)


def _member_data(
    data: FoldData, train: pd.DataFrame, val: pd.DataFrame, replicate: int, seed: int
) -> FoldData:
    """The fold's opened bags split as member ``replicate`` of ``replicate_validation: rotate``
    trains on them (:func:`gigamil.train.replicates.rotated_validation`)."""
    m_train, m_val = rotated_validation(train, val, replicate, seed)
    items = {it.slide_id: it for it in [*data.train, *data.val]}

    def pick(df: pd.DataFrame) -> list[BagItem]:  # slides without patches were never opened
        return [items[s] for s in map(str, df["slide_id"]) if s in items]

    log.info(
        "validation patients: %s",
        ", ".join(map(str, dict.fromkeys(m_val["patient_id"]))) or "none",
    )
    return replace(data, train=pick(m_train), val=pick(m_val))


def _train_model(  # noqa: PLR0913 - the parts of one training run
    data: FoldData,
    mcfg: ModelConfig,
    tcfg: TrainingConfig,
    out_dir: Path,
    runtime: Runtime,
    strategy: str,
    resume: bool,
) -> Path:
    """Train one model on ``data`` into ``out_dir`` (model.pt, last.pt, train_log.csv) and,
    under ``training.logit_calibration: class_means``, calibrate it on the training and
    validation bags (main rank); returns the model.pt path."""
    trainer = FoldTrainer(data, mcfg, tcfg, out_dir, runtime)
    if strategy == "em":
        log.info("training strategy em: %d rounds", tcfg.em.rounds)
        path = EMTrainer(trainer, mcfg, tcfg).fit(resume)
    else:
        path = trainer.fit(resume)
    if tcfg.logit_calibration == "class_means" and runtime.info.is_main and path.is_file():
        items = [*data.train, *data.val]
        calibrate_fold_model(
            path,
            [it.bag for it in items],
            [it.label for it in items],
            trainer.settings.chunk,
            runtime.device,
        )
    return path


class FoldTrainer:
    """The model and the stateful parts of one fold's training, and its epoch loop."""

    def __init__(
        self,
        data: FoldData,
        model_cfg: ModelConfig,
        training_cfg: TrainingConfig,
        out_dir: Path,
        runtime: Runtime,
    ) -> None:
        tcfg, device, info = training_cfg, runtime.device, runtime.info
        self.data, self.cfg, self.runtime, self.out_dir = data, tcfg, runtime, out_dir
        n_classes = len(data.classes)
        weights = None
        if tcfg.class_weights == "balanced":
            weights = balanced_class_weights([it.label for it in data.train], n_classes)
        torch.manual_seed(tcfg.seed)
        features = data.features
        if features is not None:
            log.info(
                "training the attention head on cached features of encoder %s (%s, dim %d); "
                "patch augmentation (training.augment) is not applied to cached features",
                model_cfg.encoder,
                features["encoder_id"],
                features["dim"],
            )
        self.model = build_mil_model(
            model_cfg,
            n_classes,
            data.patch_px,
            tcfg.augment,
            BagLoss(tcfg.loss, weights, label_smoothing=tcfg.label_smoothing),
            feature_dim=None if features is None else features["dim"],
        ).to(device)
        self.val_loss_fn = BagLoss(tcfg.loss).to(device)
        amp = AmpScaler(tcfg.amp, device)
        self.model.amp_dtype = amp.dtype
        log.info("training on %s, mixed precision: %s", device, amp.mode or "off (float32)")
        prepare_model(self.model, device, compile_encoder=tcfg.compile)
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=float(tcfg.lr),
            weight_decay=float(tcfg.weight_decay),
        )
        total_steps = tcfg.epochs * steps_per_epoch(len(data.train), tcfg.bags_per_step, info.world)
        self.optim = Optimization(
            optimizer, make_scheduler(optimizer, tcfg.schedule, total_steps), amp
        )
        self.early_stopping = EarlyStopping.from_config(tcfg.early_stopping, tcfg.epochs)
        self.ema = weight_average(self.model, tcfg.ema_decay)
        self.encoder_random_init = model_cfg.weights is None
        signature = {
            "model": model_cfg.to_dict(),
            "classes": data.classes,
            "training": tcfg.resume_signature(model_cfg.batchnorm == "train"),
            "train": sorted(it.slide_id for it in data.train),
            "val": sorted(it.slide_id for it in data.val),
            "features": features,
        }
        self.saver = CheckpointSaver(out_dir, signature, enabled=info.is_main)
        digest = weights_sha256(model_cfg.weights, model_cfg.encoder)
        if model_cfg.weights is not None:
            log.info(
                "encoder %s, weights %s (sha256 %s)", model_cfg.encoder, model_cfg.weights, digest
            )
        self.header = model_header(
            model_cfg.to_dict(), data.classes, data.patch_px, data.patch_mpp, digest, features
        )
        self.settings = EpochSettings(
            seed=tcfg.seed,
            bags_per_step=tcfg.bags_per_step,
            chunk=_int_or_none(tcfg.max_instances_per_forward_pass),
            max_instances=_int_or_none(tcfg.max_instances_per_bag or None),
            bag_mixing=float(tcfg.bag_mixing),
            info=info,
            log_every_s=runtime.log_every_s,
        )

    def fit(self, resume: bool) -> Path:
        """Train (from ``last.pt`` when ``resume``) until early stopping or the last epoch."""
        if resume:
            self._resume()
        es, epochs = self.early_stopping, self.cfg.epochs
        if es.finished or es.epoch >= epochs:
            log.info("training already finished (epoch %d/%d); nothing to do", es.epoch, epochs)
            return self.saver.model_path
        if es.epoch == 0:  # a fresh start (a resumed run has the statistics in last.pt)
            calibrate_model(
                self.model,
                [it.bag for it in self.data.train],
                n_patches=self.cfg.calibration_patches,
                encoder_too=self.encoder_random_init,
                chunk=self.settings.chunk or 256,
                seed=self.cfg.seed,
            )
        tb = None
        if self.cfg.tensorboard and self.runtime.info.is_main:
            tb = tensorboard_writer(self.out_dir / "tensorboard", es.epoch + 1)
        try:
            for epoch in range(es.epoch + 1, epochs + 1):
                with log_context(self.epoch_name(epoch)):
                    self._epoch(epoch, tb)
                    if es.should_stop:
                        log.info("early stopping (best epoch %d)", es.best_epoch)
                        break
        finally:
            if tb is not None:
                tb.close()
        return self.saver.model_path

    @property
    def eval_model(self) -> MILModel:
        """The model validated and saved: the moving average of the weights under
        ``training.ema_decay``, else the trained model itself."""
        return self.model if self.ema is None else self.ema.module

    def epoch_name(self, epoch: int) -> str:
        """``fold 2 epoch 3/20``: the log context of one epoch."""
        return f"{self.runtime.name} epoch {epoch}/{self.cfg.epochs}".strip()

    def state_dict(self) -> dict[str, Any]:
        """``last.pt``'s training state (the saver adds its own)."""
        return {
            "model": self.model.state_dict(),
            **self.optim.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "rng": get_rng_state(self.runtime.device),
            **({} if self.ema is None else {"ema": self.ema.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(dict(state))
        self.early_stopping.load_state_dict(state["early_stopping"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], self.runtime.device)
        self.saver.load_state_dict(state)

    def _resume(self) -> None:
        ckpt = self.saver.load_last()
        if ckpt is None:
            return
        self.load_state_dict(ckpt)
        log.info(
            "resuming from %s after epoch %d/%d",
            self.saver.last_path,
            self.early_stopping.epoch,
            self.cfg.epochs,
        )
        self.saver.restore_outputs()  # Snakemake deletes the declared outputs of a failed job

    def _epoch(self, epoch: int, tb: Any) -> None:
        """Train, validate, update early stopping, write the checkpoints and logs of one epoch."""
        t0, lr = time.time(), self.optim.lr
        data = self.data
        train_loss = train_epoch(
            self.model, data.train, self.optim, epoch=epoch, settings=self.settings, ema=self.ema
        )
        check_finite_weights(self.model, epoch, train_loss)
        metrics = validate(
            self.eval_model,
            data.val,
            self.settings.chunk,
            len(data.classes),
            self.val_loss_fn,
            self.runtime.log_every_s,
        )
        improved = self.early_stopping.update(epoch, metrics, train_loss)
        seconds = time.time() - t0
        log.info(
            "done: train_loss %.4f val_loss %.4f val_auc %.4f (%.1f s)%s",
            train_loss,
            metrics["loss"],
            metrics["auc"],
            seconds,
            " *" if improved else "",
        )
        if self.runtime.info.is_main:
            if improved:
                val = {f"val_{k}": v for k, v in metrics.items()}
                ckpt = model_checkpoint(
                    self.eval_model, self.header, epoch, {"train_loss": train_loss, **val}
                )
                self.saver.save_best(ckpt)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": metrics["loss"],
                "val_auc": metrics["auc"],
                "val_balanced_accuracy": metrics["balanced_accuracy"],
                "lr": lr,
                "seconds": round(seconds, 3),
                "best_epoch": self.early_stopping.best_epoch,
                "n_train_bags": len(data.train),
                "n_val_bags": len(data.val),
            }
            self.saver.log_epoch(row)
            if tb is not None:
                for key in TB_SCALARS:
                    tb.add_scalar(key, row[key], epoch)
                tb.flush()
            self.saver.save_last(self.state_dict())
        ddp.barrier(self.runtime.info)


def non_finite_weights(model: torch.nn.Module) -> str:
    """The first three floating-point tensors of ``model``'s state dict that hold NaN or inf,
    as ``"a, b, c, ..."`` ("" when every weight is a finite number)."""
    bad = [
        n for n, t in model.state_dict().items() if t.is_floating_point() and not t.isfinite().all()
    ]
    return ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")


def check_finite_weights(model: torch.nn.Module, epoch: int, train_loss: float) -> None:
    """Stop a training whose weights became NaN or inf (it diverged): every later epoch and the
    fold's predictions would be NaN. With ``amp: fp16`` the gradient scaler skips such steps, so
    this only fires when the optimizer itself wrote non-finite weights.

    Raises:
        GigamilError: naming the epoch, the training loss and the first parameters affected.
    """
    bad = non_finite_weights(model)
    if bad:
        raise GigamilError(
            f"training diverged in epoch {epoch} (training loss {train_loss:.4g}): the weights "
            f"hold NaN or inf ({bad}); lower training.lr (or check the patches), delete the "
            "fold's last.pt and rerun"
        )


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
