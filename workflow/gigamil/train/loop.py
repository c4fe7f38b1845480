"""One training epoch and one validation pass over zarr bags (used by ``train_fold``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gigamil.data.bags import ConcatBag, ZarrBag
from gigamil.errors import GigamilError
from gigamil.evaluate import metrics as M
from gigamil.models.mil import MILModel
from gigamil.nn.rng import manual_seed
from gigamil.train.amp import Optimization
from gigamil.train.distributed import DistInfo, all_reduce_gradients, all_reduce_sum

log = logging.getLogger(__name__)


@dataclass
class BagItem:
    """A bag with its integer label and slide id."""

    slide_id: str
    bag: ZarrBag
    label: int


def bag_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the RNG for one bag in one epoch: training randomness (augmentation, dropout,
    instance sampling) depends only on (seed, epoch, bag), not on ranks, chunking or resumes."""
    return (seed * 1_000_003 + epoch * 10_007 + index * 101 + 17) % (2**63 - 1)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    hold_steps: Sequence[int] = (),
) -> LambdaLR:
    """``cosine`` (to 0), ``onecycle`` (30 % linear warm-up from lr/25, cosine to lr/1e4) or
    ``constant``, stepped once per optimizer step. ``warmup_steps`` > 0 (not with
    ``onecycle``) puts a linear warm-up in front: step t < W runs at lr · (t + 1) / W, and the
    schedule runs over the remaining ``total_steps`` − W steps. ``hold_steps``: per parameter
    group (missing: 0), the first steps at learning rate 0 (``training.head_first_epochs``: the
    encoder's group); from then on the group follows the same schedule as the others."""
    if warmup_steps < 0 or (warmup_steps and schedule == "onecycle"):
        raise ValueError(f"warmup_steps {warmup_steps} with schedule {schedule!r}")
    warmup = min(int(warmup_steps), max(0, total_steps - 1))
    base = _schedule(schedule, max(1, total_steps - warmup))

    def f(t: int) -> float:
        return (t + 1) / warmup if t < warmup else base(t - warmup)

    holds = [*hold_steps, *[0] * (len(optimizer.param_groups) - len(hold_steps))]
    if not any(holds):
        return LambdaLR(optimizer, f)
    return LambdaLR(optimizer, [_held(f, int(h)) for h in holds])


def _held(f: Callable[[int], float], hold: int) -> Callable[[int], float]:
    """``f`` with its first ``hold`` steps at 0."""
    return lambda t: 0.0 if t < hold else f(t)


def _schedule(schedule: str, total: int) -> Callable[[int], float]:
    """The learning-rate factor of ``schedule`` at step t of ``total``."""
    if schedule == "cosine":

        def f(t: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(t, total) / total))
    elif schedule == "onecycle":
        warm = max(1, int(0.3 * total))

        def f(t: int) -> float:
            if t < warm:
                return 1 / 25 + (1 - 1 / 25) * t / warm
            frac = min(1.0, (t - warm) / max(1, total - warm))
            return 1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(math.pi * frac))
    elif schedule == "constant":

        def f(t: int) -> float:
            return 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return f


def weight_average(model: MILModel, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights and buffers (Polyak averaging,
    ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)``): after each
    optimizer step ``w_avg <- decay * w_avg + (1 - decay) * w``, the first update copying
    ``model``; ``ema.module`` is the averaged :class:`MILModel`. None when ``decay`` is 0."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def steps_per_epoch(n_bags: int, bags_per_step: int, world: int) -> int:
    return max(1, math.ceil(n_bags / (bags_per_step * world)))


PROGRESS_EVERY_S = 30.0  # a progress line at least this often within an epoch


class ProgressLog:
    """Log lines while walking ``total`` bags: ``what: 12/40 bags, 1.3 bags/s[, loss so far x]``,
    at most one per ``every_s`` seconds (0: after every bag; None: never). Log lines instead of a
    progress bar, so the output of folds run in parallel stays line by line and readable, and
    the log file shows it too. ``unit``: what is counted (``patches`` for feature extraction),
    ``logger``: where the lines go (default: this module's)."""

    def __init__(  # noqa: PLR0913 - what, how often, and where
        self,
        what: str,
        total: int,
        every_s: float | None = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        unit: str = "bags",
        logger: logging.Logger | None = None,
    ) -> None:
        self.what, self.total, self.every_s, self.clock = what, total, every_s, clock
        self.unit, self.log = unit, logger or log
        self.start = self.last = clock()

    def update(self, done: int, loss_so_far: float | None = None) -> None:
        """Report ``done`` bags (a line only if ``every_s`` has passed since the last one)."""
        if self.every_s is None:
            return
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        loss = "" if loss_so_far is None else f", loss so far {loss_so_far:.4f}"
        u = self.unit
        self.log.info("%s: %d/%d %s, %.2f %s/s%s", self.what, done, self.total, u, rate, u, loss)


class ProgressCounter:
    """tqdm's ``update(n)`` (n more done) and ``close()`` as :class:`ProgressLog` lines at most
    every ``every_s`` seconds, for loops that have no terminal for a progress bar (a Snakemake
    job's log): ``what: 1200/5000 patches, 950.00 patches/s``."""

    def __init__(
        self, what: str, total: int, every_s: float | None, unit: str, logger: logging.Logger
    ) -> None:
        self.done = 0
        self.lines = ProgressLog(what, total, every_s, unit=unit, logger=logger)

    def update(self, n: int) -> None:
        self.done += n
        self.lines.update(self.done)

    def close(self) -> None:  # the lines need no closing
        return


@dataclass(frozen=True, kw_only=True)
class EpochSettings:
    """How :func:`train_epoch` walks the bags: ``seed`` of the shuffling and of every bag's
    randomness, bags per optimizer step, instances per forward pass (``chunk``, None = whole bag),
    the random subsample per bag (``max_instances``, None = all), the DDP ranks, the share of
    bags extended with a negative bag's patches (``bag_mixing``, :func:`mix_negative`), progress lines
    (``progress``) at least every ``log_every_s`` seconds (0: after every bag)."""

    seed: int
    bags_per_step: int = 1
    chunk: int | None = None
    max_instances: int | None = None
    info: DistInfo = field(default_factory=DistInfo)
    bag_mixing: float = 0.0
    progress: bool = True
    log_every_s: float = PROGRESS_EVERY_S


def train_epoch(
    model: MILModel,
    items: Sequence[BagItem],
    optim: Optimization,
    *,
    epoch: int,
    settings: EpochSettings,
    ema: AveragedModel | None = None,
) -> float:
    """One epoch; returns the mean training loss over all bags (all ranks).

    Bags are shuffled with a generator seeded by (seed, epoch); each optimizer step takes the
    next ``bags_per_step × world`` bags, rank r the r-th, (r+world)-th, ... of them. The main
    rank logs progress (bags done of all ranks, bags/s, its mean loss so far) at least every
    ``settings.log_every_s`` seconds; the caller's :func:`gigamil.logutil.log_context` names the
    fold and epoch on every line. ``ema``: a moving average of the weights
    (:func:`weight_average`), updated after every optimizer step.
    """
    model.train()
    seed, info = settings.seed, settings.info
    order = torch.randperm(
        len(items), generator=torch.Generator().manual_seed(bag_seed(seed, epoch, -1))
    ).tolist()
    group_size = settings.bags_per_step * info.world
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, count, done = 0.0, 0, 0
    progress = ProgressLog(
        "training",
        len(order),
        settings.log_every_s if settings.progress and info.is_main else None,
    )
    for start in range(0, len(order), group_size):
        group = order[start : start + group_size]
        optim.zero_grad()
        for idx in group[info.rank :: info.world]:
            loss = _bag_step(
                model, items, idx, bag_seed(seed, epoch, idx), settings, optim, len(group)
            )
            loss_sum += loss
            count += 1
            done = min(done + info.world, len(order))
            progress.update(done, loss_sum / count)
        all_reduce_gradients(params, info)
        optim.step()
        if ema is not None:
            ema.update_parameters(model)
    loss_sum, count = all_reduce_sum([loss_sum, float(count)], info, model.device)
    return loss_sum / max(count, 1.0)


def _bag_step(
    model: MILModel,
    items: Sequence[BagItem],
    idx: int,
    seed: int,
    settings: EpochSettings,
    optim: Optimization,
    group_size: int,
) -> float:
    """Forward and backward pass of bag ``idx`` (seeded by ``seed``: augmentation,
    subsampling, bag mixing with ``seed + 2``), its gradients scaled by 1 / ``group_size`` and
    accumulated; returns its loss (a non-finite loss is logged)."""
    item = items[idx]
    bag = _training_bag(item, seed, settings.max_instances)
    if settings.bag_mixing > 0:
        bag = mix_negative(bag, idx, items, settings, seed + 2)
    try:
        out = model.forward_train(
            bag,
            item.label,
            max_instances_per_forward_pass=settings.chunk,
            loss_scale=1.0 / group_size,
            scaler=optim.amp.grad_scaler,
        )
    except GigamilError as exc:
        raise GigamilError(f"slide {item.slide_id}: {exc}") from exc
    if not math.isfinite(out.loss):
        log.warning("non-finite loss on slide %s", item.slide_id)
    return out.loss


def _training_bag(item: BagItem, seed: int, max_instances: int | None) -> ZarrBag:
    """The bag as trained: seeds torch's RNG with ``seed`` (augmentation, dropout), subsamples
    ``max_instances`` instances with ``seed + 1``, and caches it for both GradCache passes."""
    manual_seed(seed)  # torch.manual_seed, cheaper on CPU-only machines
    bag = item.bag
    if max_instances is not None and len(bag) > max_instances:
        bag = bag.subsample(max_instances, torch.Generator().manual_seed(seed + 1))
    return bag.with_cache()  # read once for both passes if small; freed after the step


def mix_negative(
    bag: ZarrBag, index: int, items: Sequence[BagItem], settings: EpochSettings, seed: int
) -> ZarrBag | ConcatBag:
    """With probability ``settings.bag_mixing``, the bag extended by a random share (1 to all)
    of the patches of another training bag of class 0; otherwise the bag itself.

    Label-preserving under the standard MIL assumption with class 0 as the negative class: a
    bag is positive when any of its patches is, and adding negative patches changes no label.
    Each epoch then shows the attention head new bags (new mixtures and lesion fractions)
    instead of the same few training bags (bag-level augmentation of MIL, cf. ReMix, Yang et al.
    2022, MICCAI). Deterministic in ``seed``.
    """
    gen = np.random.default_rng(seed)
    if gen.random() >= settings.bag_mixing:
        return bag
    donors = [i for i, it in enumerate(items) if it.label == 0 and i != index]
    if not donors:
        return bag
    donor = items[int(gen.choice(donors))].bag
    n = int(gen.integers(1, len(donor) + 1))
    if settings.max_instances is not None:
        n = min(n, settings.max_instances)
    part = donor.subsample(n, torch.Generator().manual_seed(int(gen.integers(2**62))))
    return ConcatBag([bag, part.with_cache()])


def bag_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities (n_classes,) from bag logits (1 logit = binary)."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        p1 = torch.sigmoid(logits[..., 0])
        return torch.stack([1 - p1, p1], dim=-1)
    return torch.softmax(logits, dim=-1)


def classification_metrics(y: np.ndarray, prob: np.ndarray, n_classes: int) -> dict[str, float]:
    """AUC (binary, or one-vs-rest macro when every class is present) and balanced accuracy,
    computed by the same code as the evaluation (gigamil.evaluate.metrics); NaN when undefined."""
    out = {"auc": float("nan"), "balanced_accuracy": float("nan")}
    if len(y) == 0:
        return out
    cm = M.confusion_matrix(y, prob.argmax(1), n_classes)
    out["balanced_accuracy"] = M.balanced_accuracy(cm)
    if n_classes == 2 or len(np.unique(y)) == n_classes:
        out["auc"] = M.roc_auc(y, prob)
    return out


def validate(
    model: MILModel,
    items: Sequence[BagItem],
    chunk: int | None,
    n_classes: int,
    loss_fn: torch.nn.Module,
    log_every_s: float | None = PROGRESS_EVERY_S,
) -> dict[str, float]:
    """Eval mode + ``torch.inference_mode``: mean loss, AUC, balanced accuracy over ``items``
    (progress lines at least every ``log_every_s`` seconds; None: none)."""
    model.eval()
    losses, labels, probs = [], [], []
    progress = ProgressLog("validation", len(items), log_every_s)
    with torch.inference_mode():
        for item in items:
            logits, _att = model(item.bag, max_instances_per_forward_pass=chunk)
            losses.append(float(loss_fn(logits.float(), item.label)))
            labels.append(item.label)
            probs.append(bag_probabilities(logits).cpu().numpy())
            progress.update(len(losses), float(np.mean(losses)))
    metrics = classification_metrics(
        np.asarray(labels, dtype=np.int64), np.asarray(probs).reshape(-1, n_classes), n_classes
    )
    metrics["loss"] = float(np.mean(losses)) if losses else float("nan")
    return metrics
