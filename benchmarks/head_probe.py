"""Probe: on the same fixed patch features, which slide head learns from a few tens of slides?

Run by hand after ``python benchmarks/real_tissue.py`` (it reuses its draws' patch stores and
folds):

    python benchmarks/head_probe.py benchmarks/work/real_tissue/draw0 benchmarks/work/real_tissue/draw1 \
        benchmarks/work/real_tissue/draw2 --seeds 0 1

The features are the colour-histogram baseline's (16-bin RGB histograms per patch,
gigamil.evaluate.baseline), standardised on each fold's training slides, so the encoder is out of
the question and only the head differs. Each fold trains gigamil's own ``AttentionHead`` through
``MILModel.forward_train`` (Adam, lr 1e-3, ``--epochs`` epochs of one bag per step, on the fold's
``train`` and ``val`` slides, like the baseline) and scores its ``test`` slides; the OOF AUC pools
the six folds. Heads: ``abmil`` (attention pooling trained on the slide label) and ``instance``
(every patch trained on its slide's label, slide logit = mean of the top ``top_fraction`` patch
logits) at two top fractions; the baseline's logistic regression on the same features is the
reference. Writes benchmarks/results/head_probe.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import git_commit  # noqa: E402

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.baseline import colour_histograms, cross_validate  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.models.mil import MILModel  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402
from gigamil.nn.pooling import AttentionHead  # noqa: E402

HEADS = {
    "abmil": {"pool": "abmil", "att_dim": 16},
    "instance_top_0.2": {"pool": "instance", "top_fraction": 0.2},
    "instance_top_0.5": {"pool": "instance", "top_fraction": 0.5},
}


def load_draw(draw: Path, experiment: str, cohort: str):
    """(features {slide: (N, 48)}, labels {slide: 0/1}, folds.csv) of one benchmark draw."""
    res = draw / "results"
    folds = pd.read_csv(res / "splits" / experiment / "folds.csv")
    first = folds[folds["fold"] == folds["fold"].min()]
    labels = {s: int(lab != "normal") for s, lab in zip(first.slide_id, first.label, strict=True)}
    feats = {
        s: colour_histograms(ZarrBag(res / "patches" / cohort / f"{s}.zarr").load().numpy())
        for s in labels
    }
    return feats, labels, folds


def head_oof_auc(  # noqa: PLR0913 - one argument per probe setting
    feats: dict, labels: dict, folds: pd.DataFrame, head_kwargs: dict, seed: int, epochs: int
) -> float:
    """Pooled out-of-fold slide AUC of one head trained per fold on fixed features."""
    scores, truth = [], []
    for _, part in folds.groupby("fold", sort=True):
        train = part.loc[part["role"].isin(["train", "val"]), "slide_id"].tolist()
        test = part.loc[part["role"] == "test", "slide_id"].tolist()
        stacked = np.concatenate([feats[s] for s in train])
        mu, sd = stacked.mean(0), stacked.std(0) + 1e-6
        x = {s: torch.from_numpy((feats[s] - mu) / sd).float() for s in train + test}
        torch.manual_seed(seed)
        head = AttentionHead(stacked.shape[1], **head_kwargs)
        model = MILModel(torch.nn.Identity(), head, BagLoss("ce"))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            for s in rng.permutation(train):
                opt.zero_grad()
                model.forward_train(x[s], labels[s])
                opt.step()
        model.eval()
        with torch.no_grad():
            for s in test:
                scores.append(float(model.attention_model(x[s])[0][0]))
                truth.append(labels[s])
    return float(binary_auc(np.array(truth), np.array(scores)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("draws", type=Path, nargs="+", help="draw directories of real_tissue.py")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--experiment", default="real_tissue")
    p.add_argument("--cohort", default="real")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "head_probe.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    results = []
    for draw in args.draws:
        feats, labels, folds = load_draw(draw, args.experiment, args.cohort)
        table, _ = cross_validate(feats, labels, folds)
        row = {
            "draw": draw.name,
            "logistic_regression_baseline": float(
                binary_auc(table["label"].to_numpy(), table["score"].to_numpy())
            ),
        }
        for name, kwargs in HEADS.items():
            row[name] = [
                head_oof_auc(feats, labels, folds, kwargs, seed, args.epochs) for seed in args.seeds
            ]
        print(json.dumps(row), flush=True)
        results.append(row)
    out = {
        "command": "python benchmarks/head_probe.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "features": "16-bin RGB histograms per patch (gigamil.evaluate.baseline), standardised",
        "heads": HEADS,
        "epochs": args.epochs,
        "seeds": args.seeds,
        "oof_auc": results,
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
