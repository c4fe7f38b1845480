"""Calibrate a model's normalisation statistics on training patches before the first epoch
(see :mod:`gigamil.nn.calibration` for why a randomly initialised encoder needs it)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from gigamil.models.mil import BagSource, MILModel, iter_chunks
from gigamil.nn.calibration import FeatureNorm, batchnorm_layers, calibrate_batchnorm

log = logging.getLogger(__name__)

# Patches per calibration batch. Fixed, not training.max_instances_per_forward_pass: in train
# mode BatchNorm normalises each batch by its own statistics, so the calibrated statistics depend
# on the batch size, and the chunk size must not change the trained model (it is left out of the
# rule params and resume signature). 128: the shipped chunk size, so models trained before are
# reproduced. Calibration runs without gradients, which holds far less memory than training.
CALIBRATION_BATCH = 128


def calibration_batches(
    bags: Sequence[BagSource], n_patches: int, chunk: int, seed: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """About ``n_patches`` patches drawn evenly from ``bags`` (ceil(n_patches / n_bags) random
    rows of each, fewer from small bags), in batches of ``chunk`` (the last one between 2 and
    ``chunk + 1``: BatchNorm needs two instances to compute batch statistics), on ``device``.
    Each bag needs ``subsample(n, generator)`` (e.g. :class:`gigamil.data.bags.ZarrBag`)."""
    per_bag = max(1, math.ceil(n_patches / max(1, len(bags))))
    gen = torch.Generator().manual_seed(int(seed))
    chunk = max(2, int(chunk))
    pending: list[torch.Tensor] = []  # patches not yet yielded, fewer than 2 * chunk
    held = 0
    for bag in bags:
        for x in iter_chunks(bag.subsample(per_bag, gen), chunk):
            pending.append(x)
            held += len(x)
            while held >= 2 * chunk:  # keep at least chunk back, for the remainder
                flat = torch.cat(pending)
                yield flat[:chunk].to(device)
                pending, held = [flat[chunk:]], held - chunk
    if held:
        flat = torch.cat(pending)
        cut = chunk if held - chunk >= 2 else held  # never leave a batch of one
        yield flat[:cut].to(device)
        if cut < held:
            yield flat[cut:].to(device)


def calibrate_model(
    model: MILModel,
    bags: Sequence[BagSource],
    *,
    n_patches: int,
    encoder_too: bool,
    chunk: int = CALIBRATION_BATCH,
    seed: int = 0,
) -> int:
    """Recompute the statistics of the head's :class:`FeatureNorm` and, when ``encoder_too``
    (random initialisation), of every BatchNorm layer of the encoder, from ``n_patches``
    training patches; returns how many patches were used (0: nothing to calibrate)."""
    head_norm = getattr(model.attention_model, "norm", None)
    parts: list[nn.Module] = [model.feature_encoder]
    if isinstance(head_norm, FeatureNorm):
        parts.append(head_norm)
    path = nn.Sequential(*parts)
    chosen = [m for m in batchnorm_layers(path) if isinstance(m, FeatureNorm) or encoder_too]
    if n_patches <= 0 or not chosen or sum(min(len(b), 2) for b in bags) < 2:
        return 0
    ids = {id(m) for m in chosen}
    batches = calibration_batches(bags, n_patches, chunk, seed, model.device)
    seen = calibrate_batchnorm(path, batches, layers=lambda m: id(m) in ids)
    log.info(
        "calibrated %d normalisation layer(s) on %d training patches from %d slides",
        len(chosen),
        seen,
        len(bags),
    )
    return seen
