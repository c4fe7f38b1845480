"""Bag-level losses: (weighted) cross-entropy and focal loss, binary (one logit) or multi-class."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

LOSSES = ("ce", "focal")


class BagLoss(nn.Module):
    """Loss of bag logits against integer class labels.

    ``logits`` (n_out,) for one bag or (B, n_out) for a batch; ``label`` int, () or (B,).
    Binary problems have n_out == 1 (BCE on the positive-class logit, like torchmil).
    ``class_weights`` (n_classes,) multiplies each bag's loss by the weight of its class; the
    batch loss is the plain mean over bags (so accumulation over bags is a sum of per-bag means).
    Focal loss: -(1 - p_t)^γ log p_t.
    """

    def __init__(
        self,
        kind: str = "ce",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        self.kind = kind
        self.gamma = float(gamma)
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w)

    def forward(self, logits: torch.Tensor, label: torch.Tensor | int) -> torch.Tensor:
        single = logits.dim() == 1
        logits = logits.unsqueeze(0) if single else logits  # (B, n_out)
        y = torch.as_tensor(label, device=logits.device).long().reshape(-1)  # (B,)
        if logits.shape[1] == 1:
            z = logits[:, 0]
            log_p1 = F.logsigmoid(z)
            log_p0 = F.logsigmoid(-z)
            log_pt = torch.where(y == 1, log_p1, log_p0)
        else:
            log_pt = torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
        loss = -log_pt
        if self.kind == "focal":
            loss = loss * (1 - log_pt.exp()).clamp(min=0) ** self.gamma
        if self.class_weights is not None:
            loss = loss * self.class_weights.to(loss.dtype)[y]
        return loss.mean()


def balanced_class_weights(labels: Sequence[int], n_classes: int) -> list[float]:
    """``n / (n_classes · n_c)`` per class (classes absent from ``labels`` get weight 0)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes)
    n = float(counts.sum())
    return [n / (n_classes * float(c)) if c > 0 else 0.0 for c in counts.tolist()]
