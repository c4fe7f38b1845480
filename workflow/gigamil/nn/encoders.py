"""Patch encoders (small CNN, torchvision ResNets and ViT-B/16, timm models and pathology
foundation models, identity) and BatchNorm modes; the small CNN itself is gigamil.nn.smallcnn.

``model.encoder``: a name of :data:`ENCODERS` (torchvision / built in), ``timm:<architecture>``
(any timm model, without its classifier) or a foundation model of
:data:`gigamil.nn.foundation.FOUNDATION_MODELS` (``uni``, ``virchow2``, ...). Weights:
gigamil.nn.weights; partial fine-tuning (``model.trainable_blocks``): gigamil.nn.partial.

BatchNorm and the accumulating trainer (see README, "Training"):

- ``frozen`` (default): BatchNorm always uses its running statistics (eval mode) even while the
  model trains; the affine parameters still learn. Every instance is encoded independently of the
  others, so chunked gradients equal the full-bag gradients exactly.
- ``train``: batch statistics of each chunk of ``max_instances_per_forward_pass`` instances
  ("ghost batch norm"); the no-grad pass of the trainer restores the running statistics so they
  are updated once per chunk, not twice. Gradients equal a with-grad pass over the same chunks,
  but depend on the chunk size (they equal a full-bag pass only when one chunk holds the bag).
- ``groupnorm``: every BatchNorm2d is replaced by a GroupNorm (per-instance statistics: exact and
  chunk-independent, but pretrained BatchNorm statistics are lost).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gigamil.errors import ConfigError
from gigamil.nn.augment import IMAGENET_MEAN, IMAGENET_STD
from gigamil.nn.calibration import AlwaysEval
from gigamil.nn.foundation import FOUNDATION_MODELS, encoder_spec, is_timm_encoder
from gigamil.nn.partial import (
    SplitEncoder,
    build_timm_model,
    embedding_dim,
    parse_trainable_blocks,
)
from gigamil.nn.smallcnn import SmallCNN
from gigamil.nn.weights import (
    HF_FILES,
    HF_PREFIX,
    WEIGHT_SUFFIXES,
    hf_weights_here,
    is_weights_file,
    load_weights_file,
    resolve_weights,
)

log = logging.getLogger(__name__)

ENCODERS = ("smallcnn", "resnet18", "resnet34", "resnet50", "vit_b_16", "identity")
BATCHNORM_MODES = ("frozen", "train", "groupnorm")


class Resize(nn.Module):
    """Bilinear resize to ``size`` × ``size`` (ViT-B/16 with pretrained weights needs 224 px)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size and x.shape[-2] == self.size:
            return x
        return F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)


class EvalBatchNorm2d(AlwaysEval, nn.BatchNorm2d):
    """BatchNorm2d that stays in eval mode (running statistics) whatever ``.train()`` says, also
    from construction (:class:`gigamil.nn.calibration.AlwaysEval`)."""


def _largest_group_count(channels: int, max_groups: int = 32) -> int:
    return max(g for g in range(1, max_groups + 1) if channels % g == 0)


def _subclass_mode(bn: nn.BatchNorm2d, mode: str) -> None:
    """``frozen`` for a BatchNorm2d subclass: the same object, its class swapped for one whose
    ``train()`` keeps it in eval mode (its own forward, e.g. a fused activation, is kept)."""
    if mode == "groupnorm":
        raise ConfigError(
            f"model.batchnorm: groupnorm cannot replace {type(bn).__name__}; use frozen or train"
        )
    if getattr(type(bn), "_gigamil_frozen", False):
        return
    cls = type(bn)
    bn.__class__ = type(
        f"Eval{cls.__name__}", (cls,), {"train": _eval_train, "_gigamil_frozen": True}
    )
    bn.train(False)


def _eval_train(self: nn.Module, mode: bool = True) -> nn.Module:  # noqa: ARG001
    return nn.Module.train(self, False)


def set_batchnorm_mode(module: nn.Module, mode: str) -> nn.Module:
    """Apply a BatchNorm mode (``frozen``, ``train``, ``groupnorm``) in place; returns it."""
    if mode not in BATCHNORM_MODES:
        raise ConfigError(f"model.batchnorm: {mode!r} is not one of {', '.join(BATCHNORM_MODES)}")
    if mode == "train":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and type(child) not in (
            nn.BatchNorm2d,
            EvalBatchNorm2d,
        ):
            _subclass_mode(child, mode)  # e.g. timm's BatchNormAct2d (BatchNorm + activation)
        elif isinstance(child, nn.BatchNorm2d):
            if mode == "frozen":
                new: nn.Module = EvalBatchNorm2d(
                    child.num_features,
                    child.eps,
                    child.momentum,
                    child.affine,
                    child.track_running_stats,
                )
                state = child.state_dict()
                new.load_state_dict(state, assign=any(t.is_meta for t in state.values()))
            else:
                c = child.num_features
                groups = _largest_group_count(c)
                device = child.weight.device if child.affine else None  # meta: shapes only
                new = nn.GroupNorm(groups, c, eps=child.eps, affine=True, device=device)
                if child.affine:
                    with torch.no_grad():
                        new.weight.copy_(child.weight)
                        new.bias.copy_(child.bias)
            new.to(next(child.buffers()).device if list(child.buffers()) else "cpu")
            setattr(module, name, new)
        else:
            set_batchnorm_mode(child, mode)
    return module


def torchvision_weights(encoder: str, weights: str | None):  # noqa: ANN201
    """The torchvision weight enum of a name such as IMAGENET1K_V1 (None: no named weights)."""
    if weights is None or is_weights_file(weights) or encoder not in _WEIGHT_ENUMS:
        return None
    import torchvision

    try:
        return torchvision.models.get_weight(f"{_WEIGHT_ENUMS[encoder]}.{weights}")
    except (KeyError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"model.weights: {weights!r} is not a torchvision weight of {encoder} "
            f"(e.g. IMAGENET1K_V1 or DEFAULT, a local {'/'.join(WEIGHT_SUFFIXES)} file, "
            "hf-hub:<org>/<name>, or null)"
        ) from exc


_WEIGHT_ENUMS = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "vit_b_16": "ViT_B_16_Weights",
}


def check_encoder_name(name: str) -> None:
    """Raise a ConfigError for an unknown ``model.encoder``."""
    if name in ENCODERS or name in FOUNDATION_MODELS:
        return
    if name.startswith("timm:"):
        import timm

        if timm.is_model(name[len("timm:") :]):
            return
        raise ConfigError(f"model.encoder: {name[len('timm:') :]!r} is not a timm architecture")
    raise ConfigError(
        f"model.encoder: {name!r} is not one of {', '.join(ENCODERS)}, "
        f"{', '.join(FOUNDATION_MODELS)} or timm:<architecture>"
    )


def check_encoder_settings(
    encoder: str,
    weights: str | None,
    trainable_blocks: str | int = "all",
    batchnorm: str = "frozen",
) -> list[str]:
    """Check ``model.encoder``, ``model.weights``, ``model.trainable_blocks`` and
    ``model.batchnorm`` together without loading any weights: a known encoder name (timm
    architectures included), weights of a kind the encoder takes (a torchvision weight name only
    for the torchvision encoders), a local weights file that exists and fits the encoder (its
    tensor names and shapes, read without the tensors, against the encoder built on the ``meta``
    device: no memory), and a ``trainable_blocks`` the architecture has. The workflow runs it
    before any job, so a typo or the weights of another architecture stop the run before
    preprocessing instead of in every ``train_fold`` job. ``hf-hub:`` weights found in this
    machine's Hugging Face cache are checked as a local file; missing here they only warn: the
    jobs may run where ``HF_HUB_CACHE`` points elsewhere (a compute node), and their own check
    names the cache they searched.

    Returns:
        warnings: a torchvision weight name whose file is not in torch's hub cache (the first
        job downloads it, which fails on a machine without internet); ``hf-hub:`` weights not in
        the Hugging Face cache here.

    Raises:
        ConfigError: naming the key and the problem.
    """
    check_encoder_name(encoder)
    local, warnings = None, []
    if weights is not None and str(weights).startswith(HF_PREFIX):
        local, warnings = hf_weights_here(str(weights))
    elif weights is not None:
        if is_weights_file(weights):
            if encoder == "identity":
                raise ConfigError("model.weights: identity has no weights; use null")
            resolve_weights(str(weights))
            local = str(weights)  # checked against the meta encoder below
        elif encoder in _WEIGHT_ENUMS:
            warnings += _uncached_weights(encoder, torchvision_weights(encoder, str(weights)))
        else:
            raise ConfigError(_no_named_weights(encoder, str(weights)))
    try:
        build_encoder(encoder, local, 224, batchnorm, trainable_blocks, device="meta")
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an architecture that needs real tensors to build
        log.debug("encoder %s not checked on the meta device: %s", encoder, exc)
    return warnings


def _uncached_weights(encoder: str, enum: Any) -> list[str]:
    """A warning when torchvision's weights ``enum`` are not in torch's hub cache yet."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
    if cached.is_file():
        return []
    return [
        f"model.weights {enum} is not in torch's cache ({cached}): the first job downloads it "
        f"({enum.url}), which fails on a machine without internet; download it beforehand "
        f"(python -c \"import torchvision; torchvision.models.{encoder}(weights='{enum}')\") or "
        "use a local weights file"
    ]


def _no_named_weights(encoder: str, weights: str) -> str:
    """The error for a weight name (not a file, not ``hf-hub:``) on an encoder without any."""
    if encoder == "identity":
        return "model.weights: identity has no weights; use null"
    if Path(weights).expanduser().is_dir():  # e.g. a copied Hugging Face snapshot folder
        inside = [f for f in HF_FILES if (Path(weights).expanduser() / f).is_file()]
        example = f"{weights.rstrip('/')}/{inside[0] if inside else HF_FILES[0]}"
        return f"model.weights: {weights} is a folder: name the weights file in it (e.g. {example})"
    if weights.startswith("hf_hub:"):  # timm's spelling (model cards): gigamil's is hf-hub:
        return f"model.weights: {weights!r}: write hf-hub:{weights[len('hf_hub:') :]}"
    if weights.count("/") == 1 and all(weights.split("/")):  # org/name, not a weights file
        return f"model.weights: {weights!r} is not a file; for a Hugging Face model write hf-hub:{weights}"
    return (
        f"model.weights: {weights!r} for {encoder}: named weights exist only for "
        f"{', '.join(_WEIGHT_ENUMS)}; use a local {'/'.join(WEIGHT_SUFFIXES)} file, "
        "hf-hub:<org>/<name> or null"
    )


def encoder_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the encoder's inputs are normalised with (ImageNet unless a foundation
    model or timm's pretrained config of the architecture says otherwise)."""
    if is_timm_encoder(name):
        spec = encoder_spec(name)
        return tuple(spec.mean), tuple(spec.std)
    return IMAGENET_MEAN, IMAGENET_STD


def build_encoder(  # noqa: PLR0913 - one config section's keys
    name: str,
    weights: str | None = None,
    patch_px: int = 224,
    batchnorm: str = "frozen",
    trainable_blocks: str | int = "all",
    device: str | torch.device | None = None,
) -> tuple[nn.Module, int]:
    """Build a patch encoder; returns ``(module, feature_dim)``.

    ``module`` maps float (n, 3, patch_px, patch_px) to (n, feature_dim). ``weights`` is a
    torchvision weight name (downloaded by torchvision: needs internet or a filled cache), a local
    ``.safetensors``/``.bin``/``.pt``/``.pth`` state dict or ``hf-hub:<org>/<name>`` (local
    Hugging Face cache), loaded strictly (gigamil.nn.weights), or None (random initialisation).
    ``identity`` flattens its input (pre-extracted features (n, D) pass through; patches give
    D = 3·patch_px²). ``trainable_blocks``: ``all``, 0 (frozen) or N (the last N blocks/stages
    learn, gigamil.nn.partial). ``device="meta"`` builds shapes only (no memory, no weights).
    """
    check_encoder_name(name)
    n_top = parse_trainable_blocks(trainable_blocks)
    if is_timm_encoder(name):
        module, dim = _build_timm(name, weights, device)
    else:
        with (
            torch.device(device) if device is not None else contextlib.nullcontext(),
            _no_init()
            if torch.device(device or "cpu").type == "meta"
            else contextlib.nullcontext(),
        ):
            module, dim = _build_builtin(name, weights, patch_px)
    set_batchnorm_mode(module, batchnorm)
    if n_top == 0:
        module.requires_grad_(False)
    elif n_top is not None:
        if isinstance(module, SmallCNN):
            module.set_trainable_blocks(n_top)
            return module, int(dim)
        if not isinstance(module, SplitEncoder):
            if not name.startswith("resnet"):
                hint = (
                    "; for a ViT-B/16 with N trainable blocks use timm:vit_base_patch16_224"
                    if name == "vit_b_16"
                    else ""
                )
                raise ConfigError(
                    f"model.trainable_blocks: an integer needs a timm ViT, a ResNet or smallcnn; "
                    f"{name} takes all or 0{hint}"
                )
            module = SplitEncoder(module)
        module.set_trainable_blocks(n_top)
    return module, int(dim)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """The in-place initialisers of ``torch.nn.init`` as no-ops (meta tensors hold no values; on
    them ``kaiming_normal_`` and the like import ``torch._dynamo``, 2.5-4 s at every workflow
    start). The same idea as ``transformers.modeling_utils.no_init_weights``."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def _build_timm(
    name: str, weights: str | None, device: str | torch.device | None
) -> tuple[SplitEncoder, int]:
    spec = encoder_spec(name)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_timm_model(spec)
    if weights is not None:
        if not is_weights_file(weights):
            raise ConfigError(_no_named_weights(name, str(weights)))
        classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
        hint = spec.weights_note or (
            f"is it a {spec.architecture} with the arguments of {spec.source}?"
            if spec.source
            else f"is it a {spec.architecture}?"
        )
        load_weights_file(model, weights, classifier, hint)
    return SplitEncoder(model, spec.pool, spec.input_size), embedding_dim(model, spec.pool)


def _build_builtin(name: str, weights: str | None, patch_px: int) -> tuple[nn.Module, int]:
    if name == "smallcnn":
        module: nn.Module = SmallCNN()
        dim = module.out_dim
    elif name == "identity":
        module, dim = nn.Flatten(1), 3 * patch_px * patch_px
    else:
        import torchvision

        tv_weights = torchvision_weights(name, weights)
        try:
            if name.startswith("resnet"):
                module = getattr(torchvision.models, name)(weights=tv_weights)
                dim = module.fc.in_features
                module.fc = nn.Identity()
            else:
                module = torchvision.models.vit_b_16(weights=tv_weights)
                dim = module.heads.head.in_features
                module.heads = nn.Identity()
                # the weights' own input size (224; 384 for IMAGENET1K_SWAG_E2E_V1)
                module = nn.Sequential(Resize(int(module.image_size)), module)
        except (OSError, RuntimeError) as exc:  # download failure offline
            raise ConfigError(
                f"model.weights: cannot load {weights!r} for {name} ({exc}); "
                "use null offline or a local weights file"
            ) from exc
    if is_weights_file(weights):
        if name == "identity":
            raise ConfigError("model.weights: identity has no weights; use null")
        target = module[1] if name == "vit_b_16" else module
        classifier = {"vit_b_16": "heads"}.get(name, "fc" if name.startswith("resnet") else None)
        load_weights_file(target, str(weights), classifier, f"is it a {name}?")
    elif weights is not None and name in ("smallcnn", "identity"):
        raise ConfigError(_no_named_weights(name, str(weights)))
    return module, int(dim)
