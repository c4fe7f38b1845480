"""``training.strategy: em``: MIL training as alternating optimisation of head and encoder.

Instead of backpropagating the bag loss through every patch (GradCache, exact but two encoder
passes per patch per step), the fold is trained in rounds (``training.em``):

- **M-step** (every round): with the encoder fixed, every slide is encoded once (eval mode, no
  augmentation; :func:`gigamil.data.feature_extract.encode_bag`, float16 like the feature
  cache) into in-memory :class:`~gigamil.data.features.FeatureBag` s (``FeatureBag.in_memory``:
  N × D × 2 bytes for the fold's N patches), and the attention head trains on those features
  with the head trainer of the ``frozen`` strategy (:func:`gigamil.train.loop.train_epoch`),
  ``head_epochs`` epochs; then validation on the validation slides' features.
- **E-step** (rounds 2 and later, before the M-step): with the head fixed, the bag classifier
  labels ``instances_per_round`` training patches
  (:func:`~gigamil.train.pseudo_labels.pseudo_labels`: the classifier applied
  to each patch as a bag of one, or attention-weighted bag evidence; every patch of a
  first-class bag is first-class, the standard MIL assumption), and the encoder is fine-tuned
  on minibatches of those patches (augmented) for ``encoder_steps`` steps, so that the fixed
  head's bag-of-one prediction matches the pseudo-labels
  (:func:`~gigamil.train.pseudo_labels.soft_cross_entropy`).

Round 1 is therefore the ``frozen`` strategy; each later round couples the encoder more
closely to the head. This is the self-training / pseudo-label family of MIL methods (instance
pseudo-labels from a bag-level teacher, e.g. Lerousseau et al. 2020, MICCAI, "Weakly supervised
multiple instance learning histopathological tumor segmentation"), here with the ABMIL head as
the teacher. After each round the checkpoint ``last.pt`` is written (:class:`CheckpointSaver`),
so a killed run continues from the last finished round; ``model.pt`` holds the best round's
encoder and head (by ``training.early_stopping.metric``), in the format of the end-to-end
trainer (predictions, heatmaps and ensembles read it unchanged).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from gigamil.data.feature_extract import encode_bags
from gigamil.data.features import FeatureBag
from gigamil.errors import ConfigError, GigamilError
from gigamil.logutil import log_context
from gigamil.models.mil import MILModel
from gigamil.nn.rng import get_rng_state, manual_seed, set_rng_state
from gigamil.settings import ModelConfig, TrainingConfig
from gigamil.train.amp import AmpScaler, Optimization
from gigamil.train.calibration import calibrate_model
from gigamil.train.early_stopping import FINISHED, EarlyStopping
from gigamil.train.loop import (
    BagItem,
    EpochSettings,
    bag_seed,
    make_scheduler,
    steps_per_epoch,
    train_epoch,
    validate,
)
from gigamil.train.model_file import model_checkpoint
from gigamil.train.monitor import add_scalars, check_finite_weights, tensorboard_events
from gigamil.train.pseudo_labels import balanced_soft_weights, encoder_steps, pseudo_labels

if TYPE_CHECKING:
    from gigamil.train.trainer import FoldTrainer

log = logging.getLogger(__name__)


class EMTrainer:
    """The rounds of ``training.strategy: em`` for one fold (see the module docstring).

    Shares the fold's model, checkpoint saver, header and validation loss with the end-to-end
    :class:`~gigamil.train.trainer.FoldTrainer` that builds it (``parts``), so ``model.pt``,
    ``last.pt`` and ``train_log.csv`` have the same format; a row of ``train_log.csv`` is a
    round (``epoch`` = round, ``train_loss`` = the head's loss in its last epoch,
    ``encoder_loss`` = the mean pseudo-label loss of the E-step, empty in round 1).
    """

    def __init__(
        self, parts: FoldTrainer, model_cfg: ModelConfig, training_cfg: TrainingConfig
    ) -> None:
        if parts.data.features is not None:
            raise GigamilError(
                "training.strategy: em reads patch stores (it encodes the slides itself each "
                "round), but the fold's stores are feature stores"
            )
        if parts.runtime.info.world > 1:
            raise ConfigError("training.strategy: em runs in one process (not under torchrun)")
        self.p = parts
        self.cfg, self.em = training_cfg, training_cfg.em
        self.model: MILModel = parts.model
        self.head_model = MILModel(nn.Identity(), self.model.attention_model, self.model.loss_fn)
        self.early_stopping = EarlyStopping(
            training_cfg.early_stopping.metric, self.em.rounds, 0, self.em.rounds
        )
        self.encoder_random_init = model_cfg.weights is None
        self.features: tuple[list[BagItem], list[BagItem]] | None = None

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool) -> Path:
        """Run the rounds (from ``last.pt`` when ``resume``); returns the path of model.pt."""
        saver, es, rounds = self.p.saver, self.early_stopping, self.em.rounds
        if resume:
            self._resume()
        if es.finished or es.epoch >= rounds:
            log.info(FINISHED, f"round {es.epoch}/{rounds}", saver.last_path.parent)
            return saver.model_path
        if es.epoch == 0:
            calibrate_model(
                self.model,
                [it.bag for it in self.p.data.train],
                n_patches=self.cfg.calibration_patches,
                encoder_too=self.encoder_random_init,
                seed=self.cfg.seed,
            )
        with tensorboard_events(
            self.p.out_dir / "tensorboard", es.epoch + 1, self.cfg.tensorboard
        ) as tb:
            for r in range(es.epoch + 1, rounds + 1):
                with log_context(self.round_name(r)):
                    self._round(r, tb)
        self.features = None
        return saver.model_path

    def round_name(self, r: int) -> str:
        """``fold 2 round 3/4``: the log context of one round."""
        return f"{self.p.runtime.name} round {r}/{self.em.rounds}".strip()

    def state_dict(self) -> dict[str, Any]:
        """``last.pt``'s state after a round (optimisers restart every round: none kept)."""
        return {
            "model": self.model.state_dict(),
            "early_stopping": self.early_stopping.state_dict(),
            "rng": get_rng_state(self.p.runtime.device),
            "strategy": "em",
        }

    def _resume(self) -> None:
        ckpt = self.p.saver.load_last()
        if ckpt is None:
            return
        self.model.load_state_dict(ckpt["model"])
        self.early_stopping.load_state_dict(ckpt["early_stopping"])
        set_rng_state(ckpt["rng"], self.p.runtime.device)
        self.p.saver.load_state_dict(ckpt)
        log.info(
            "resuming from %s after round %d/%d",
            self.p.saver.last_path,
            self.early_stopping.epoch,
            self.em.rounds,
        )
        self.p.saver.restore_outputs(self.p.header)

    def _round(self, r: int, tb: Any = None) -> None:
        """Round ``r``: E-step (from round 2), M-step, validation, then its row of
        train_log.csv (and TensorBoard ``tb``), model.pt when it is the best and last.pt."""
        t0 = time.time()
        manual_seed(bag_seed(self.cfg.seed, r, -3))  # a round depends on (seed, round) only
        encoder_loss: float | str = ""
        if r > 1:
            train_feats, _ = self._features(r - 1)  # the features the head was trained on
            encoder_loss = self.e_step(r, train_feats)
            self._check_finite(r, "E-step", encoder_loss)
            self.features = None  # the encoder changed: encode again
        train_feats, val_feats = self._features(r)
        head_loss, lr = self.m_step(r, train_feats)
        self._check_finite(r, "M-step", head_loss)
        metrics = validate(
            self.head_model,
            val_feats,
            None,
            len(self.p.data.classes),
            self.p.val_loss_fn,
            self.p.runtime.log_every_s,
        )
        es = self.early_stopping
        improved = es.update(r, metrics, head_loss)
        seconds = time.time() - t0
        shown = f" val_loss {metrics['loss']:.4f} val_auc {metrics['auc']:.4f}" if val_feats else ""
        log.info(  # without validation slides no val_ fields, as FoldTrainer's line
            "done: head loss %.4f encoder loss %s%s (%.1f s)%s",
            head_loss,
            "-" if encoder_loss == "" else f"{encoder_loss:.4f}",
            shown,
            seconds,
            " *" if improved else "",
        )
        saver = self.p.saver
        if improved:
            val = {f"val_{k}": v for k, v in metrics.items()}
            ckpt = model_checkpoint(self.model, self.p.header, r, {"train_loss": head_loss, **val})
            saver.save_best(ckpt)
        row = {
            "epoch": r,
            "train_loss": head_loss,
            "val_loss": metrics["loss"],
            "val_auc": metrics["auc"],
            "val_balanced_accuracy": metrics["balanced_accuracy"],
            "lr": lr,
            "seconds": round(seconds, 3),
            "best_epoch": es.best_epoch,
            "n_train_bags": len(self.p.data.train),
            "n_val_bags": len(self.p.data.val),
            "encoder_loss": encoder_loss,
            **self.p.levels,
        }
        saver.log_epoch(row)
        if tb is not None:  # training.tensorboard: a step per round, as train_log.csv's rows
            add_scalars(tb, row, r, extra=() if encoder_loss == "" else ("encoder_loss",))
        saver.save_last(self.state_dict())

    def _check_finite(self, r: int, step: str, loss: float | str) -> None:
        """Stop a round whose ``step`` (E-step or M-step) left NaN or inf weights (it diverged),
        naming the learning rate of that step: the next encoding would blame the patches."""
        key = "training.lr"
        if step == "E-step":
            key = "training.em.encoder_lr" + (
                "" if self.em.encoder_lr is not None else " (default: training.lr)"
            )
        check_finite_weights(self.model, r, float(loss), f"the {step} of round {r}", key)

    # ------------------------------------------------------------------ features
    def _features(self, r: int) -> tuple[list[BagItem], list[BagItem]]:
        """The training and validation bags encoded by the current encoder (eval mode; kept
        until the encoder changes), as in-memory :class:`FeatureBag` s (float16, N × D × 2
        bytes); one pass, with a progress line at most every ``log_every_s`` seconds."""
        if self.features is None:
            t0, data, model = time.time(), self.p.data, self.model
            items, was_training = [*data.train, *data.val], model.training
            model.eval()
            try:
                feats = encode_bags(
                    model.feature_encoder,
                    [it.bag for it in items],
                    self.p.runtime.device,
                    self.p.settings.chunk or 256,
                    amp=model.amp_dtype is not None,
                    log_every_s=self.p.runtime.log_every_s,
                )
            finally:
                model.train(was_training)
            bags = [_feature_item(it, f, r) for it, f in zip(items, feats, strict=True)]
            self.features = (bags[: len(data.train)], bags[len(data.train) :])
            n = sum(len(b.bag) for b in bags)
            log.info("encoded %d patches of %d slides (%.1f s)", n, len(bags), time.time() - t0)
        return self.features

    # ------------------------------------------------------------------ M-step
    def m_step(self, r: int, items: Sequence[BagItem]) -> tuple[float, float]:
        """Train the head on the round's features, ``head_epochs`` epochs with a fresh AdamW
        (``training.lr``, ``training.schedule`` over the round); returns (loss of the last
        epoch, learning rate at the start)."""
        cfg, em, head = self.cfg, self.em, self.head_model
        calibrate_model(  # FeatureNorm statistics of the new features (when the head has one)
            head,
            [it.bag for it in items],
            n_patches=cfg.calibration_patches,
            encoder_too=False,
            chunk=256,  # features, not patches: the batch size of the rounds measured before
            seed=cfg.seed + r,
        )
        params = [p for p in head.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(
            params, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay)
        )
        steps = em.head_epochs * steps_per_epoch(len(items), cfg.bags_per_step, 1)
        optim = Optimization(
            optimizer,
            make_scheduler(optimizer, cfg.schedule, steps),
            AmpScaler(False, self.p.runtime.device),
        )
        lr = optim.lr
        settings = EpochSettings(
            seed=cfg.seed,
            bags_per_step=cfg.bags_per_step,
            chunk=None,
            max_instances=self.p.settings.max_instances,
            bag_mixing=float(cfg.bag_mixing),
            log_every_s=self.p.runtime.log_every_s,
        )
        loss = float("nan")
        for e in range(1, em.head_epochs + 1):
            loss = train_epoch(
                head, items, optim, epoch=(r - 1) * em.head_epochs + e, settings=settings
            )
        log.info("M-step: head trained %d epochs, loss %.4f", em.head_epochs, loss)
        return loss, lr

    # ------------------------------------------------------------------ E-step
    def instance_targets(
        self, r: int, items: Sequence[BagItem]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-labelled training patches of round ``r``: ``(patches uint8 (M, H, W, 3),
        targets (M, n_classes))``, ``instances_per_round`` drawn evenly from the training
        slides (seeded by seed and round), those below ``threshold`` confidence left out."""
        em, data = self.em, self.p.data
        head = self.model.attention_model
        device = self.p.runtime.device
        per_bag = max(1, math.ceil(em.instances_per_round / max(1, len(items))))
        gen = torch.Generator().manual_seed(bag_seed(self.cfg.seed, r, -5))
        patches, targets = [], []
        head.eval()
        try:
            for feat_item, item in zip(items, data.train, strict=True):
                fbag = feat_item.bag
                h = fbag.load().to(device)
                adj = fbag.adjacency().to(device) if getattr(head, "needs_adj", False) else None
                q = pseudo_labels(head, h, item.label, em.pseudo_label, em.temperature, adj)
                sub = item.bag.subsample(per_bag, gen)
                rows = sub.indices if sub.indices is not None else np.arange(len(item.bag))
                targets.append(q[torch.from_numpy(np.asarray(rows)).to(device)].cpu())
                patches.append(sub.load())
        finally:
            head.train()
        x, q = torch.cat(patches), torch.cat(targets)
        keep = q.max(-1).values >= em.threshold
        return x[keep], q[keep]

    def e_step(self, r: int, items: Sequence[BagItem]) -> float:
        """Fine-tune the encoder for ``encoder_steps`` steps on pseudo-labelled patches with
        the head fixed; returns the mean loss (NaN when fewer than 2 patches pass the
        threshold: the encoder is left as it is)."""
        em, cfg, model = self.em, self.cfg, self.model
        x, q = self.instance_targets(r, items)
        if len(x) < 2:
            log.warning(
                "E-step: %d patch(es) above the pseudo-label threshold %.2f; encoder unchanged",
                len(x),
                em.threshold,
            )
            return float("nan")
        hard = np.bincount(q.argmax(-1).numpy(), minlength=q.shape[1])
        log.info(
            "E-step: %d pseudo-labelled patches (%s by class), %d encoder steps",
            len(x),
            "/".join(map(str, hard)),
            em.encoder_steps,
        )
        weights = balanced_soft_weights(q) if cfg.class_weights == "balanced" else None
        head = model.attention_model
        head.eval()
        trainable = [p for p in head.parameters() if p.requires_grad]
        for p in trainable:  # the head is fixed in the E-step
            p.requires_grad_(False)
        model.feature_encoder.train()
        optim = self._encoder_optimization()
        try:
            total = encoder_steps(
                model,
                x,
                q,
                weights,
                optim,
                steps=em.encoder_steps,
                batch=em.instance_batch,
                seed=bag_seed(cfg.seed, r, -7),
                log_every_s=self.p.runtime.log_every_s,
            )
        finally:
            for p in trainable:
                p.requires_grad_(True)
            model.train()
        mean = total / em.encoder_steps
        log.info("E-step: encoder fine-tuned, pseudo-label loss %.4f", mean)
        return mean

    def _encoder_optimization(self) -> Optimization:
        """AdamW over the encoder's trainable parameters (``em.encoder_lr``, else
        ``training.lr``), a constant schedule and ``training.amp``."""
        em, cfg, model = self.em, self.cfg, self.model
        params = [p for p in model.feature_encoder.parameters() if p.requires_grad]
        lr = float(em.encoder_lr if em.encoder_lr is not None else cfg.lr)
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(cfg.weight_decay))
        amp = AmpScaler(cfg.amp, self.p.runtime.device)
        return Optimization(optimizer, make_scheduler(optimizer, "constant", 1), amp)


def _feature_item(item: BagItem, feats: np.ndarray, r: int) -> BagItem:
    """``item`` with its round-``r`` features ``feats`` as an in-memory FeatureBag."""
    patch_px = int(item.bag.patch_shape[0])
    attrs = {"encoder_id": f"em-round{r}", "slide_id": item.slide_id, "patch_px": patch_px}
    bag = FeatureBag.in_memory(feats, item.bag.coords, item.bag.grid, attrs)
    return BagItem(item.slide_id, bag, item.label)  # type: ignore[arg-type]
