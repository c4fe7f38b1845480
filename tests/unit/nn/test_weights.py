"""model.weights: strict loading of local files and of the local Hugging Face cache, sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from gigamil.errors import ConfigError
from gigamil.models.factory import build_mil_model
from gigamil.nn.encoders import build_encoder, encoder_normalisation
from gigamil.nn.foundation import FOUNDATION_MODELS, EncoderSpec
from gigamil.nn.weights import weights_sha256
from gigamil.train.model_file import model_header

TINY = {"img_size": 32, "patch_size": 8, "depth": 3, "embed_dim": 32, "num_heads": 2}


@pytest.fixture
def tiny_vit(monkeypatch: pytest.MonkeyPatch) -> str:
    """A registry entry ``tiny_vit``: a 3-block ViT on 32 px patches (random init)."""
    spec = EncoderSpec("vit_tiny_patch16_224", TINY, input_size=32, embed_dim=32, source="test")
    monkeypatch.setitem(FOUNDATION_MODELS, "tiny_vit", spec)
    return "tiny_vit"


def timm_state(name: str = "tiny_vit", seed: int = 3) -> dict[str, torch.Tensor]:
    """The state dict (timm key names) of a freshly built encoder."""
    torch.manual_seed(seed)
    enc, _ = build_encoder(name, None, 32)
    return {k: v.clone() for k, v in enc.model.state_dict().items()}


def same_weights(enc: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in enc.model.state_dict().items())


def test_safetensors_file_loads_strictly_and_its_sha256_is_recorded(tiny_vit, tmp_path) -> None:
    state = timm_state()
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    enc, dim = build_encoder(tiny_vit, str(path), 32)
    assert dim == 32 and same_weights(enc, state)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_sha256(str(path), tiny_vit) == digest
    assert model_header({}, ["a", "b"], 32, None, digest)["weights_sha256"] == digest
    assert weights_sha256(None, tiny_vit) is None


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_and_prefixed_pt_files_load(tiny_vit, tmp_path, wrapper: str) -> None:
    state = timm_state()
    prefixed = {f"module.backbone.{k}": v for k, v in state.items()}
    torch.save({wrapper: prefixed, "epoch": 3}, tmp_path / "w.pth")
    enc, _ = build_encoder(tiny_vit, str(tmp_path / "w.pth"), 32)
    assert same_weights(enc, state)


def test_a_classifier_the_encoder_does_not_have_is_dropped(tiny_vit, tmp_path) -> None:
    state = timm_state()
    with_head = dict(state, **{"head.weight": torch.zeros(5, 32), "head.bias": torch.zeros(5)})
    torch.save(with_head, tmp_path / "w.bin")
    enc, _ = build_encoder(tiny_vit, str(tmp_path / "w.bin"), 32)
    assert same_weights(enc, state)


def test_missing_and_unexpected_keys_are_errors_naming_them(tiny_vit, tmp_path) -> None:
    state = timm_state()
    del state["blocks.1.norm1.weight"]
    state["blocks.9.extra"] = torch.zeros(2)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(ConfigError) as err:
        build_encoder(tiny_vit, str(tmp_path / "w.pt"), 32)
    msg = str(err.value)
    assert "1 missing keys (blocks.1.norm1.weight)" in msg
    assert "1 unexpected keys (blocks.9.extra)" in msg
    assert "\n" not in msg


def test_an_unknown_wrapper_is_an_error(tiny_vit, tmp_path) -> None:
    torch.save({"teacher": timm_state(), "epoch": 1}, tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="keys teacher, epoch, not a state dict"):
        build_encoder(tiny_vit, str(tmp_path / "w.pt"), 32)


def test_weights_holding_nan_are_an_error(tiny_vit, tmp_path) -> None:
    """A weights file with NaN tensors (a diverged pretraining, a damaged save) would give NaN
    features for every patch, cached or trained on without a word."""
    state = timm_state()
    state["blocks.1.attn.qkv.weight"][0, :3] = float("nan")
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(
        ConfigError, match=r"w\.safetensors holds NaN in 1 tensor \(blocks\.1\.attn\.qkv"
    ) as err:
        build_encoder(tiny_vit, str(tmp_path / "w.safetensors"), 32)
    assert str(err.value).endswith("use an intact file")  # not "is it another architecture?"
    state["blocks.1.attn.qkv.weight"][0, :3] = float("-inf")  # as a stored attention mask
    save_file(state, str(tmp_path / "w.safetensors"))
    build_encoder(tiny_vit, str(tmp_path / "w.safetensors"), 32)


def test_weights_of_another_architecture_are_an_error(tiny_vit, monkeypatch, tmp_path) -> None:
    deeper = EncoderSpec("vit_tiny_patch16_224", dict(TINY, depth=4), input_size=32)
    monkeypatch.setitem(FOUNDATION_MODELS, "deeper", deeper)
    torch.save(timm_state("deeper"), tmp_path / "deep.pt")
    with pytest.raises(ConfigError, match=r"unexpected keys \(blocks\.3\."):
        build_encoder(tiny_vit, str(tmp_path / "deep.pt"), 32)
    wider = EncoderSpec("vit_tiny_patch16_224", dict(TINY, embed_dim=48), input_size=32)
    monkeypatch.setitem(FOUNDATION_MODELS, "wider", wider)
    torch.save(timm_state("wider"), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match="other shapes .*a different architecture"):
        build_encoder(tiny_vit, str(tmp_path / "wide.pt"), 32)
    deeper_wider = EncoderSpec("vit_tiny_patch16_224", dict(TINY, depth=4, embed_dim=48))
    monkeypatch.setitem(FOUNDATION_MODELS, "deeper_wider", deeper_wider)
    torch.save(timm_state("deeper_wider"), tmp_path / "both.pt")
    with pytest.raises(ConfigError) as err:  # extra keys and other shapes: both counted
        build_encoder(tiny_vit, str(tmp_path / "both.pt"), 32)
    n_own = len(timm_state())
    assert f"(the encoder has {n_own} tensors, the file {n_own + 12})" in str(err.value)
    assert "12 unexpected keys (blocks.3." in str(err.value)
    assert "tensors of other shapes (blocks.0." in str(err.value)


def test_the_reader_follows_the_content_not_the_suffix(tiny_vit, tmp_path) -> None:
    """A safetensors file named .pt loads; a file of neither kind is named as such, not as a
    pickled model (the torch reader's refusal of anything it cannot read)."""
    state = timm_state()
    save_file(state, str(tmp_path / "w.pt"))
    assert same_weights(build_encoder(tiny_vit, str(tmp_path / "w.pt"), 32)[0], state)
    torch.save(state, tmp_path / "w.safetensors")
    assert same_weights(build_encoder(tiny_vit, str(tmp_path / "w.safetensors"), 32)[0], state)
    (tmp_path / "notes.pth").write_text("not weights\n")
    with pytest.raises(ConfigError, match=r"notes\.pth \(neither a safetensors file nor a torch"):
        build_encoder(tiny_vit, str(tmp_path / "notes.pth"), 32)
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ConfigError, match=r"cut\.safetensors \(.*truncated"):
        build_encoder(tiny_vit, str(tmp_path / "cut.safetensors"), 32)


def test_hf_hub_weights_in_this_machines_cache_are_checked_before_any_job(
    tiny_vit, monkeypatch, tmp_path
) -> None:
    """hf-hub: weights were never looked up before the jobs: a copy of another architecture's
    weights failed every train_fold job after preprocessing, and a missing copy said nothing
    until then. Found here they are checked like a local file; missing here, a warning (the jobs
    may run where HF_HUB_CACHE points elsewhere)."""
    from gigamil.nn.encoders import check_encoder_settings
    from gigamil.nn.smallcnn import SmallCNN

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (warning,) = check_encoder_settings(tiny_vit, "hf-hub:someorg/tiny")
    assert str(tmp_path / "hub") in warning and "train_fold" in warning and "\n" not in warning
    snapshot = tmp_path / "hub" / "models--someorg--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    save_file(timm_state(), str(snapshot / "model.safetensors"))
    assert check_encoder_settings(tiny_vit, "hf-hub:someorg/tiny") == []
    other = {k: v.contiguous() for k, v in SmallCNN().state_dict().items()}
    save_file(other, str(snapshot / "model.safetensors"))
    with pytest.raises(ConfigError, match="does not fit the encoder"):
        check_encoder_settings(tiny_vit, "hf-hub:someorg/tiny")


def test_hf_hub_weights_come_from_the_local_cache_only(tiny_vit, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        build_encoder(tiny_vit, "hf-hub:someorg/tiny", 32)
    msg = str(err.value)
    assert "\n" not in msg and "hf download someorg/tiny" in msg and str(tmp_path / "hub") in msg
    repo = tmp_path / "hub" / "models--someorg--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    state = timm_state()
    save_file(state, str(repo / "snapshots" / "abc123" / "model.safetensors"))
    enc, _ = build_encoder(tiny_vit, "hf-hub:someorg/tiny", 32)
    assert same_weights(enc, state)
    assert (
        weights_sha256("hf-hub:someorg/tiny", tiny_vit)
        == hashlib.sha256(
            (repo / "snapshots" / "abc123" / "model.safetensors").read_bytes()
        ).hexdigest()
    )


def test_torchvision_encoders_load_files_strictly_and_names_still_resolve(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    full = torchvision.models.resnet18(weights=None).state_dict()  # with its fc classifier
    torch.save(full, tmp_path / "r18.pt")
    enc, dim = build_encoder("resnet18", str(tmp_path / "r18.pt"), 32, "groupnorm")
    assert dim == 512 and torch.equal(enc.layer4[1].conv2.weight, full["layer4.1.conv2.weight"])
    # saved before torch 0.4.1: no BatchNorm batch counters (torch's strict loading takes it)
    old = {k: v for k, v in full.items() if not k.endswith(".num_batches_tracked")}
    torch.save(old, tmp_path / "old.pt")
    enc, _ = build_encoder("resnet18", str(tmp_path / "old.pt"), 32)
    assert torch.equal(enc.layer4[1].bn2.running_var, full["layer4.1.bn2.running_var"])
    broken = {k: v for k, v in full.items() if not k.startswith("layer4.")}
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(ConfigError, match="missing keys"):
        build_encoder("resnet18", str(tmp_path / "broken.pt"), 32)
    with pytest.raises(ConfigError, match="not a torchvision weight"):
        build_encoder("resnet18", "NO_SUCH_WEIGHTS", 32)
    with pytest.raises(ConfigError, match="local .* file, hf-hub"):
        build_encoder("timm:resnet18", "IMAGENET1K_V1", 32)


def test_the_preprocessing_normalises_with_the_encoders_mean_and_std() -> None:
    hopt = encoder_normalisation("h_optimus_0")
    assert hopt == ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))
    model = build_mil_model({"encoder": "timm:vit_tiny_patch16_224"}, 2, 32)
    pre = model.feature_encoder[0]
    assert torch.allclose(pre.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))  # timm's config
    resnet = build_mil_model({"encoder": "resnet18"}, 2, 32)
    imagenet = torch.tensor([0.485, 0.456, 0.406])
    assert torch.allclose(resnet.feature_encoder[0].mean.flatten(), imagenet)


def test_keys_under_a_prefix_beside_other_keys_get_the_fix_in_the_message():
    """A DINO-style file, backbone.* beside head.*: the prefix is not stripped (not every key
    has it), and the message only asked "is it a resnet18?"; it now names the prefix and how to
    keep that part."""
    from gigamil.nn.weights import load_strict

    module = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    state = {f"backbone.{k}": v for k, v in module.state_dict().items()}
    state["head.weight"] = torch.zeros(4, 1)
    with pytest.raises(ConfigError) as err:
        load_strict(module, state, "w.pt", hint="is it a resnet18?")
    assert "every missing key is in the file under the prefix 'backbone.', beside 1 other " + (
        "key(s) (head.weight): save only that part"
    ) in str(err.value)
    state.pop("backbone.1.bias")  # not all of them there: the plain message and hint
    with pytest.raises(ConfigError, match=r"is it a resnet18\?$"):
        load_strict(module, state, "w.pt", hint="is it a resnet18?")


def test_a_weights_file_replaced_in_place_gets_its_new_sha256(tmp_path) -> None:
    """The sha256 identifies the weights (model.pt, the training signature): a file of the same
    size rewritten in place must not keep the cached digest of its old content."""
    import os

    from gigamil.nn.weights import file_sha256

    path = tmp_path / "w.pt"
    path.write_bytes(b"a" * 64)
    old = file_sha256(path)
    st = os.stat(path)
    path.write_bytes(b"b" * 64)  # same size, new content, a later modification time
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert old == hashlib.sha256(b"a" * 64).hexdigest()
    assert file_sha256(path) == hashlib.sha256(b"b" * 64).hexdigest()


def test_stripping_prefixes_of_an_empty_state_dict_returns_at_once():
    """No key has no prefix either: the loop stopped only when a pass stripped nothing, and on
    an empty dict every pass 'stripped' (a hang of load_strict on {})."""
    import subprocess
    import sys

    code = "from gigamil.nn.weights import strip_prefixes; print(strip_prefixes({}, {'a'}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "{}"


@pytest.mark.parametrize("name", ["MahmoodLab/UNI@main", "org/na me", "org/..", "-org/x"])
def test_a_malformed_hf_hub_name_is_a_config_error(tiny_vit, name) -> None:
    """The hub's own naming rules (timm's @revision spelling, a space): a raw HFValidationError
    (a traceback past the workflow's ConfigError handlers) before."""
    from gigamil.nn.encoders import check_encoder_settings

    with pytest.raises(ConfigError, match=r"is not hf-hub:<org>/<name>"):
        check_encoder_settings(tiny_vit, f"hf-hub:{name}")


def test_timms_hf_hub_spelling_gets_the_right_hint(tiny_vit) -> None:
    from gigamil.nn.encoders import check_encoder_settings

    with pytest.raises(ConfigError, match=r"write hf-hub:prov-gigapath/prov-gigapath$"):
        check_encoder_settings(tiny_vit, "hf_hub:prov-gigapath/prov-gigapath")


def test_the_hub_cache_path_expands_home_and_variables(monkeypatch, tmp_path) -> None:
    """HF_HUB_CACHE='~/hfcache' (quoted, or from a profile's env): huggingface_hub expands it,
    gigamil looked in a literal ./~/hfcache and said the model was not there."""
    from gigamil.nn.weights import hub_cache

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", "~/hfcache")
    assert hub_cache() == str(tmp_path / "hfcache")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("SCRATCH", str(tmp_path / "s"))
    monkeypatch.setenv("HF_HOME", "$SCRATCH/hf")
    assert hub_cache() == str(tmp_path / "s" / "hf" / "hub")


def test_a_timm_model_with_two_classifier_heads_drops_both(tmp_path) -> None:
    """timm names the distilled DeiT's classifier ('head', 'head_dist'): its own checkpoint was
    refused with 4 unexpected keys."""
    import timm

    name = "deit_tiny_distilled_patch16_224"
    torch.manual_seed(0)
    state = timm.create_model(name, pretrained=False).state_dict()
    torch.save(state, tmp_path / "deit.pt")
    enc, dim = build_encoder(f"timm:{name}", str(tmp_path / "deit.pt"), 224, device="meta")
    assert dim == 192


def test_torchvision_vit_resizes_to_its_weights_input_size(monkeypatch) -> None:
    """vit_b_16 built for 384 px (what IMAGENET1K_SWAG_E2E_V1 builds) was fed 224 px and failed
    at its first forward pass; the resize follows the model's image_size."""
    import torchvision

    from gigamil.nn.encoders import _build_builtin

    real = torchvision.models.vit_b_16
    monkeypatch.setattr(torchvision.models, "vit_b_16", lambda **kw: real(image_size=384))
    with torch.device("meta"):
        enc, _ = _build_builtin("vit_b_16", None, 224)
    assert enc[0].size == enc[1].image_size == 384
