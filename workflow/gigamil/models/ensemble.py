"""``ReplicateEnsemble``: the replicate models of one fold (``training.replicates``) as one model.

A deep ensemble (Lakshminarayanan, Pritzel & Blundell 2017, "Simple and scalable predictive
uncertainty estimation using deep ensembles"): the same model trained from several random
initialisations and data orders; predictions average the members. Each member's bag logits are
first mapped by its own ``logit_calibration`` (:func:`apply_calibration`), so the average is of
logits on one scale; attention is the mean of the members' softmax attention (still sums to 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gigamil.models.mil import Bag, MILModel


def apply_calibration(logits: torch.Tensor, calibration: Mapping[str, Any] | None) -> torch.Tensor:
    """``(logits - offset) * scale`` for a binary model's logits (1,); unchanged without a map
    (``calibration`` from :func:`gigamil.train.logit_calibration.fit_class_means`)."""
    if not calibration or logits.numel() != 1:
        return logits
    return (logits.float() - float(calibration["offset"])) * float(calibration["scale"])


class ReplicateEnsemble(nn.Module):
    """The members (:class:`MILModel`, same configuration) of one fold, predicting as one.

    ``forward(bag)`` returns ``(logits (n_out,), attention (N,))``: the mean over members of the
    calibrated logits (float32) and of the attention. ``calibrations[i]`` is member ``i``'s
    ``logit_calibration`` map or None. Prediction only (no ``forward_train``)."""

    def __init__(
        self, members: Sequence[MILModel], calibrations: Sequence[Mapping[str, Any] | None]
    ) -> None:
        super().__init__()
        if not members or len(members) != len(calibrations):
            raise ValueError("ReplicateEnsemble: one calibration (or None) per member, >= 1")
        self.members = nn.ModuleList(members)
        self.calibrations = [None if c is None else dict(c) for c in calibrations]

    def forward(
        self,
        bag: Bag,
        adj: torch.Tensor | None = None,
        max_instances_per_forward_pass: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = max_instances_per_forward_pass
        return self._mean([m(bag, adj, max_instances_per_forward_pass=k) for m in self.members])

    def forward_patches(
        self,
        bag: Bag,
        adj: torch.Tensor | None = None,
        max_instances_per_forward_pass: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`'s two means and the members' mean patch logits (N,)
        (:meth:`MILModel.forward_patches`, not calibrated; None if a member has none)."""
        k = max_instances_per_forward_pass
        outs = [m.forward_patches(bag, adj, max_instances_per_forward_pass=k) for m in self.members]
        patches = [patch for _, _, patch in outs]
        mean_patch = None if any(p is None for p in patches) else torch.stack(patches).mean(0)
        return (*self._mean([(z, att) for z, att, _ in outs]), mean_patch)

    def _mean(
        self, outs: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of the members' calibrated logits and of their attention (float32)."""
        logits = [
            apply_calibration(z, c).float()
            for (z, _), c in zip(outs, self.calibrations, strict=True)
        ]
        attention = [att.float() for _, att in outs]
        return torch.stack(logits).mean(0), torch.stack(attention).mean(0)
