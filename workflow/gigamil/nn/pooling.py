"""Attention pooling heads: ABMIL (Ilse et al. 2018), gated ABMIL, SmABMIL (Sm smoothing).

An attention head maps instance features H (N, D) of ONE bag to ``(logits, attention)``:
logits (n_out,) (one logit for a binary problem, like torchmil; ``n_classes`` otherwise) and the
softmax attention (N,). The accumulating trainer calls it once per bag.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from gigamil.nn.calibration import FeatureNorm

POOLS = ("abmil", "gated_abmil", "smabmil", "instance")


def grid_adjacency(
    grid: np.ndarray | torch.Tensor, connectivity: int = 8, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Symmetrically normalised adjacency D^-1/2 A D^-1/2 of patches on a grid (sparse COO).

    ``grid`` (N, 2) integer (row, col) positions; two patches are neighbours when they touch
    (8-connectivity) or share an edge (4-connectivity). Isolated patches have an empty row.
    Returns a sparse (N, N) tensor. Raises ValueError for two patches at one position (a
    patch store's grid never has them; with them the adjacency would not be symmetric).
    """
    g = np.asarray(grid.cpu() if isinstance(grid, torch.Tensor) else grid, dtype=np.int64)
    n = len(g)
    if n == 0:
        return torch.sparse_coo_tensor(
            torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=dtype), (0, 0)
        )
    orig, g = g, g - g.min(axis=0)
    width = int(g[:, 1].max()) + 3
    keys = (g[:, 0] + 1) * width + (g[:, 1] + 1)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if (dup := np.flatnonzero(np.diff(sorted_keys) == 0)).size:
        raise ValueError(f"grid: two patches at (row, col) {tuple(orig[order[dup[0]]].tolist())}")
    if connectivity == 8:
        offsets = [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    elif connectivity == 4:
        offsets = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    else:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    rows, cols = [], []
    for dr, dc in offsets:
        target = keys + dr * width + dc
        pos = np.searchsorted(sorted_keys, target)
        pos = np.clip(pos, 0, n - 1)
        hit = sorted_keys[pos] == target
        rows.append(np.nonzero(hit)[0])
        cols.append(order[pos[hit]])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    deg = np.bincount(r, minlength=n).astype(np.float64)
    inv = np.zeros(n)
    inv[deg > 0] = deg[deg > 0] ** -0.5
    vals = inv[r] * inv[c]
    idx = torch.from_numpy(np.stack([r, c])).long()
    return torch.sparse_coo_tensor(
        idx, torch.from_numpy(vals).to(dtype), (n, n), check_invariants=True
    ).coalesce()


def smooth(
    f: torch.Tensor, adj: torch.Tensor, alpha: float = 0.5, steps: int = 10, mode: str = "approx"
) -> torch.Tensor:
    """The Sm operator (Castro-Macías et al. 2024): ``(1-α)(I - αA)^-1 f``.

    ``approx`` runs ``steps`` fixed-point iterations g ← (1-α) f + α A g (sparse A allowed);
    ``exact`` solves the dense linear system (small bags only). f (N,) or (N, d).
    """
    vec = f.dim() == 1
    f2 = f.unsqueeze(1) if vec else f
    a = adj.to(f2.dtype)
    if mode == "approx":
        g = f2
        for _ in range(steps):
            g = (1 - alpha) * f2 + alpha * (torch.sparse.mm(a, g) if a.is_sparse else a @ g)
    elif mode == "exact":
        dense = a.to_dense() if a.is_sparse else a
        eye = torch.eye(len(f2), dtype=f2.dtype, device=f2.device)
        g = (1 - alpha) * torch.linalg.solve(eye - alpha * dense, f2)
    else:
        raise ValueError(f"Sm mode must be 'approx' or 'exact', got {mode!r}")
    return g.squeeze(1) if vec else g


class AttentionHead(nn.Module):
    """Attention pooling + linear classifier for one bag: H (N, D) → (logits (n_out,), att (N,)).

    ``pool``: ``abmil`` a_i ∝ exp(wᵀ act(V h_i)); ``gated_abmil``
    a_i ∝ exp(wᵀ(tanh(V h_i) ⊙ σ(U h_i))); ``smabmil`` smooths the attention scores with the Sm operator over the patch-grid
    adjacency before the softmax (needs ``adj``); ``instance`` is instance-level MIL, no attention
    network: every patch is classified (logits z_i = classifier(h_i)), the bag logit is the mean of
    the ``top_fraction`` highest patch logits of each class (⌈top_fraction·N⌉ patches), and
    training uses weak patch labels only (every patch of a slide trained toward the slide's class,
    :meth:`instance_loss`; no bag loss, ``bag_loss_weight`` 0): the patch classifier of Coudray et
    al. 2018 (Nat Med 24:1559) with a top-k mean slide score as in Campanella et al. 2019. Its
    "attention" is each patch's probability of not being the first class (binary: the positive class)
    divided by their sum: heatmaps show the patch probabilities relative to the highest. ``n_out`` = 1 for binary problems.
    ``sm_features`` > 0 pools Sm-smoothed features, ``smooth(h, adj, sm_features)``, with the
    attention of the raw features (needs ``adj``, any attention pool).
    ``instance_loss`` > 0 adds weak instance supervision (:meth:`instance_loss`) with that weight.
    ``feature_norm``: first standardise each feature dimension with a
    :class:`~gigamil.nn.calibration.FeatureNorm` (frozen statistics, per instance; calibrate it
    with :func:`~gigamil.nn.calibration.calibrate_batchnorm`).
    """

    def __init__(  # noqa: PLR0913 - one argument per pooling setting of the model config
        self,
        in_dim: int,
        n_classes: int = 2,
        att_dim: int = 128,
        pool: str = "abmil",
        dropout: float = 0.0,
        att_act: str = "tanh",
        sm_alpha: float = 0.5,
        sm_steps: int = 10,
        sm_mode: str = "approx",
        sm_features: float = 0.0,
        feature_norm: bool = False,
        instance_loss: float = 0.0,
        instance_top_k: int = 4,
        top_fraction: float = 0.2,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        if pool == "instance" and instance_loss > 0:
            raise ValueError(
                "pool 'instance' trains every patch on weak labels itself; instance_loss applies "
                "to the attention pools only"
            )
        if n_classes < 2:
            raise ValueError("n_classes must be at least 2")
        self.pool = pool
        self.n_out = 1 if n_classes == 2 else n_classes
        self.norm = FeatureNorm(in_dim) if feature_norm else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        attention = pool != "instance"
        self.V = nn.Linear(in_dim, att_dim) if attention else None
        self.act = {"tanh": nn.Tanh(), "relu": nn.ReLU(), "gelu": nn.GELU()}[att_act]
        self.U = nn.Linear(in_dim, att_dim) if pool == "gated_abmil" else None
        self.w = nn.Linear(att_dim, 1, bias=False) if attention else None  # no bias: softmax
        self.classifier = nn.Linear(in_dim, self.n_out)
        self.sm_alpha, self.sm_steps, self.sm_mode = sm_alpha, sm_steps, sm_mode
        if not 0.0 <= sm_features < 1.0:
            raise ValueError(f"sm_features must be in [0, 1), got {sm_features}")
        self.sm_features = 0.0 if pool == "instance" else float(sm_features)
        if instance_loss < 0 or instance_top_k < 0:
            raise ValueError("instance_loss and instance_top_k must be >= 0")
        self.instance_loss_weight = 1.0 if pool == "instance" else float(instance_loss)
        self.instance_top_k = 0 if pool == "instance" else int(instance_top_k)
        self.top_fraction = float(top_fraction)
        # MILModel weights the bag loss (loss_fn on the bag logits) by this
        self.bag_loss_weight = 0.0 if pool == "instance" else 1.0

    @property
    def needs_adj(self) -> bool:
        return self.pool == "smabmil" or self.sm_features > 0

    def scores(self, h: torch.Tensor, adj: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised attention scores (N,) of an attention pool (ValueError for ``instance``,
        which has no attention network: its weights are computed in :meth:`forward`)."""
        if self.V is None or self.w is None:
            raise ValueError("pool 'instance' has no attention scores")
        a = self.act(self.V(h))
        if self.U is not None:
            a = a * torch.sigmoid(self.U(h))
        s = self.w(a).squeeze(-1)
        if self.pool == "smabmil":
            if adj is None:
                raise ValueError("SmABMIL needs the adjacency of the bag (see grid_adjacency)")
            s = smooth(s, adj, self.sm_alpha, self.sm_steps, self.sm_mode)
        return s

    def forward(
        self, h: torch.Tensor, adj: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bag logit(s) (n_out,) and attention (N,) of one bag's features h (N, D); ``adj``
        (N, N) for SmABMIL. Raises ValueError for an empty bag (N = 0: there is nothing to
        attend to, and the pooled zero vector would give the classifier's bias as a
        prediction)."""
        if h.shape[0] == 0:
            raise ValueError("empty bag (0 instances): nothing to pool")
        if self.norm is not None:
            h = self.norm(h)
        h = self.dropout(h)  # (N, D)
        if self.pool == "instance":
            z = self.classifier(h)  # (N, n_out)
            k = max(1, math.ceil(self.top_fraction * len(z)))
            bag = z.topk(k, dim=0).values.mean(dim=0)  # (n_out,)
            # P(positive): with more than two classes, not the first one (as the heatmaps and
            # slide titles name it; it was the last class's probability)
            p = torch.sigmoid(z[:, 0]) if self.n_out == 1 else 1 - torch.softmax(z, dim=1)[:, 0]
            return bag, p / p.sum().clamp_min(torch.finfo(p.dtype).tiny)
        att = torch.softmax(self.scores(h, adj), dim=0)  # (N,)
        if self.sm_features > 0:  # pool neighbourhood-averaged features (attention from raw h)
            if adj is None:
                raise ValueError("sm_features needs the adjacency of the bag (see grid_adjacency)")
            h = smooth(h, adj, self.sm_features, self.sm_steps, self.sm_mode)
        z = att @ h  # (D,)
        return self.classifier(z), att  # (n_out,), (N,)

    def instance_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_out) of every instance under the bag classifier.

        The classifier is linear and the attention sums to 1, so the bag logit is the
        attention-weighted mean of these (up to dropout): they are on the bag's scale. With
        ``sm_features`` > 0 the bag classifier sees the smoothed features instead, so this
        holds only approximately (the instances' own, unsmoothed features are scored here).
        """
        if self.norm is not None:
            h = self.norm(h)
        return self.classifier(h)

    def instance_loss(self, h: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor | None:
        """Weak instance supervision of one bag (None when ``instance_loss`` is 0).

        h (N, D) instance features, ``label`` the bag's class. The standard MIL assumption gives
        every instance of a negative bag (class 0 of a binary problem) label 0; in any other bag
        only the ``instance_top_k`` instances the classifier scores highest for the bag's class
        are taken to show it (top-k instance selection, as in Campanella et al. 2019, Nat Med
        25:1301; CLAM's instance clustering uses the k most attended); ``instance_top_k`` 0 takes
        every instance to show it (weak patch labels: a patch classifier trained on slide labels). Returns ``instance_loss``
        × the mean cross-entropy (binary: BCE on the one logit) of the selected instances.
        """
        if self.instance_loss_weight == 0:
            return None
        y = int(torch.as_tensor(label).reshape(()).item())
        z = self.instance_logits(h)  # (N, n_out)
        k = min(self.instance_top_k or len(z), len(z))
        if self.n_out == 1:
            z1 = z[:, 0]
            if y == 0:
                loss = nn.functional.binary_cross_entropy_with_logits(z1, torch.zeros_like(z1))
            else:
                top = z1.topk(k).values
                loss = nn.functional.binary_cross_entropy_with_logits(top, torch.ones_like(top))
        else:
            idx = z[:, y].topk(k).indices
            target = torch.full((k,), y, dtype=torch.long, device=z.device)
            loss = nn.functional.cross_entropy(z[idx], target)
        return self.instance_loss_weight * loss
