"""model.trainable_blocks: a frozen no-grad trunk and a trainable top (ViTs and ResNets), with
gradients equal to a full-bag pass of the whole encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gigamil import MILModel
from gigamil.errors import ConfigError
from gigamil.models.factory import build_mil_model
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import build_encoder
from gigamil.nn.foundation import FOUNDATION_MODELS, EncoderSpec
from gigamil.nn.losses import BagLoss
from gigamil.nn.pooling import AttentionHead

TINY = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 16, "num_heads": 2}


@pytest.fixture(autouse=True)
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = EncoderSpec("vit_tiny_patch16_224", dict(TINY, reg_tokens=2), 32, pool="cls_mean")
    monkeypatch.setitem(FOUNDATION_MODELS, "tiny_vit", spec)


def mil(trainable: str | int, seed: int = 0) -> MILModel:
    torch.manual_seed(seed)
    enc, dim = build_encoder("tiny_vit", None, 32, trainable_blocks=trainable)
    pre = PatchPreprocess(flips=True, rot90=True, color_jitter=0.2)
    head = AttentionHead(dim, n_classes=2, att_dim=6)
    model = MILModel(nn.Sequential(pre, enc), head, BagLoss("ce")).double()
    return model.train()


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_only_the_last_blocks_and_the_final_norm_learn() -> None:
    model = mil(1)
    enc = model.feature_encoder[1]
    learn = {k for k, p in enc.named_parameters() if p.requires_grad}
    assert learn == {
        k for k, _ in enc.named_parameters() if k.startswith(("model.blocks.2.", "model.norm."))
    }
    assert not enc.model.blocks[0].training and enc.model.blocks[2].training  # trunk in eval
    assert all(not p.requires_grad for p in mil(0).feature_encoder.parameters())
    assert all(p.requires_grad for p in mil("all").feature_encoder.parameters())


@pytest.mark.parametrize("n_top", [1, 2])
def test_chunked_gradients_of_the_top_equal_a_full_bag_pass_of_the_whole_encoder(n_top) -> None:
    bag = torch.randint(0, 256, (11, 32, 32, 3), dtype=torch.uint8)
    full = mil("all")
    part = mil(n_top)
    part.load_state_dict(full.state_dict())
    torch.manual_seed(5)
    ref = full.forward_train(bag, 1)  # one graph over the whole bag and encoder
    seen: list[tuple[str, bool]] = []
    enc = part.feature_encoder[1].model
    enc.blocks[0].register_forward_hook(lambda *_: seen.append(("trunk", torch.is_grad_enabled())))
    enc.blocks[2].register_forward_hook(lambda *_: seen.append(("top", torch.is_grad_enabled())))
    torch.manual_seed(5)
    step = part.forward_train(bag, 1, max_instances_per_forward_pass=4)
    assert abs(step.loss - ref.loss) < 1e-12
    g_full, g_part = grads(full), grads(part)
    trainable = {k for k, p in part.named_parameters() if p.requires_grad}
    assert set(g_part) == trainable and any(".blocks." in k for k in trainable)
    for k in trainable:
        assert torch.allclose(g_part[k], g_full[k], rtol=1e-9, atol=1e-12), k
    # the trunk never ran with grad (neither pass), the top did in the re-encoding pass
    assert {g for w, g in seen if w == "trunk"} == {False}
    assert {g for w, g in seen if w == "top"} == {False, True}


def test_the_frozen_trunk_keeps_no_activations_for_backward() -> None:
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)

    def saved_bytes(model: MILModel) -> int:
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.feature_encoder[1](x).sum().backward()
        return total[0]

    assert saved_bytes(mil(1)) < 0.5 * saved_bytes(mil("all"))


def test_resnet_stages_and_errors() -> None:
    enc, _ = build_encoder("resnet18", None, 32, "train", trainable_blocks=1)
    learn = {k for k, p in enc.named_parameters() if p.requires_grad}
    assert learn and all(k.startswith("model.layer4.") for k in learn)
    enc.train()
    assert not enc.model.layer1[0].bn1.training and enc.model.layer4[0].bn1.training
    out = enc(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 512) and out.requires_grad
    with pytest.raises(ConfigError, match="has 4 stages"):
        build_encoder("resnet18", None, 32, trainable_blocks=5)
    with pytest.raises(ConfigError, match="vit_b_16 takes all or 0; for a ViT-B/16 with N"):
        build_encoder("vit_b_16", None, 32, trainable_blocks=1)
    with pytest.raises(ConfigError, match="smallcnn has 4 conv blocks"):
        build_encoder("smallcnn", None, 32, trainable_blocks=5)
    # an Eva (RoPE) ViT passed the check, then every forward failed inside the training job
    from gigamil.nn.encoders import check_encoder_settings

    with pytest.raises(ConfigError, match="needs a ViT or a ResNet encoder, not Eva"):
        check_encoder_settings("timm:eva02_tiny_patch14_224", None, 1, "frozen")
    with pytest.raises(ConfigError, match="contradicts"):
        build_mil_model(
            {"encoder": "resnet18", "freeze_encoder": True, "trainable_blocks": 1}, 2, 32
        )
    frozen = build_mil_model({"encoder": "smallcnn", "trainable_blocks": 0}, 2, 32)
    assert not any(p.requires_grad for p in frozen.feature_encoder.parameters())


def smallcnn_mil(trainable: str | int) -> MILModel:
    torch.manual_seed(0)
    enc, dim = build_encoder("smallcnn", None, 32, "frozen", trainable_blocks=trainable)
    pre = PatchPreprocess(flips=True, rot90=True, color_jitter=0.2)
    head = AttentionHead(dim, n_classes=2, att_dim=6)
    return MILModel(nn.Sequential(pre, enc), head, BagLoss("ce")).double().train()


@pytest.mark.parametrize("n_top", [1, 3])
def test_smallcnn_last_blocks_learn_with_exact_chunked_gradients(n_top) -> None:
    part, full = smallcnn_mil(n_top), smallcnn_mil("all")
    enc = part.feature_encoder[1]
    cut = (4 - n_top) * 3  # conv, BatchNorm, ReLU per block
    learn = {k for k, p in enc.named_parameters() if p.requires_grad}
    assert learn == {k for k, _ in enc.named_parameters() if int(k.split(".")[1]) >= cut}
    assert not enc.net[0].training and not enc.net[1].training  # the trunk stays in eval mode
    assert all(not p.requires_grad for p in smallcnn_mil(0).feature_encoder.parameters())
    seen: list[bool] = []
    enc.net[2].register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))  # ReLU
    bag = torch.randint(0, 256, (9, 32, 32, 3), dtype=torch.uint8)
    torch.manual_seed(3)
    ref = full.forward_train(bag, 1)
    torch.manual_seed(3)
    step = part.forward_train(bag, 1, max_instances_per_forward_pass=4)
    assert abs(step.loss - ref.loss) < 1e-12
    g_full, g_part = grads(full), grads(part)
    assert set(g_part) == {k for k, p in part.named_parameters() if p.requires_grad}
    for k, g in g_part.items():
        assert torch.allclose(g, g_full[k], rtol=1e-9, atol=1e-12), k
    assert seen and set(seen) == {False}  # the trunk never ran with grad
