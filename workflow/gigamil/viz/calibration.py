"""Reliability diagrams of slide predictions (metrics.html; matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from gigamil.evaluate.metrics import labels_and_probs
from gigamil.viz.plots import _pyplot, _wrap, png_bytes


def plot_calibration(
    preds: pd.DataFrame, classes: Sequence[str], title: str, n_bins: int = 5
) -> bytes:
    """Reliability diagram of slide predictions as PNG bytes (for metrics.html).

    Binary: the predicted P(positive) in ``n_bins`` equal-width bins against the fraction of
    slides of the positive class in each bin, with Wilson 95 % intervals
    (``scipy.stats.binomtest``) and the bin's slide count; below and above the axes each slide
    is a tick at its probability (bottom: true negative class, top: positive). More than two
    classes: the same for the top label (the predicted class's probability against the
    fraction predicted right). Points on the diagonal are calibrated; with a few tens of slides
    the intervals are wide.
    """
    plt = _pyplot()
    y, p = labels_and_probs(preds, classes)
    binary = len(classes) == 2
    x = p[:, 1] if binary else p.max(axis=1)
    hit = (y == 1) if binary else (p.argmax(axis=1) == y)
    fig, ax = plt.subplots(figsize=(4.8, 5.0), dpi=120)
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="grey", label="perfectly calibrated")
    bins = _calibration_bins(x, hit, n_bins)
    if bins:
        mx, frac, low, high, count = (np.array(v) for v in zip(*bins, strict=True))
        ax.errorbar(
            mx,
            frac,
            yerr=[frac - low, high - frac],
            fmt="o-",
            color="k",
            capsize=3,
            label="slides per bin: fraction (95% Wilson interval)",
        )
        for xi, fi, n in zip(mx, frac, count, strict=True):
            ax.annotate(f"n={n}", (xi, fi), textcoords="offset points", xytext=(5, -11), fontsize=7)
    low_name, high_name = (classes[0], classes[1]) if binary else ("wrong", "right")
    ax.plot(
        x[~hit], np.full((~hit).sum(), -0.04), "|", color="C0", ms=9, label=f"a {low_name} slide"
    )
    ax.plot(x[hit], np.full(hit.sum(), 1.04), "|", color="C3", ms=9, label=f"a {high_name} slide")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.08, 1.08)
    what = f"P({classes[1]})" if binary else "probability of the predicted class"
    ax.set_xlabel(f"predicted {what}")
    ax.set_ylabel(f"fraction {classes[1]}" if binary else "fraction predicted right")
    ax.set_title(_wrap(title, 48), fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=7, ncol=2)
    fig.tight_layout()
    png = png_bytes(fig)
    plt.close(fig)
    return png


def _calibration_bins(
    x: np.ndarray, hit: np.ndarray, n_bins: int
) -> list[tuple[float, float, float, float, int]]:
    """(mean x, fraction of ``hit``, Wilson 95 % low, high, count) of each non-empty bin of
    ``n_bins`` equal-width bins of [0, 1]."""
    from scipy.stats import binomtest

    idx = np.clip((np.asarray(x) * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            k = int(hit[sel].sum())
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            out.append((float(x[sel].mean()), k / n, float(ci.low), float(ci.high), n))
    return out
