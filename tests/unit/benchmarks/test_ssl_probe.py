"""Helpers of benchmarks/ssl_probe.py (the probe itself is run by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch


def test_nt_xent_matches_the_closed_form_and_rewards_aligned_views(bench):
    n, tau = 4, 0.2
    z = torch.eye(8)[:n].repeat(2, 1)  # view i and i + n identical, all other pairs orthogonal
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (2 * n - 2)))
    assert bench.nt_xent(z, tau).item() == pytest.approx(expected, rel=1e-6)
    shuffled = torch.cat([z[:n], z[n:][torch.tensor([1, 2, 3, 0])]])  # partners now differ
    assert bench.nt_xent(shuffled, tau).item() > bench.nt_xent(z, tau).item() + 1


def test_views_are_normalised_pairs_and_the_probe_separates(bench):
    from torchvision.transforms import v2

    tiles = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    views = bench.simclr_views(tiles, v2.RandomHorizontalFlip(p=0.0))
    assert views.shape == (6, 3, 16, 16)
    torch.testing.assert_close(views[:3], views[3:])
    torch.testing.assert_close(views[:3], bench.normalise(tiles))
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 100)
    informative = np.c_[y + 0.3 * rng.normal(size=200), rng.normal(size=200)]
    assert bench.linear_probe(informative, y) > 0.95
    assert bench.linear_probe(rng.normal(size=(200, 2)), y) < 0.7
