"""Probe: does ``model.batchnorm: train`` predict well if prediction normalises like training?

Run by hand after a screen with BatchNorm in training mode (``benchmarks/screen.py bn_train
--draws --dirs DEMO_CLONE --seeds 0 2 --set model.batchnorm=train``):

    python benchmarks/bag_bn_probe.py bn_train --dirs DEMO_CLONE

Under ``batchnorm: train`` every training bag (one chunk of at most
``max_instances_per_forward_pass`` patches) is normalised by its own batch statistics, while
prediction uses the running statistics (eval mode). For every training seed, fold and replicate
member of the screen this re-predicts every slide of the cohort twice: ``eval`` (running
statistics: must reproduce the screen's OOF AUC) and ``bag`` (the encoder's BatchNorm layers on
each bag's own statistics, as in training; no augmentation). Each member's bag logits are mapped
by the class means of the fold's training slides (the product's ``logit_calibration:
class_means``, here in the same mode), the members are averaged and the test slides pooled into
one OOF AUC per seed and mode. Writes ``benchmarks/results/bag_bn_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from torch.nn.modules.batchnorm import _BatchNorm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.nn.pooling import grid_adjacency  # noqa: E402
from gigamil.train.checkpoint import load_model  # noqa: E402

SCREENS = REPO / "benchmarks" / "work" / "screen"
MODES = ("eval", "bag")


def bag_logits(model: torch.nn.Module, bags: dict[str, ZarrBag], mode: str) -> dict[str, float]:
    """The bag logit of every slide; ``mode`` ``bag``: the encoder's BatchNorm layers use the
    bag's own batch statistics (train mode; nothing else is in train mode)."""
    model.eval()
    if mode == "bag":
        for m in model.feature_encoder.modules():
            if isinstance(m, _BatchNorm):
                m.train()
    out = {}
    with torch.no_grad():
        for sid, bag in bags.items():
            h = model.encode(bag)
            z, _ = model.attention_model(h, grid_adjacency(torch.as_tensor(bag.grid)))
            out[sid] = float(z[0])
    return out


def class_means_map(z: dict[str, float], y: dict[str, int], ref: list[str]) -> dict[str, float]:
    """``(z - midpoint) * 2 ln 9 / gap`` of the class means of the reference slides ``ref``."""
    zr = np.array([z[s] for s in ref])
    yr = np.array([y[s] for s in ref])
    m0, m1 = zr[yr == 0].mean(), zr[yr == 1].mean()
    scale = 2 * math.log(9) / max(m1 - m0, 1e-6)
    return {s: (v - (m0 + m1) / 2) * scale for s, v in z.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="a screen in benchmarks/work/screen/ (batchnorm: train)")
    ap.add_argument("--dirs", nargs="+", type=Path, required=True, help="its cohorts' run dirs")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bag_bn_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pred = pd.read_csv(SCREENS / args.name / "predictions.csv")
    record: dict[str, dict] = {}
    for run_dir in args.dirs:
        draw = run_dir.resolve().name
        sheet = pd.read_csv(next((run_dir / "resources").glob("*/sheet.csv")))
        positive = yaml.safe_load((run_dir / "config.yaml").read_text())["classes"][-1]
        y = {r.slide_id: int(r.label == positive) for r in sheet.itertuples()}
        stores = run_dir / "results" / "patches"
        bags = {s: ZarrBag(next(stores.glob(f"*/{s}.zarr"))) for s in y}
        for seed in sorted(pred[pred.draw == draw].seed.unique()):
            pooled: dict[str, dict[str, float]] = {m: {} for m in MODES}
            here = pred[(pred.draw == draw) & (pred.seed == seed)]
            for fold, rows in here.groupby("fold"):
                test = rows.slide_id.tolist()
                train = [s for s in y if s not in test]
                fold_dir = SCREENS / args.name / draw / f"seed{seed}" / f"fold{fold}"
                for mode in MODES:
                    mapped = []
                    for path in sorted(fold_dir.glob("replicate*/model.pt")):
                        model, _ = load_model(path)
                        mapped.append(class_means_map(bag_logits(model, bags, mode), y, train))
                    for s in test:
                        pooled[mode][s] = float(np.mean([m[s] for m in mapped]))
            aucs = {}
            for mode, scores in pooled.items():
                ids = sorted(scores)
                aucs[mode] = round(binary_auc([y[s] for s in ids], [scores[s] for s in ids]), 4)
            print(args.name, draw, "seed", seed, aucs, flush=True)
            record.setdefault(args.name, {}).setdefault(draw, {})[str(seed)] = aucs
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
