"""MNIST-bags (Ilse et al. 2018) from scikit-learn's real `load_digits` images: a bag is positive
iff it holds a 9. Trained with the accumulating trainer (chunks of 4 instances)."""

from __future__ import annotations

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from torch import nn

from gigamil import MILModel
from gigamil.nn.losses import BagLoss
from gigamil.nn.pooling import AttentionHead


def make_bags(
    images: np.ndarray, digits: np.ndarray, n_bags: int, rng: np.random.Generator
) -> list[tuple[torch.Tensor, int, np.ndarray]]:
    """Bags of mean size 10 (sd 2) drawn from ``images``; label 1 iff a 9 is inside."""
    bags = []
    for _ in range(n_bags):
        size = int(np.clip(round(rng.normal(10, 2)), 2, None))
        idx = rng.choice(len(images), size=size, replace=False)
        x = torch.from_numpy(images[idx]).float().div(16.0).unsqueeze(1)  # (n, 1, 8, 8)
        is_nine = digits[idx] == 9
        bags.append((x, int(is_nine.any()), is_nine))
    return bags


def test_mnist_bags_learns_and_attends_to_nines() -> None:
    t0 = time.time()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.images, digits.target, test_size=0.4, stratify=digits.target, random_state=0
    )
    train_bags = make_bags(x_tr, y_tr, 100, rng)
    test_bags = make_bags(x_te, y_te, 100, rng)
    assert 0.3 < np.mean([b[1] for b in train_bags]) < 0.9

    encoder = nn.Sequential(
        nn.Flatten(1), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU()
    )  # 8×8 digits: a small MLP encoder
    model = MILModel(encoder, AttentionHead(32, n_classes=2, att_dim=32), BagLoss("ce"))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _epoch in range(15):
        model.train()
        for i in rng.permutation(len(train_bags)):
            x, label, _ = train_bags[i]
            opt.zero_grad(set_to_none=True)
            model.forward_train(x, label, max_instances_per_forward_pass=4)
            opt.step()

    model.eval()
    scores, labels, top_is_nine, inst_auc = [], [], [], []
    with torch.inference_mode():
        for x, label, is_nine in test_bags:
            logits, att = model(x, max_instances_per_forward_pass=4)
            scores.append(float(logits[0]))
            labels.append(label)
            if label == 1:
                att = att.numpy()
                top_is_nine.append(bool(is_nine[att.argmax()]))
                if not is_nine.all():
                    inst_auc.append(roc_auc_score(is_nine, att))
    auc = roc_auc_score(labels, scores)
    assert auc >= 0.9, auc
    assert np.mean(top_is_nine) >= 0.8, np.mean(top_is_nine)  # the top patch is a 9
    assert np.mean(inst_auc) >= 0.9, np.mean(inst_auc)  # 9s ranked above the other digits
    assert time.time() - t0 < 60
