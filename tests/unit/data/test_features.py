"""gigamil.data.features: the feature stores (FeatureBag, damage checks, open_bag) and
training/prediction from feature stores."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from gigamil.data.bags import ZarrBag
from gigamil.data.feature_extract import extract_features
from gigamil.data.features import FeatureBag, open_bag
from gigamil.errors import ConfigError, GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.nn.pooling import grid_adjacency
from gigamil.train.checkpoint import load_model
from gigamil.train.predict import predict_slides
from gigamil.train.run import train_fold

PATCHES = {"mpp": 0.5, "patch_px": 32}


def _patches(n: int, px: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, px, px, 3), dtype=np.uint8)


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
    with pytest.raises(
        GigamilError, match=r"feature store .*f\.zarr is damaged: chunk features/c/0/0 fails"
    ) as err:
        FeatureBag(out)
    assert str(err.value).endswith("rerun to encode it again")  # not "a patch store"
    chunk.unlink()
    with pytest.raises(GigamilError, match=r"feature store .* chunk features/c/0/0 is missing"):
        FeatureBag(out)


def test_feature_store_coords_or_grid_that_do_not_match_the_features_are_damage(
    write_store, rewrite_array, tmp_path: Path
) -> None:
    """coords/grid of another length than the features, or a coords chunk file deleted (zarr
    reads it as zeros), paired features with the wrong places without a word."""

    store = write_store(tmp_path / "s.zarr", _patches(6), chunk=3)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    (out / "coords" / "c" / "0" / "0").unlink()
    with pytest.raises(GigamilError, match=r"f\.zarr is damaged: chunk coords/c/0/0 is missing"):
        FeatureBag(out)
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    rewrite_array(out, "grid", lambda a: a[:4])
    with pytest.raises(
        GigamilError, match=r"f\.zarr is damaged: features \(6, 64\) and grid int64 \(4, 2\), not"
    ):
        FeatureBag(out)


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
    assert "only the attention head trains" not in caplog.text  # trainable_blocks 0: frozen
    end_to_end = {**mil_bags.model, "trainable_blocks": "all"}  # feature stores all the same
    train_fold(
        ftrain, fval, mil_bags.classes, end_to_end, {**training, "epochs": 1}, tmp_path / "e2e"
    )
    assert "training.strategy is end_to_end but the slides are feature stores" in caplog.text
    model, ckpt = load_model(path)
    eid = FeatureBag(ftrain.store[0]).encoder_id
    weights = FeatureBag(ftrain.store[0]).attrs["encoder_sha256"]  # the encoder's state
    assert ckpt["features"] == {"encoder_id": eid, "dim": 64, "encoder_sha256": weights}
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
    # training refuses feature stores of another encoder than model.encoder (model.pt would
    # name one and hold a head for the other's features; a review, 2026-12-06)
    with pytest.raises(ConfigError, match=r"stores of encoder smallcnn-.*encoder: smallcnn in"):
        train_fold(
            ftrain,
            fval,
            mil_bags.classes,
            {**model_cfg, "encoder": "resnet18"},
            training,
            tmp_path / "resnet",
        )
    # and features of the same encoder with other settings (its BatchNorm mode here; other
    # weights alike): only the encoder's name was compared
    groupnorm = {**model_cfg, "batchnorm": "groupnorm"}
    with pytest.raises(ConfigError, match=r"batchnorm: frozen in the stores, groupnorm here"):
        train_fold(ftrain, fval, mil_bags.classes, groupnorm, training, tmp_path / "gn")
    # and a patch-trained model refuses feature stores (mixing kinds in a fold is an error too)
    with pytest.raises(GigamilError, match="some slides are patch stores"):
        train_fold(
            pd.concat([ftrain, mil_bags.cohort(tmp_path / "x", 2, 2, "x")], ignore_index=True),
            fval,
            mil_bags.classes,
            model_cfg,
            training,
            tmp_path / "fold1",
        )


def test_features_of_other_weights_under_the_same_encoder_id_are_refused(
    mil_bags, monkeypatch, tmp_path: Path
) -> None:
    """encoder_id names a random-init encoder by its seed: a torch or timm upgrade that
    initialises it otherwise fills the same cache folder with features of other weights, which
    training mixed and prediction read without a word. Each store records its encoder's state
    (encoder_sha256); a fold of two such stores, or a model and a store, that differ is refused."""
    import gigamil.data.feature_extract as fx

    torch.set_num_threads(1)
    model_cfg = {**mil_bags.model, "trainable_blocks": 0}
    train = _feature_cohort(
        mil_bags.cohort(tmp_path / "p", 6, 0, "t"), tmp_path / "f", model_cfg, mil_bags.px
    )
    val = mil_bags.cohort(tmp_path / "p", 4, 1, "v")
    fval = _feature_cohort(val, tmp_path / "f", model_cfg, mil_bags.px)
    training = {"device": "cpu", "epochs": 1, "max_instances_per_forward_pass": 8}
    path = train_fold(train, fval, mil_bags.classes, model_cfg, training, tmp_path / "m")
    monkeypatch.setattr(fx, "RANDOM_INIT_SEED", 1)  # "the upgrade": other initial weights
    new = mil_bags.cohort(tmp_path / "p", 1, 2, "x")
    later = _feature_cohort(new, tmp_path / "g", model_cfg, mil_bags.px)
    assert FeatureBag(later.store[0]).encoder_id == FeatureBag(fval.store[0]).encoder_id
    with pytest.raises(GigamilError, match="encoded by 2 different sets of weights"):
        mixed = pd.concat([train, later], ignore_index=True)
        train_fold(mixed, fval, mil_bags.classes, model_cfg, training, tmp_path / "mixed")
    with pytest.raises(GigamilError, match="was encoded by other weights than the features"):
        predict_slides(path, later, None, tmp_path / "att", device="cpu")
    # the same weights again: the same fingerprint (0-dim buffers included)
    a, _ = fx.build_feature_encoder(model_cfg, mil_bags.px)
    b, _ = fx.build_feature_encoder(model_cfg, mil_bags.px)
    assert (
        fx.encoder_fingerprint(a)
        == fx.encoder_fingerprint(b)
        != fx.encoder_fingerprint(torch.nn.Linear(2, 2))
    )


def test_a_cache_folder_planned_for_other_weights_is_not_filled(write_store, tmp_path: Path):
    """Weights replaced at the same path while snakemake ran: the jobs wrote features of the
    new weights into the folder of the old id, which then held a mix and failed every fold."""
    from gigamil.data.feature_spec import encoder_id, encoder_spec

    store = write_store(tmp_path / "s.zarr", _patches(3))
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    actual = encoder_id(encoder_spec(cfg, PATCHES))
    other = f"{actual.rpartition('-')[0]}-{'0' * len(actual.rpartition('-')[2])}"
    with pytest.raises(GigamilError, match=rf"feature cache {other} was planned for other"):
        extract_features(store, tmp_path / other / "demo" / "s.zarr", cfg, PATCHES, device="cpu")
    assert not (tmp_path / other / "demo" / "s.zarr").exists()
    extract_features(store, tmp_path / actual / "demo" / "s.zarr", cfg, PATCHES, device="cpu")


def test_feature_store_coords_that_are_not_integers_are_damage(
    write_store, rewrite_array, tmp_path: Path
):
    """Float coords of the right shape (rewritten by another tool) are refused by name, not
    truncated to other places."""

    store = write_store(tmp_path / "s.zarr", _patches(4), chunk=3)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    out = extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu")
    rewrite_array(out, "coords", lambda a: a.astype(np.float64) + 0.5)
    with pytest.raises(GigamilError, match=r"f\.zarr is damaged: .* coords float64 \(4, 2\), not"):
        FeatureBag(out)


def test_feature_subsample_coords_follow_the_rows(write_store, tmp_path: Path) -> None:
    """A subsample's coords are those of its rows, as its grid."""
    store = write_store(tmp_path / "s.zarr", _patches(9), chunk=4)
    cfg = {"encoder": "smallcnn", "trainable_blocks": 0}
    bag = FeatureBag(extract_features(store, tmp_path / "f.zarr", cfg, PATCHES, device="cpu"))
    sub = bag.subsample(4, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(sub.coords, bag.coords[sub.indices])
    np.testing.assert_array_equal(sub.grid, bag.grid[sub.indices])


def test_a_feature_store_cut_short_is_damage(rewrite_array, tmp_path: Path) -> None:
    """A feature store whose three arrays were cut to fewer rows than its n_patches (a copy
    interrupted and rewritten by another tool) opened as a smaller bag: read as data. A patch
    store refuses the same damage."""

    from gigamil.data.feature_extract import write_feature_store

    rows = np.arange(12).reshape(6, 2)
    attrs = {"slide_id": "s", "patch_px": 8}
    out = write_feature_store(tmp_path / "f.zarr", np.ones((6, 4)), rows, rows, attrs)
    assert len(FeatureBag(out)) == 6
    for name in ("features", "coords", "grid"):
        rewrite_array(out, name, lambda a: a[:4])
    with pytest.raises(GigamilError, match=r"damaged: features of 4 rows, n_patches 6"):
        FeatureBag(out)


def test_feature_bag_indices_must_be_strictly_increasing_rows(tmp_path: Path) -> None:
    """As for a patch bag: unsorted, repeated or out-of-range rows are a ValueError naming the
    rule, not an IndexError (or a bag out of raster order) later."""
    from gigamil.data.feature_extract import write_feature_store

    rows = np.arange(10).reshape(5, 2)
    attrs = {"slide_id": "s", "patch_px": 8}
    out = write_feature_store(tmp_path / "f.zarr", np.ones((5, 4)), rows, rows, attrs)
    for bad in ([3, 1], [1, 1], [-1, 2], [0, 5]):
        with pytest.raises(ValueError, match="strictly increasing store rows"):
            FeatureBag(out, indices=np.array(bad))
    assert FeatureBag(out, indices=np.array([0, 4])).coords.tolist() == [[0, 1], [8, 9]]


def test_features_of_another_dtype_are_damage(rewrite_array, tmp_path: Path) -> None:
    """Features rewritten as integers (an edited dtype) read as values about 10,000 instead of
    0.04 and predicted P = 1.0 (a review, 2026-12-06): refused by name."""
    from gigamil.data.feature_extract import write_feature_store

    rows = np.arange(12).reshape(6, 2)
    out = write_feature_store(tmp_path / "f.zarr", np.ones((6, 4)), rows, rows, {"slide_id": "s"})
    rewrite_array(out, "features", lambda a: a.view(np.int16))
    with pytest.raises(
        GigamilError, match=r"f\.zarr is damaged: features of dtype int16, not float16"
    ):
        FeatureBag(out)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_features_that_are_not_finite_are_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: float
) -> None:
    """A feature store holding inf (cached before the extraction refused values beyond
    float16's range) or NaN opened as data: a validation slide's loss was NaN every epoch and
    the best epoch was chosen by the training loss without a word (a review, 2026-12-07)."""
    from gigamil.data.feature_extract import write_feature_store

    rows = np.arange(12).reshape(6, 2)
    feats = np.ones((6, 4), np.float16)
    feats[4, 1] = bad
    attrs = {"slide_id": "s", "patch_px": 8}
    out = write_feature_store(tmp_path / "f.zarr", feats, rows, rows, attrs)
    with pytest.raises(GigamilError, match=r"f\.zarr is damaged: .*not finite .* row 4"):
        FeatureBag(out)
    monkeypatch.setattr(FeatureBag, "RESIDENT_BYTES", 0)  # read from disk when used
    lazy = FeatureBag(out)
    assert len(lazy.subsample(3, torch.Generator().manual_seed(0))) == 3
    with pytest.raises(GigamilError, match=r"not finite .* row 4"):
        lazy.load()
    assert FeatureBag(out, indices=np.array([0, 1, 5])).with_cache().load().shape == (3, 4)
