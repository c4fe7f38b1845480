"""The foundation-model registry and timm:<architecture> encoders.

The big entries (ViT-L/H/g, up to 1.1 billion parameters) are built on torch's ``meta`` device:
timm constructs the real module tree with shape-only tensors (no memory, no initialisation) and
one 224 px patch runs through it, so the embedding size checked is the one the forward pass
produces, not a number copied from the registry.
"""

from __future__ import annotations

import pytest
import torch

from gigamil.errors import ConfigError
from gigamil.nn.encoders import build_encoder
from gigamil.nn.foundation import FOUNDATION_MODELS, EncoderSpec
from gigamil.settings import ModelConfig

DOCUMENTED = {  # embedding sizes stated on the model cards (see gigamil.nn.foundation)
    "uni": 1024,
    "uni2_h": 1536,
    "virchow2": 2560,
    "h_optimus_0": 1536,
    "prov_gigapath": 1536,
    "phikon": 768,
    "phikon_v2": 1024,
}
PARAMS_M = {"uni": 303, "uni2_h": 681, "virchow2": 631, "h_optimus_0": 1134, "prov_gigapath": 1134}


def test_the_registry_holds_the_documented_models() -> None:
    assert set(DOCUMENTED) <= set(FOUNDATION_MODELS)
    for name, spec in FOUNDATION_MODELS.items():
        assert spec.source.startswith("https://huggingface.co/"), name
        assert spec.input_size == 224 and spec.embed_dim == DOCUMENTED[name]


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_each_entry_builds_and_gives_its_embedding_for_one_patch(name: str) -> None:
    enc, dim = build_encoder(name, None, 224, device="meta")
    enc.eval()
    out = enc(torch.empty(1, 3, 224, 224, device="meta"))
    assert dim == DOCUMENTED[name] and tuple(out.shape) == (1, DOCUMENTED[name])
    n_params = sum(p.numel() for p in enc.parameters()) / 1e6
    if name in PARAMS_M:  # the architecture, not only the output size: parameter count (M)
        assert abs(n_params - PARAMS_M[name]) < 1, n_params


def test_cls_mean_pooling_is_cls_and_the_mean_of_the_patch_tokens(monkeypatch) -> None:
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 16, "num_heads": 2}
    spec = EncoderSpec(
        "vit_tiny_patch16_224", dict(kwargs, reg_tokens=4, global_pool=""), 32, pool="cls_mean"
    )
    monkeypatch.setitem(FOUNDATION_MODELS, "tiny_virchow", spec)
    torch.manual_seed(0)
    enc, dim = build_encoder("tiny_virchow", None, 32)
    enc.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        tokens = enc.model.forward_features(x)  # (3, 1 + 4 + 16, 16)
        out = enc(x)
    assert enc.model.num_prefix_tokens == 5 and tokens.shape == (3, 21, 16) and dim == 32
    assert torch.allclose(out, torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=1))


def test_a_timm_architecture_is_built_without_its_classifier() -> None:
    torch.manual_seed(0)
    enc, dim = build_encoder("timm:vit_tiny_patch16_224", None, 32)
    enc.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = enc(x)  # resized to the architecture's fixed 224 px
        ref = enc.model(torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear"))
    assert dim == 192 and out.shape == (2, 192) and torch.allclose(out, ref)
    assert isinstance(enc.model.head, torch.nn.Identity)
    _, dim = build_encoder("timm:resnet18", None, 32, device="meta")
    assert dim == 512


def test_encoder_names_in_the_config() -> None:
    for ok in ("resnet18", "uni", "virchow2", "timm:vit_base_patch16_224.augreg_in21k"):
        assert ModelConfig.from_dict({"encoder": ok}).encoder == ok
    for bad in ("alexnet", "timm:", "timm:a b"):
        with pytest.raises(ConfigError, match="model.encoder"):
            ModelConfig.from_dict({"encoder": bad})
    with pytest.raises(ConfigError, match="not a timm architecture"):
        build_encoder("timm:no_such_net", None, 32)
    assert ModelConfig.from_dict({}).trainable_blocks == "all"
    assert ModelConfig.from_dict({"trainable_blocks": 2}).trainable_blocks == 2
    for bad in ("some", -1, 1.5):
        with pytest.raises(ConfigError, match="model.trainable_blocks"):
            ModelConfig.from_dict({"trainable_blocks": bad})


def test_frozen_batchnorm_keeps_timm_batchnorm_act_layers_in_eval_mode() -> None:
    torch.manual_seed(0)
    enc, _ = build_encoder("timm:efficientnet_b0", None, 32, "frozen")
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(type(m).__name__ == "EvalBatchNormAct2d" for m in bns)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        train_out = enc.train()(x)  # running statistics (and the fused activation) in training
        eval_out = enc.eval()(x)
    assert torch.allclose(train_out, eval_out) and not any(m.training for m in bns)
    with pytest.raises(ConfigError, match="groupnorm cannot replace BatchNormAct2d"):
        build_encoder("timm:efficientnet_b0", None, 32, "groupnorm")
