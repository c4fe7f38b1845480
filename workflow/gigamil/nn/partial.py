"""Encoders from timm, and partial fine-tuning (``model.trainable_blocks``) of ViTs and ResNets.

With ``trainable_blocks: N`` only the last N transformer blocks (ResNet: stages) and what follows
them (the final norm, the pooling) learn. The leading part (the *trunk*: patch embedding and the
first blocks, or the stem and the first stages) is frozen: its parameters get no gradient, it
stays in eval mode, and it runs under ``torch.no_grad`` in every forward pass, so the trainer's
re-encoding pass builds a graph (and keeps activations) for the top only. The trunk's output is
the same in both passes of the accumulating trainer, so chunked gradients of the top still equal
a full-bag pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gigamil.errors import ConfigError
from gigamil.nn.foundation import EncoderSpec

TRAINABLE_ALL = "all"


def parse_trainable_blocks(value: str | int) -> int | None:
    """``all`` → None (everything learns), else a non-negative int."""
    if value == TRAINABLE_ALL:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"model.trainable_blocks: {value!r} is not 'all' or an integer >= 0")
    return value


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear resize of (n, C, H, W) to ``size`` × ``size`` (None or already that size: x)."""
    if size is None or (x.shape[-1] == size and x.shape[-2] == size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def _is_vit(model: nn.Module) -> bool:
    """A timm VisionTransformer whose trunk :meth:`SplitEncoder._trunk` can run (patch embedding,
    position embedding, patch dropout, pre-norm, blocks); not Eva or RoPE ViTs, whose position
    embedding returns the rotary embedding too and whose blocks take it (no ``patch_drop``)."""
    names = ("patch_embed", "_pos_embed", "blocks", "norm", "norm_pre")
    return all(hasattr(model, a) for a in names) and callable(getattr(model, "patch_drop", None))


def _is_resnet(model: nn.Module) -> bool:
    return all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "conv1")


def _resnet_stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    act = model.act1 if hasattr(model, "act1") else model.relu  # timm / torchvision
    return model.maxpool(act(model.bn1(model.conv1(x))))


def _resnet_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "forward_head"):  # timm
        return model.forward_head(x)
    return model.fc(torch.flatten(model.avgpool(x), 1))  # torchvision


class SplitEncoder(nn.Module):
    """A ViT (timm) or ResNet (timm or torchvision) run as frozen trunk + trainable top.

    ``n_top`` None: the plain model, everything trainable. ``pool`` (ViTs): ``model`` (the
    model's own head), ``cls`` or ``cls_mean``. ``input_size``: resize patches to it first.
    The wrapped model is ``self.model``; parameter names are ``model.<timm/torchvision name>``.
    """

    def __init__(
        self, model: nn.Module, pool: str = "model", input_size: int | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.pool = pool
        self.input_size = input_size
        self.n_top: int | None = None

    def extra_repr(self) -> str:
        return f"pool={self.pool}, input_size={self.input_size}, trainable_blocks={self.n_top}"

    # ------------------------------------------------------------ structure
    def _stages(self) -> nn.ModuleList | list[nn.Module]:
        m = self.model
        if _is_vit(m):
            return list(m.blocks)
        if _is_resnet(m):
            return [m.layer1, m.layer2, m.layer3, m.layer4]
        raise ConfigError(
            f"model.trainable_blocks: an integer needs a ViT or a ResNet encoder, not "
            f"{type(m).__name__} (use all or 0)"
        )

    def set_trainable_blocks(self, n: int | None) -> None:
        """Freeze all but the last ``n`` blocks/stages (None: train everything)."""
        if n is None:
            self.n_top = None
            return
        stages = self._stages()
        if n > len(stages):
            raise ConfigError(
                f"model.trainable_blocks: {n} but the encoder has {len(stages)} "
                f"{'blocks' if _is_vit(self.model) else 'stages'}"
            )
        self.n_top = n
        self.model.requires_grad_(False)
        for module in self._top_modules():
            module.requires_grad_(True)
        self.train(self.training)

    def _cut(self) -> int:
        return len(self._stages()) - int(self.n_top or 0)

    def _top_modules(self) -> list[nn.Module]:
        m, cut = self.model, self._cut()
        top = list(self._stages())[cut:]
        names = ("norm", "fc_norm", "attn_pool", "head") if _is_vit(m) else ("fc",)
        top += [getattr(m, a) for a in names if isinstance(getattr(m, a, None), nn.Module)]
        return top

    def train(self, mode: bool = True) -> SplitEncoder:
        super().train(mode)
        if self.n_top is not None:  # the frozen trunk always runs in eval mode
            top = {id(p) for t in self._top_modules() for p in t.modules()}
            for sub in self.model.modules():
                if id(sub) not in top:
                    sub.training = False
        return self

    # ------------------------------------------------------------ forward
    def _pool_tokens(self, h: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self.pool == "cls":
            return h[:, 0]
        if self.pool == "cls_mean":
            return torch.cat([h[:, 0], h[:, m.num_prefix_tokens :].mean(dim=1)], dim=1)
        return m.forward_head(h)

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        m, cut = self.model, self._cut()
        if _is_vit(m):
            x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
            for blk in list(m.blocks)[:cut]:
                x = blk(x)
            return x
        x = _resnet_stem(m, x)
        for stage in self._stages()[:cut]:
            x = stage(x)
        return x

    def _top(self, x: torch.Tensor) -> torch.Tensor:
        m, cut = self.model, self._cut()
        for stage in list(self._stages())[cut:]:
            x = stage(x)
        if _is_vit(m):
            return self._pool_tokens(m.norm(x))
        return _resnet_head(m, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize(x, self.input_size)  # (n, 3, S, S)
        if self.n_top is None:
            if self.pool == "model":
                return self.model(x)  # (n, D)
            return self._pool_tokens(self.model.forward_features(x))
        with torch.no_grad():
            h = self._trunk(x)
        return self._top(h)


def build_timm_model(spec: EncoderSpec) -> nn.Module:
    """``timm.create_model(spec.architecture, num_classes=0, **spec.kwargs)``, random init."""
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise ConfigError("model.encoder: timm encoders need the timm package") from exc
    kwargs = dict(spec.kwargs)
    if kwargs.get("mlp_layer") == "SwiGLUPacked":
        kwargs["mlp_layer"] = timm.layers.SwiGLUPacked
    if kwargs.get("act_layer") == "SiLU":
        kwargs["act_layer"] = nn.SiLU
    if not timm.is_model(spec.architecture):
        raise ConfigError(f"model.encoder: {spec.architecture!r} is not a timm architecture")
    return timm.create_model(spec.architecture, pretrained=False, num_classes=0, **kwargs)


def embedding_dim(model: nn.Module, pool: str) -> int:
    """Size of the embedding a timm model gives with this pooling."""
    dim = int(getattr(model, "head_hidden_size", None) or model.num_features)
    return 2 * int(model.num_features) if pool == "cls_mean" else dim
