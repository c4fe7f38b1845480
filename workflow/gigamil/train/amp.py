"""Mixed precision and the optimizer step (after timm's ``NativeScaler``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler


class AmpScaler:
    """Mixed precision for ``device``: the autocast dtype (float16 on CUDA, bfloat16 on CPU) and,
    for float16, a ``GradScaler`` that scales the loss and unscales before the optimizer step.
    Disabled (``enabled=False``) it is a plain ``optimizer.step()``."""

    def __init__(self, enabled: bool, device: torch.device) -> None:
        cuda = device.type == "cuda"
        self.dtype: torch.dtype | None = None
        if enabled:
            self.dtype = torch.float16 if cuda else torch.bfloat16
        self.grad_scaler = torch.amp.GradScaler("cuda") if enabled and cuda else None

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` (through the gradient scaler when there is one)."""
        if self.grad_scaler is None:
            optimizer.step()
        else:
            self.grad_scaler.step(optimizer)
            self.grad_scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        """The gradient scaler's state, or None without one."""
        return None if self.grad_scaler is None else self.grad_scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.grad_scaler is not None and state:
            self.grad_scaler.load_state_dict(state)


class Optimization:
    """Optimizer, per-step learning-rate scheduler and AMP scaler: what one optimizer step
    needs. ``state_dict()`` holds the three under the keys ``last.pt`` has always used."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, scheduler: LRScheduler, amp: AmpScaler
    ) -> None:
        self.optimizer, self.scheduler, self.amp = optimizer, scheduler, amp

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        """Optimizer step (via the AMP scaler), then one scheduler step."""
        self.amp.step(self.optimizer)
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        scaler = self.amp.state_dict()
        if scaler is not None:
            state["scaler"] = scaler
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.amp.load_state_dict(state.get("scaler"))
