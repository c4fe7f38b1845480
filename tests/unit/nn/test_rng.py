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


def test_the_cuda_generator_is_saved_and_restored_on_a_cuda_device(monkeypatch) -> None:
    """On a CUDA device the CUDA generator is replayed too (GradCache re-encodes each chunk
    under its saved state); on the CPU only the CPU generator is touched."""
    from gigamil.nn.rng import get_rng_state, set_rng_state

    restored = []
    cuda_state = torch.tensor([7, 1, 2], dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_state.clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s, device)))
    dev = torch.device("cuda", 0)
    state = get_rng_state(dev)
    assert set(state) == {"cpu", "cuda"} and torch.equal(state["cuda"], cuda_state)
    first = torch.rand(4)
    set_rng_state(state, dev)
    assert torch.equal(torch.rand(4), first)  # the CPU generator is back where it was
    assert len(restored) == 1
    assert torch.equal(restored[0][0], cuda_state) and restored[0][1] == dev
    cpu = torch.device("cpu")
    assert set(get_rng_state(cpu)) == {"cpu"}
    set_rng_state(get_rng_state(cpu), cpu)
    assert len(restored) == 1
