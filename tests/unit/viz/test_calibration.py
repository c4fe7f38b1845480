"""gigamil.viz.calibration: reliability diagrams of slide predictions."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def test_calibration_bins_count_slides_and_give_wilson_intervals():
    from scipy.stats import binomtest

    from gigamil.viz.calibration import _calibration_bins

    x = np.array([0.05, 0.1, 0.15, 0.5, 0.95, 0.99, 1.0])
    hit = np.array([False, False, True, True, True, True, True])
    bins = _calibration_bins(x, hit, 5)
    assert [b[4] for b in bins] == [3, 1, 3]  # bins [0, 0.2), [0.4, 0.6), [0.8, 1.0]
    mean_x, frac, low, high, n = bins[0]
    assert (mean_x, frac) == (pytest.approx(0.1), pytest.approx(1 / 3))
    ci = binomtest(1, 3).proportion_ci(method="wilson")
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert bins[2][1:4] == (
        1.0,
        pytest.approx(binomtest(3, 3).proportion_ci(method="wilson").low),
        1.0,
    )


@pytest.mark.parametrize("classes", [["normal", "lesion"], ["a", "b", "c"]])
def test_calibration_plot_is_a_png_for_two_and_more_classes(classes):

    from gigamil.viz.calibration import plot_calibration

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(classes)), size=12)
    preds = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes])
    preds["label"] = [classes[i % len(classes)] for i in range(12)]
    png = plot_calibration(preds, classes, "cohort x calibration")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size[0] > 100


@pytest.mark.parametrize("classes", [["normal", "lesion"], ["a", "b", "c"]])
def test_calibration_ticks_are_each_slide_s_probability_by_outcome(classes, saved_axes):
    """Binary: each slide is a tick at its P(positive), on top if positive, below if not. More
    classes: at the predicted class's probability, on top if predicted right."""
    from gigamil.viz.calibration import plot_calibration

    axes = saved_axes
    if len(classes) == 2:
        probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
        labels = ["normal", "normal", "lesion", "lesion"]
        top, bottom = [0.8, 0.4], [0.1, 0.7]  # lesion slides; normal slides
    else:
        probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.2, 0.3]])
        labels = ["a", "c", "c", "b"]
        top, bottom = [0.6, 0.6], [0.7, 0.5]  # predicted right; wrong
    preds = pd.DataFrame(probs, columns=[f"prob_{c}" for c in classes]).assign(label=labels)
    plot_calibration(preds, classes, "t")
    (ax,) = axes
    ticks = {line.get_label(): line for line in ax.get_lines() if line.get_marker() == "|"}
    high = ticks.pop(f"a {classes[1]} slide" if len(classes) == 2 else "a right slide")
    (low,) = ticks.values()
    assert sorted(high.get_xdata()) == pytest.approx(sorted(top))
    assert sorted(low.get_xdata()) == pytest.approx(sorted(bottom))
    assert set(high.get_ydata()) == {1.04} and set(low.get_ydata()) == {-0.04}


def test_calibration_points_sit_at_the_mean_probability_of_their_bin():
    """A bin's point is at its slides' mean probability, not the bin's centre (0.98, not 0.9)."""
    from gigamil.viz.calibration import _calibration_bins

    bins = _calibration_bins(np.array([0.95, 0.99, 1.0, 0.3]), np.array([1, 1, 1, 0], bool), 5)
    assert [b[0] for b in bins] == pytest.approx([0.3, 0.98])
