"""Compare screened variants with the colour-histogram baseline, draw by draw, on the same slides.

Run by hand after ``benchmarks/screen.py`` (its per-slide predictions) and
``benchmarks/real_tissue.py`` (the baseline's per-slide scores in its result JSONs)::

    python benchmarks/screen_vs_baseline.py VARIANT [VARIANT ...]
        [--results benchmarks/results/real_tissue.json benchmarks/results/real_tissue_draws345.json]

For every variant, draw and training seed: the variant's out-of-fold AUC minus the baseline's on
the draw's slides, with the 95 % patient-level paired bootstrap interval and the fraction of
resamples in which the variant is ahead (``real_tissue.paired_with_baseline``, the computation
``real_tissue.py`` does for a snakemake run). A draw is found in the result JSONs
by its seed (``draw{seed}``). Prints one line per draw and the mean difference and keeps the rows
under the variant's name in ``benchmarks/results/screen_vs_baseline.json``; the benchmark's
draws must have the same slides in both (else RuntimeError).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import ahead_text, paired_with_baseline  # noqa: E402

SCREEN = REPO / "benchmarks" / "work" / "screen"
DRAWS = REPO / "benchmarks" / "work" / "real_tissue"
OUT = REPO / "benchmarks" / "results" / "screen_vs_baseline.json"
RESULTS = [
    REPO / "benchmarks" / "results" / "real_tissue.json",
    REPO / "benchmarks" / "results" / "real_tissue_draws345.json",
]


def baseline_scores(paths: list[Path]) -> dict[str, list[dict]]:
    """Per-slide baseline scores by draw name (``draw{seed}``) from real_tissue.py's JSONs."""
    out: dict[str, list[dict]] = {}
    for path in paths:
        for draw in json.loads(path.read_text())["draws"]:
            out[f"draw{draw['seed']}"] = draw["baseline"]["per_slide"]
    return out


def compare(
    variant: str,
    baselines: dict[str, list[dict]],
    screen: Path = SCREEN,
    draws: Path = DRAWS,
) -> list[dict]:
    """One row per draw and seed of ``variant`` (``screen/VARIANT/predictions.csv``) that has
    baseline scores; patients from ``draws/DRAW/sheet.csv``."""
    preds = pd.read_csv(screen / variant / "predictions.csv")
    rows = []
    for (draw, seed), ours in preds.groupby(["draw", "seed"]):
        if draw not in baselines:
            continue
        sheet = pd.read_csv(draws / draw / "sheet.csv").set_index("slide_id")
        ours = ours.assign(patient_id=sheet.loc[ours["slide_id"], "patient_id"].to_numpy())
        d = paired_with_baseline(ours, "p", baselines[draw], f"{variant} {draw}", y="y")
        rows.append({"variant": variant, "draw": draw, "seed": int(seed), **d})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="+")
    ap.add_argument("--results", nargs="+", type=Path, default=RESULTS)
    args = ap.parse_args()
    baselines = baseline_scores(args.results)
    saved = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for variant in args.variants:
        rows = compare(variant, baselines)
        for r in rows:
            lo, hi = r["ci"]
            print(
                f"{variant} {r['draw']} seed {r['seed']}: {r['auc_a']:.3f} vs baseline "
                f"{r['auc_b']:.3f}, difference {r['difference']:+.3f} ({lo:+.2f} to {hi:+.2f}), "
                f"{ahead_text(r)}"
            )
        diffs = [r["difference"] for r in rows]
        print(f"{variant}: mean difference {np.mean(diffs):+.3f} over {len(rows)} draw runs")
        saved[variant] = rows
    OUT.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
