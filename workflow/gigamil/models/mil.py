"""``MILModel``: end-to-end MIL with exact gradient accumulation over chunks of instances.

``forward_train`` implements GradCache for one bag of N instances, chunk size k:

1. encode all chunks without grad (recording the RNG state before each chunk) → H (N, D);
2. make H a leaf, run the attention model and the loss ONCE, backward → head gradients and
   dL/dH in ``H.grad``;
3. for each chunk, restore its RNG state, re-encode it with grad and backpropagate
   ``H.grad[chunk]`` into the encoder.

Encoder memory is bounded by k; only the N × D feature matrix grows with the bag. Dropout and
augmentation inside the encoder replay identically in step 3. BatchNorm layers in training mode
get their running statistics restored after step 1, so they are updated once per chunk.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gigamil.errors import GigamilError
from gigamil.nn.rng import get_rng_state, set_rng_state


@runtime_checkable
class BagSource(Protocol):
    """A lazy bag: its length and an iterator over consecutive chunks (tensors, in row order)."""

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[torch.Tensor]: ...


Bag = torch.Tensor | BagSource


class TrainStep(NamedTuple):
    """What ``forward_train`` returns (detached)."""

    logits: torch.Tensor  # (n_out,)
    attention: torch.Tensor  # (N,)
    loss: float


def iter_chunks(bag: Bag, size: int) -> Iterator[torch.Tensor]:
    """Consecutive chunks of at most ``size`` instances of a tensor or a ``BagSource``."""
    if isinstance(bag, torch.Tensor):
        for start in range(0, len(bag), size):
            yield bag[start : start + size]
    else:
        yield from bag.chunks(size)


def balanced_chunk_size(n: int, k: int) -> int | None:
    """The chunk size (at most ``k``) for a bag of ``n`` instances whose last chunk is not a
    single instance, the chunks as even as possible (257 with k=256: 129 + 128, not 256 + 1);
    None when every split leaves a chunk of one (n = 1; n = 3 with k = 2). For BatchNorm in
    training mode, which needs two instances per chunk for its batch statistics."""
    if n < 2:
        return None
    k = max(1, min(int(k), n))
    for m in range(-(-n // k), n + 1):  # number of chunks, from the fewest
        size = -(-n // m)
        if size < 2:
            break
        if n - (-(-n // size) - 1) * size != 1:
            return size
    return None


def _bn_running_buffers(module: nn.Module) -> list[tuple[_BatchNorm, list[torch.Tensor]]]:
    """Snapshot of the running statistics of BatchNorm layers that would update them."""
    saved = []
    for m in module.modules():
        if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
            bufs = [m.running_mean, m.running_var, m.num_batches_tracked]
            saved.append((m, [b.detach().clone() for b in bufs]))
    return saved


def _restore_bn(saved: list[tuple[_BatchNorm, list[torch.Tensor]]]) -> None:
    with torch.no_grad():
        for m, (mean, var, count) in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


class MILModel(nn.Module):
    """Feature encoder + attention model + loss, trained end to end with chunked accumulation.

    ``feature_encoder``: instances (n, ...) → features (n, D). ``attention_model(H[, adj])`` →
    ``(logits, attention)`` for one bag. ``loss_fn(logits, label)`` → scalar; an
    attention model with an ``instance_loss(H, label)`` method adds its value (None: nothing).
    ``amp_dtype`` (attribute): autocast dtype of the encoder passes, or None.
    """

    def __init__(
        self,
        feature_encoder: nn.Module,
        attention_model: nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.feature_encoder = feature_encoder
        self.attention_model = attention_model
        self.loss_fn = loss_fn
        self.amp_dtype: torch.dtype | None = None

    # ---------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _autocast(self, dev: torch.device) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(dev.type, dtype=self.amp_dtype)

    def _adjacency(self, bag: Bag, adj: torch.Tensor | None) -> torch.Tensor | None:
        if adj is None and getattr(self.attention_model, "needs_adj", False):
            adj = self._grid_adjacency(bag)
            if adj is None:
                raise ValueError("the attention model needs `adj` (or a bag with a .grid)")
        return None if adj is None else adj.to(self.device)

    def _grid_adjacency(self, bag: Bag) -> torch.Tensor | None:
        """The patch-grid adjacency the bag keeps or its ``.grid`` gives; None without a grid."""
        cached = getattr(bag, "adjacency", None)  # a bag that keeps its adjacency
        if callable(cached):
            return cached()
        grid = getattr(bag, "grid", None)
        if grid is None:
            return None
        from gigamil.nn.pooling import grid_adjacency

        return grid_adjacency(grid)

    def _head(self, h: torch.Tensor, adj: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if adj is None:
            return self.attention_model(h)
        return self.attention_model(h, adj)

    def _loss(
        self, h: torch.Tensor, logits: torch.Tensor, label: int | torch.Tensor
    ) -> torch.Tensor:
        """Bag loss × the attention model's ``bag_loss_weight`` (default 1), plus its
        ``instance_loss(h, label)`` when it has one."""
        weight = float(getattr(self.attention_model, "bag_loss_weight", 1.0))
        loss = self.loss_fn(logits, label) * weight  # type: ignore[misc]
        instance_loss = getattr(self.attention_model, "instance_loss", None)
        extra = instance_loss(h, label) if callable(instance_loss) else None
        return loss if extra is None else loss + extra

    def _encoder_trainable(self) -> bool:
        return torch.is_grad_enabled() and any(
            p.requires_grad for p in self.feature_encoder.parameters()
        )

    def _encode_chunk(self, x: torch.Tensor, dev: torch.device) -> torch.Tensor:
        with self._autocast(dev):  # (the device is looked up once per bag, not per chunk)
            return self.feature_encoder(x.to(dev, non_blocking=True))  # (n, D)

    # ---------------------------------------------------------------- inference
    def encode(self, bag: Bag, max_instances_per_forward_pass: int | None = None) -> torch.Tensor:
        """Features (N, D) of a bag, chunk by chunk (follows the current grad mode); chunk size
        None or 0: the whole bag at once."""
        n = len(bag)
        k = chunk_argument(max_instances_per_forward_pass) or max(n, 1)
        dev = self.device
        feats = [self._encode_chunk(x, dev) for x in iter_chunks(bag, k)]
        if not feats:
            raise ValueError("empty bag (0 instances)")
        return torch.cat(feats).float() if self.amp_dtype is not None else torch.cat(feats)

    def forward(
        self,
        bag: Bag,
        adj: torch.Tensor | None = None,
        max_instances_per_forward_pass: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (n_out,), attention (N,))`` of one bag (no backward)."""
        h = self.encode(bag, max_instances_per_forward_pass)
        return self._head(h, self._adjacency(bag, adj))

    def forward_patches(
        self,
        bag: Bag,
        adj: torch.Tensor | None = None,
        max_instances_per_forward_pass: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(logits (n_out,), attention (N,), patch logits (N,) or None)`` of one bag.

        The patch logits are the bag classifier applied to each patch's features (the
        attention model's ``instance_logits``; None if it has none), as the logit of the
        positive class (:func:`positive_logit`), smoothed over the patch grid with the Sm
        operator at the attention model's ``sm_alpha`` (:func:`gigamil.nn.pooling.smooth`;
        unsmoothed for a bag without a grid): how much each neighbourhood looks like the
        positive class, beside where the attention looked (docs/real_tissue.md, "Patch
        scores").
        """
        h = self.encode(bag, max_instances_per_forward_pass)
        adj = self._adjacency(bag, adj)
        logits, att = self._head(h, adj)
        instance_logits = getattr(self.attention_model, "instance_logits", None)
        if not callable(instance_logits):
            return logits, att, None
        z = positive_logit(instance_logits(h).float())
        grid = adj if adj is not None else self._grid_adjacency(bag)
        alpha = float(getattr(self.attention_model, "sm_alpha", 0.0))
        if grid is not None and alpha > 0:
            from gigamil.nn.pooling import smooth

            z = smooth(z, grid.to(z.device), alpha)
        return logits, att, z

    # ---------------------------------------------------------------- training
    def _chunk_size(self, n: int, k: int | None) -> int | None:
        """The chunk size of a bag of ``n`` with at most ``k`` per chunk (None: whole bag). With
        BatchNorm using batch statistics (``model.batchnorm: train``) no chunk may hold one
        instance (BatchNorm cannot normalise a batch of one: "Expected more than 1 value per
        channel"), so the chunks are balanced; a bag that cannot be split so is refused."""
        if not _bn_running_buffers(self.feature_encoder):
            return k
        size = balanced_chunk_size(n, k or n)
        if size is None:
            raise GigamilError(
                f"a bag of {n} patch(es) cannot be cut into chunks of one size of at most "
                f"{k or n} (training.max_instances_per_forward_pass) without a chunk of one "
                "patch, which BatchNorm in training mode (model.batchnorm: train) cannot "
                "normalise; use model.batchnorm: frozen or groupnorm, or a larger (or another) "
                "max_instances_per_forward_pass, or drop slides with a single patch"
            )
        return None if k is None and size == n else size

    def forward_train(  # noqa: PLR0913 - public API; options are keywords
        self,
        bag: Bag,
        label: int | torch.Tensor,
        max_instances_per_forward_pass: int | None = None,
        adj: torch.Tensor | None = None,
        loss_scale: float = 1.0,
        scaler: Any | None = None,
    ) -> TrainStep:
        """Forward AND backward of one bag; the caller steps the optimizer.

        ``max_instances_per_forward_pass=None``, or at least the bag's size: plain full-bag
        pass (the whole bag in one graph; for a bag that fits in one chunk this gives GradCache's
        gradients and RNG stream without its extra no-grad encoding, and holds no more
        activations than GradCache's one re-encoded chunk). Otherwise GradCache with chunks of
        that many instances. Gradients are accumulated into ``.grad`` (scaled by
        ``loss_scale``, e.g. 1/bags_per_step, and by ``scaler.scale`` for fp16 AMP). Returns
        detached logits, attention and the loss value.

        ``bag``: a tensor of N patches, uint8 (N, H, W, 3) or float (N, 3, H, W) in [0, 1]
        (:class:`gigamil.nn.augment.PatchPreprocess`), or a bag object with ``chunks(k)`` and
        ``len`` (:class:`gigamil.data.bags.ZarrBag`); ``label``: the bag's class index, an int
        or a one-element integer tensor (:class:`gigamil.nn.losses.BagLoss` refuses fractions
        and one-hot vectors); ``adj``: the (N, N) patch adjacency of ``smabmil`` (default: from
        the bag's ``grid``). Augmentation and dropout follow the modules' train/eval mode.
        Raises ValueError for an empty bag, a missing loss_fn or a chunk size that is not a
        whole number >= 1 (or None / 0).
        """
        if self.loss_fn is None:
            raise ValueError("MILModel.forward_train needs a loss_fn")
        n = len(bag)
        if n == 0:
            raise ValueError("empty bag (0 instances): nothing to train on")
        adj = self._adjacency(bag, adj)
        k = self._chunk_size(n, chunk_argument(max_instances_per_forward_pass) or None)
        trainable = self._encoder_trainable()

        def backward(t: torch.Tensor) -> None:
            t = t * loss_scale
            (scaler.scale(t) if scaler is not None else t).backward()

        if k is None or k >= n or not trainable:  # one chunk, or no encoder gradient: plain pass
            ctx = contextlib.nullcontext() if trainable else torch.no_grad()
            with ctx:
                h = self.encode(bag, None if trainable else (k or n))
            logits, att = self._head(h, adj)
            loss = self._loss(h, logits, label)
            backward(loss)
            return TrainStep(logits.detach(), att.detach(), float(loss.detach()))

        return self._gradcache_step(bag, label, adj, k, backward)

    def _gradcache_step(
        self,
        bag: Bag,
        label: int | torch.Tensor,
        adj: torch.Tensor | None,
        k: int,
        backward: Callable[[torch.Tensor], None],
    ) -> TrainStep:
        """GradCache (Gao et al. 2021) on one bag in chunks of ``k``: encode every chunk without
        grad, run the head and loss once on the stacked features H (N, D), then re-encode each
        chunk with grad under its saved RNG state and backpropagate its slice of dL/dH."""
        n = len(bag)
        # 1. no-grad encoding of every chunk, remembering the RNG state before each
        dev = self.device
        bn_saved = _bn_running_buffers(self.feature_encoder)
        states, bounds = [], []
        h_all: torch.Tensor | None = None
        start = 0
        with torch.no_grad():
            for x in iter_chunks(bag, k):
                states.append(get_rng_state(dev))
                h = self._encode_chunk(x, dev)
                if h_all is None:
                    dtype = torch.float32 if self.amp_dtype is not None else h.dtype
                    h_all = torch.empty((n, *h.shape[1:]), dtype=dtype, device=h.device)
                h_all[start : start + len(h)] = h
                bounds.append((start, start + len(h)))
                start += len(h)
        _restore_bn(bn_saved)
        if h_all is None or start != n:
            raise ValueError(f"the bag yielded {start} instances but len() says {n}")

        # 2. attention model and loss once, on the leaf feature matrix
        h_leaf = h_all.requires_grad_(True)
        logits, att = self._head(h_leaf, adj)
        loss = self._loss(h_leaf, logits, label)
        backward(loss)
        grad_h, h_leaf.grad = h_leaf.grad, None  # (N, D) dL/dH, already scaled
        del h_leaf, h_all  # H is not needed any more: only dL/dH stays beside the encoder passes

        # 3. re-encode each chunk with grad under the same RNG state; backprop its slice of dL/dH
        # (afterwards the RNG continues from where the no-grad pass left it)
        after_pass_1 = get_rng_state(dev)
        try:
            for state, (s, e), x in zip(states, bounds, iter_chunks(bag, k), strict=True):
                set_rng_state(state, dev)
                h = self._encode_chunk(x, dev)
                h.backward(grad_h[s:e].to(h.dtype))
        finally:
            set_rng_state(after_pass_1, dev)
        return TrainStep(logits.detach(), att.detach(), float(loss.detach()))


def positive_logit(z: torch.Tensor) -> torch.Tensor:
    """Logit (N,) of "not the first class" from instance logits (N, n_out): the one logit of
    a binary model (n_out 1), else logsumexp of the other classes' logits minus the first's
    (the positive class of the heatmaps' colour scale)."""
    if z.shape[-1] == 1:
        return z[:, 0]
    return torch.logsumexp(z[:, 1:], dim=1) - z[:, 0]


def chunk_argument(k: Any) -> int | None:
    """``max_instances_per_forward_pass`` checked: None or 0 (the whole bag), or a whole number
    >= 1; ValueError otherwise (0 divided the chunk loop by zero in training, a negative number
    gave a misleading count error, a float or a string a raw TypeError)."""
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(
            "max_instances_per_forward_pass must be a whole number >= 1, or None (or 0) for the "
            f"whole bag; got {k!r}"
        )
    return int(k)
