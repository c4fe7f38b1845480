"""benchmarks/tile_probe.py: the tile subsets it trains on (the probe itself is run by hand)."""

from __future__ import annotations

import numpy as np
import pytest


def test_weak_subset_layout(bench) -> None:
    y = np.array([0] * 300 + [1] * 300)
    idx, weak = bench.weak_subset(y, 100, seed=0)
    assert len(idx) == len(set(idx)) == 100
    truth = y[idx]
    # half the tiles come from positive slides (all labelled 1), 30 % of those are tumour
    assert weak.sum() == 50 and truth.sum() == 15
    assert (truth[weak == 0] == 0).all()  # negative slides hold normal tiles only
    assert ((truth == 1) & (weak == 1)).sum() == 15 and ((truth == 0) & (weak == 1)).sum() == 35


def test_balanced_subset(bench) -> None:
    y = np.array([0] * 30 + [1] * 10)
    idx = bench.balanced_subset(y, 20, seed=0)
    assert sorted(np.bincount(y[idx])) == [10, 10]
    with pytest.raises(SystemExit, match="only 10 available"):
        bench.balanced_subset(y, 40, seed=0)


def test_weak_subset_needs_enough_normal_tiles(bench) -> None:
    y = np.array([0] * 80 + [1] * 80)
    with pytest.raises(SystemExit, match="need 15 tumour and 85 normal tiles, only 80 and 80"):
        bench.weak_subset(y, 100, seed=0)
