"""gigamil.viz.forest: the subgroup forest plot."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from gigamil.viz.forest import BASE_IN, ROW_IN, forest_plot


def _table(aucs: list[float]) -> pd.DataFrame:
    n = len(aucs)
    return pd.DataFrame(
        {
            "column": ["all"] + ["site"] * (n - 1),
            "value": ["all"] + [f"S{i}" for i in range(1, n)],
            "n_slides": [10 * n] + [10] * (n - 1),
            "auc": aucs,
            "auc_ci_low": [a - 0.1 for a in aucs],
            "auc_ci_high": [min(a + 0.1, 1.0) for a in aucs],
        }
    )


def _image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_one_row_per_subgroup_and_the_points_where_the_values_are():
    small, large = _image(forest_plot(_table([0.8, 0.6]))), _image(forest_plot(_table([0.8] * 6)))
    # the figure grows by one row's height per subgroup (100 dpi)
    assert large.shape[0] - small.shape[0] == pytest.approx(4 * ROW_IN * 100, abs=2)
    assert small.shape[0] == pytest.approx((BASE_IN + 2 * ROW_IN) * 100, abs=2)
    # a subgroup's point moves with its AUC: the blue marker's mean column (the x axis is 0-1)
    blue = [np.nonzero(_blue(_image(forest_plot(_table([0.8, a])))))[1].mean() for a in (0.3, 0.9)]
    assert blue[1] - blue[0] > 0.2 * small.shape[1]  # 0.6 of an axis about half the width


def _blue(img: np.ndarray) -> np.ndarray:
    """Pixels of matplotlib's tab:blue (31, 119, 180), within a small tolerance."""
    return (np.abs(img - np.array([31, 119, 180])) < 40).all(axis=2)


def test_a_subgroup_without_the_metric_is_listed_without_a_point():
    table = _table([0.8, 0.7])
    table.loc[1, ["auc", "auc_ci_low", "auc_ci_high"]] = np.nan
    assert not _blue(_image(forest_plot(table))).any()  # only the black pooled row is drawn
    assert _blue(_image(forest_plot(_table([0.8, 0.7])))).any()
    with pytest.raises(KeyError):
        forest_plot(table, "sensitivity")


def _blue_columns(png: bytes) -> np.ndarray:
    """The image columns holding tab:blue pixels (a point, and its interval when drawn)."""
    return np.nonzero(_blue(_image(png)).any(axis=0))[0]


def test_a_subgroup_of_fewer_patients_than_the_minimum_gets_no_interval():
    """Its bootstrap interval is not reliable: its point only (as subgroups.html's table)."""
    table = _table([0.8, 0.5]).assign(auc_ci_low=[0.7, 0.2], auc_ci_high=[0.9, 0.8])
    drawn = _blue_columns(forest_plot(table.assign(n_patients=[20, 10]), min_patients=10))
    few = _blue_columns(forest_plot(table.assign(n_patients=[20, 9]), min_patients=10))
    width = _image(forest_plot(table)).shape[1]
    assert drawn.max() - drawn.min() > 0.2 * width  # 0.6 of the 0-1 axis: the interval
    assert few.max() - few.min() < 0.05 * width  # the marker alone


def test_the_title_with_the_small_group_note_fits_the_figure(saved_axes):
    """'; * fewer than 10 patients: no interval' made the title wider than the 6.4 in figure:
    subgroups.html showed '... no inte' and lost what the stars mean."""
    table = _table([0.8, 0.5]).assign(n_patients=[20, 9])
    forest_plot(table, min_patients=10)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    ax = saved_axes[-1]
    fig = ax.figure
    canvas = FigureCanvasAgg(fig)  # the figure was closed after saving
    canvas.draw()
    box = ax.title.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    assert "no interval" in ax.get_title().replace("\n", " ")


def test_the_rows_run_down_in_table_order():
    """The pooled row first (at the top), then the subgroups as listed."""
    img = _blue(_image(forest_plot(_table([0.5, 0.1, 0.9]))))
    rows, cols = np.nonzero(img)
    left, right = cols < img.shape[1] / 2, cols >= img.shape[1] / 2
    assert rows[left].mean() < rows[right].mean()  # S1 (AUC 0.1) above S2 (AUC 0.9)
