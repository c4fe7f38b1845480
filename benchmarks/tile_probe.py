"""Probe: with TRUE tile labels, does gigamil's random-init small CNN beat a colour-histogram model?

Run by hand:

    python benchmarks/tile_probe.py [--tiles ../shared/data/pcam-valid] [--sizes 100 200 400 1000]
        [--seeds 0 1]

The real-tissue benchmark compares gigamil (slide labels only, a few tens of slides) with a
colour-histogram baseline. This probe removes the multiple-instance part: both models see the
tiles' own labels (PatchCamelyon: tumour in the centre 32 x 32 px or not). For each training size
n (balanced random tiles of ``--tiles DIR/{0,1}``) and seed it trains

- ``colour_lr``: logistic regression on standardised 16-bin RGB histograms
  (``gigamil.evaluate.baseline.colour_histograms``, the baseline's features);
- ``small_cnn``: ``gigamil.nn.smallcnn.SmallCNN`` from random initialisation with a linear
  classifier, gigamil's own patch augmentation (``PatchPreprocess``: flips, 90° rotations,
  colour jitter 0.05, HED stain jitter 0.1, the shipped config's values), AdamW lr 1e-3,
  batches of 32, max(20, 12000 / n) epochs,

and scores both on the same held-out tiles (tile AUC). The ``*_weak`` columns repeat both with the
weak patch labels multiple-instance training gives (every patch labelled with its slide's label):
n tiles laid out as if from slides of which half are positive with 30 % tumour (the demo's
lesion fraction), i.e. 15 % tumour tiles labelled 1, 35 % normal tiles labelled 1 (they sit in
positive slides), 50 % normal tiles labelled 0; the test labels stay the true ones. Writes benchmarks/results/tile_probe.json.
Tiles of one original slide may fall on both sides of the split (PCam has no slide ids); that
affects both models alike. ``--greyscale`` converts every tile to grey (ITU-R 601 luma, replicated
to 3 channels) first: what is left is morphology and intensity, no stain colour (the colour
histogram becomes an intensity histogram); write it elsewhere with ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import git_commit  # noqa: E402

from gigamil.evaluate.baseline import colour_histograms  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.nn.augment import PatchPreprocess  # noqa: E402
from gigamil.nn.smallcnn import SmallCNN  # noqa: E402

DEFAULT_TILES = REPO.parent / "shared" / "data" / "pcam-valid"


def load_tiles(root: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """All tiles of ``root/0`` and ``root/1``, each image once (PatchCamelyon holds byte-identical
    copies under other names, which fell on both sides of the held-out split before
    2026-12-06: 46 of 484 held-out tumour tiles at seed 0), shuffled: uint8 (N, H, W, 3),
    labels (N,)."""
    import hashlib

    files, seen = [], set()
    for lab in (0, 1):
        for p in sorted((root / str(lab)).iterdir()):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                files.append((p, lab))
    if not files:
        raise SystemExit(f"no tiles under {root}/0 and {root}/1")
    order = np.random.default_rng(seed).permutation(len(files))
    x = np.stack([np.asarray(Image.open(files[i][0]).convert("RGB")) for i in order])
    y = np.array([files[i][1] for i in order])
    return x, y


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of n/2 tiles of each class."""
    rng = np.random.default_rng(seed)
    have = min(int((y == c).sum()) for c in (0, 1))
    if n // 2 > have:
        raise SystemExit(f"--sizes: {n} tiles need {n // 2} of each class, only {have} available")
    return np.concatenate(
        [rng.choice(np.flatnonzero(y == c), n // 2, replace=False) for c in (0, 1)]
    )


def weak_subset(y: np.ndarray, n: int, seed: int, lesion_fraction: float = 0.3):
    """Indices and weak labels of n tiles as multiple-instance training sees them: half the
    tiles from positive slides (``lesion_fraction`` of them tumour), all labelled 1; half from
    negative slides (normal), labelled 0."""
    rng = np.random.default_rng(seed)
    n_tumour = round(n / 2 * lesion_fraction)
    have = (int((y == 1).sum()), int((y == 0).sum()))
    if n_tumour > have[0] or n - n_tumour > have[1]:
        raise SystemExit(
            f"--sizes: {n} weakly labelled tiles need {n_tumour} tumour and {n - n_tumour} normal "
            f"tiles, only {have[0]} and {have[1]} available"
        )
    tumour = rng.choice(np.flatnonzero(y == 1), n_tumour, replace=False)
    normal = rng.choice(np.flatnonzero(y == 0), n - n_tumour, replace=False)
    weak = np.concatenate([np.ones(n_tumour), np.ones(n // 2 - n_tumour), np.zeros(n - n // 2)])
    return np.concatenate([tumour, normal]), weak.astype(np.int64)


def colour_lr(x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    h, h_test = colour_histograms(x), colour_histograms(x_test)
    scaler = StandardScaler().fit(h)
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(h), y)
    return model.predict_proba(scaler.transform(h_test))[:, 1]


def train_small_cnn(
    x: np.ndarray, y: np.ndarray, seed: int, epochs: int, colour_aug: bool = True
) -> torch.nn.Module:
    """SmallCNN + linear classifier from random initialisation, trained on uint8 tiles x (N, H, W,
    3) with 0/1 labels y: gigamil's patch augmentation (flips, 90° rotations and, with
    ``colour_aug``, colour jitter 0.05 and HED stain jitter 0.1), AdamW lr 1e-3, mini-batches of
    32 shuffled tiles, BatchNorm in train mode, BCE. Returned in eval mode."""
    torch.manual_seed(seed)
    pre = PatchPreprocess(
        flips=True,
        rot90=True,
        color_jitter=0.05 if colour_aug else 0.0,
        stain_jitter=0.1 if colour_aug else 0.0,
    )
    encoder = SmallCNN()
    net = torch.nn.Sequential(pre, encoder, torch.nn.Linear(encoder.out_dim, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    n = len(x)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(n)
        for i in range(0, n, 32):
            idx = perm[i : i + 32]
            logits = net(xt[idx]).squeeze(1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def small_cnn(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    net = train_small_cnn(x, y, seed, epochs=max(20, 12000 // len(x)))
    with torch.inference_mode():
        return torch.cat(
            [net(torch.from_numpy(b)).squeeze(1) for b in np.array_split(x_test, 8)]
        ).numpy()


def mean_sd(runs: list[dict], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{key: {"mean", "sd"}} of ``runs``' values (population sd, like np.std)."""
    return {
        k: {"mean": float(np.mean([r[k] for r in runs])), "sd": float(np.std([r[k] for r in runs]))}
        for k in keys
    }


def write_result(out: Path, script: str, fields: dict) -> None:
    """Write ``fields`` to the JSON file ``out`` after the command (``script`` and this run's
    arguments), date, git commit and machine of the result."""
    result = {
        "command": "python " + " ".join([os.path.relpath(script, REPO), *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}",
        **fields,
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiles", type=Path, default=DEFAULT_TILES)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 200, 400, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--test", type=int, default=1000, help="held-out tiles (the last ones)")
    ap.add_argument("--greyscale", action="store_true", help="grey tiles (no stain colour)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tile_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_tiles(args.tiles)
    if args.greyscale:
        grey = np.rint(x.astype(np.float64) @ np.array([0.299, 0.587, 0.114]))
        x = np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    x_test, y_test = x[-args.test :], y[-args.test :]
    pool_x, pool_y = x[: -args.test], y[: -args.test]
    runs = []
    for n in args.sizes:
        for seed in args.seeds:
            idx = balanced_subset(pool_y, n, seed)
            t0 = time.time()
            lr_auc = binary_auc(y_test, colour_lr(pool_x[idx], pool_y[idx], x_test))
            cnn_auc = binary_auc(y_test, small_cnn(pool_x[idx], pool_y[idx], x_test, seed))
            widx, weak = weak_subset(pool_y, n, seed)
            lr_weak = binary_auc(y_test, colour_lr(pool_x[widx], weak, x_test))
            cnn_weak = binary_auc(y_test, small_cnn(pool_x[widx], weak, x_test, seed))
            run = {"n_train": n, "seed": seed, "colour_lr": lr_auc, "small_cnn": cnn_auc}
            runs.append({**run, "colour_lr_weak": lr_weak, "small_cnn_weak": cnn_weak})
            print(
                f"n {n} seed {seed}: true labels colour_lr {lr_auc:.3f} small_cnn {cnn_auc:.3f}; "
                f"weak labels colour_lr {lr_weak:.3f} small_cnn {cnn_weak:.3f} "
                f"({time.time() - t0:.0f} s)",
                flush=True,
            )
    keys = ("colour_lr", "small_cnn", "colour_lr_weak", "small_cnn_weak")
    summary = {str(n): mean_sd([r for r in runs if r["n_train"] == n], keys) for n in args.sizes}
    fields = {"tiles": str(args.tiles), "n_test": args.test, "greyscale": args.greyscale}
    write_result(args.out, __file__, {**fields, "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
