"""Benchmark: the first epoch's training loss of randomly initialised encoders, with and without
a learning-rate warm-up.

Run by hand (not a test):

    python benchmarks/first_epoch.py [--tiles DIR] [--seeds 0 1] [--epochs 3]

A fresh model's bag logits start near 0 (loss about ln 2 = 0.693), but Adam's first steps move
every weight by about the learning rate whatever its gradient's size; in a deep encoder whose
frozen BatchNorm statistics were calibrated at initialisation, the first step can throw the
logits of the next bags far off. This trains ``gigamil.train.run.train_fold`` with the shipped
``config.yaml`` settings (one model, no validation) on 24 bags of 16 real tiles (the bags of
``benchmarks/calibration.py``: tiles not in the demo, drawn with the seed, which is also the
training seed) for ``--epochs`` epochs at a constant learning rate (the shipped cosine over 48
epochs is still above 99 % of its peak in epoch 3; a cosine over 3 epochs would not be), for
the small CNN and a ResNet-18, each without warm-up and with ``training.warmup_epochs: 1``, and
records the training loss per epoch (``train_log.csv``). Writes
``benchmarks/results/first_epoch.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from calibration import N_TRAIN, REPO, add_tile_arguments, result_header, seed_cohorts

sys.path.insert(0, str(REPO / "workflow"))

from gigamil.train.run import train_fold  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "first_epoch.json"
ENCODERS = ("smallcnn", "resnet18")
WARMUPS = (0, 1)


def run(df: pd.DataFrame, out: Path, encoder: str, warmup: int, seed: int, epochs: int) -> dict:
    """One training run; its per-epoch training loss and wall time."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    training = {
        **cfg["training"],
        "device": "cpu",
        "seed": seed,
        "epochs": epochs,
        "replicates": 1,
        "warmup_epochs": warmup,
        "schedule": "constant",  # the rate the shipped 48-epoch cosine has in its first epochs
    }
    t0 = time.time()
    train_fold(
        df.iloc[:N_TRAIN],
        df.iloc[:0],
        cfg["classes"],
        {**cfg["model"], "encoder": encoder},
        training,
        out,
        resume=False,
    )
    log = pd.read_csv(out / "train_log.csv")
    return {
        "encoder": encoder,
        "warmup_epochs": warmup,
        "seed": seed,
        "train_loss": [round(float(v), 4) for v in log["train_loss"]],
        "seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tile_arguments(ap, [0, 1], 3, RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed, root, df in seed_cohorts(args.tiles, args.seeds):
        for encoder in ENCODERS:
            for warmup in WARMUPS:
                name = f"{encoder}-warmup{warmup}-seed{seed}"
                r = run(df, root / name, encoder, warmup, seed, args.epochs)
                rows.append(r)
                losses = " ".join(f"{v:.3f}" for v in r["train_loss"])
                print(f"{name:26s} training loss per epoch {losses} ({r['seconds']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**result_header("first_epoch", args), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
