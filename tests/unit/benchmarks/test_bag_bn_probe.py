"""benchmarks/bag_bn_probe.py: the two prediction modes and the class-means map it uses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gigamil.data.bags import ZarrBag
from gigamil.models.factory import build_mil_model


def test_class_means_map_sends_the_reference_class_means_to_plus_minus_ln9(bench) -> None:
    z = {"a": 1.0, "b": 3.0, "c": 5.0, "d": 7.0, "t": 4.0}
    y = {"a": 0, "b": 0, "c": 1, "d": 1, "t": 1}
    mapped = bench.class_means_map(z, y, ["a", "b", "c", "d"])
    assert (mapped["a"] + mapped["b"]) / 2 == pytest.approx(-math.log(9))
    assert (mapped["c"] + mapped["d"]) / 2 == pytest.approx(math.log(9))
    assert mapped["t"] == pytest.approx(0.0)  # the midpoint


def test_bag_mode_normalises_each_bag_by_its_own_statistics(bench, write_store, tmp_path) -> None:
    """``bag``: a bag and the same bag twice as bright give (nearly) the same encoding, unlike
    ``eval`` (running statistics); the augmentation stays off (deterministic)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    patches = rng.integers(40, 120, (12, 32, 32, 3), dtype=np.uint8)
    bags = {
        "dim": ZarrBag(write_store(tmp_path / "dim.zarr", patches)),
        "bright": ZarrBag(write_store(tmp_path / "bright.zarr", patches * 2)),
    }
    augment = {"flips": True, "rot90": True, "color_jitter": 0.5}
    model = build_mil_model({"encoder": "smallcnn", "batchnorm": "train"}, 2, 32, augment)
    ev = bench.bag_logits(model, bags, "eval")
    bag = bench.bag_logits(model, bags, "bag")
    assert bag == bench.bag_logits(model, bags, "bag")  # no augmentation: deterministic
    assert abs(bag["dim"] - bag["bright"]) < 0.1 * abs(ev["dim"] - ev["bright"])
    assert not model.feature_encoder[0].training  # the preprocessing (augmentation) module
