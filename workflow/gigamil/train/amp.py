"""Mixed precision and the optimizer step (after timm's ``NativeScaler``)."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from gigamil.errors import ConfigError

log = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", False, True)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 natively (CUDA compute capability 8.0+; False on CPU)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_amp(mode: str | bool | None, device: torch.device) -> str | None:
    """``training.amp`` for ``device`` → ``"bf16"``, ``"fp16"`` or None (float32).

    ``auto``: bf16 on a CUDA device that supports it, else None (CPU bfloat16 autocast is slower
    than float32 on most processors). ``true``: the deprecated spelling of ``fp16`` (bf16 on CPU,
    as it always was), logged as such. ``fp16`` needs CUDA (its gradient scaler is CUDA's).
    """
    if mode is None or mode is False:
        return None
    cuda = device.type == "cuda"
    if mode is True:
        log.warning(
            "training.amp: true is deprecated; it means fp16 (float16 autocast + gradient scaler) "
            "on CUDA and bf16 on CPU, as before: write `amp: fp16`, `amp: bf16` or `amp: auto` "
            "(bf16 where the GPU supports it)"
        )
        return "fp16" if cuda else "bf16"
    if mode == "auto":
        return "bf16" if bf16_supported(device) else None
    if mode == "fp16" and not cuda:
        raise ConfigError(
            f"training.amp: fp16 needs a CUDA device (training runs on {device.type}); "
            "use bf16, auto or false"
        )
    if mode == "bf16" and cuda and not bf16_supported(device):
        raise ConfigError(
            f"training.amp: bf16 is not supported by {torch.cuda.get_device_name(device)} "
            "(needs compute capability 8.0 or newer); use fp16, auto or false"
        )
    if mode not in ("bf16", "fp16"):
        raise ConfigError(f"training.amp: {mode!r} is not one of auto, bf16, fp16, false")
    return str(mode)


class AmpScaler:
    """Mixed precision for ``device``: the autocast dtype and, for float16, a ``GradScaler`` that
    scales the loss and unscales before the optimizer step. ``mode``: ``training.amp`` (``auto``,
    ``bf16``, ``fp16``, ``false``; ``true`` = the deprecated spelling of fp16, see
    :func:`resolve_amp`). Without autocast it is a plain ``optimizer.step()``."""

    def __init__(self, mode: str | bool, device: torch.device) -> None:
        self.mode = resolve_amp(mode, device)
        self.dtype: torch.dtype | None = {
            "bf16": torch.bfloat16,
            "fp16": torch.float16,
            None: None,
        }[self.mode]
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.mode == "fp16" else None

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
