"""Save and restore torch's global RNG state (CPU, plus the CUDA generator of one device).

Used by ``MILModel.forward_train`` (replaying a chunk's augmentation and dropout) and by the
trainer's ``last.pt`` (``{"cpu": tensor, "cuda": tensor}``, the CUDA entry only on CUDA).
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
