"""The feature cache of frozen encoders: encoder_id, extraction (cached == live features within
fp16), FeatureBag, and training/prediction from feature stores."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gigamil import layout
from gigamil.data.bags import ZarrBag
from gigamil.data.features import (
    FeatureBag,
    cache_enabled,
    config_encoder_id,
    encode_bag,
    encoder_id,
    encoder_spec,
    extract_features,
    open_bag,
)
from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.nn.pooling import grid_adjacency
from gigamil.train.checkpoint import load_model
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold

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


def test_feature_store_keeps_rows_coords_grid(write_store, tmp_path: Path) -> None:
    grid = np.array([[0, 3], [1, 0], [1, 1], [2, 5], [4, 4]], np.int64)
    store = write_store(tmp_path / "s.zarr", _patches(5), grid=grid, chunk=2)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    bag = FeatureBag(extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu"))
    patches = ZarrBag(store)
    np.testing.assert_array_equal(bag.grid, patches.grid)
    np.testing.assert_array_equal(bag.coords, patches.coords)
    assert bag.patch_shape == patches.patch_shape
    # chunks and subsamples in row order
    full = bag.load()
    assert torch.equal(torch.cat(list(bag.chunks(2))), full)
    sub = bag.subsample(3, torch.Generator().manual_seed(0))
    assert len(sub) == 3 and list(sub.indices) == sorted(sub.indices)
    assert torch.equal(sub.load(), full[torch.as_tensor(sub.indices)])
    np.testing.assert_array_equal(sub.grid, grid[sub.indices])
    assert isinstance(open_bag(store), ZarrBag) and isinstance(open_bag(bag.path), FeatureBag)
    # the grid adjacency (SmABMIL) is computed once per bag and kept (and is a subsample's own)
    adj = bag.adjacency()
    assert adj is bag.adjacency()
    assert torch.equal(adj.to_dense(), grid_adjacency(grid).to_dense())
    assert torch.equal(sub.adjacency().to_dense(), grid_adjacency(grid[sub.indices]).to_dense())
    model = build_mil_model({"pool": "smabmil"}, 2, 32, feature_dim=64).eval()
    with torch.inference_mode():
        _, att = model(bag)
        _, att_ref = model(full, adj=grid_adjacency(grid))
    assert torch.allclose(att, att_ref)
    # an empty slide gives an empty store of the right width
    empty = write_store(tmp_path / "e.zarr", np.zeros((0, 32, 32, 3), np.uint8))
    ebag = FeatureBag(extract_features(empty, tmp_path / "fe.zarr", cfg, PATCHES, device="cpu"))
    assert len(ebag) == 0 and ebag.dim == 64


def test_bags_beyond_the_memory_budget_read_from_disk(
    write_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = write_store(tmp_path / "s.zarr", _patches(9), chunk=4)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    resident = FeatureBag(out)
    assert resident.resident
    monkeypatch.setattr(FeatureBag, "RESIDENT_BYTES", 0)
    lazy = FeatureBag(out)
    assert not lazy.resident and len(lazy) == 9
    assert torch.equal(lazy.load(), resident.load())
    assert torch.equal(torch.cat(list(lazy.chunks(4))), resident.load())
    step = lazy.with_cache()
    assert step.resident and not lazy.resident and torch.equal(step.load(), resident.load())
    gen = torch.Generator().manual_seed(1)
    sub = lazy.subsample(4, gen)
    assert not sub.resident
    assert torch.equal(sub.load(), resident.load()[torch.as_tensor(sub.indices)])
    # the memory budget is given back when a resident bag is freed
    before = FeatureBag._resident[0]
    del resident, step
    import gc

    gc.collect()
    assert FeatureBag._resident[0] < before


def test_damaged_feature_chunk_is_named(write_store, tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", _patches(6), chunk=3)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    chunk = out / "features" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(GigamilError, match=r"features/c/0/0"):
        FeatureBag(out)
    chunk.unlink()
    with pytest.raises(GigamilError, match=r"chunk features/c/0/0 is missing"):
        FeatureBag(out)


def test_feature_store_coords_or_grid_that_do_not_match_the_features_are_damage(
    write_store, tmp_path: Path
) -> None:
    """coords/grid of another length than the features, or a coords chunk file deleted (zarr
    reads it as zeros), paired features with the wrong places without a word."""
    import zarr

    store = write_store(tmp_path / "s.zarr", _patches(6), chunk=3)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    (out / "coords" / "c" / "0" / "0").unlink()
    with pytest.raises(GigamilError, match=r"f\.zarr is damaged: chunk coords/c/0/0 is missing"):
        FeatureBag(out)
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    group = zarr.open_group(str(out), mode="a", zarr_format=3)
    short = np.asarray(group["grid"][:4])
    del group["grid"]
    group.create_array("grid", data=short, write_data=True)
    with pytest.raises(
        GigamilError, match=r"f\.zarr is damaged: features \(6, 64\) and grid int64 \(4, 2\), not"
    ):
        FeatureBag(out)


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


def test_encoder_id_changes_only_with_what_changes_the_features(tmp_path: Path) -> None:
    base = {"encoder": "smallcnn", "trainable_blocks": 0}
    ref = encoder_id(encoder_spec(base, PATCHES))
    assert ref == encoder_id(encoder_spec(base, PATCHES))  # stable
    assert ref.startswith("smallcnn-") and len(ref) == len("smallcnn-") + 12
    # head, training-side and cache switches: the same features
    for head in (
        {"att_dim": 8},
        {"pool": "smabmil"},
        {"pool": "smabmil", "sm_alpha": 0.9},
        {"dropout": 0.5},
        {"feature_norm": False},
        {"instance_loss": 0.5},
        {"freeze_encoder": True},
    ):
        assert encoder_id(encoder_spec({**base, **head}, PATCHES)) == ref, head
    assert encoder_id(encoder_spec(base, {**PATCHES, "stride_px": 16, "min_tissue": 0.9})) == ref
    # what changes the features changes the id
    w1, w2 = tmp_path / "a.pt", tmp_path / "b.pt"
    w1.write_bytes(b"one")
    w2.write_bytes(b"two")
    changed = [
        encoder_spec({**base, "encoder": "resnet18"}, PATCHES),
        encoder_spec({**base, "batchnorm": "groupnorm"}, PATCHES),
        encoder_spec(base, {**PATCHES, "mpp": 1.0}),
        encoder_spec(base, {**PATCHES, "patch_px": 64}),
        encoder_spec(base, {**PATCHES, "codec": "jpeg"}),
        encoder_spec({**base, "encoder": "resnet18", "weights": str(w1)}, PATCHES),
        encoder_spec({**base, "encoder": "resnet18", "weights": str(w2)}, PATCHES),
        encoder_spec({**base, "encoder": "resnet18", "weights": "IMAGENET1K_V1"}, PATCHES),
    ]
    ids = [encoder_id(s) for s in changed]
    assert ref not in ids and len(set(ids)) == len(ids)
    # the same weights file elsewhere: the same id (by content)
    w3 = tmp_path / "sub" / "a.pt"
    w3.parent.mkdir()
    w3.write_bytes(b"one")
    same = encoder_spec({**base, "encoder": "resnet18", "weights": str(w3)}, PATCHES)
    assert encoder_id(same) == ids[5]


def test_cache_enabled_only_for_a_frozen_encoder() -> None:
    assert cache_enabled({"trainable_blocks": 0})
    assert cache_enabled({"freeze_encoder": True})
    assert not cache_enabled({"trainable_blocks": 0, "feature_cache": False})
    assert not cache_enabled({"trainable_blocks": "all"})
    assert not cache_enabled({"encoder": "resnet18", "trainable_blocks": 2})
    cfg = {"model": {"trainable_blocks": 0}, "preprocessing": {"patches": PATCHES}}
    assert config_encoder_id(cfg) == encoder_id(encoder_spec(cfg["model"], PATCHES))
    assert config_encoder_id({"model": {}, "preprocessing": {"patches": PATCHES}}) is None
    slides = pd.DataFrame({"cohort": ["c"], "slide_id": ["s1"]})
    eid = config_encoder_id(cfg)
    assert layout.with_stores(slides, eid)["store"].tolist() == [
        f"results/features/{eid}/c/s1.zarr"
    ]
    assert layout.with_stores(slides)["store"].tolist() == ["results/patches/c/s1.zarr"]
    # training.strategy: frozen caches too (trainable_blocks left at all); em and end_to_end not
    frozen = {
        "model": {},
        "training": {"strategy": "frozen"},
        "preprocessing": {"patches": PATCHES},
    }
    assert config_encoder_id(frozen) == eid
    for strategy in ("em", "end_to_end"):
        cfg = {**frozen, "training": {"strategy": strategy}}
        assert config_encoder_id(cfg) is None


def test_in_memory_bag_behaves_like_a_stored_one(write_store, tmp_path: Path) -> None:
    grid = np.array([[0, 3], [1, 0], [1, 1], [2, 5], [4, 4]], np.int64)
    store = write_store(tmp_path / "s.zarr", _patches(5), grid=grid, chunk=2)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    stored = FeatureBag(extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu"))
    feats = stored.load().numpy()
    bag = FeatureBag.in_memory(feats, stored.coords, stored.grid, {"slide_id": "s", "patch_px": 32})
    assert len(bag) == 5 and bag.dim == 64 and bag.resident and bag.with_cache() is bag
    assert bag.patch_shape == (32, 32, 3) and bag.slide_id == "s"
    assert torch.equal(bag.load(), stored.load())
    assert torch.equal(torch.cat(list(bag.chunks(2))), stored.load())
    gen = torch.Generator
    sub, ref = bag.subsample(3, gen().manual_seed(1)), stored.subsample(3, gen().manual_seed(1))
    assert torch.equal(sub.load(), ref.load())
    assert torch.equal(sub.adjacency().to_dense(), ref.adjacency().to_dense())
    with pytest.raises(ValueError, match="N rows"):
        FeatureBag.in_memory(feats, stored.coords[:4], stored.grid, {"slide_id": "s"})


def _feature_cohort(df: pd.DataFrame, root: Path, model_cfg: dict, px: int) -> pd.DataFrame:
    stores = []
    for row in df.itertuples(index=False):
        out = root / f"{row.slide_id}.zarr"
        patch_cfg = {"mpp": 0.5, "patch_px": px}
        extract_features(row.store, out, model_cfg, patch_cfg, device="cpu")
        stores.append(str(out))
    return df.assign(store=stores)


def test_train_and_predict_from_cached_features(
    mil_bags, write_store, tmp_path: Path, caplog
) -> None:
    torch.set_num_threads(1)
    caplog.set_level(logging.INFO)
    model_cfg = {**mil_bags.model, "trainable_blocks": 0}
    train = mil_bags.cohort(tmp_path / "p", 10, 0, "t")
    val = mil_bags.cohort(tmp_path / "p", 6, 1, "v")
    ftrain = _feature_cohort(train, tmp_path / "f", model_cfg, mil_bags.px)
    fval = _feature_cohort(val, tmp_path / "f", model_cfg, mil_bags.px)
    training = {
        "device": "cpu",
        "epochs": 3,
        "lr": 3e-3,
        "max_instances_per_forward_pass": 8,
        "augment": {"flips": True},
    }
    path = train_fold(ftrain, fval, mil_bags.classes, model_cfg, training, tmp_path / "fold0")
    assert "patch augmentation (training.augment) is not applied" in caplog.text
    model, ckpt = load_model(path)
    eid = FeatureBag(ftrain.store[0]).encoder_id
    assert ckpt["features"] == {"encoder_id": eid, "dim": 64}
    assert isinstance(model.feature_encoder, torch.nn.Identity)
    assert all(k.startswith("attention_model.") for k in ckpt["state_dict"])
    preds = predict_slides(path, fval, None, tmp_path / "att", device="cpu")
    assert preds["prob_lesion"].between(0, 1).all()
    for sid, store in zip(val.slide_id, val.store, strict=True):  # patch-store row order
        att = np.load(tmp_path / "att" / f"{sid}.npy")
        assert len(att) == len(ZarrBag(store)) and np.isclose(att.sum(), 1.0, atol=1e-5)
    # a head trained on features refuses patch stores, and features of another encoder
    with pytest.raises(GigamilError, match="cached features"):
        predict_slides(path, val, None, tmp_path / "att2", device="cpu")
    other = _feature_cohort(
        val.head(1), tmp_path / "g", {**model_cfg, "batchnorm": "groupnorm"}, mil_bags.px
    )
    with pytest.raises(GigamilError, match="features of encoder"):
        predict_slides(path, other, None, tmp_path / "att3", device="cpu")
    # and a patch-trained model refuses feature stores (mixing kinds in a fold is an error too)
    with pytest.raises(GigamilError, match="some slides are patch stores"):
        train_fold(
            pd.concat([ftrain, train.head(2)], ignore_index=True),
            fval,
            mil_bags.classes,
            model_cfg,
            training,
            tmp_path / "fold1",
        )
