"""Fold-level entry points: :func:`train_fold` and :func:`predict_slides`.

Called by the Snakemake scripts (rules train_fold / predict_fold) and by ``gigamil train`` /
``gigamil predict``. DataFrames have the columns ``cohort, slide_id, patient_id, label, store``.

``train_fold`` checks its inputs, opens the fold's bags (:class:`FoldData`) and runs a
:class:`~gigamil.train.trainer.FoldTrainer` (or, for ``training.strategy: em``, an
:class:`~gigamil.train.em.EMTrainer`) per model: one, or ``training.replicates`` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from gigamil.errors import ConfigError, GigamilError
from gigamil.logutil import log_context
from gigamil.settings import ModelConfig, TrainingConfig
from gigamil.strategy import resolve_strategy
from gigamil.train import distributed as ddp
from gigamil.train.em import EMTrainer
from gigamil.train.fold_data import Feed, FoldData, check_columns, check_fold_slides, resolve_device
from gigamil.train.learning import warn_if_unlearned
from gigamil.train.logit_calibration import calibrate_fold_model
from gigamil.train.loop import PROGRESS_EVERY_S, BagItem
from gigamil.train.replicates import (
    combine_replicates,
    replicate_config,
    replicate_dir,
    rotated_validation,
)
from gigamil.train.trainer import FoldTrainer, Runtime

log = logging.getLogger(__name__)


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
    """Train one fold with the strategy of ``training.strategy`` (:func:`gigamil.strategy.
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
    check_fold_slides(train, val)  # what make_folds guarantees, for direct callers
    runtime = _fold_runtime(tcfg, threads, fold, out_dir, log_every_s)
    try:
        with log_context(runtime.name):
            feed = Feed.for_device(runtime.device, threads)
            data = FoldData.open(train, val, [str(c) for c in classes], feed)
            _check_feature_encoder(data, mcfg)
            if data.features is not None and strategy == "end_to_end":  # em: EMTrainer refuses
                log.warning(
                    "training.strategy is %s but the slides are feature stores: only the "
                    "attention head trains, on the cached features (give patch stores to "
                    "train end to end)",
                    strategy,
                )
            if tcfg.replicates == 1:
                return _train_model(data, mcfg, tcfg, Path(out_dir), runtime, strategy, resume)
            _train_replicates(data, (train, val), mcfg, tcfg, out_dir, runtime, strategy, resume)
            return Path(out_dir) / "model.pt"
    finally:
        ddp.shutdown(runtime.info)


def _fold_runtime(
    tcfg: TrainingConfig,
    threads: int,
    fold: int | str | None,
    out_dir: Path,
    log_every_s: float,
) -> Runtime:
    """Set torch's CPU threads, pick the device, join the torchrun process group (if any) and
    name the fold for the log (``fold2``, as its folder and its predictions name it, or the
    name of ``out_dir``; `` rank r`` under DDP)."""
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(tcfg.device)
    info = ddp.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    name = f"fold{fold}" if fold is not None else Path(out_dir).name
    if info.world > 1:
        name += f" rank {info.rank}"
    return Runtime(device, info, name, log_every_s)


def _train_replicates(  # noqa: PLR0913 - the parts of one training run
    data: FoldData,
    frames: tuple[pd.DataFrame, pd.DataFrame],
    mcfg: ModelConfig,
    tcfg: TrainingConfig,
    out_dir: Path,
    runtime: Runtime,
    strategy: str,
    resume: bool,
) -> None:
    """Train the ``training.replicates`` members of the fold (``frames``: its training and
    validation slides, rotated under ``replicate_validation: rotate``) and combine them into
    ``out_dir`` (main rank)."""
    dirs, seeds = [], []
    for r in range(tcfg.replicates):
        rcfg = replicate_config(tcfg, r)
        rname = f"{runtime.name} replicate{r}"  # as its folder and train_log.csv name it
        dirs.append(replicate_dir(out_dir, r))
        seeds.append(rcfg.seed)
        with log_context(rname):
            n, seed = tcfg.replicates, rcfg.seed
            log.info(
                "training replicate%d (%d of %d, seed %d) into %s", r, r + 1, n, seed, dirs[-1]
            )
            member_data = data
            if tcfg.replicate_validation == "rotate":
                member_data = _member_data(data, *frames, r, int(tcfg.seed))
            _train_model(
                member_data,
                mcfg,
                rcfg,
                dirs[-1],
                runtime._replace(name=rname),
                strategy,
                resume,
            )
    if runtime.info.is_main:
        combine_replicates(dirs, seeds, out_dir)


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
    _warn_undefined_auc(data, tcfg)
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
            runtime.log_every_s,
        )
    if runtime.info.is_main:  # after the calibration: a model.pt marked finished has it
        trainer.saver.finish()
        levels = trainer.levels  # a model that did not learn: said, by the log's own levels
        log_file = Path(out_dir) / "train_log.csv"
        warn_if_unlearned(log_file, levels["chance_loss"], runtime.name, levels["flag_loss"])
    ddp.barrier(runtime.info)  # the other ranks wait here, not in the next member's first step
    return path


def _check_feature_encoder(data: FoldData, mcfg: ModelConfig) -> None:
    """ConfigError when the feature stores were encoded otherwise than ``model:`` says: another
    encoder, other weights (file checksum or name), BatchNorm mode or colour histogram (their
    ``encoder_spec`` against the one the configuration gives at the stores' own patch settings):
    model.pt would name one encoder and hold a head trained on another's features. A feature
    store without its ``encoder_spec`` is damaged."""
    from gigamil.data.feature_spec import encoder_spec

    if data.features is None:
        return
    stored = data.train[0].bag.attrs.get("encoder_spec")  # one encoder_id for all (FoldData)
    if not isinstance(stored, Mapping) or "patch_mpp" not in stored:
        raise GigamilError(
            f"{data.train[0].bag.path}: a feature store without its encoder_spec (damaged, or "
            "not written by gigamil features); delete it and rerun to encode it again"
        )
    patches = {
        "mpp": stored["patch_mpp"],
        "patch_px": stored["patch_px"],
        "codec": stored.get("codec") or "zstd",
        "jpeg_quality": stored.get("jpeg_quality") or 90,
        "stain_normalization": stored.get("stain_normalization", "none"),
    }
    mine = encoder_spec(mcfg.to_dict(), patches)
    differ = sorted(k for k in set(mine) | set(stored) if mine.get(k) != stored.get(k))
    if differ:
        shown = "; ".join(f"{k}: {stored.get(k)} in the stores, {mine.get(k)} here" for k in differ)
        raise ConfigError(
            f"the slides are feature stores of encoder {data.features['encoder_id']}, encoded "
            f"otherwise than model: says ({shown}): encode them with this configuration (gigamil "
            "features --config CONFIG.yaml), or set model: to the settings that encoded them"
        )


def _warn_undefined_auc(data: FoldData, tcfg: TrainingConfig) -> None:
    """A warning when ``early_stopping.metric: auc`` cannot act: validation slides of one class
    have no AUC, so every epoch falls back to the validation loss
    (:func:`gigamil.train.early_stopping.scalar_metric`)."""
    present = sorted({int(it.label) for it in data.val})
    if tcfg.early_stopping.metric == "auc" and len(present) == 1:
        log.warning(
            "validation slides of class %s only: their AUC is undefined, so the best epoch is "
            "chosen by the validation loss (training.early_stopping.metric: auc)",
            data.classes[present[0]],
        )
