"""Probe: have the frozen BatchNorm statistics of a trained random-init encoder gone stale?

Run by hand on a finished workflow run (e.g. a fresh clone after the demo's ``snakemake --cores
all``):

    python benchmarks/bn_drift_probe.py RUN_DIR [--experiment demo]

With ``model.batchnorm: frozen`` (the default) a randomly initialised encoder's BatchNorm
running statistics are calibrated once, on training patches, before the first epoch
(``training.calibration_patches``); the convolutions then train for up to
``training.epochs`` epochs against those fixed statistics. If the weights drifted far, the
layers would no longer normalise their inputs (per-channel mean 0, variance 1) and per-epoch
recalibration would be worth trying. For every fold model (every ``training.replicates``
member) this passes the fold's *training* slides' patches, unaugmented, through the trained
encoder and compares, at each BatchNorm layer, the per-channel mean and variance of its input
with the layer's running statistics: the ratio variance / running variance and the mean shift
in running standard deviations, |mean - running mean| / sqrt(running variance). Prints the
median and 10th / 90th percentiles over channels per layer, and over all layers and models,
and writes ``benchmarks/results/bn_drift_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.models.mil import iter_chunks  # noqa: E402
from gigamil.train.checkpoint import load_model  # noqa: E402


def layer_drift(encoder: nn.Sequential, patches: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """Per BatchNorm2d layer of ``encoder`` (PatchPreprocess, then a CNN with ``.net``): the
    per-channel variance ratio and mean shift of its input against its running statistics.
    The layers are run one by one (the CNN's own forward fuses conv and BatchNorm)."""
    pre, cnn = encoder[0], encoder[1]
    out = []
    with torch.no_grad():
        x = pre(patches)
        for layer in cnn.net:
            if isinstance(layer, nn.BatchNorm2d):
                xd = x.double()
                rv, rm = layer.running_var.double(), layer.running_mean.double()
                mean, var = xd.mean([0, 2, 3]), xd.var([0, 2, 3])
                out.append(
                    {
                        "var_ratio": (var / rv).numpy(),
                        "mean_shift_sd": ((mean - rm).abs() / rv.sqrt()).numpy(),
                    }
                )
            x = layer(x)
    return out


def summarise(values: np.ndarray) -> dict[str, float]:
    """Median and 10th / 90th percentiles."""
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(p50), "p10": float(p10), "p90": float(p90)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--experiment", default="demo")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/bn_drift_probe.json")
    args = ap.parse_args()
    res = args.run_dir / "results"
    folds = pd.read_csv(res / "splits" / args.experiment / "folds.csv")
    per_layer: dict[int, dict[str, list[np.ndarray]]] = {}
    for fold, rows in folds.groupby("fold"):
        model, _ = load_model(res / "models" / args.experiment / f"fold{fold}" / "model.pt")
        members = list(model.members) if hasattr(model, "members") else [model]
        train = rows[rows["role"] == "train"]
        stores = [
            res / "patches" / c / f"{s}.zarr"
            for c, s in zip(train.cohort, train.slide_id, strict=True)
        ]
        patches = torch.cat([torch.cat(list(iter_chunks(ZarrBag(p), 256))) for p in stores])
        for member in members:
            for i, d in enumerate(layer_drift(member.feature_encoder, patches)):
                for key, v in d.items():
                    per_layer.setdefault(i, {}).setdefault(key, []).append(v)
    record = {"run_dir": str(args.run_dir), "experiment": args.experiment, "layers": {}}
    for i, d in per_layer.items():
        record["layers"][f"bn{i}"] = {k: summarise(np.concatenate(v)) for k, v in d.items()}
        print(f"bn{i}", {k: round(s["median"], 3) for k, s in record["layers"][f"bn{i}"].items()})
    for key in ("var_ratio", "mean_shift_sd"):
        record[key] = summarise(
            np.concatenate([np.concatenate(d[key]) for d in per_layer.values()])
        )
        print(key, record[key])
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
