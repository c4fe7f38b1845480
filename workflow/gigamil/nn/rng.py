"""Save and restore torch's global RNG state (CPU, plus the CUDA generator of one device).

Used by ``MILModel.forward_train`` (replaying a chunk's augmentation and dropout) and by the
trainer's ``last.pt`` (``{"cpu": tensor, "cuda": tensor}``, the CUDA entry only on CUDA).
:func:`manual_seed` seeds the generators once per bag in the training loop.
"""

from __future__ import annotations

import torch

RngState = dict[str, torch.Tensor]


def get_rng_state(device: torch.device) -> RngState:
    """The CPU generator's state, and the CUDA generator's when ``device`` is a CUDA device."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: RngState, device: torch.device) -> None:
    """Restore what :func:`get_rng_state` returned (a CUDA entry only on a CUDA ``device``)."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def manual_seed(seed: int) -> None:
    """``torch.manual_seed(seed)``, without its cost where there is no CUDA: torch then still
    queues a lazy seeding of CUDA (and XPU) devices, formatting the Python stack each time
    (about 0.5 ms per call, a third of a training step of a head on cached features). The CPU
    generator (and MPS's, where present) get the same seed as with ``torch.manual_seed``."""
    xpu = getattr(torch, "xpu", None)
    if torch.cuda.is_available() or (xpu is not None and xpu.is_available()):
        torch.manual_seed(seed)
        return
    torch.random.default_generator.manual_seed(int(seed))
    if torch.backends.mps.is_available():  # pragma: no cover - Apple GPUs
        torch.mps.manual_seed(int(seed))
