"""torchmil-style models: ``ABMIL`` (plain or gated) and ``SmABMIL``.

Interface (torchmil's SmABMIL, and both models here): ``forward(X, adj=None, mask=None,
return_att=False)`` with X (batch, bag, *in_shape); ``compute_loss(Y, X, adj=None, mask=None)`` →
``(Y_pred, {name: loss})``; ``predict(X, adj=None, mask=None, return_inst_pred=True)`` →
``(Y_pred, attention)``. ``ABMIL`` uses no adjacency (one of (batch, bag, bag) is accepted and
unused) and also takes torchmil's ABMIL order, ``forward(X, mask)``, ``compute_loss(Y, X, mask)``,
``predict(X, mask)``: a (batch, bag) tensor where ``adj`` goes is the mask (it was ignored as an
adjacency once). The attention returned is the softmax weights (torchmil's ABMIL
returns the scores before the softmax).
Binary models output one logit per bag (Y_pred (batch,)); multi-class ones (batch, n_classes).
``mask`` (batch, bag) marks real instances of padded bags; ``adj`` (batch, bag, bag) is a
normalised adjacency (dense or sparse), e.g. from :func:`gigamil.nn.pooling.grid_adjacency`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gigamil.nn.pooling import AttentionHead


def _feature_dim(feat_ext: nn.Module, in_shape: Sequence[int]) -> int:
    was_training = feat_ext.training
    feat_ext.eval()
    try:
        with torch.no_grad():
            p = next(iter(feat_ext.parameters()), None)
            dtype = p.dtype if p is not None else torch.get_default_dtype()
            out = feat_ext(torch.zeros(1, *in_shape, dtype=dtype))
    finally:
        feat_ext.train(was_training)
    return int(out.reshape(1, -1).shape[1])


class _PooledMIL(nn.Module):
    def __init__(
        self,
        in_shape: Sequence[int] | int,
        feat_ext: nn.Module | None,
        n_classes: int,
        criterion: nn.Module | None,
        **head_kwargs: object,
    ) -> None:
        super().__init__()
        in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        self.feat_ext = feat_ext if feat_ext is not None else nn.Identity()
        dim = _feature_dim(self.feat_ext, in_shape)
        self.head = AttentionHead(dim, n_classes=n_classes, **head_kwargs)  # type: ignore[arg-type]
        self.n_classes = n_classes
        if criterion is None:
            criterion = nn.BCEWithLogitsLoss() if n_classes == 2 else nn.CrossEntropyLoss()
        self.criterion = criterion

    def forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_att: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self._forward(X, adj, mask, return_att)

    def _forward(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None,
        mask: torch.Tensor | None,
        return_att: bool,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if adj is not None and not self.head.needs_adj and adj.dim() == 2 and mask is None:
            adj, mask = None, adj  # torchmil's ABMIL order, (X, mask): a (batch, bag) mask
        b, n = X.shape[:2]
        feats = self.feat_ext(X.reshape(b * n, *X.shape[2:])).reshape(b, n, -1)  # (B, N, D)
        logits, atts = [], []
        for i in range(b):
            keep = (
                mask[i].bool()
                if mask is not None
                else torch.ones(n, dtype=torch.bool, device=X.device)
            )
            if not bool(keep.any()):
                raise ValueError(f"bag {i} of the batch has no instance (its mask is all False)")
            adj_i = None
            if self.head.needs_adj:
                if adj is None:
                    raise ValueError("SmABMIL.forward needs adj (batch, bag, bag)")
                a = adj[i].to_dense() if adj.is_sparse else adj[i]
                adj_i = a[keep][:, keep]
            z, att = (
                self.head(feats[i][keep], adj_i) if adj_i is not None else self.head(feats[i][keep])
            )
            full = torch.zeros(n, dtype=att.dtype, device=att.device)
            full[keep] = att
            logits.append(z)
            atts.append(full)
        y = torch.stack(logits)  # (B, n_out)
        y = y[:, 0] if y.shape[1] == 1 else y
        return (y, torch.stack(atts)) if return_att else y

    def compute_loss(
        self,
        Y: torch.Tensor,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y_pred = self._forward(X, adj, mask, False)
        target = Y.to(y_pred.dtype) if self.n_classes == 2 else Y.long()
        return y_pred, {type(self.criterion).__name__: self.criterion(y_pred, target)}

    @torch.no_grad()
    def predict(
        self,
        X: torch.Tensor,
        adj: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_inst_pred: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        y, att = self._forward(X, adj, mask, True)
        return (y, att) if return_inst_pred else y


class ABMIL(_PooledMIL):
    """Attention-based MIL (Ilse et al. 2018); ``gated=True`` gives the gated variant."""

    def __init__(  # noqa: PLR0913 - hyper-parameters, like a torch.nn layer's
        self,
        in_shape: Sequence[int] | int,
        att_dim: int = 128,
        att_act: str = "tanh",
        gated: bool = False,
        feat_ext: nn.Module | None = None,
        n_classes: int = 2,
        criterion: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            in_shape,
            feat_ext,
            n_classes,
            criterion,
            att_dim=att_dim,
            att_act=att_act,
            pool="gated_abmil" if gated else "abmil",
            dropout=dropout,
        )


class SmABMIL(_PooledMIL):
    """ABMIL whose attention scores are smoothed over the patch adjacency by the Sm operator."""

    def __init__(  # noqa: PLR0913 - torchmil SmABMIL constructor signature
        self,
        in_shape: Sequence[int] | int,
        att_dim: int = 128,
        att_act: str = "tanh",
        sm_alpha: float = 0.5,
        sm_mode: str = "approx",
        sm_steps: int = 10,
        feat_ext: nn.Module | None = None,
        n_classes: int = 2,
        criterion: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(
            in_shape,
            feat_ext,
            n_classes,
            criterion,
            att_dim=att_dim,
            att_act=att_act,
            pool="smabmil",
            dropout=dropout,
            sm_alpha=sm_alpha,
            sm_steps=sm_steps,
            sm_mode=sm_mode,
        )
