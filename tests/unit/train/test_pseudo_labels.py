"""The E-step's pseudo-labels and loss (gigamil.train.pseudo_labels): the rules on negative and
positive bags, the soft cross-entropy and its balanced class weights."""

from __future__ import annotations

import pytest
import torch

from gigamil.nn.pooling import AttentionHead
from gigamil.train.pseudo_labels import (
    balanced_soft_weights,
    class_log_probs,
    pseudo_labels,
    soft_cross_entropy,
)


def _head(n_classes: int = 2) -> AttentionHead:
    torch.manual_seed(0)
    return AttentionHead(6, n_classes=n_classes, att_dim=4).eval()


def test_negative_bags_label_every_instance_with_the_first_class() -> None:
    head, h = _head(), torch.randn(5, 6)
    for rule in ("instance", "attention"):
        q = pseudo_labels(head, h, 0, rule)
        assert torch.equal(q, torch.tensor([[1.0, 0.0]] * 5))


def test_instance_rule_is_the_bag_classifier_on_a_bag_of_one() -> None:
    head, h = _head(), torch.randn(5, 6)
    q = pseudo_labels(head, h, 1, "instance")
    for i in range(5):
        logits, att = head(h[i : i + 1])  # the instance as a bag of one
        assert att.item() == pytest.approx(1.0)
        assert q[i, 1].item() == pytest.approx(torch.sigmoid(logits[0]).item(), abs=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(5))
    sharp = pseudo_labels(head, h, 1, "instance", temperature=0.5)
    assert torch.all((sharp[:, 1] - 0.5).abs() >= (q[:, 1] - 0.5).abs() - 1e-7)
    multi, hm = _head(3), torch.randn(4, 6)
    qm = pseudo_labels(multi, hm, 2, "instance")
    assert torch.allclose(qm, torch.softmax(multi.classifier(hm), -1), atol=1e-6)


def test_attention_rule_gives_the_most_attended_instance_the_bag_evidence() -> None:
    head, h = _head(), torch.randn(6, 6)
    logits, att = head(h)
    p_bag = torch.sigmoid(logits[0])
    q = pseudo_labels(head, h, 1, "attention")
    top = int(att.argmax())
    assert q[top, 1].item() == pytest.approx(p_bag.item(), abs=1e-6)
    assert torch.allclose(q[:, 1], p_bag * att / att.max(), atol=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(6))
    with pytest.raises(ValueError, match="rule must be one of"):
        pseudo_labels(head, h, 1, "majority")
    with pytest.raises(ValueError, match="temperature"):
        pseudo_labels(head, h, 1, "instance", temperature=0)


def test_soft_cross_entropy_is_bce_for_one_logit_and_weights_balance_classes() -> None:
    z = torch.tensor([[2.0], [-1.0], [0.5]])
    q1 = torch.tensor([1.0, 0.0, 0.3])
    target = torch.stack([1 - q1, q1], 1)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z[:, 0], q1)
    assert soft_cross_entropy(z, target).item() == pytest.approx(bce.item(), abs=1e-6)
    assert torch.allclose(class_log_probs(z).exp().sum(1), torch.ones(3))
    w = balanced_soft_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2]))  # total / (classes x class mass)
    assert torch.equal(balanced_soft_weights(torch.tensor([[1.0, 0.0]])), torch.tensor([1.0, 0]))


def test_attention_rule_temperature_sharpens_the_relative_attention() -> None:
    """(a_i / max a)^(1/T): T < 1 gives the less attended instances less of the bag's
    evidence, T > 1 more; the most attended instance keeps p_bag."""
    head, h = _head(), torch.randn(6, 6)
    logits, att = head(h)
    p_bag, rel = torch.sigmoid(logits[0]), att / att.max()
    for t in (0.5, 2.0):
        q = pseudo_labels(head, h, 1, "attention", temperature=t)
        assert torch.allclose(q[:, 1], p_bag * rel ** (1 / t), atol=1e-6)
        assert torch.allclose(q.sum(1), torch.ones(6))
    sharp = pseudo_labels(head, h, 1, "attention", temperature=0.5)[:, 1]
    plain = pseudo_labels(head, h, 1, "attention")[:, 1]
    assert (sharp <= plain + 1e-7).all() and (sharp < plain - 1e-4).any()
