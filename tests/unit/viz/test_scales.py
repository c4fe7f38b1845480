"""Colour scales: per-slide normalisations, the scales that compare across slides, their names."""

from __future__ import annotations

import numpy as np
import pytest

from gigamil.errors import GigamilError
from gigamil.viz.heatmap import HeatmapStyle, weight_name
from gigamil.viz.scales import normalize_attention, scale_attention


def test_normalizations():
    att = np.array([0.1, 0.4, 0.4, 5.0])
    np.testing.assert_allclose(normalize_attention(att, "rank"), [0.25, 0.625, 0.625, 1.0])
    np.testing.assert_allclose(normalize_attention(att, "minmax"), (att - 0.1) / 4.9)
    pct = normalize_attention(np.r_[np.linspace(0, 1, 999), 1000.0], "percentile")
    assert pct.min() == 0.0 and pct.max() == 1.0 and pct[500] > 0.45  # the outlier is clipped
    for mode in ("minmax", "percentile", "rank"):  # a constant slide (e.g. one patch): mid-scale
        np.testing.assert_allclose(normalize_attention(np.ones(3), mode), 0.5)
        np.testing.assert_allclose(normalize_attention([0.3], mode), 0.5)
    # uniform float32 attention with rounding noise (one ulp here and there) is flat too, not
    # stretched to the whole colour bar; a real 1e-4 relative difference is not flat
    noisy = np.full(200, 1 / 200, np.float32)
    noisy[::7] = np.nextafter(noisy[0], np.float32(1))
    real = noisy.astype(np.float64)
    real[:20] *= 1 + 1e-4
    for mode in ("minmax", "percentile", "rank"):
        np.testing.assert_allclose(normalize_attention(noisy, mode), 0.5)
        assert np.ptp(normalize_attention(real, mode)) > 0.5
    with pytest.raises(GigamilError, match="heatmaps.normalize"):
        normalize_attention(att, "zscore")


def test_scales_state_their_meaning():
    att = np.array([0.25, 0.25, 0.25, 0.25])
    rel = scale_attention(att, "relative")
    np.testing.assert_allclose(rel.values, 0.5)  # uniform = 1 = the middle of 0.01..100
    assert rel.tick_labels[rel.ticks.index(0.5)] == "1" and "uniform" in rel.label
    peaked = scale_attention(np.array([0.97, 0.01, 0.01, 0.01]), "relative").values
    assert peaked[0] == pytest.approx((np.log10(3.88) + 2) / 4) and peaked[1] < 0.5
    prob = scale_attention(np.array([0.5, 0.25, 0.25]), probability=0.8, positive="tumour")
    np.testing.assert_allclose(prob.values, [0.8, 0.4, 0.4])
    assert prob.label.startswith("P(tumour) × attention")
    assert "not comparable" in scale_attention(att, "rank").label
    with pytest.raises(GigamilError, match="needs the slide's predicted probability"):
        scale_attention(att, "probability")
    # model.pool: instance saves patch probabilities (their share of the slide's sum)
    weight = weight_name("instance")
    assert weight == "patch probability" and weight_name("smabmil") == "attention"
    inst = scale_attention(att, probability=0.8, positive="tumour", weight=weight)
    assert inst.label == "P(tumour) × patch probability / slide's top patch probability"
    assert "attention" not in scale_attention(att, "relative", weight=weight).label
    assert scale_attention(att, "rank", weight=weight).label.startswith("patch probability rank")


def test_scale_names_agree_in_schema_cli_and_package():
    import argparse

    from gigamil.commands import heatmap as cmd
    from gigamil.settings import schema_section
    from gigamil.viz.scales import DEFAULT_SCALE, SCALES

    node = schema_section(("heatmaps",))["properties"]["normalize"]
    assert tuple(node["enum"]) == SCALES and node["default"] == DEFAULT_SCALE
    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    (action,) = [a for a in parser._actions if a.dest == "normalize"]
    assert tuple(action.choices) == SCALES
    assert HeatmapStyle().normalize == DEFAULT_SCALE


def test_percentile_clips_at_the_1st_and_99th_percentiles():
    """``percentile``: the 1st-99th percentiles span the colour bar (not 5th-95th): a patch at
    the 2nd percentile is not painted as the slide's minimum."""
    att = np.arange(1001, dtype=np.float64)  # percentile q is the value 10 q
    out = normalize_attention(att, "percentile")
    assert out[10] == 0.0 and out[990] == 1.0
    np.testing.assert_allclose(out[[20, 500, 980]], [10 / 980, 490 / 980, 970 / 980])


def test_percentile_keeps_a_lone_hot_patch():
    """One patch with 50 times the attention of the other 199: its 1st and 99th percentiles are
    equal, so clipping made the slide flat (every patch 0.5) and hid the one patch the model
    looked at; then the scale is min-max."""
    att = np.full(200, 0.004)
    att[7] = 0.204
    out = normalize_attention(att, "percentile")
    assert out[7] == 1.0 and np.all(np.delete(out, 7) == 0.0)
    assert np.all(normalize_attention(np.full(200, 0.005), "percentile") == 0.5)


def test_probability_scale_refuses_a_probability_outside_0_1():
    """A probability of 1.5 (or a logit passed by mistake) would paint patches beyond the colour
    bar's top, clipped to red: an error instead."""
    att = np.array([0.5, 0.5])
    for p in (1.5, -0.2):
        with pytest.raises(GigamilError, match="not in \\[0, 1\\]"):
            scale_attention(att, "probability", probability=p)
    np.testing.assert_allclose(scale_attention(att, probability=1.0).values, [1.0, 1.0])
    np.testing.assert_allclose(scale_attention(att, probability=0.0).values, [0.0, 0.0])


def test_relative_scale_ticks_say_that_its_ends_are_clipped():
    """The relative colour bar runs from 0.01 to 100 x uniform, log scale; patches beyond are
    clipped to its ends, which its end ticks say (≤0.01, ≥100)."""
    rel = scale_attention(np.array([1e-6, 1 - 1e-6]), "relative")
    assert rel.tick_labels == ("≤0.01", "0.1", "1", "10", "≥100")
    np.testing.assert_allclose(rel.ticks, [0.0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(rel.values, [0.0, (np.log10(2 * (1 - 1e-6)) + 2) / 4])


@pytest.mark.parametrize("method", ["rank", "percentile", "minmax"])
def test_all_zero_weights_are_flat_not_nan(method):
    """A constant array maps to 0.5, zeros included (no spread at all is flat, not 0 / 0)."""
    assert normalize_attention(np.zeros(5), method).tolist() == [0.5] * 5
