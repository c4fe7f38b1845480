"""The instance targets and loss of the E-step of ``training.strategy: em``
(:mod:`gigamil.train.em`): soft pseudo-labels of a bag's instances from the attention head
(:func:`pseudo_labels`, rules :data:`RULES`), the soft cross-entropy the encoder is fine-tuned
with (:func:`soft_cross_entropy`), its balanced class weights (:func:`balanced_soft_weights`)
and the fine-tuning steps themselves (:func:`encoder_steps`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from gigamil.train.loop import bag_probabilities

if TYPE_CHECKING:
    from gigamil.models.mil import MILModel
    from gigamil.train.amp import Optimization

log = logging.getLogger("gigamil.train.em")  # the E-step's lines, beside the rest of its round

RULES = ("instance", "attention")


def class_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Log class probabilities (N, n_classes) of classifier logits (N, n_out); one logit z
    (binary) is the two-class logits (0, z), the convention of :func:`bag_probabilities`."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def pseudo_labels(  # noqa: PLR0913 - one argument per setting of the rule
    head: nn.Module,
    h: torch.Tensor,
    label: int,
    rule: str = "instance",
    temperature: float = 1.0,
    adj: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft class targets (N, n_classes), rows summing to 1, for the N instances of one bag.

    ``head``: an :class:`~gigamil.nn.pooling.AttentionHead` (put it in eval mode first);
    ``h`` (N, D) the bag's instance features; ``label`` the bag's class index; ``adj`` the
    bag's adjacency when the head needs one (SmABMIL, ``attention`` rule only).

    - every instance of a bag of class 0 gets class 0 (the standard MIL assumption: a negative
      bag holds no positive instance);
    - ``instance``: the bag classifier applied to each instance as a bag of one
      (``head.instance_logits``; the bag logit is the attention-weighted mean of these),
      logits divided by ``temperature`` (< 1 sharpens);
    - ``attention``: attention-weighted bag evidence: instance i gets the bag's class with
      probability p_bag(label) · (a_i / max_j a_j)^(1/temperature) and class 0 otherwise (the
      most attended instance carries the bag's evidence, the others in proportion).

    Raises ValueError for an unknown rule, a non-positive temperature or an empty bag.
    """
    if rule not in RULES:
        raise ValueError(f"pseudo-label rule must be one of {RULES}, got {rule!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = len(h)
    if n == 0:
        raise ValueError("empty bag (0 instances)")
    n_classes = max(2, int(head.n_out))
    if label == 0:
        target = torch.zeros(n, n_classes, device=h.device)
        target[:, 0] = 1.0
        return target
    if rule == "instance":
        z = head.instance_logits(h).float() / temperature
        return class_log_probs(z).exp()
    logits, att = head(h, adj) if adj is not None else head(h)
    p_bag = bag_probabilities(logits)[label]
    rel = (att.float() / att.float().max()).clamp(0, 1) ** (1.0 / temperature)
    share = p_bag * rel  # (N,)
    target = torch.zeros(n, n_classes, device=h.device)
    target[:, label] = share
    target[:, 0] += 1.0 - share
    return target


def soft_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over instances of -Σ_c w_c q_c log p_c: ``logits`` (N, n_out) of the classifier,
    ``target`` (N, n_classes) soft labels q, ``class_weights`` (n_classes,) w (None: 1)."""
    loss = -(target * class_log_probs(logits))
    if class_weights is not None:
        loss = loss * class_weights.to(loss.device)
    return loss.sum(-1).mean()


def balanced_soft_weights(target: torch.Tensor) -> torch.Tensor:
    """Class weights (n_classes,) from soft targets (N, n_classes): total / (number of classes
    with mass × class mass), 0 for a class without mass (as ``class_weights: balanced`` for
    bags, over the classes present)."""
    mass = target.sum(0)
    weights = torch.zeros_like(mass)
    present = mass > 0
    weights[present] = target.sum() / (int(present.sum()) * mass[present])
    return weights


def encoder_steps(  # noqa: PLR0913 - the parts of one E-step
    model: MILModel,
    x: torch.Tensor,
    q: torch.Tensor,
    weights: torch.Tensor | None,
    optim: Optimization,
    *,
    steps: int,
    batch: int,
    seed: int,
    log_every_s: float,
) -> float:
    """``steps`` optimizer steps of ``model``'s encoder on minibatches of ``batch`` of the
    patches ``x`` (M, H, W, 3) against the soft targets ``q`` (M, n_classes) of its head's bag
    classifier (:func:`soft_cross_entropy`, class ``weights``), in passes of an order drawn
    with ``seed``; a progress line at most every ``log_every_s`` seconds. Returns the sum of
    the steps' losses."""
    amp, head = optim.amp, model.attention_model
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch, len(x))
    order = torch.randperm(len(x), generator=gen)
    pos, total = 0, 0.0
    last_line = time.monotonic()
    for step in range(steps):
        if pos + batch > len(order):  # a new pass over the patches
            order, pos = torch.randperm(len(x), generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        optim.zero_grad()
        h = model.encode(x[idx], batch)
        loss = soft_cross_entropy(head.instance_logits(h.float()), q[idx].to(h.device), weights)
        scaled = amp.grad_scaler.scale(loss) if amp.grad_scaler is not None else loss
        scaled.backward()
        optim.step()
        total += float(loss.detach())
        if time.monotonic() - last_line >= log_every_s:
            last_line = time.monotonic()
            log.info("E-step: %d/%d steps, loss so far %.4f", step + 1, steps, total / (step + 1))
    return total
