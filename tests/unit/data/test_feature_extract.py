"""gigamil.data.feature_extract: extraction of the feature cache (cached == live features within
fp16, provenance attrs, features float16 cannot hold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gigamil.data.bags import ZarrBag
from gigamil.data.feature_extract import build_feature_encoder, encode_bag, extract_features
from gigamil.data.feature_spec import encoder_id, encoder_spec
from gigamil.data.features import FeatureBag
from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model

PATCHES = {"mpp": 0.5, "patch_px": 32}


def _patches(n: int, px: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


def _live_features(model_cfg: dict, store: Path, chunk: int = 7) -> np.ndarray:
    """What the trainer's frozen model computes from the patches (training.seed 0, eval)."""
    torch.manual_seed(0)
    model = build_mil_model(model_cfg, 2, PATCHES["patch_px"]).eval()
    with torch.inference_mode():
        return model.encode(ZarrBag(store), chunk).numpy()


def test_cache_equals_live_features_random_init(write_store, tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", _patches(37), chunk=16, target_mpp=0.5)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = extract_features(store, tmp_path / "f" / "s.zarr", cfg, PATCHES, device="cpu", chunk=10)
    bag = FeatureBag(out)
    cached = bag.load().numpy()
    live = _live_features(cfg, store)
    assert cached.shape == live.shape == (37, 64)
    assert bag.attrs["kind"] == "features" and bag.attrs["feature_dim"] == 64
    np.testing.assert_allclose(cached, live, rtol=2e-3, atol=2e-3 * np.abs(live).max())
    assert not np.allclose(cached, 0)


def test_cache_holds_the_colour_histogram_as_the_live_model(write_store, tmp_path) -> None:
    """model.colour_histogram was part of the cache's id, but the extractor left the histogram
    out: a frozen model with it trained and predicted on the encoder's features only."""
    store = write_store(tmp_path / "s.zarr", _patches(9), chunk=16, target_mpp=0.5)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0, "colour_histogram": 4}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    cached = FeatureBag(out).load().numpy()
    live = _live_features(cfg, store)
    assert cached.shape == live.shape == (9, 64 + 12)
    np.testing.assert_allclose(cached, live, rtol=2e-3, atol=2e-3 * np.abs(live).max())
    plain = extract_features(
        store, tmp_path / "p.zarr", {**cfg, "colour_histogram": 0}, PATCHES, device="cpu"
    )
    np.testing.assert_array_equal(FeatureBag(plain).load().numpy(), cached[:, :64])
    assert cached[:, 64:].min() >= 0 and cached[:, 64:].max() <= 1  # shares of pixels


def test_encoding_logs_its_progress(write_store, tmp_path: Path, caplog) -> None:
    """Rule extract_features ran 8 minutes on one slide without a line."""
    store = write_store(tmp_path / "s.zarr", _patches(25), chunk=16, target_mpp=0.5)
    encoder, _ = build_feature_encoder({"encoder": "smallcnn", "trainable_blocks": 0}, 32)
    with caplog.at_level("INFO", logger="gigamil.data.feature_extract"):
        encode_bag(encoder, ZarrBag(store), torch.device("cpu"), chunk=10, log_every_s=0)
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split(",")[0] for ln in lines] == [
        f"s: encoding: {n}/25 patches" for n in (10, 20, 25)
    ]
    assert all(" patches/s" in ln for ln in lines)


def test_cache_equals_live_features_weights_file(write_store, tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "r18.pt"
    torch.manual_seed(5)
    net = torchvision.models.resnet18()
    torch.save(net.state_dict(), weights)
    store = write_store(tmp_path / "s.zarr", _patches(20, seed=1), chunk=8, target_mpp=0.5)
    cfg = {"encoder": "resnet18", "weights": str(weights), "freeze_encoder": True}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    bag = FeatureBag(out)
    live = _live_features(cfg, store)
    np.testing.assert_allclose(bag.load().numpy(), live, rtol=2e-3, atol=2e-3 * np.abs(live).max())
    from gigamil.nn.weights import file_sha256

    # provenance: encoder, weights sha256, patch size and MPP, version
    assert bag.attrs["weights_sha256"] == file_sha256(weights)
    assert bag.attrs["encoder"] == "resnet18" and bag.attrs["patch_px"] == 32
    assert bag.attrs["target_mpp"] == 0.5 and bag.attrs["gigamil_version"]
    assert bag.attrs["encoder_id"] == encoder_id(encoder_spec(cfg, PATCHES))
    assert bag.attrs["encoder_spec"]["weights"] == f"sha256:{file_sha256(weights)}"


@pytest.mark.parametrize(
    ("scale", "why"),
    [(1e5, "reach 1e\\+05, beyond the float16 range"), (float("nan"), "NaN or inf features")],
)
def test_features_float16_cannot_hold_are_an_error_not_inf(write_store, tmp_path, scale, why):
    """The cache stores float16: a feature of 1e5 was cast to inf (and NaN cached) silently."""
    store = write_store(tmp_path / "s.zarr", _patches(5), chunk=16, target_mpp=0.5)

    class Loud(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.float().mean(dim=(2, 3)) * 0 + scale

    with pytest.raises(GigamilError, match=f"s.zarr: the encoder.*{why}"):
        encode_bag(Loud(), ZarrBag(store), torch.device("cpu"))
    assert (
        encode_bag(torch.nn.Flatten(1), ZarrBag(store), torch.device("cpu"), chunk=2).shape[0] == 5
    )


def test_a_store_of_other_patch_settings_is_not_cached(write_store, tmp_path: Path) -> None:
    """A patch store cut at 1.0 µm/px was cached under the encoder id of the configured 0.5
    µm/px (the id is computed from the config); training and prediction then trusted it."""
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    cases = {
        "mpp": ({"target_mpp": 1.0}, "patches have mpp 1.0 but preprocessing.patches.mpp is 0.5"),
        "codec": ({"target_mpp": 0.5, "codec": "jpeg"}, "have codec jpeg but .*codec is zstd"),
        "stain": (
            {"target_mpp": 0.5, "stain_normalization": "macenko"},
            "stain_normalization macenko but .*stain_normalization is none",
        ),
    }
    for name, (attrs, message) in cases.items():
        store = write_store(tmp_path / f"{name}.zarr", _patches(5), **attrs)
        with pytest.raises(GigamilError, match=message):
            extract_features(store, tmp_path / f"f_{name}.zarr", cfg, PATCHES, device="cpu")
        assert not (tmp_path / f"f_{name}.zarr").exists()
    store = write_store(tmp_path / "px.zarr", _patches(5, px=16), target_mpp=0.5)
    with pytest.raises(GigamilError, match="patches have patch_px 16 but .*patch_px is 32"):
        extract_features(store, tmp_path / "f_px.zarr", cfg, PATCHES, device="cpu")
    jpeg = {**PATCHES, "codec": "jpeg", "jpeg_quality": 50}
    store = write_store(
        tmp_path / "q.zarr", _patches(5), target_mpp=0.5, codec="jpeg", jpeg_quality=95
    )
    with pytest.raises(GigamilError, match="jpeg_quality 95 but .*jpeg_quality is 50"):
        extract_features(store, tmp_path / "f_q.zarr", cfg, jpeg, device="cpu")
    close = write_store(tmp_path / "ok.zarr", _patches(5), target_mpp=0.504)  # within 1 %
    extract_features(close, tmp_path / "f_ok.zarr", cfg, PATCHES, device="cpu")


def test_a_store_beyond_the_mpp_tolerance_is_not_cached(write_store, tmp_path: Path) -> None:
    """Patches 4 % off the configured µm/px (outside the 1 % tolerance) are not cached under
    the id of the configured ones."""
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    store = write_store(tmp_path / "off.zarr", _patches(3), target_mpp=0.52)
    with pytest.raises(GigamilError, match="patches have mpp 0.52 but preprocessing.patches.mpp"):
        extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    assert not (tmp_path / "f.zarr").exists()


def test_building_the_feature_encoder_leaves_the_global_rng_alone() -> None:
    """The random-init encoder is drawn under RANDOM_INIT_SEED; the caller's RNG stream (e.g.
    the em strategy's training) continues as if nothing had been drawn."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_feature_encoder({"encoder": "smallcnn", "trainable_blocks": 0}, 32)
    assert torch.equal(torch.rand(3), expected)
