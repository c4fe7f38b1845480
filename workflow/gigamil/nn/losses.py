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
    ``label_smoothing`` ε trains toward (1 - ε) one-hot + ε / n_classes (Szegedy et al. 2016);
    a binary model's confident logits then settle near ±ln((2 - ε) / ε) instead of growing
    without bound, which keeps separately trained models (cross-validation folds) on one scale
    (Müller et al. 2019, "When does label smoothing help?"). 0 gives the plain loss.
    """

    def __init__(
        self,
        kind: str = "ce",
        class_weights: Sequence[float] | torch.Tensor | None = None,
        gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.kind = kind
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        w = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", w)

    def forward(self, logits: torch.Tensor, label: torch.Tensor | int) -> torch.Tensor:
        single = logits.dim() == 1
        logits = logits.unsqueeze(0) if single else logits  # (B, n_out)
        y = _class_indices(label, logits.shape[0], logits.device)  # (B,)
        if logits.shape[1] == 1:  # one logit z: log p = (log σ(-z), log σ(z))
            z = logits[:, 0]
            log_p = torch.stack([F.logsigmoid(-z), F.logsigmoid(z)], dim=1)  # (B, 2)
        else:
            log_p = torch.log_softmax(logits, dim=1)  # (B, C)
        n_classes = log_p.shape[1]
        eps = self.label_smoothing
        target = F.one_hot(y, n_classes).to(log_p.dtype) * (1 - eps) + eps / n_classes
        per_class = -log_p
        if self.kind == "focal":
            per_class = per_class * (1 - log_p.exp()).clamp(min=0) ** self.gamma
        loss = (target * per_class).sum(dim=1)  # (B,)
        if self.class_weights is not None:
            loss = loss * self.class_weights.to(loss.dtype)[y]
        return loss.mean()


def balanced_class_weights(labels: Sequence[int], n_classes: int) -> list[float]:
    """``n / (n_classes · n_c)`` per class (classes absent from ``labels`` get weight 0)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=n_classes)
    n = float(counts.sum())
    return [n / (n_classes * float(c)) if c > 0 else 0.0 for c in counts.tolist()]


def _class_indices(label: torch.Tensor | int, n_bags: int, device: torch.device) -> torch.Tensor:
    """``label`` as (B,) long class indices; ValueError for a fraction (0.7 was truncated to 0)
    or another count than the bags (a one-hot vector was broadcast over the classes)."""
    y = torch.as_tensor(label, device=device)
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"label must be class indices (whole numbers), got {label!r}")
    y = y.long().reshape(-1)
    if y.numel() != n_bags:
        raise ValueError(
            f"{y.numel()} label(s) for {n_bags} bag(s): give each bag's class index (for a "
            "one-hot label, its argmax)"
        )
    return y
