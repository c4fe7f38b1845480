"""Probe: which patch features carry the slide-level evidence on a real-tissue draw?

Run by hand after ``python benchmarks/real_tissue.py`` (or ``real_tissue_variant.sh``):

    python benchmarks/feature_probe.py benchmarks/work/real_tissue/draw0

Runs the colour-histogram baseline's own scheme (gigamil.evaluate.baseline: weak-label logistic
regression per patch, slide score = mean of the top 20 % patch scores, train + val slides of
each fold, out of fold) on different patch features of the same slides and folds, and prints
the OOF AUC of each: 16-bin RGB histograms (the baseline), the random-init smallcnn's pooled
features, the soft colour histogram layer at initialisation (gigamil.nn.histogram), and the
features of each fold's trained encoder (its model.pt; out of fold for its test slides).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.baseline import colour_histograms, cross_validate  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.train.checkpoint import load_model  # noqa: E402


def oof_auc(features: dict, labels: dict, folds: pd.DataFrame) -> float:
    table, _ = cross_validate(features, labels, folds)
    return float(binary_auc(table["label"].to_numpy(), table["score"].to_numpy()))


def encode(model: torch.nn.Module, patches: dict) -> dict:
    with torch.no_grad():
        return {s: model(torch.from_numpy(p)).numpy() for s, p in patches.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("draw", type=Path, help="a draw directory of benchmarks/real_tissue.py")
    p.add_argument("--experiment", default="real_tissue")
    p.add_argument("--cohort", default="real")
    args = p.parse_args()
    res = args.draw / "results"
    folds = pd.read_csv(res / "splits" / args.experiment / "folds.csv")
    first = folds[folds["fold"] == folds["fold"].min()]
    labels = {s: int(lab != "normal") for s, lab in zip(first.slide_id, first.label, strict=True)}
    patches = {
        s: ZarrBag(res / "patches" / args.cohort / f"{s}.zarr").load().numpy() for s in labels
    }
    torch.manual_seed(0)
    random_cnn = build_mil_model({"encoder": "smallcnn"}, 2, 96).eval().feature_encoder
    torch.manual_seed(0)
    with_hist = build_mil_model({"encoder": "smallcnn", "colour_histogram": 16}, 2, 96).eval()
    hist_layer = torch.nn.Sequential(
        with_hist.feature_encoder[0], with_hist.feature_encoder[1].histogram
    )
    rows = {
        "rgb_histogram_16_bins": {s: colour_histograms(x) for s, x in patches.items()},
        "smallcnn_random_init": encode(random_cnn, patches),
        "soft_colour_histogram_init": encode(hist_layer, patches),
    }
    out = {name: oof_auc(f, labels, folds) for name, f in rows.items()}
    tables = []
    for k in sorted(folds["fold"].unique()):
        path = res / "models" / args.experiment / f"fold{k}" / "model.pt"
        if not path.is_file():
            break
        model, _ = load_model(path)
        feats = encode(model.feature_encoder, patches)
        tables.append(cross_validate(feats, labels, folds[folds["fold"] == k])[0])
    if tables:
        t = pd.concat(tables)
        out["trained_encoder_per_fold"] = float(
            binary_auc(t["label"].to_numpy(), t["score"].to_numpy())
        )
    for name, auc in out.items():
        print(f"{name:32s} OOF AUC {auc:.3f}")
    print(
        "(features per patch:",
        {k: int(np.asarray(next(iter(v.values()))).shape[1]) for k, v in rows.items()},
        ")",
    )


if __name__ == "__main__":
    main()
