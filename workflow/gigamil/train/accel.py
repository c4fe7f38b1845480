"""Speed: channels-last CNN encoders, cuDNN autotuning on CUDA, optional ``torch.compile``.

None of these changes what is computed beyond floating-point rounding (``torch.compile`` leaves
the augmentation in front of the encoder uncompiled, so its random numbers stay torch's):
``prepare_model`` is called by the trainer and by ``predict_slides`` after the model is on its
device. ``device_warning`` tells a run at its start that ``training.device: cuda`` has no CUDA
device here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def is_cnn(module: nn.Module) -> bool:
    """True for an encoder with convolutions beyond a patch embedding (ResNets, the small CNN;
    not a ViT, whose only convolution cuts the image into tokens)."""
    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) > 1


def prepare_model(model: nn.Module, device: torch.device, compile_encoder: bool = False) -> None:
    """A CNN encoder in ``channels_last`` memory format, on every device (its convolutions then
    run in NHWC; on a 2-core CPU the demo's training step takes 0.89 × the time and its eval
    forward 0.81 ×, ``benchmarks/memory_format.py``); on CUDA also ``cudnn.benchmark`` on. With
    ``compile_encoder``, ``torch.compile`` the encoder (see :func:`compile_module`). A
    :class:`~gigamil.models.ensemble.ReplicateEnsemble` has each member prepared."""
    if hasattr(model, "members"):
        for member in model.members:
            prepare_model(member, device, compile_encoder)
        return
    encoder = model.feature_encoder
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if is_cnn(encoder):
        encoder.to(memory_format=torch.channels_last)
    if compile_encoder:
        compile_module(_after_preprocess(encoder))


def _after_preprocess(encoder: nn.Module) -> nn.Module:
    """The encoder without its :class:`~gigamil.nn.augment.PatchPreprocess` (augmentation,
    normalisation) in front: what ``torch.compile`` compiles. Compiled, the augmentation's
    ``torch.rand`` would draw from inductor's own generator per graph call, so the patches
    would depend on the chunk size and differ from an uncompiled run."""
    from gigamil.nn.augment import PatchPreprocess

    parts = list(encoder.children()) if isinstance(encoder, nn.Sequential) else []
    if len(parts) == 2 and isinstance(parts[0], PatchPreprocess):
        return parts[1]
    return encoder


class CompiledForward:
    """``module.forward`` through ``torch.compile``; if compiling fails (no C++ compiler, an
    unsupported layer, an old GPU for Triton, ...) it logs why once and runs the module uncompiled
    from then on. Replacing ``forward`` (not wrapping the module) keeps the state-dict keys, so
    checkpoints do not depend on ``training.compile``."""

    def __init__(self, module: nn.Module, **compile_kwargs: Any) -> None:
        self.eager: Callable[..., Any] = module.forward
        self.compiled: Callable[..., Any] | None = torch.compile(self.eager, **compile_kwargs)
        self.name = type(module).__name__
        self._kwargs = compile_kwargs

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledForward:
        """A copy of the module (e.g. the moving average of the weights) gets its own compiled
        forward: the compiled function is bound to this module's forward, so a plain copy would
        run the original module's weights."""
        import copy

        new = CompiledForward.__new__(CompiledForward)
        new.eager = copy.deepcopy(self.eager, memo)  # the bound method, rebound to the copy
        new.name, new._kwargs = self.name, dict(self._kwargs)
        new.compiled = None if self.compiled is None else torch.compile(new.eager, **new._kwargs)
        return new

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to eager
                cause = _root_cause(exc)
                message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
                log.warning(
                    "training.compile: torch.compile of the encoder (%s) failed (%s: %s); the "
                    "encoder runs uncompiled (same results, no speed-up; set training.compile: "
                    "false to skip the attempt)",
                    self.name,
                    type(cause).__name__,
                    message[:300],
                )
                self.compiled = None
        return self.eager(*args, **kwargs)


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost cause (a backend's own error, not dynamo's ``BackendCompilerFailed``)."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def compile_module(module: nn.Module, **compile_kwargs: Any) -> CompiledForward:
    """Route ``module``'s forward through :class:`CompiledForward` (compiled lazily, at the first
    call); returns it."""
    compiled = CompiledForward(module, **compile_kwargs)
    module.forward = compiled  # type: ignore[method-assign]
    return compiled


def device_warning(name: str, amp: str | bool | None = None) -> str | None:
    """A warning for the start of a run when this machine has no CUDA device and
    ``training.device`` is ``cuda``, or is ``auto`` with ``training.amp: fp16`` (which needs
    CUDA; auto trains on the CPU here): the jobs that train and predict fail there, after the
    masks and patch stores are made; none when a cluster sends those jobs to GPU nodes, which
    only the run knows."""
    if name == "cpu" or torch.cuda.is_available():
        return None
    if name == "auto" and amp == "fp16":
        return (
            "training.amp: fp16 needs a CUDA device, and this machine has none (training.device: "
            "auto trains on its CPU): train_fold jobs that run here will fail (after the tissue "
            "masks and patch stores are made); ignore this if a cluster profile sends them to "
            "GPU nodes, else set amp: auto"
        )
    if name != "cuda":
        return None
    return (
        "training.device: cuda, but this machine has no CUDA device: train_fold and "
        "predict_fold jobs that run here will fail (after the tissue masks and patch stores "
        "are made); ignore this if a cluster profile sends them to GPU nodes, else set "
        "device: auto"
    )
