"""Encoders, BatchNorm modes and the patch preprocessing/augmentation."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fresh_python import run_fresh
from torch import nn

from gigamil.errors import ConfigError
from gigamil.nn.augment import PatchPreprocess
from gigamil.nn.encoders import EvalBatchNorm2d, build_encoder, check_encoder_settings


def test_smallcnn_and_batchnorm_modes() -> None:
    enc, dim = build_encoder("smallcnn", None, 32, "frozen")
    assert dim == 64
    assert not EvalBatchNorm2d(4).training  # frozen from construction, not from .train() on
    enc.train()
    assert all(not m.training for m in enc.modules() if isinstance(m, EvalBatchNorm2d))
    x = torch.randn(5, 3, 32, 32)
    assert enc(x).shape == (5, 64)
    gn, _ = build_encoder("smallcnn", None, 32, "groupnorm")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())
    tr, _ = build_encoder("smallcnn", None, 32, "train")
    tr.train()
    assert any(isinstance(m, nn.BatchNorm2d) and m.training for m in tr.modules())


def test_a_frozen_encoder_under_batchnorm_train_updates_only_its_running_statistics() -> None:
    """As the schema says of model.batchnorm: trainable_blocks 0 under ``train`` normalises by
    batch statistics and updates the running ones; its weights take no gradient; an integer
    trainable_blocks keeps the frozen trunk in eval mode."""
    enc, _ = build_encoder("smallcnn", None, 32, "train", trainable_blocks=0)
    enc.train()
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bns]
    enc(torch.rand(6, 3, 32, 32))
    assert all(not torch.equal(b, m.running_mean) for b, m in zip(before, bns, strict=True))
    assert not any(p.requires_grad for p in enc.parameters())
    part, _ = build_encoder("smallcnn", None, 32, "train", trainable_blocks=1)
    part.train()
    trunk = [m for m in list(part.net)[: part._cut()] if isinstance(m, nn.BatchNorm2d)]
    assert trunk and not any(m.training for m in trunk)


def test_resnet18_random_init_and_identity() -> None:
    enc, dim = build_encoder("resnet18", None, 32, "groupnorm")
    assert dim == 512 and enc(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    ident, d = build_encoder("identity", None, 4)
    assert d == 48 and ident(torch.randn(3, 3, 4, 4)).shape == (3, 48)


def test_bad_weights_and_names() -> None:
    with pytest.raises(ConfigError, match="model.weights"):
        build_encoder("resnet18", "NO_SUCH_WEIGHTS", 32)
    with pytest.raises(ConfigError, match="model.encoder"):
        build_encoder("alexnet", None, 32)
    with pytest.raises(ConfigError, match="model.batchnorm"):
        build_encoder("smallcnn", None, 32, "sometimes")


def test_local_weights_file(tmp_path) -> None:
    enc, _ = build_encoder("smallcnn", None, 32)
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(0.25)
    torch.save(enc.state_dict(), tmp_path / "w.pt")
    loaded, _ = build_encoder("smallcnn", str(tmp_path / "w.pt"), 32)
    assert all(torch.all(p == 0.25) for p in loaded.parameters())


def test_preprocess_uint8_and_augmentation() -> None:
    pre = PatchPreprocess(flips=True, rot90=True, color_jitter=0.1).double()
    x = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    pre.eval()
    out = pre(x)
    assert out.shape == (16, 3, 8, 8) and out.dtype == torch.float64
    expected = (x.permute(0, 3, 1, 2).double() / 255 - pre.mean) / pre.std
    assert torch.allclose(out, expected)
    pre.train()
    torch.manual_seed(0)
    aug = pre(x)
    assert not torch.allclose(aug, out)
    torch.manual_seed(0)
    assert torch.equal(pre(x), aug)  # deterministic under the torch RNG
    feats = torch.randn(4, 7)
    assert pre(feats) is feats  # pre-extracted features pass through


def test_resnet50_and_vit_b_16_random_init() -> None:
    _, dim = build_encoder("resnet50", None, 32)
    assert dim == 2048
    vit, dim = build_encoder("vit_b_16", None, 32)
    assert dim == 768
    vit.eval()
    with torch.no_grad():
        assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 768)  # resized to 224 inside


def test_stain_jitter_is_colour_deconvolution_and_chunk_invariant() -> None:
    torch.manual_seed(1)
    pre = PatchPreprocess(stain_jitter=0.2).double()
    stains = torch.rand(6, 3, 8, 8).double() * 0.4 + 0.1  # positive concentrations: no clamping
    x = torch.exp(-torch.einsum("nshw,sc->nchw", stains, pre.rgb_from_hed))
    identity = torch.tensor([[0.5] * 6] * 6, dtype=torch.float64)  # a = 1, b = 0
    np.testing.assert_allclose(pre._stain_jitter(x, identity), x, atol=1e-6)  # float32 matrices
    # scaling the haematoxylin concentration only changes the haematoxylin optical density
    u = identity.clone()
    u[:, 0] = 1.0  # a_H = 1.2
    out = pre._stain_jitter(x, u)
    hed_in = torch.einsum("nchw,cs->nshw", -torch.log(x), pre.hed_from_rgb)
    hed_out = torch.einsum("nchw,cs->nshw", -torch.log(out), pre.hed_from_rgb)
    np.testing.assert_allclose(hed_out[:, 0], 1.2 * hed_in[:, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hed_out[:, 1:], hed_in[:, 1:], atol=1e-5)
    # augmentation of a bag does not depend on how it is cut into chunks
    pre = PatchPreprocess(flips=True, color_jitter=0.1, stain_jitter=0.1, hue_jitter=0.1)
    pre = pre.double().train()
    patches = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8)
    torch.manual_seed(5)
    whole = pre(patches)
    torch.manual_seed(5)
    parts = torch.cat([pre(patches[:3]), pre(patches[3:])])
    torch.testing.assert_close(whole, parts)


def reference_hue(p: torch.Tensor, turns: float) -> torch.Tensor:
    """Hue rotation of one patch (3, H, W) as documented: RGB -> YIQ, (I, Q) rotated by
    ``turns`` of a turn, back to RGB, clamped."""
    yiq_from_rgb = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
        dtype=torch.float64,
    )
    y, i, q = torch.einsum("sc,chw->shw", yiq_from_rgb, p)
    t = 2 * np.pi * turns
    rotated = torch.stack([y, i * np.cos(t) - q * np.sin(t), i * np.sin(t) + q * np.cos(t)])
    rgb = torch.linalg.solve(yiq_from_rgb, rotated.reshape(3, -1)).reshape(p.shape)
    return rgb.clamp(0, 1)


def reference_augment(pre: PatchPreprocess, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The documented augmentation, one patch at a time and one step after the other (x (n, 3,
    H, W) in [0, 1], u (n, k) the module's float32 uniforms; the scale and blur steps are the
    module's own, checked against torchvision below)."""
    out = []
    s, sig = pre.color_jitter, pre.stain_jitter
    gray_col = (12 if sig > 0 else 6) + (1 if pre.hue_jitter > 0 else 0)
    scale_col = gray_col + (1 if pre.grayscale > 0 else 0)
    blur_col = scale_col + (1 if pre.scale > 0 else 0)
    for p, r in zip(x, u, strict=True):
        if r[0] < 0.5:
            p = p.flip(-1)
        if r[1] < 0.5:
            p = p.flip(-2)
        p = torch.rot90(p, min(int(r[2] * 4), 3), dims=(-2, -1))
        if pre.scale > 0:
            p = pre._rescale(p[None], 1 + pre.scale * (2 * r[scale_col : scale_col + 1] - 1))[0]
        b, c, sat = (1 + s * (2 * r[3:6] - 1)).double().tolist()  # factors drawn in float32
        p = p * b
        p = (p - p.mean()) * c + p.mean()
        gray = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
        p = ((p - gray) * sat + gray).clamp(0, 1)
        if pre.hue_jitter > 0:
            p = reference_hue(p, pre.hue_jitter * (2 * float(r[12 if sig > 0 else 6]) - 1))
        if sig > 0:
            a, off = (1 + sig * (2 * r[6:9] - 1)).double(), (sig * (2 * r[9:12] - 1)).double()
            od = -torch.log(p.clamp(min=1 / 255))
            hed = torch.einsum("chw,cs->shw", od, pre.hed_from_rgb)
            hed = hed * a[:, None, None] + off[:, None, None] * hed.mean(dim=(1, 2), keepdim=True)
            p = torch.exp(-torch.einsum("shw,sc->chw", hed, pre.rgb_from_hed)).clamp(0, 1)
        if pre.grayscale > 0 and r[gray_col] < pre.grayscale:
            p = (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).expand(3, -1, -1)
        if pre.blur > 0:
            p = pre._gaussian_blur(p[None], pre.blur * r[blur_col : blur_col + 1])[0]
        out.append(p)
    return torch.stack(out)


def test_augmentation_equals_the_step_by_step_reference() -> None:
    """The fused implementation (one affine colour step, one 3 × 3 stain map per patch, each
    patch flipped/rotated once) gives the documented transforms."""
    pre = PatchPreprocess(flips=True, rot90=True, color_jitter=0.3, stain_jitter=0.3)
    pre = pre.double().train()
    patches = torch.randint(0, 256, (40, 12, 12, 3), dtype=torch.uint8)
    torch.manual_seed(3)
    u = torch.rand(40, 12)
    torch.manual_seed(3)
    out = pre(patches) * pre.std + pre.mean
    ref = reference_augment(pre, patches.permute(0, 3, 1, 2).double() / 255, u)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stain", [0.0, 0.2])
def test_hue_jitter_equals_the_reference_and_keeps_luma(stain: float) -> None:
    pre = PatchPreprocess(
        flips=True, rot90=True, color_jitter=0.2, stain_jitter=stain, hue_jitter=0.1
    ).double()
    assert "hue_jitter=0.1" in repr(pre)
    patches = torch.randint(0, 256, (30, 10, 10, 3), dtype=torch.uint8)
    k = 13 if stain else 7  # one more uniform per patch than without hue jitter
    torch.manual_seed(4)
    u = torch.rand(30, k)
    torch.manual_seed(4)
    out = pre.train()(patches) * pre.std + pre.mean
    ref = reference_augment(pre, patches.permute(0, 3, 1, 2).double() / 255, u)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)  # float32 HED matrices
    # away from the clamp: the luma is kept, and rotating back restores the patch
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64) * 0.2 + 0.4
    turns = torch.linspace(-0.1, 0.1, 6, dtype=torch.float64)
    y = pre._hue_rotate(x, turns)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)
    torch.testing.assert_close(
        torch.einsum("nchw,c->nhw", y, luma),
        torch.einsum("nchw,c->nhw", x, luma),
        atol=1e-6,
        rtol=0,
    )
    assert (y - x).abs().amax() > 0.01
    torch.testing.assert_close(pre._hue_rotate(y, -turns), x, atol=1e-6, rtol=0)
    torch.testing.assert_close(pre._hue_rotate(x, torch.zeros(6)), x, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="hue_jitter"):
        PatchPreprocess(hue_jitter=0.6)


@pytest.mark.parametrize(("stain", "hue"), [(0.0, 0.0), (0.2, 0.0), (0.2, 0.1)])
def test_random_grayscale_equals_the_reference(stain: float, hue: float) -> None:
    pre = PatchPreprocess(
        flips=True, rot90=True, color_jitter=0.2, stain_jitter=stain, hue_jitter=hue, grayscale=0.4
    ).double()
    assert "grayscale=0.4" in repr(pre)
    n = 60
    patches = torch.randint(0, 256, (n, 10, 10, 3), dtype=torch.uint8)
    k = (12 if stain else 6) + (1 if hue else 0) + 1  # one more uniform per patch
    torch.manual_seed(6)
    u = torch.rand(n, k)
    torch.manual_seed(6)
    out = pre.train()(patches) * pre.std + pre.mean
    ref = reference_augment(pre, patches.permute(0, 3, 1, 2).double() / 255, u)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    grey = (out[:, 0] - out[:, 1]).abs().amax(dim=(1, 2)) < 1e-9
    torch.testing.assert_close(grey, u[:, -1] < 0.4)  # the last uniform picks the grey patches
    assert 0 < int(grey.sum()) < n
    # colourless patches keep their values; eval mode leaves every patch in colour
    pre.grayscale = 1.0
    flat = torch.full((4, 6, 6, 3), 100, dtype=torch.uint8)
    torch.testing.assert_close(
        pre._random_grayscale(flat.permute(0, 3, 1, 2).double() / 255, torch.ones(4, dtype=bool)),
        flat.permute(0, 3, 1, 2).double() / 255,
    )
    colour = pre.eval()(patches) * pre.std + pre.mean
    assert ((colour[:, 0] - colour[:, 1]).abs() > 1e-3).any()
    grey = pre.train()(patches) * pre.std + pre.mean  # p = 1: every training patch is grey
    torch.testing.assert_close(grey[:, 0], grey[:, 1], rtol=0, atol=1e-9)
    torch.testing.assert_close(grey[:, 0], grey[:, 2], rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="grayscale"):
        PatchPreprocess(grayscale=1.5)


def test_hue_jitter_and_grayscale_reach_the_model() -> None:
    from gigamil.models.factory import build_mil_model

    aug = {"hue_jitter": 0.05, "grayscale": 0.2}
    model = build_mil_model({"encoder": "smallcnn"}, 2, 16, augment=aug)
    assert model.feature_encoder[0].hue_jitter == 0.05
    assert model.feature_encoder[0].grayscale == 0.2
    assert (
        build_mil_model({"encoder": "smallcnn"}, 2, 16, augment={}).feature_encoder[0].hue_jitter
        == 0
    )


def test_encoder_settings_checked_without_building(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    from gigamil.nn.smallcnn import SmallCNN

    state = SmallCNN().state_dict()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    ckpt = tmp_path / "lightning.ckpt"  # a Lightning checkpoint: wrapped, keys prefixed
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, ckpt)
    pickled = tmp_path / "module.pt"
    torch.save(SmallCNN(), pickled)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty cache
    for encoder, w in [
        ("smallcnn", None),
        ("smallcnn", str(weights)),  # names and shapes checked against the meta encoder
        ("smallcnn", str(ckpt)),
        ("timm:resnet18", None),
    ]:
        assert check_encoder_settings(encoder, w) == []
    # a torchvision weight name not in torch's cache: the first job would download it
    (warning,) = check_encoder_settings("resnet18", "IMAGENET1K_V1")
    assert "IMAGENET1K_V1 is not in torch's cache" in warning and "without internet" in warning
    for encoder, w, match in [
        # weights of another architecture, a pickled model, a damaged file: before any job
        ("resnet18", str(weights), r"does not fit the encoder .*; is it a resnet18\?"),
        ("timm:resnet18", str(weights), "does not fit the encoder"),
        ("smallcnn", str(pickled), "holds a pickled model .* state_dict"),
        ("smallcnn", str(empty), "cannot read"),
        ("timm:notamodel", None, "'notamodel' is not a timm architecture"),
        ("resnet_18", None, "'resnet_18' is not one of"),
        ("resnet18", "IMAGENET1K_V7", "'IMAGENET1K_V7' is not a torchvision weight of resnet18"),
        ("resnet18", str(tmp_path / "nope.pt"), "nope.pt does not exist"),
        ("resnet18", "nope.pt", r"nope.pt does not exist \(looked for .*nope.pt; a relative"),
        # weight names exist only for the torchvision encoders: found here, not in train_fold
        ("smallcnn", "IMAGENET1K_V1", "named weights exist only for resnet18, "),
        ("timm:resnet18", "IMAGENET1K_V1", "'IMAGENET1K_V1' for timm:resnet18"),
        ("identity", "IMAGENET1K_V1", "identity has no weights"),
        ("identity", str(weights), "identity has no weights"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_encoder_settings(encoder, w)
        with pytest.raises(ConfigError, match=match):  # the job's own check says the same
            build_encoder(encoder, w, 16, device="meta")
    check_encoder_settings("smallcnn", None, trainable_blocks=2, batchnorm="groupnorm")
    check_encoder_settings("resnet18", None, trainable_blocks=3)
    for encoder, blocks, match in [
        ("smallcnn", 99, "99 but smallcnn has 4 conv blocks"),
        ("resnet18", 9, "trainable_blocks"),
        ("identity", 2, "an integer needs a timm ViT, a ResNet or smallcnn; identity takes all"),
        ("smallcnn", "some", "not 'all' or an integer"),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_encoder_settings(encoder, None, trainable_blocks=blocks)


def test_an_encoder_that_cannot_be_built_on_meta_is_left_to_the_job(monkeypatch) -> None:
    """Some architectures need real tensors while they are built (e.g. ``.item()`` in their
    constructor): the pre-run check then does not stop the run; the training job builds it."""
    import gigamil.nn.encoders as encoders

    def no_meta(*args, **kwargs):
        raise NotImplementedError("Cannot copy out of meta tensor")

    monkeypatch.setattr(encoders, "build_encoder", no_meta)
    check_encoder_settings("timm:resnet18", None)


def test_scale_jitter_equals_torchvision_affine_and_keeps_zoom_one() -> None:
    """A zoom > 1 needs no pixel from outside the patch: there it is torchvision's affine with
    the same scale (bilinear); a zoom of 1 leaves the patch as it is."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import affine

    x = torch.rand(5, 3, 16, 16, dtype=torch.float64)
    zoom = torch.tensor([1.0, 1.1, 1.25, 1.5, 2.0], dtype=torch.float64)
    out = PatchPreprocess._rescale(x, zoom)
    assert out.shape == x.shape
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=1e-12)
    for i in range(1, 5):
        ref = affine(
            x[i],
            angle=0.0,
            translate=[0, 0],
            scale=float(zoom[i]),
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
        )
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-6)
    # shrinking reflects the border: no black frame, values stay in the patch's range
    small = PatchPreprocess._rescale(x, torch.full((5,), 0.7, dtype=torch.float64))
    assert float(small.amin()) >= float(x.amin()) - 1e-9
    assert (small[:, :, 0, :] > 0).all()


def test_gaussian_blur_equals_torchvision_per_patch() -> None:
    from torchvision.transforms.functional import gaussian_blur

    pre = PatchPreprocess(blur=1.5).double()
    x = torch.rand(4, 3, 20, 20, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.5, 1.0, 1.5], dtype=torch.float64)
    out = pre._gaussian_blur(x, sigma)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=1e-12)  # sigma 0: unchanged
    for i in range(1, 4):
        ref = gaussian_blur(x[i], kernel_size=[11, 11], sigma=[float(sigma[i])] * 2)
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-9)
    assert float(out[3].std()) < float(out[1].std()) < float(x[1].std())


def test_scale_and_blur_take_the_last_uniforms_and_reach_the_model() -> None:
    from gigamil.models.factory import build_mil_model

    kw = {"flips": True, "rot90": True, "color_jitter": 0.1, "grayscale": 0.3}
    pre = PatchPreprocess(**kw, scale=0.2, blur=1.0).double()
    assert "scale=0.2, blur=1.0" in repr(pre)
    patches = torch.randint(0, 256, (12, 16, 16, 3), dtype=torch.uint8)
    torch.manual_seed(5)
    u = torch.rand(12, 9)  # 6 + greyscale + scale + blur
    torch.manual_seed(5)
    out = pre.train()(patches) * pre.std + pre.mean
    ref = reference_augment(pre, patches.permute(0, 3, 1, 2).double() / 255, u)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    no_morph = reference_augment(
        PatchPreprocess(**kw).double(), patches.permute(0, 3, 1, 2).double() / 255, u
    )
    assert (out - no_morph).abs().amax() > 0.01
    with pytest.raises(ValueError, match="scale"):
        PatchPreprocess(scale=1.0)
    with pytest.raises(ValueError, match="blur"):
        PatchPreprocess(blur=-1.0)
    model = build_mil_model({"encoder": "smallcnn"}, 2, 16, augment={"scale": 0.1, "blur": 0.5})
    assert (model.feature_encoder[0].scale, model.feature_encoder[0].blur) == (0.1, 0.5)
    assert build_mil_model({"encoder": "smallcnn"}, 2, 16, augment={}).feature_encoder[0].blur == 0


def test_the_workflow_check_of_smallcnn_neither_initialises_nor_imports_dynamo():
    """check_encoder_settings builds on the meta device with torch.nn.init switched off: the meta
    path of kaiming_normal_ imports torch._dynamo (2.5-4 s at every snakemake start)."""
    code = (
        "import sys, torch\n"
        "from gigamil.nn.encoders import check_encoder_settings\n"
        "init = torch.nn.init.kaiming_normal_\n"
        "check_encoder_settings('smallcnn', None, 2, 'frozen')\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "assert torch.nn.init.kaiming_normal_ is init\n"  # restored afterwards
        "w = torch.nn.init.kaiming_normal_(torch.zeros(8, 3, 3, 3))\n"
        "assert w.abs().sum() > 0\n"
    )
    res = run_fresh(code)
    assert res.returncode == 0, res.stderr[-2000:]


def test_weights_that_are_a_folder_a_bare_hub_id_or_a_bad_hub_name_are_named_before_any_job(
    tmp_path, monkeypatch
):
    """A copied Hugging Face snapshot folder and a Hub id without hf-hub: got "named weights
    exist only for ..."; a malformed hf-hub: name passed the pre-run check and failed in every
    train_fold job."""
    from gigamil.nn.encoders import check_encoder_settings

    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    (snapshot / "model.safetensors").write_bytes(b"x")
    cases = {
        str(
            snapshot
        ): f"is a folder: name the weights file in it (e.g. {snapshot}/model.safetensors)",
        "timm/resnet18.a1_in1k": "for a Hugging Face model write hf-hub:timm/resnet18.a1_in1k",
        "hf-hub:UNI": "'hf-hub:UNI' is not hf-hub:<org>/<name>",
    }
    for weights, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_encoder_settings("timm:resnet18", weights)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # not here: the job's to find
    (warning,) = check_encoder_settings("timm:resnet18", "hf-hub:MahmoodLab/UNI")
    assert "not in the Hugging Face cache here" in warning


def test_groupnorm_swap_keeps_the_affine_parameters() -> None:
    """``batchnorm: groupnorm`` loses the running statistics only: the learned (pretrained)
    scale and shift of every BatchNorm go to its GroupNorm."""
    from gigamil.nn.encoders import set_batchnorm_mode

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Sequential(nn.BatchNorm2d(8)))
    bn = net[1][0]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1.0, 1.0)
    weight, bias = bn.weight.detach().clone(), bn.bias.detach().clone()
    set_batchnorm_mode(net, "groupnorm")
    gn = net[1][0]
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 8
    assert torch.equal(gn.weight.detach(), weight) and torch.equal(gn.bias.detach(), bias)
