"""gigamil.nn.rng.manual_seed: the same random numbers as torch.manual_seed."""

from __future__ import annotations

import torch

from gigamil.nn.rng import manual_seed


def test_manual_seed_gives_the_numbers_of_torch_manual_seed() -> None:
    for seed in (0, 7, 2**40 + 3):
        manual_seed(seed)
        ours = (torch.rand(5), torch.randint(0, 100, (3,)), torch.randn(2))
        torch.manual_seed(seed)
        ref = (torch.rand(5), torch.randint(0, 100, (3,)), torch.randn(2))
        assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
    assert torch.initial_seed() == 2**40 + 3
