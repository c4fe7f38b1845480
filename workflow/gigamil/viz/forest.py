"""Forest plot of the subgroup table (:mod:`gigamil.evaluate.subgroups`): each subgroup's metric
with its 95 % interval on one axis, the pooled value as a reference line (matplotlib, Agg)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gigamil.viz.plots import _pyplot, _wrap, png_bytes

NAMES = {"auc": "slide AUC", "balanced_accuracy": "balanced accuracy", "brier": "Brier score"}
# a row of the plot per subgroup: its height in inches, and the figure's fixed part
ROW_IN, BASE_IN = 0.32, 1.1


def forest_plot(table: pd.DataFrame, metric: str = "auc", min_patients: int = 10) -> bytes:
    """PNG bytes of ``metric`` (a column of the subgroup table with ``_ci_low``/``_ci_high``)
    per subgroup: a point and its interval per row, labelled ``column = value (n slides)``, the
    first row (all slides) drawn in black with a dashed vertical line at its value. A subgroup
    without the metric (NaN: e.g. one class, no AUC) is listed with "n/a" and no point; one of
    fewer than ``min_patients`` patients (``n_patients``) gets its point without an interval
    and a "*" (its bootstrap interval is not reliable).

    Raises:
        KeyError: ``metric`` is not a column of ``table``.
    """
    plt = _pyplot()
    values = table[metric].to_numpy(dtype=float)
    lo = table[f"{metric}_ci_low"].to_numpy(dtype=float)
    hi = table[f"{metric}_ci_high"].to_numpy(dtype=float)
    labels = [
        "all slides" if r.column == "all" else f"{r.column} = {r.value}"
        for r in table.itertuples(index=False)
    ]
    small = (
        table["n_patients"].to_numpy() < min_patients if "n_patients" in table else [0] * len(table)
    )
    labels = [
        f"{t} ({n})" + ("" if np.isfinite(v) else "  n/a") + (" *" if few else "")
        for t, n, v, few in zip(labels, table["n_slides"], values, small, strict=True)
    ]
    y = np.arange(len(table))[::-1]
    fig, ax = plt.subplots(figsize=(6.4, BASE_IN + ROW_IN * len(table)), dpi=100)
    try:
        for i in range(len(table)):
            if not np.isfinite(values[i]):
                continue
            colour = "black" if i == 0 else "tab:blue"
            if np.isfinite(lo[i]) and np.isfinite(hi[i]) and not small[i]:
                ax.plot([lo[i], hi[i]], [y[i], y[i]], color=colour, lw=1.5)
            ax.plot(values[i], y[i], "s" if i == 0 else "o", color=colour, ms=6)
        if np.isfinite(values[0]):
            ax.axvline(values[0], color="grey", ls="--", lw=1)
        ax.set_yticks(y, labels)
        ax.set_xlim(0, 1) if metric != "brier" else ax.set_xlim(left=0)
        name = NAMES.get(metric, metric.replace("_", " "))
        ax.set_xlabel(f"{name} (95% interval: bootstrap over patients)")
        ax.set_ylim(-0.6, len(table) - 0.4)
        few = f"; * fewer than {min_patients} patients: no interval" if any(small) else ""
        title = f"{name} per subgroup (slides in brackets){few}"
        ax.set_title(_wrap(title, 70), fontsize=10)  # 6.4 in: a longer line was cut off
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        return png_bytes(fig)
    finally:
        plt.close(fig)
