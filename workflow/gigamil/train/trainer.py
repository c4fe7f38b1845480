"""The end-to-end and frozen trainers of one fold: :class:`FoldTrainer`, the model and the
stateful parts of its training (:class:`~gigamil.train.amp.Optimization`,
:class:`~gigamil.train.early_stopping.EarlyStopping`,
:class:`~gigamil.train.checkpoint.CheckpointSaver`) and its epoch loop; built and run by
:func:`gigamil.train.run.train_fold`, and shared with :class:`gigamil.train.em.EMTrainer`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from gigamil.data.bags import store_digests
from gigamil.logutil import log_context
from gigamil.models.factory import build_mil_model
from gigamil.models.mil import MILModel
from gigamil.nn.losses import BagLoss, balanced_class_weights
from gigamil.nn.rng import get_rng_state, set_rng_state
from gigamil.nn.weights import weights_sha256
from gigamil.settings import ModelConfig, TrainingConfig
from gigamil.strategy import training_signature
from gigamil.train import distributed as ddp
from gigamil.train.accel import prepare_model
from gigamil.train.amp import AmpScaler, Optimization
from gigamil.train.calibration import calibrate_model
from gigamil.train.checkpoint import CheckpointSaver
from gigamil.train.early_stopping import FINISHED, EarlyStopping
from gigamil.train.learning import log_columns
from gigamil.train.loop import (
    PROGRESS_EVERY_S,
    EpochSettings,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
    validate,
    weight_average,
)
from gigamil.train.model_file import model_checkpoint, model_header
from gigamil.train.monitor import add_scalars, check_finite_weights, tensorboard_events
from gigamil.train.signature import row_order_keys

if TYPE_CHECKING:
    from gigamil.train.fold_data import FoldData

# the epoch lines keep the logger name they had in gigamil.train.run (README's sample log)
log = logging.getLogger("gigamil.train.run")


class Runtime(NamedTuple):
    """Where training runs: the torch device and the DDP ranks; ``name`` names the fold on every
    log line (``fold 2``), ``log_every_s`` the most seconds between progress lines in an epoch."""

    device: torch.device
    info: ddp.DistInfo
    name: str = ""
    log_every_s: float = PROGRESS_EVERY_S


@contextlib.contextmanager
def no_gradient(params: list[torch.nn.Parameter]) -> Iterator[None]:
    """``params`` without gradient inside the block (``requires_grad`` False, restored after):
    held at learning rate 0, they cost no backward pass (an encoder without trainable parameters
    is encoded under ``torch.no_grad``, :meth:`MILModel.forward_train`), and AdamW, which skips
    parameters without a gradient, leaves their moments and weight decay alone."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def parameter_groups(
    model: torch.nn.Module, lr: float, encoder_lr: float | None
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: every trainable parameter at ``lr``, or with
    ``encoder_lr`` (``training.encoder_lr``) the head's (attention pool, classifier) first at
    ``lr`` and the encoder's (``model.feature_encoder``) at ``encoder_lr``. The first group's
    rate is the one the training log reports."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    encoder = getattr(model, "feature_encoder", None)
    if encoder_lr is None or encoder is None:
        return [{"params": trainable, "lr": float(lr)}]
    ids = {id(p) for p in encoder.parameters()}
    head = [p for p in trainable if id(p) not in ids]
    groups = [{"params": head, "lr": float(lr)}]
    encoder_params = [p for p in trainable if id(p) in ids]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": float(encoder_lr)})
    return groups


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
        tcfg, info = training_cfg, runtime.info
        self.data, self.cfg, self.runtime, self.out_dir = data, tcfg, runtime, out_dir
        amp = self._build_model(model_cfg)
        self.optim = self._optimization(amp)
        self.early_stopping = EarlyStopping.from_config(tcfg.early_stopping, tcfg.epochs)
        self.ema = weight_average(self.model, tcfg.ema_decay)
        self.encoder_random_init = model_cfg.weights is None
        self.saver = CheckpointSaver(out_dir, self._signature(model_cfg), enabled=info.is_main)
        self.header = self._header(model_cfg)
        self.settings = epoch_settings(tcfg, runtime)
        self.levels = log_columns(  # per row: the levels of the loss it trains with
            len(data.classes),
            tcfg.loss,
            tcfg.label_smoothing,
            instance_loss=model_cfg.instance_loss,
            weak_patch_labels=model_cfg.pool == "instance",
            unweighted_labels=None if tcfg.class_weights else [it.label for it in data.train],
        )

    def _build_model(self, model_cfg: ModelConfig) -> AmpScaler:
        """Seed torch with ``training.seed``, build the model (its loss weighted by
        ``training.class_weights``) on the device, the validation loss and the AMP scaler;
        returns the scaler."""
        tcfg, data, device = self.cfg, self.data, self.runtime.device
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
        return amp

    def _optimization(self, amp: AmpScaler) -> Optimization:
        """AdamW over the trainable parameters (the encoder's at ``training.encoder_lr`` when
        set, :func:`parameter_groups`, and at 0 for the first ``training.head_first_epochs``),
        the ``training.schedule`` (after ``training.warmup_epochs`` of linear warm-up) over
        every step of the run, and ``amp``."""
        tcfg, info = self.cfg, self.runtime.info
        encoder_lr = tcfg.encoder_lr
        if tcfg.head_first_epochs and encoder_lr is None:  # a group of its own to hold
            encoder_lr = tcfg.lr
        groups = parameter_groups(self.model, tcfg.lr, encoder_lr)
        optimizer = torch.optim.AdamW(
            groups, lr=float(tcfg.lr), weight_decay=float(tcfg.weight_decay)
        )
        per_epoch = steps_per_epoch(len(self.data.train), tcfg.bags_per_step, info.world)
        scheduler = make_scheduler(
            optimizer,
            tcfg.schedule,
            tcfg.epochs * per_epoch,
            warmup_steps=round(tcfg.warmup_epochs * per_epoch),
            hold_steps=(0, tcfg.head_first_epochs * per_epoch)[: len(groups)],
        )
        return Optimization(optimizer, scheduler, amp)

    def _held_params(self, epoch: int) -> list[torch.nn.Parameter]:
        """The encoder's parameters in the first ``training.head_first_epochs`` epochs (their
        group's learning rate is 0 then, :func:`make_scheduler`), else none."""
        groups = self.optim.optimizer.param_groups
        if epoch > self.cfg.head_first_epochs or len(groups) < 2:
            return []
        return list(groups[1]["params"])

    def _signature(self, model_cfg: ModelConfig) -> dict[str, Any]:
        """What ``last.pt`` must match to be resumed: model, classes, training settings, the
        slides with their labels, patch counts and the digests of their patches
        (:func:`store_digests`), the patches' size, µm/px and stain
        normalisation, and the number of processes (steps per epoch and the schedule depend on
        it). One spelling per training, as rule train_fold's params
        (:func:`gigamil.strategy.training_signature`). A changed sheet or re-extracted stores
        make Snakemake rerun the fold, and its finished ``last.pt`` must not be returned then."""
        data = self.data
        frozen = model_cfg.freeze_encoder or model_cfg.trainable_blocks == 0
        model, training = training_signature(
            model_cfg.to_dict(), self.cfg, frozen, cached=bool(data.features)
        )

        def slides(items: list) -> list[list]:
            return sorted(
                [it.slide_id, int(it.label), len(it.bag), *store_digests(it.bag)] for it in items
            )

        return {
            "model": model,
            "classes": data.classes,
            "training": training,
            "train": slides(data.train),
            "val": slides(data.val),
            "patches": [data.patch_px, data.patch_mpp, data.stain_normalization],
            "features": data.features,
            "world": self.runtime.info.world,
            **row_order_keys(data.train, data.val),
        }

    def _header(self, model_cfg: ModelConfig) -> dict[str, Any]:
        """The metadata of ``model.pt`` (:func:`gigamil.train.model_file.model_header`); logs
        the encoder weights' checksum when the model starts from a weights file."""
        data = self.data
        digest = weights_sha256(model_cfg.weights, model_cfg.encoder)
        if model_cfg.weights is not None:
            log.info(
                "encoder %s, weights %s (sha256 %s)", model_cfg.encoder, model_cfg.weights, digest
            )
        return model_header(
            model_cfg.to_dict(),
            data.classes,
            data.patch_px,
            data.patch_mpp,
            digest,
            data.features,
            data.stain_normalization,
            data.seen,
            data.preprocessing,
        )

    def fit(self, resume: bool) -> Path:
        """Train (from ``last.pt`` when ``resume``) until early stopping or the last epoch."""
        if resume:
            self._resume()
        es, epochs = self.early_stopping, self.cfg.epochs
        if es.finished or es.epoch >= epochs:
            log.info(FINISHED, f"epoch {es.epoch}/{epochs}", self.saver.last_path.parent)
            return self.saver.model_path
        if es.epoch == 0:  # a fresh start (a resumed run has the statistics in last.pt)
            self._calibrate(seed=self.cfg.seed)
        on = self.cfg.tensorboard and self.runtime.info.is_main
        with tensorboard_events(self.out_dir / "tensorboard", es.epoch + 1, on) as tb:
            for epoch in range(es.epoch + 1, epochs + 1):
                with log_context(self.epoch_name(epoch)):
                    self._epoch(epoch, tb)
                    if es.should_stop:
                        log.info("early stopping (best epoch %d)", es.best_epoch)
                        break
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
        self.saver.restore_outputs(self.header)  # Snakemake deletes a failed job's outputs

    def _calibrate(self, seed: int) -> None:
        """Recompute the normalisation statistics (:func:`calibrate_model`) from
        ``training.calibration_patches`` training patches drawn with ``seed``."""
        calibrate_model(
            self.model,
            [it.bag for it in self.data.train],
            n_patches=self.cfg.calibration_patches,
            encoder_too=self.encoder_random_init,
            seed=seed,
        )

    def _epoch(self, epoch: int, tb: Any) -> None:
        """Train, validate, update early stopping, write the checkpoints and logs of one epoch."""
        t0, lr = time.time(), self.optim.lr
        data = self.data
        every = self.cfg.recalibrate_every  # training.recalibrate_every: again before epoch 1 + kN
        if every and epoch > 1 and (epoch - 1) % every == 0:
            self._calibrate(seed=self.cfg.seed + epoch)
        with no_gradient(self._held_params(epoch)):
            train_loss = train_epoch(
                self.model,
                data.train,
                self.optim,
                epoch=epoch,
                settings=self.settings,
                ema=self.ema,
            )
        check_finite_weights(self.model, epoch, train_loss)
        for module in {id(m): m for m in (self.model, self.eval_model)}.values():
            ddp.broadcast_buffers(module, self.runtime.info)  # one set of BatchNorm statistics
        metrics = validate(
            self.eval_model,
            data.val,
            self.settings.chunk,
            len(data.classes),
            self.val_loss_fn,
            self.runtime.log_every_s,
        )
        metrics = ddp.broadcast_metrics(metrics, self.runtime.info, self.runtime.device)
        improved = self.early_stopping.update(epoch, metrics, train_loss)
        seconds = time.time() - t0
        val = f" val_loss {metrics['loss']:.4f} val_auc {metrics['auc']:.4f}" if data.val else ""
        star = " *" if improved else ""  # a new best epoch
        log.info("done: train_loss %.4f%s (%.1f s)%s", train_loss, val, seconds, star)
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
                **self.levels,
            }
            self.saver.log_epoch(row)
            if tb is not None:
                add_scalars(tb, row, epoch)
            self.saver.save_last(self.state_dict())
        ddp.barrier(self.runtime.info)


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def epoch_settings(tcfg: TrainingConfig, runtime: Runtime) -> EpochSettings:
    """The per-epoch settings of :func:`gigamil.train.loop.train_epoch` from ``training:``."""
    return EpochSettings(
        seed=tcfg.seed,
        bags_per_step=tcfg.bags_per_step,
        chunk=_int_or_none(tcfg.max_instances_per_forward_pass),
        max_instances=_int_or_none(tcfg.max_instances_per_bag or None),
        bag_mixing=float(tcfg.bag_mixing),
        info=runtime.info,
        log_every_s=runtime.log_every_s,
    )
