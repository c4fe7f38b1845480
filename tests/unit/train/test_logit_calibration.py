"""gigamil.train.logit_calibration: the per-fold affine map of the bag logit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gigamil.train.logit_calibration import MAX_SCALE, apply_calibration, fit_class_means


def test_class_means_go_to_minus_and_plus_ln9() -> None:
    z = np.array([-3.0, -1.0, 4.0, 8.0])
    cal = fit_class_means(z, [0, 0, 1, 1])
    assert cal["offset"] == pytest.approx(2.0) and cal["class_mean_logits"] == [-2.0, 6.0]
    out = apply_calibration(torch.tensor([-2.0]), cal), apply_calibration(torch.tensor([6.0]), cal)
    assert [float(t) for t in out] == pytest.approx([-math.log(9), math.log(9)])
    assert float(torch.sigmoid(out[1])) == pytest.approx(0.9)


def test_two_fold_models_on_different_scales_rank_together_after_calibration() -> None:
    """Fold A: logits around +5 (scale 1), fold B: around -5 (scale 4); both rank perfectly."""
    a = fit_class_means([4.0, 4.2, 6.0, 6.2], [0, 0, 1, 1])
    b = fit_class_means([-9.0, -8.6, -1.0, -0.6], [0, 0, 1, 1])
    test_a = [apply_calibration(torch.tensor([v]), a).item() for v in (4.5, 5.8)]  # neg, pos
    test_b = [apply_calibration(torch.tensor([v]), b).item() for v in (-8.0, -2.0)]
    assert max(test_a[0], test_b[0]) < min(test_a[1], test_b[1])  # raw: -2.0 < 4.5 (misranked)


def test_a_model_that_barely_separates_its_slides_is_not_stretched_to_0_and_1() -> None:
    # class means 0.005 apart (a one-epoch model): 2 ln 9 / 0.005 = 879 would send a test slide
    # 0.05 from the midpoint to probability 1e-19 or 1 - 1e-19
    cal = fit_class_means([-0.667, -0.667, -0.662, -0.662], [0, 0, 1, 1])
    assert cal["scale"] == MAX_SCALE  # no spread within a class: the cap
    probs = [
        torch.sigmoid(apply_calibration(torch.tensor([v]), cal)).item() for v in (-0.72, -0.61)
    ]
    assert 0.2 < probs[0] < 0.5 < probs[1] < 0.8
    # the order is kept, and a clearly separating model still gets its class means to 0.1 / 0.9
    assert fit_class_means([-1.0, -1.0, 1.0, 1.0], [0, 0, 1, 1])["scale"] == pytest.approx(
        math.log(9)
    )


def test_a_barely_separating_model_gets_the_slope_its_overlapping_logits_support() -> None:
    """Class means 0.1 apart but each class spread over ±1 (a one-epoch model): below the cap,
    the scale is gap / sd² (linear discriminant analysis), so its training slides' calibrated
    logits stay near 0 instead of reaching ∓20 (probabilities 0.000 / 1.000)."""
    z = np.array([-1.05, 0.95, -0.95, 1.05])  # class means -0.05 and 0.05, each spread ±1
    y = np.array([0, 0, 1, 1])
    cal = fit_class_means(z, y)
    gap = z[y == 1].mean() - z[y == 0].mean()
    var = (
        ((z[y == 0] - z[y == 0].mean()) ** 2).sum() + ((z[y == 1] - z[y == 1].mean()) ** 2).sum()
    ) / 2
    assert gap == pytest.approx(0.1) and cal["scale"] == pytest.approx(gap / var)
    assert cal["scale"] < 0.1 < MAX_SCALE
    probs = torch.sigmoid(apply_calibration(torch.tensor([1.05]), cal)).item()
    assert 0.5 < probs < 0.55  # the highest training logit: barely above chance, as the model is


@pytest.mark.parametrize(
    ("logits", "labels"),
    [
        ([1.0, 2.0, 0.5, 0.1], [0, 0, 1, 1]),  # positive mean below the negative one
        ([1.0, 2.0], [0, 0]),  # one class only
        ([1.0, float("nan")], [0, 1]),  # not finite
        ([1.0, 1.0], [0, 1]),  # no gap
    ],
)
def test_no_map_when_the_reference_slides_are_not_separated(logits, labels) -> None:
    assert fit_class_means(logits, labels) is None


def test_apply_leaves_multiclass_and_missing_maps_alone() -> None:
    cal = {"offset": 1.0, "scale": 2.0}
    three = torch.tensor([0.3, -1.0, 2.0])
    assert torch.equal(apply_calibration(three, cal), three)
    assert torch.equal(apply_calibration(torch.tensor([0.3]), None), torch.tensor([0.3]))
    assert float(apply_calibration(torch.tensor([0.3]), cal)) == pytest.approx(-1.4)
