"""Probe: does test-time augmentation (the 8 dihedral views of every patch) help the fold models?

Run by hand after a screen (``benchmarks/screen.py NAME ...``), on its trained fold models:

    python benchmarks/tta_probe.py NAME --dirs DEMO_CLONE benchmarks/work/real_tissue/draw0 ...

For every draw, training seed and fold of the screen it loads the fold's ``model.pt``
(:func:`gigamil.train.checkpoint.load_model`, a ``training.replicates`` ensemble included) and
predicts each of its test slides 8 times, with every patch rotated by 0/90/180/270 degrees, with
and without a flip (the dihedral group D4; the slide's patch grid, and so SmABMIL's adjacency,
stay as they are), the logits mapped by the fold's ``logit_calibration`` as in
:func:`gigamil.train.predict.predict_slides`. It reports the pooled OOF AUC of the identity view
(which must equal the screen's own, a check that the probe predicts as the pipeline does) and of
the mean probability over the 8 views, and writes ``benchmarks/results/tta_probe.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.nn.pooling import grid_adjacency  # noqa: E402
from gigamil.train.checkpoint import load_model  # noqa: E402
from gigamil.train.logit_calibration import apply_calibration  # noqa: E402
from gigamil.train.loop import bag_probabilities  # noqa: E402

SCREENS = REPO / "benchmarks" / "work" / "screen"


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of every patch of ``x`` (N, H, W, C) (square patches)."""
    views = []
    for k in range(4):
        r = torch.rot90(x, k, dims=(1, 2))
        views += [r.contiguous(), torch.flip(r, dims=(2,)).contiguous()]
    return views


def slide_probabilities(
    model: torch.nn.Module, calibration: dict | None, store: Path
) -> list[float]:
    """P(positive class) of the slide for each of the 8 views (the identity first), the logits
    mapped by the model.pt's ``logit_calibration``."""
    bag = ZarrBag(store)
    x, adj = bag.load(), grid_adjacency(bag.grid)
    out = []
    with torch.inference_mode():
        for view in dihedral_views(x):
            logits, _ = model(view, adj, max_instances_per_forward_pass=None)
            logits = apply_calibration(logits, calibration)
            out.append(float(bag_probabilities(logits).reshape(-1)[-1]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name", help="the screen's NAME (benchmarks/work/screen/NAME)")
    p.add_argument("--dirs", nargs="+", type=Path, required=True, help="the screen's draw dirs")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/tta_probe.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    root = SCREENS / args.name
    dirs = {d.name: d for d in args.dirs}
    pred = pd.read_csv(root / "predictions.csv")
    rows = []
    for (draw, seed, fold), g in pred.groupby(["draw", "seed", "fold"], sort=True):
        model, ckpt = load_model(root / draw / f"seed{seed}" / f"fold{fold}" / "model.pt")
        for r in g.itertuples():
            store = next((dirs[draw] / "results" / "patches").glob(f"*/{r.slide_id}.zarr"))
            probs = slide_probabilities(model, ckpt.get("logit_calibration"), store)
            rows.append((draw, seed, r.slide_id, r.y, r.p, probs[0], float(np.mean(probs))))
    df = pd.DataFrame(rows, columns=["draw", "seed", "slide_id", "y", "p", "identity", "tta"])
    result: dict[str, dict[str, dict[str, float]]] = {}
    for (draw, seed), g in df.groupby(["draw", "seed"], sort=True):
        auc = {k: round(binary_auc(g["y"], g[k]), 4) for k in ("p", "identity", "tta")}
        result.setdefault(draw, {})[f"seed{seed}"] = {
            "screen": auc["p"],
            "identity": auc["identity"],
            "tta_8_views": auc["tta"],
        }
        print(
            f"{draw} seed {seed}: OOF AUC screen {auc['p']:.3f}, identity view "
            f"{auc['identity']:.3f}, mean of 8 views {auc['tta']:.3f}"
        )
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/tta_probe.py", *(argv or sys.argv[1:])]),
        "screen": args.name,
        "oof_auc": result,
    }
    out = json.loads(args.out.read_text()) if args.out.exists() else {}
    out[args.name] = record
    args.out.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
