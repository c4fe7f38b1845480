"""benchmarks/screen.py: its summary line (the screening itself is run by hand)."""

from __future__ import annotations

import pandas as pd


def test_summary_line_per_draw_seed_and_ensemble(bench) -> None:
    rows = []
    for seed, flip in ((0, False), (1, True)):
        for i in range(4):
            y = i % 2
            p = (1 - y if flip and i < 2 else y) * 0.8 + 0.1
            loc = 0.7 if y else float("nan")
            rows.append(
                {"draw": "draw0", "seed": seed, "slide_id": f"s{i}", "y": y, "p": p, "loc": loc}
            )
    df = pd.DataFrame(rows)
    info = pd.DataFrame({"final_loss": [0.1, 0.3], "epochs": [20, 30]})
    line = bench.summary_line("v", ["model.dropout=0.25"], df, info, 12.0)
    assert line.startswith("v | model.dropout=0.25 | draw0 OOF 1.000/0.500 ensemble ")
    assert "loc 0.700/0.700" in line and "mean 0.750 min 0.500" in line
    assert "final loss 0.200, epochs 25, 12 s" in line
