"""Benchmark: why the training loss stayed at ln 2 on real tissue, and what fixed it.

Run by hand (not a test):

    python benchmarks/calibration.py [--tiles DIR] [--seeds 0 1 2] [--epochs 20]

Builds, per seed, bags of 16 real tiles (4 x 4; lesion bags hold 6-9 tumour tiles) from a
labelled tile folder (default: ../shared/data/pcam-valid without the tiles packaged for the demo),
writes them as zarr patch stores, trains ``gigamil.train.run.train_fold`` from random
initialisation on 24 bags (the schema's default model and training settings, small CNN, ABMIL,
lr 3e-4, stain jitter 0.1, no validation) and predicts 12 held-out bags, for four variants:

- ``none``: frozen BatchNorm at its initial statistics, no feature normalisation (gigamil before);
- ``calibration``: BatchNorm statistics calibrated on training patches, no FeatureNorm;
- ``feature_norm``: FeatureNorm (initial statistics, not calibrated), encoder not calibrated;
- ``both``: calibration + FeatureNorm (the default).

It also reports, at initialisation, the between-bag std of the bag-mean features relative to the
mean feature (the common component): about 0.1-0.2 without standardisation (bags differ by a small
fraction of what they share); with a calibrated FeatureNorm the common component is ~0, so the
ratio is large and not comparable. Prints per variant the mean ± sd over seeds of the first/last training loss and
held-out AUC, and writes benchmarks/results/calibration.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.demo_tiles import write_tile_bags  # noqa: E402
from gigamil.evaluate.metrics import roc_auc  # noqa: E402
from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.tile_pool import (  # noqa: E402
    MIN_TILE_TISSUE,
    decode_tile,
    packaged_tile_hashes,
    read_tile_pool,
    tile_tissue_fraction,
)
from gigamil.train.calibration import calibrate_model  # noqa: E402
from gigamil.train.predict import predict_slides  # noqa: E402
from gigamil.train.run import train_fold  # noqa: E402

DEFAULT_TILES = REPO.parent / "shared" / "data" / "pcam-valid"
RESULTS = REPO / "benchmarks" / "results" / "calibration.json"
VARIANTS = {
    "none": {"feature_norm": False, "calibration_patches": 0},
    "calibration": {"feature_norm": False, "calibration_patches": 2048},
    "feature_norm": {"feature_norm": True, "calibration_patches": 0},
    "both": {"feature_norm": True, "calibration_patches": 2048},
}
N_TRAIN, N_TEST = 24, 12


def write_cohort(root: Path, tiles_dir: Path, seed: int) -> pd.DataFrame:
    """Bags of 4 x 4 usable real tiles not in the demo, as zarr stores; the slide table."""
    exclude = packaged_tile_hashes()  # other tiles than the demo's (and the unit test's)
    pool = [t for t in read_tile_pool(tiles_dir) if t.sha256 not in exclude]
    pool = [t for t in pool if tile_tissue_fraction(decode_tile(t)) >= MIN_TILE_TISSUE]
    return write_tile_bags(root, pool, N_TRAIN + N_TEST, seed=seed)


def add_tile_arguments(
    ap: argparse.ArgumentParser, seeds: list[int], epochs: int, out: Path
) -> None:
    """``--tiles``, ``--seeds``, ``--epochs`` and ``--out`` with these defaults (this script's
    and ``benchmarks/first_epoch.py``'s)."""
    ap.add_argument("--tiles", type=Path, default=DEFAULT_TILES)
    ap.add_argument("--seeds", type=int, nargs="+", default=seeds)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--out", type=Path, default=out)


def seed_cohorts(tiles: Path, seeds: list[int]) -> Iterator[tuple[int, Path, pd.DataFrame]]:
    """Per seed: the seed, a temporary folder holding the bags of :func:`write_cohort` (removed
    after the last seed) and their slide table."""
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            root = Path(tmp) / f"seed{seed}"
            root.mkdir()
            yield seed, root, write_cohort(root, tiles, seed)


def result_header(benchmark: str, args: argparse.Namespace) -> dict:
    """The fields every results JSON of these benchmarks starts with."""
    return {
        "benchmark": benchmark,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "tiles": str(args.tiles),
        "epochs": args.epochs,
    }


def feature_spread(train: pd.DataFrame, variant: dict, seed: int) -> float:
    """Std of the bag-mean features over bags / |mean feature| at initialisation (mean over
    dimensions): how much bags differ in what the head sees."""
    torch.manual_seed(seed)
    model = build_mil_model({"encoder": "smallcnn", "feature_norm": variant["feature_norm"]}, 2, 96)
    bags = [ZarrBag(s) for s in train["store"]]
    calibrate_model(model, bags, n_patches=variant["calibration_patches"], encoder_too=True)
    model.eval()
    with torch.no_grad():
        means = []
        for bag in bags:
            h = model.encode(bag, 256)
            norm = model.attention_model.norm
            means.append((norm(h) if norm is not None else h).mean(0))
    m = torch.stack(means)
    return float((m.std(0) / m.mean(0).abs().clamp(min=1e-6)).mean())


def run_variant(name: str, df: pd.DataFrame, root: Path, seed: int, epochs: int) -> dict:
    variant = VARIANTS[name]
    train, test = df.iloc[:N_TRAIN], df.iloc[N_TRAIN:]
    out = root / f"{name}-{seed}"
    t0 = time.time()
    model_path = train_fold(
        train,
        train.iloc[:0],
        ["normal", "lesion"],
        {"encoder": "smallcnn", "pool": "abmil", "feature_norm": variant["feature_norm"]},
        {
            "device": "cpu",
            "seed": seed,
            "epochs": epochs,
            "lr": 3e-4,
            "calibration_patches": variant["calibration_patches"],
            "early_stopping": {"metric": "loss"},
            "augment": {"stain_jitter": 0.1},
        },
        out,
    )
    seconds = time.time() - t0
    log = pd.read_csv(out / "train_log.csv")
    pred = predict_slides(model_path, test, out / "pred.csv", out / "att")
    y = (pred["label"] == "lesion").to_numpy().astype(int)
    auc = roc_auc(y, pred[["prob_normal", "prob_lesion"]].to_numpy())
    return {
        "variant": name,
        "seed": seed,
        "first_loss": float(log["train_loss"].iloc[:3].mean()),
        "last_loss": float(log["train_loss"].iloc[-3:].mean()),
        "held_out_auc": float(auc),
        "feature_spread_at_init": feature_spread(train, variant, seed),
        "seconds": round(seconds, 1),
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name in VARIANTS:
        sel = [r for r in rows if r["variant"] == name]
        out[name] = {}
        for key in ("first_loss", "last_loss", "held_out_auc", "feature_spread_at_init"):
            vals = [r[key] for r in sel]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            out[name][key] = {"mean": statistics.fmean(vals), "sd": sd, "values": vals}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tile_arguments(ap, [0, 1, 2], 20, RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed, root, df in seed_cohorts(args.tiles, args.seeds):
        for name in VARIANTS:
            r = run_variant(name, df, root, seed, args.epochs)
            rows.append(r)
            print(
                f"seed {seed} {name:13s} loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}"
                f"  held-out AUC {r['held_out_auc']:.3f}"
                f"  bag-feature spread at init {r['feature_spread_at_init']:.3f}"
                f"  ({r['seconds']:.0f} s)",
                flush=True,
            )
    summary = summarise(rows)
    print("\nmean ± sd over seeds:")
    for name, s in summary.items():
        print(
            f"  {name:13s} last loss {s['last_loss']['mean']:.3f} ± {s['last_loss']['sd']:.3f}"
            f"  held-out AUC {s['held_out_auc']['mean']:.3f} ± {s['held_out_auc']['sd']:.3f}"
            f"  spread {s['feature_spread_at_init']['mean']:.3f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                **result_header("calibration", args),
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
