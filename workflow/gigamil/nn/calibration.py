"""Data-calibrated normalisation for encoders trained from random initialisation.

Why (measured on real PatchCamelyon tiles, see README "Training" and benchmarks/real_tissue.py):
a randomly initialised CNN whose BatchNorm layers are ``frozen`` (running statistics, needed for
exact chunked gradients) normalises nothing: the running statistics are the initial mean 0 and
variance 1. Its patch features share one large common component and differ between bags by
about 1 % of it (std of bag means 0.01 vs feature mean 0.25 for the small CNN), so the linear
bag classifier needs very large weights and the training loss stays at ln 2 while the ranking
slowly improves. BatchNorm in ``train`` mode is no cure for MIL: its statistics come from
chunks of ONE bag, which removes exactly the bag-level difference the classifier must see.

The cure here keeps every instance encoded independently of the others (so GradCache stays
exact): before training, the running statistics of the BatchNorm layers are *calibrated* on a
sample of training patches from bags of every class (as ``torch.optim.swa_utils.update_bn``
recomputes them after weight averaging: reset, cumulative average over batches in train mode),
and a :class:`FeatureNorm` layer standardises every feature dimension across instances before
the attention head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class AlwaysEval:
    """Mixin for a BatchNorm layer that stays in eval mode (running statistics) whatever
    ``.train()`` says, also from construction (nn.Module.__init__ sets ``training`` without
    calling ``train()``): ``class X(AlwaysEval, nn.BatchNorm1d)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.training = False

    def train(self, mode: bool = True) -> Any:  # noqa: ARG002 - always eval
        return super().train(False)  # type: ignore[misc]


class FeatureNorm(AlwaysEval, nn.BatchNorm1d):
    """Per-dimension standardisation of instance features (n, D) with frozen statistics.

    A ``BatchNorm1d`` that always normalises with its running statistics (eval mode, whatever
    ``.train()`` says), so each instance's output depends on that instance alone; the affine
    parameters learn. The statistics are set by :func:`calibrate_batchnorm` from training
    patches (mean 0, variance 1 until then).
    """


def batchnorm_layers(module: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer of ``module`` that keeps running statistics, in module order."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def calibrate_batchnorm(
    module: nn.Module,
    batches: Iterable[torch.Tensor],
    layers: Callable[[_BatchNorm], bool] | None = None,
) -> int:
    """Recompute the running statistics of BatchNorm layers from ``batches``; returns the
    number of instances seen.

    ``module`` maps a batch (n, ...) to features; every selected layer (``layers`` picks them,
    default all) is reset and, during one pass over ``batches`` without gradients, normalises
    with the batch statistics and accumulates their cumulative average (``momentum=None``), as
    ``torch.optim.swa_utils.update_bn`` does. Layers are calibrated in one pass, each on the
    output of the already calibrated layers before it. Frozen layers (``EvalBatchNorm2d``,
    :class:`FeatureNorm`) are calibrated too. Everything else runs in eval mode (no
    augmentation, no dropout). Afterwards every module's training flag and every layer's
    momentum are as before. Raises ``ValueError`` when ``batches`` is empty.
    """
    selected = [m for m in batchnorm_layers(module) if layers is None or layers(m)]
    if not selected:
        return 0
    flags = [(m, m.training) for m in module.modules()]
    momenta = [m.momentum for m in selected]
    try:
        for m, _ in flags:
            m.training = False
        for m in selected:
            m.reset_running_stats()
            m.momentum = None
            m.training = True
        seen = 0
        for x in batches:
            module(x)
            seen += len(x)
        if seen == 0:
            raise ValueError("calibrate_batchnorm: no instances to calibrate on")
    finally:
        for m, flag in flags:
            m.training = flag
        for m, momentum in zip(selected, momenta, strict=True):
            m.momentum = momentum
    return seen
