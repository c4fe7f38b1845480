"""Probe: is gigamil's bag-level (attention MIL) training what keeps the small CNN below the
colour baseline on real tissue? Train the same CNN as a plain weak-label patch classifier instead.

Run by hand after ``python benchmarks/real_tissue.py`` (it reuses its draws' patch stores and
folds):

    python benchmarks/patch_probe.py benchmarks/work/real_tissue/draw0 benchmarks/work/real_tissue/draw1 \
        benchmarks/work/real_tissue/draw2 --seeds 0 1 [--colour-aug on off]

Per fold, ``gigamil.nn.smallcnn.SmallCNN`` from random initialisation with a linear classifier
is trained on every patch of the fold's training and validation slides (the slides the
baseline trains on), each patch labelled with its slide's label (weak labels; Coudray et al.
2018), in mini-batches of 32 patches shuffled ACROSS slides with BatchNorm in train mode (what
gigamil's bag-at-a-time training cannot do), flips and 90° rotations, with or without gigamil's
colour and HED stain jitter (``--colour-aug``), AdamW lr 1e-3, 30 epochs. A test slide's score is
the mean of its top 20 % patch logits (the baseline's and ``pool: instance``'s rule), also with
test-time augmentation (the 8 flips/rotations of every patch, logits averaged) and with the patch
logits first smoothed over the patch grid (``gigamil.nn.pooling.smooth``, the Sm operator of
``pool: smabmil``, alpha 0.5: a lesion is a contiguous region, a stray high-scoring normal patch
is not). The OOF AUC pools the six folds. Writes benchmarks/results/patch_probe.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from tile_probe import mean_sd, train_small_cnn, write_result  # noqa: E402

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.nn.pooling import grid_adjacency, smooth  # noqa: E402

EPOCHS, TOP_FRACTION = 30, 0.2  # the rest of the recipe: tile_probe.train_small_cnn


def load_draw(draw: Path, experiment: str, cohort: str) -> tuple[pd.DataFrame, dict[str, ZarrBag]]:
    """(folds.csv, {slide_id: its patch store}) of one benchmark draw."""
    res = draw / "results"
    folds = pd.read_csv(res / "splits" / experiment / "folds.csv")
    bags = {s: ZarrBag(res / "patches" / cohort / f"{s}.zarr") for s in folds["slide_id"].unique()}
    return folds, bags


def slide_scores(
    net: torch.nn.Module, patches: np.ndarray, grid: np.ndarray | None = None
) -> dict[str, float]:
    """Top-20 % mean patch logit of one slide: ``score`` plain, ``score_tta`` with 8-view
    test-time augmentation, ``score_smooth`` of the logits smoothed over the patch ``grid``
    ((N, 2) rows and columns; without it, no ``score_smooth``)."""
    x = torch.from_numpy(patches)
    views = [x.rot90(k, dims=(1, 2)) for k in range(4)]
    views += [v.flip(2) for v in views]
    with torch.inference_mode():
        z = [net(v.contiguous()).squeeze(1) for v in views]
    k = max(1, math.ceil(TOP_FRACTION * len(x)))
    out = {
        "score": float(z[0].topk(k).values.mean()),
        "score_tta": float(torch.stack(z).mean(0).topk(k).values.mean()),
    }
    if grid is not None:
        smoothed = smooth(z[0].double(), grid_adjacency(grid, dtype=torch.float64), alpha=0.5)
        out["score_smooth"] = float(smoothed.topk(k).values.mean())
    return out


def run_draw(draw: Path, seed: int, colour_aug: bool, experiment: str, cohort: str) -> dict:
    folds, bags = load_draw(draw, experiment, cohort)
    patches = {s: bag.load().numpy() for s, bag in bags.items()}
    rows = []
    for fold in sorted(folds["fold"].unique()):
        f = folds[folds["fold"] == fold]
        fit = f[f["role"] != "test"]
        x = np.concatenate([patches[s] for s in fit["slide_id"]])
        y = np.concatenate(
            [
                np.full(len(patches[s]), int(lab != "normal"))
                for s, lab in zip(fit.slide_id, fit.label, strict=True)
            ]
        )
        net = train_small_cnn(x, y, seed, EPOCHS, colour_aug)
        for s, lab in zip(f[f.role == "test"].slide_id, f[f.role == "test"].label, strict=True):
            scores = slide_scores(net, patches[s], bags[s].grid)
            rows.append({"slide_id": s, "fold": int(fold), "label": int(lab != "normal"), **scores})
    df = pd.DataFrame(rows)
    return {
        "draw": draw.name,
        "seed": seed,
        "colour_aug": colour_aug,
        "oof_auc": binary_auc(df["label"], df["score"]),
        "oof_auc_tta": binary_auc(df["label"], df["score_tta"]),
        "oof_auc_smooth": binary_auc(df["label"], df["score_smooth"]),
        "per_slide": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("draws", type=Path, nargs="+")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--colour-aug", choices=["on", "off"], nargs="+", default=["on", "off"])
    ap.add_argument("--experiment", default="real_tissue")
    ap.add_argument("--cohort", default="real")
    ap.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "patch_probe.json"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = []
    for aug in args.colour_aug:
        for draw in args.draws:
            for seed in args.seeds:
                t0 = time.time()
                r = run_draw(draw, seed, aug == "on", args.experiment, args.cohort)
                runs.append(r)
                print(
                    f"{draw.name} seed {seed} colour aug {aug}: OOF AUC {r['oof_auc']:.3f}, "
                    f"with TTA {r['oof_auc_tta']:.3f}, smoothed {r['oof_auc_smooth']:.3f} "
                    f"({time.time() - t0:.0f} s)",
                    flush=True,
                )
    summary = {
        f"colour_aug_{aug}": mean_sd(
            [r for r in runs if r["colour_aug"] == (aug == "on")],
            ("oof_auc", "oof_auc_tta", "oof_auc_smooth"),
        )
        for aug in args.colour_aug
    }
    settings = {"epochs": EPOCHS, "batch": 32, "lr": 1e-3, "top_fraction": TOP_FRACTION}
    write_result(args.out, __file__, {"settings": settings, "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
