"""Fold-level entry points: :func:`train_fold` and :func:`predict_slides`.

Called by the Snakemake scripts (rules train_fold / predict_fold) and by ``gigamil train`` /
``gigamil predict``. DataFrames have the columns ``cohort, slide_id, patient_id, label, store``.

``train_fold`` checks its inputs, opens the fold's bags (:class:`FoldData`) and runs a
:class:`~gigamil.train.trainer.FoldTrainer` (or, for ``training.strategy: em``, an
:class:`~gigamil.train.em.EMTrainer`) per model: one, or ``training.replicates`` of them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from gigamil.data.bags import ZarrBag, store_stain_normalization
from gigamil.data.features import FeatureBag, open_bag
from gigamil.errors import ConfigError, GigamilError
from gigamil.logutil import log_context
from gigamil.settings import ModelConfig, TrainingConfig, resolve_strategy
from gigamil.splits import check_fold_slides
from gigamil.train import distributed as ddp
from gigamil.train.em import EMTrainer
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

REQUIRED_COLUMNS = ("cohort", "slide_id", "patient_id", "label", "store")
# decoded patches of a fold's bags kept in memory after their first read (a demo fold: 12 MB)
DECODED_BAGS_BYTES = 2**30


def resolve_device(name: str, key: str = "training.device") -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``key``: the setting or option named in the
    error when ``cuda`` is asked for without a CUDA device (e.g. ``--device``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}: cuda requested but no CUDA device is available")
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


def _keep_decoded(items: list[BagItem], budget: int | None = None) -> list[BagItem]:
    """The items with their patch bags kept in memory once read (decoded uint8 pixels; not
    feature bags), in order, while their pixels total at most ``budget`` bytes (default
    :data:`DECODED_BAGS_BYTES`): every epoch after the first then reads no store. The same
    pixels as read from the store each time."""
    budget = DECODED_BAGS_BYTES if budget is None else budget
    out, total, kept = [], 0, 0
    for it in items:
        bag = it.bag
        if isinstance(bag, ZarrBag) and total + bag.nbytes <= budget:
            total, kept = total + bag.nbytes, kept + 1
            bag = bag.with_cache(bag.nbytes)
        out.append(BagItem(it.slide_id, bag, it.label))
    if kept:
        log.info("%d bag(s) kept in memory once decoded (%.0f MB)", kept, total / 2**20)
    return out


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


def _stain_normalization(items: Sequence[BagItem]) -> str | None:
    """The stain normalisation of the fold's patches (:func:`store_stain_normalization`; None
    when no store says); GigamilError when two stores differ (normalised and scanned colours
    in one training set)."""
    known = {it.slide_id: s for it in items if (s := store_stain_normalization(it.bag))}
    if len(set(known.values())) > 1:
        by: dict[str, str] = {}
        for sid, s in sorted(known.items()):
            by.setdefault(s, sid)  # the first slide of each
        shown = ", ".join(f"slide {sid} {s!r}" for s, sid in sorted(by.items()))
        raise GigamilError(
            f"patch stores with different stain normalisations ({shown}); extract all slides "
            "with the same preprocessing.patches.stain_normalization"
        )
    return next(iter(known.values()), None)


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
    stain_normalization: str | None = None  # of the patches (None: the stores do not say)

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
        if len(seen) < len(classes):
            lacking = ", ".join(repr(str(c)) for i, c in enumerate(classes) if i not in seen)
            raise GigamilError(
                f"no training slide (with patches) of class {lacking}: a fold must train on "
                f"every class ({', '.join(map(str, classes))}); give it slides of each"
            )
        items = _keep_decoded(train_items + val_items)
        train_items, val_items = items[: len(train_items)], items[len(train_items) :]
        return cls(
            list(classes),
            train_items,
            val_items,
            _patch_px(items),
            _patch_mpp(items),
            _features(items),
            _stain_normalization(items),
        )


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
    check_fold_slides(train, val)  # what make_folds guarantees, for direct callers
    runtime = _fold_runtime(tcfg, threads, fold, out_dir, log_every_s)
    try:
        with log_context(runtime.name):
            feed = Feed.for_device(runtime.device, threads)
            data = FoldData.open(train, val, [str(c) for c in classes], feed)
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
    name the fold for the log (``fold 2``, or the name of ``out_dir``; `` rank r`` under DDP)."""
    torch.set_num_threads(max(1, int(threads)))
    device = resolve_device(tcfg.device)
    info = ddp.init_distributed(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    name = f"fold {fold}" if fold is not None else Path(out_dir).name
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
