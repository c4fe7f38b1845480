"""Device speed-ups: training.amp modes, channels-last CNN encoders, torch.compile's fallback."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from gigamil import MILModel
from gigamil.errors import ConfigError
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import build_encoder
from gigamil.nn.losses import BagLoss
from gigamil.nn.pooling import AttentionHead
from gigamil.settings import TrainingConfig
from gigamil.train import amp as amp_mod
from gigamil.train.accel import compile_module, is_cnn, prepare_model
from gigamil.train.amp import AmpScaler, resolve_amp

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def small_model(encoder: str = "smallcnn", px: int = 16) -> MILModel:
    torch.manual_seed(0)
    enc, dim = build_encoder(encoder, None, px, "frozen")
    return MILModel(nn.Sequential(PatchPreprocess(), enc), AttentionHead(dim, 2), BagLoss("ce"))


def test_amp_setting_values_and_default() -> None:
    assert TrainingConfig().amp == "auto" and TrainingConfig().compile is False
    for value in ("auto", "bf16", "fp16", False, True):
        assert TrainingConfig.from_dict({"amp": value}).amp == value
    with pytest.raises(ConfigError, match="training.amp"):
        TrainingConfig.from_dict({"amp": "fp8"})
    assert "compile" not in TrainingConfig().resume_signature()  # speed only: no retraining
    assert "amp" in TrainingConfig().resume_signature()


def test_amp_modes_on_cpu(caplog) -> None:
    assert resolve_amp("auto", CPU) is None  # CPU bf16 autocast is slow on most processors
    assert resolve_amp(False, CPU) is None
    assert resolve_amp("bf16", CPU) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
    with caplog.at_level(logging.WARNING):
        assert resolve_amp(True, CPU) == "bf16"  # what `true` always did on CPU
    assert "training.amp: true is deprecated" in caplog.text
    scaler = AmpScaler("bf16", CPU)
    assert scaler.dtype == torch.bfloat16 and scaler.grad_scaler is None
    assert AmpScaler("auto", CPU).dtype is None


@pytest.mark.parametrize("supported", [True, False])
def test_amp_modes_on_cuda_follow_bf16_support(monkeypatch, caplog, supported: bool) -> None:
    monkeypatch.setattr(amp_mod, "bf16_supported", lambda device: supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    assert resolve_amp("auto", CUDA) == ("bf16" if supported else None)
    assert resolve_amp("fp16", CUDA) == "fp16"
    with caplog.at_level(logging.WARNING):
        assert resolve_amp(True, CUDA) == "fp16"
    assert "deprecated" in caplog.text
    if supported:
        assert resolve_amp("bf16", CUDA) == "bf16"
    else:
        with pytest.raises(ConfigError, match="bf16 is not supported by Tesla V100"):
            resolve_amp("bf16", CUDA)


def test_bf16_forward_train_on_cpu_is_finite_and_close_to_fp32() -> None:
    bag = torch.randint(0, 256, (40, 16, 16, 3), generator=torch.Generator().manual_seed(1))
    bag = bag.to(torch.uint8)
    ref, low = small_model(), small_model()
    low.amp_dtype = torch.bfloat16
    out = [m.train().forward_train(bag, 1, max_instances_per_forward_pass=16) for m in (ref, low)]
    assert abs(out[0].loss - out[1].loss) < 0.02 * max(1.0, abs(out[0].loss))
    for (name, p), q in zip(ref.named_parameters(), low.parameters(), strict=True):
        assert torch.isfinite(q.grad).all(), name
        err = float((q.grad - p.grad).norm() / p.grad.norm().clamp_min(1e-6))
        assert err < 0.1, (name, err)


def test_is_cnn() -> None:
    assert is_cnn(small_model().feature_encoder)
    assert is_cnn(build_encoder("resnet18", None, 32)[0])
    assert not is_cnn(build_encoder("vit_b_16", None, 32, device="meta")[0])
    assert not is_cnn(nn.Sequential(nn.Flatten(1), nn.Linear(3, 2)))


@pytest.mark.parametrize("encoder", ["resnet18", "smallcnn"])
def test_prepare_model_channels_last(monkeypatch, encoder: str) -> None:
    """A CNN encoder's conv weights become channels-last on any device (the same keys, values
    and outputs; the small CNN then takes its input channels-last too); cuDNN autotuning is
    switched on only for CUDA. A ViT-like encoder (one patch-embedding convolution) stays as it
    is."""
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = small_model(encoder, 32).eval()
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        before = model.feature_encoder(x)
    conv = next(m for m in model.feature_encoder.modules() if isinstance(m, nn.Conv2d)).weight
    assert conv.is_contiguous()
    keys = list(model.state_dict())
    prepare_model(model, CPU)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert not torch.backends.cudnn.benchmark
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        after = model.feature_encoder(x)
    assert torch.allclose(before, after, atol=1e-5)
    prepare_model(model, CUDA)
    assert torch.backends.cudnn.benchmark
    patchify = nn.Sequential(PatchPreprocess(), nn.Conv2d(3, 4, 16, 16), nn.Flatten(1))
    vit_like = MILModel(patchify, AttentionHead(4, 2), BagLoss("ce"))  # one conv: not a CNN
    prepare_model(vit_like, CPU)
    assert patchify[1].weight.is_contiguous()


def _failing_backend(gm, example_inputs):  # noqa: ANN001, ANN202
    raise RuntimeError("no C++ compiler found")


def test_compile_falls_back_with_a_clear_message(caplog) -> None:
    model = small_model()
    ref = copy.deepcopy(model).eval()
    keys = list(model.state_dict())
    compiled = compile_module(model.feature_encoder, backend=_failing_backend)
    x = torch.randint(0, 256, (5, 16, 16, 3), dtype=torch.uint8)
    model.eval()
    with caplog.at_level(logging.WARNING), torch.no_grad():
        out = model.feature_encoder(x)
        out2 = model.feature_encoder(x)
    assert torch.allclose(out, ref.feature_encoder(x)) and torch.equal(out, out2)
    assert compiled.compiled is None
    assert caplog.text.count("torch.compile of the encoder (Sequential) failed") == 1
    assert "no C++ compiler found" in caplog.text and "runs uncompiled" in caplog.text
    assert list(model.state_dict()) == keys  # checkpoints do not depend on training.compile


def test_compile_success_keeps_results_and_keys() -> None:
    model = small_model()
    ref = copy.deepcopy(model)
    compiled = compile_module(model.feature_encoder, backend="eager")
    bag = torch.randint(0, 256, (20, 16, 16, 3), dtype=torch.uint8)
    a = model.train().forward_train(bag, 1, max_instances_per_forward_pass=8)
    b = ref.train().forward_train(bag, 1, max_instances_per_forward_pass=8)
    assert compiled.compiled is not None and a.loss == pytest.approx(b.loss, rel=1e-5)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6)
    assert list(model.state_dict()) == list(ref.state_dict())


def test_compile_leaves_the_augmentation_out_and_a_copy_runs_its_own_weights() -> None:
    """The augmentation's torch.rand inside a compiled graph drew inductor's own numbers (the
    patches then depended on the chunk size), and a deepcopy of a compiled encoder (the moving
    average of the weights) ran the original's weights: validation scored the wrong model."""
    from gigamil.train.accel import CompiledForward

    model = small_model()
    prepare_model(model, CPU, compile_encoder=True)
    pre, encoder = list(model.feature_encoder.children())
    assert not isinstance(pre.forward, CompiledForward)
    assert isinstance(encoder.forward, CompiledForward)
    net = nn.Sequential(nn.Linear(4, 3))
    compile_module(net, backend="eager")
    twin = copy.deepcopy(net)
    x = torch.ones(2, 4)
    with torch.no_grad():
        before = twin(x).clone()
        net[0].weight.add_(1.0)  # the original moves on; the copy must not
        assert torch.equal(twin(x), before) and not torch.equal(net(x), before)
    assert twin.forward.compiled is not None and twin.forward.eager.__self__ is twin


def test_a_run_is_told_at_its_start_that_cuda_has_no_device_here(monkeypatch):
    from gigamil.train.accel import device_warning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device" in device_warning("cuda") and "device: auto" in device_warning("cuda")
    assert device_warning("auto") is None and device_warning("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_warning("cuda") is None


def test_a_run_is_told_at_its_start_that_amp_fp16_needs_cuda_here(monkeypatch):
    """amp: fp16 with device: auto passed validation on a machine without CUDA, then every
    train_fold job stopped (after preprocessing) with 'fp16 needs a CUDA device'."""
    from gigamil.train.accel import device_warning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warning = device_warning("auto", "fp16")
    assert "training.amp: fp16 needs a CUDA device" in warning and "amp: auto" in warning
    assert device_warning("auto", "bf16") is None and device_warning("cpu", "fp16") is None
    assert "training.device: cuda" in device_warning("cuda", "fp16")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_warning("auto", "fp16") is None
