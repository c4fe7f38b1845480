"""Probe: does self-supervised pretraining (SimCLR) of the small CNN on unlabelled tiles help?

Run by hand:

    python benchmarks/ssl_probe.py [--pretrain-tiles CSV_OR_ZIP] [--epochs 150]
        [--weights-out benchmarks/work/ssl/smallcnn_simclr.pt]

Pretrains ``gigamil.nn.smallcnn.SmallCNN`` from random initialisation with SimCLR (Chen et al.
2020, ICML: NT-Xent loss, temperature 0.2, two augmented views per tile: random resized crop
0.4-1.0, flips, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grey with p 0.2, Gaussian blur with p
0.3; a 64-128-64 projection head; AdamW, one-cycle lr 2e-3, batches of 128 tiles) on unlabelled
tiles: by default the packaged demo tiles (``workflow/gigamil/data/pcam_demo_tiles.zip``; the
benchmark draws use none of them), or with ``--pretrain-tiles`` a cohort's ``tiles.csv`` (from
``benchmarks/real_tissue.py``: its tiles, i.e. the cohort's own patches, labels unused). Every 10
epochs it scores the encoder's features with a linear probe (logistic regression on standardised
features, true tile labels) on 1,200 other tiles of ``--tiles`` (half to fit, half to score),
beside the random-init encoder and the baseline's colour histograms. The weights file loads with
``model.weights: FILE`` (``model.encoder: smallcnn``). Writes benchmarks/results/ssl_probe.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import git_commit  # noqa: E402

from gigamil.evaluate.baseline import colour_histograms  # noqa: E402
from gigamil.nn.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from gigamil.nn.smallcnn import SmallCNN  # noqa: E402
from gigamil.tile_pool import Tile, decode_tile, packaged_tiles_path, read_tile_pool  # noqa: E402

DEFAULT_TILES = REPO.parent / "shared" / "data" / "pcam-valid"
PACKAGED = packaged_tiles_path()
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def pretrain_tiles(source: Path, pool: list[Tile]) -> tuple[np.ndarray, set[str]]:
    """uint8 (n, H, W, 3) tiles to pretrain on and their file names (kept out of the probe): a
    zip of tiles (the packaged ones), or a cohort's ``tiles.csv`` naming files of ``pool``."""
    if source.suffix == ".zip":
        tiles = read_tile_pool(source)
    else:
        by_file = {t.file: t for t in pool}
        tiles = [by_file[f] for f in pd.read_csv(source)["file"]]
    return np.stack([decode_tile(t) for t in tiles]), {Path(t.file).name for t in tiles}


def probe_tiles(
    pool: list[Tile], exclude: set[str], n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """n random tiles of ``pool`` whose file names are not in ``exclude``: uint8 (n, H, W, 3),
    labels (n,)."""
    keep = [t for t in pool if Path(t.file).name not in exclude]
    idx = np.random.default_rng(seed).permutation(len(keep))[:n]
    return np.stack([decode_tile(keep[i]) for i in idx]), np.array([keep[i].label for i in idx])


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3, H, W) → float, normalised as gigamil's PatchPreprocess does."""
    return (x.float() / 255.0 - MEAN) / STD


def features(enc: nn.Module, x: np.ndarray) -> np.ndarray:
    enc.eval()
    xt = torch.as_tensor(x).permute(0, 3, 1, 2)
    with torch.no_grad():
        return torch.cat([enc(normalise(xt[i : i + 256])) for i in range(0, len(xt), 256)]).numpy()


def linear_probe(f: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    half = len(f) // 2
    scaler = StandardScaler().fit(f[:half])
    lr = LogisticRegression(max_iter=2000).fit(scaler.transform(f[:half]), y[:half])
    return float(roc_auc_score(y[half:], lr.predict_proba(scaler.transform(f[half:]))[:, 1]))


def simclr_views(batch: torch.Tensor, aug: nn.Module) -> torch.Tensor:
    """Two augmented views of each uint8 (n, 3, H, W) tile → normalised (2n, 3, H, W)."""
    views = [torch.stack([aug(im) for im in batch]) for _ in range(2)]
    return normalise(torch.cat(views))


def nt_xent(z: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of 2n projections (view i and i + n are a positive pair)."""
    n = len(z) // 2
    z = nn.functional.normalize(z, dim=1)
    sim = (z @ z.T / tau).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return nn.functional.cross_entropy(sim, target)


def main(argv: list[str] | None = None) -> int:
    from torchvision.transforms import v2

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=Path, default=DEFAULT_TILES, help="labelled tiles (0/, 1/)")
    p.add_argument("--pretrain-tiles", type=Path, default=PACKAGED, help="zip or tiles.csv")
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--tau", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-out", type=Path, default=REPO / "benchmarks/work/ssl/smallcnn.pt")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/ssl_probe.json")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    pool = read_tile_pool(args.tiles)
    x_pre, used = pretrain_tiles(args.pretrain_tiles, pool)
    x_probe, y_probe = probe_tiles(pool, used, 1200, args.seed)
    enc = SmallCNN()
    ref = {
        "random_init_small_cnn": linear_probe(features(enc, x_probe), y_probe),
        "colour_histogram": linear_probe(colour_histograms(x_probe), y_probe),
    }
    print(f"{len(x_pre)} pretraining tiles; linear probe AUC: {ref}", flush=True)
    proj = nn.Sequential(nn.Linear(enc.out_dim, 128), nn.ReLU(), nn.Linear(128, 64))
    opt = torch.optim.AdamW([*enc.parameters(), *proj.parameters()], lr=args.lr)
    per_epoch = len(x_pre) // args.batch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, args.lr, total_steps=args.epochs * per_epoch, pct_start=0.1
    )
    aug = v2.Compose(
        [
            v2.RandomResizedCrop(x_pre.shape[1], scale=(0.4, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(5, (0.1, 1.5))], p=0.3),
        ]
    )
    xt = torch.as_tensor(x_pre).permute(0, 3, 1, 2)
    history, start = [], time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        enc.train()
        perm, total = torch.randperm(len(xt)), 0.0
        for i in range(per_epoch):
            loss = nt_xent(
                proj(enc(simclr_views(xt[perm[i * args.batch :][: args.batch]], aug))), args.tau
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if epoch % 10 == 0 or epoch == args.epochs:
            auc = linear_probe(features(enc, x_probe), y_probe)
            history.append({"epoch": epoch, "loss": total / per_epoch, "probe_auc": auc})
            print(
                f"epoch {epoch}: loss {total / per_epoch:.3f}, linear probe AUC {auc:.3f}, "
                f"{time.perf_counter() - start:.0f} s",
                flush=True,
            )
    args.weights_out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(enc.state_dict(), args.weights_out)
    record = {
        "command": "python " + " ".join(sys.argv),
        "date": dt.date.today().isoformat(),
        "git_commit": git_commit(),
        "machine": platform.platform(),
        "pretrain_tiles": str(args.pretrain_tiles.name),
        "n_pretrain_tiles": len(x_pre),
        "n_probe_tiles": len(x_probe),
        "linear_probe_auc_reference": ref,
        "history": history,
        "seconds": time.perf_counter() - start,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out} and {args.weights_out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
