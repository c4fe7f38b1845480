"""Probe: how well could a draw's slides be ranked with TRUE tile labels? (a supervised ceiling)

Run by hand after ``benchmarks/real_tissue.py`` built the draws:

    python benchmarks/draw_ceiling.py benchmarks/work/real_tissue/draw6 ... [--tiles DIR]
        [--seeds 0] [--out benchmarks/results/draw_ceiling.json]

gigamil and the colour baseline see slide labels only. On some draws both rank slides poorly
(draw 8: OOF AUC 0.66 and 0.57), which may be the weak supervision of 20 training slides or the
draw's tiles themselves (PatchCamelyon labels a tile tumour when its centre 32 x 32 px holds
tumour, so some "tumour" tiles are mostly stroma or normal tissue). This probe removes the
weak supervision: for each draw it trains gigamil's random-init small CNN (``tile_probe.
train_small_cnn``: gigamil's augmentation, mini-batches of 32, BatchNorm in train mode) and the
colour-histogram logistic regression on the TRUE labels of every tile of ``--tiles`` that the
draw does not use, compared by content (about 2,400 tiles, versus the 20 slide labels a fold model gets), and scores
the draw's own tiles (placed as ``cohort/tiles.csv`` says):

- ``tile_auc``: tumour vs normal tiles of the draw (the lesion masks' labels);
- ``slide_auc``: slide score = the mean of the top 20 % tile logits of the slide (the colour
  baseline's rule), AUC over the draw's 24 slides;
- ``slide_auc_smoothed``: the same after smoothing the tile logits over the slide's tile grid
  with the Sm operator at alpha 0.8 (``gigamil.nn.pooling.smooth``, gigamil's attention
  smoothing);
- ``localization_auc``: the mean over lesion slides of the per-slide AUC of the tile logits
  (lesion vs other tiles), as the benchmark scores attention.

Writes the JSON given by ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import git_commit  # noqa: E402
from tile_probe import colour_lr, train_small_cnn  # noqa: E402

from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.nn.pooling import grid_adjacency, smooth  # noqa: E402

TOP_FRACTION, SM_ALPHA = 0.2, 0.8


def load(tiles: Path, files: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(tiles / f).convert("RGB")) for f in files])


def slide_scores(placed: pd.DataFrame, score: np.ndarray) -> pd.DataFrame:
    """Per slide: label (any tumour tile), top-20 % mean of the tile scores, raw and Sm-smoothed
    over the tile grid, and the slide's localisation AUC (NaN for a slide without tumour)."""
    rows = []
    for slide, grp in placed.assign(score=score).groupby("slide_id", sort=True):
        s = torch.tensor(grp["score"].to_numpy(), dtype=torch.float64)
        grid = torch.tensor(grp[["row", "col"]].to_numpy(), dtype=torch.long)
        smoothed = smooth(s, grid_adjacency(grid, dtype=s.dtype), SM_ALPHA).numpy()
        k = max(1, math.ceil(TOP_FRACTION * len(grp)))
        lesion = grp["label"].to_numpy() == 1
        rows.append(
            {
                "slide_id": slide,
                "y": int(lesion.any()),
                "top20": float(np.sort(grp["score"].to_numpy())[-k:].mean()),
                "top20_smoothed": float(np.sort(smoothed)[-k:].mean()),
                "loc": binary_auc(lesion, grp["score"].to_numpy()) if lesion.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def probe_draw(draw: Path, tiles: Path, seed: int) -> dict[str, dict[str, float]]:
    placed = pd.read_csv(draw / "cohort" / "tiles.csv")
    # by content, not name: PatchCamelyon holds byte-identical copies under other names (draw
    # 8: 10 of its 75 tumour tiles had one in the training pool before 2026-12-06)
    used = set(placed["sha256"])
    pool = [
        (f"{lab}/{p.name}", lab)
        for lab in (0, 1)
        for p in sorted((tiles / str(lab)).iterdir())
        if p.suffix.lower() in {".jpg", ".png", ".tif"}
        and hashlib.sha256(p.read_bytes()).hexdigest() not in used
    ]
    x_train = load(tiles, [f for f, _ in pool])
    y_train = np.array([lab for _, lab in pool], dtype=np.int64)
    x_test = load(tiles, placed["file"].tolist())
    net = train_small_cnn(x_train, y_train, seed, epochs=max(20, 12000 // len(x_train)))
    with torch.inference_mode():
        cnn = torch.cat([net(torch.from_numpy(b)).squeeze(1) for b in np.array_split(x_test, 8)])
    scores = {"small_cnn": cnn.numpy(), "colour_lr": colour_lr(x_train, y_train, x_test)}
    out = {"n_train_tiles": len(pool)}
    for name, score in scores.items():
        per_slide = slide_scores(placed, score)
        out[name] = {
            "tile_auc": binary_auc(placed["label"].to_numpy() == 1, score),
            "slide_auc": binary_auc(per_slide["y"].to_numpy() == 1, per_slide["top20"]),
            "slide_auc_smoothed": binary_auc(
                per_slide["y"].to_numpy() == 1, per_slide["top20_smoothed"]
            ),
            "localization_auc": float(per_slide["loc"].mean()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("draws", nargs="+", type=Path, help="draw folders of real_tissue.py")
    ap.add_argument("--tiles", type=Path, default=REPO.parent / "shared/data/pcam-valid")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/draw_ceiling.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    results, start = {}, time.perf_counter()
    for draw in args.draws:
        for seed in args.seeds:
            res = probe_draw(draw, args.tiles, seed)
            results[f"{draw.name}/seed{seed}"] = res
            print(draw.name, seed, json.dumps(res), flush=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python " + " ".join(sys.argv),
                "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "git_commit": git_commit(),
                "machine": platform.platform(),
                "seconds": round(time.perf_counter() - start, 1),
                "results": results,
            },
            indent=1,
        )
        + "\n"
    )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
