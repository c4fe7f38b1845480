"""Grid adjacency and the Sm smoothing operator."""

from __future__ import annotations

import numpy as np
import torch

from gigamil.nn.pooling import AttentionHead, grid_adjacency, smooth


def test_grid_adjacency_neighbours() -> None:
    grid = np.array([(0, 0), (0, 1), (1, 1), (5, 5), (1, 0)])
    a = grid_adjacency(grid, connectivity=8).to_dense()
    assert torch.allclose(a, a.T)
    nz = (a > 0).int()
    expected = torch.tensor(
        [[0, 1, 1, 0, 1], [1, 0, 1, 0, 1], [1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0]]
    )
    assert torch.equal(nz, expected)
    # symmetric normalisation: every connected node has degree 3 here → weights 1/3
    assert torch.allclose(a[0, 1], torch.tensor(1 / 3))
    a4 = (grid_adjacency(grid, connectivity=4).to_dense() > 0).int()
    assert a4[0, 2] == 0 and a4[0, 1] == 1


def test_smooth_approx_converges_to_exact() -> None:
    grid = np.array([(r, c) for r in range(4) for c in range(4)])
    adj = grid_adjacency(grid, dtype=torch.float64)
    f = torch.randn(16, dtype=torch.float64)
    exact = smooth(f, adj, alpha=0.5, mode="exact")
    approx = smooth(f, adj, alpha=0.5, steps=60)
    assert torch.allclose(exact, approx, atol=1e-10)
    assert exact.std() < f.std()  # smoothing reduces variation


def test_head_outputs() -> None:
    h = torch.randn(9, 5)
    head = AttentionHead(5, n_classes=4, att_dim=3)
    logits, att = head(h)
    assert logits.shape == (4,) and att.shape == (9,)
    assert torch.isclose(att.sum(), torch.tensor(1.0))
