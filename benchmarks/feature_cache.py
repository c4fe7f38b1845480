"""Benchmark of the feature cache of frozen encoders (run by hand: `python benchmarks/feature_cache.py`).

On the default demo (the real-tissue demo cohort and the shipped config.yaml's patch, model and
training settings, with ``model.trainable_blocks: 0``): the epoch time of the frozen encoder
trained from patches, re-encoding every patch in every epoch (``model.feature_cache: false``),
vs the attention head trained from the cached features (``feature_cache: true``), on the same
bags, side by side in one process: the two run interleaved for ``--rounds`` epochs each and the
median time per epoch is compared (one torch thread, as rule train_fold): the process CPU time
(all threads, so the patch-reading thread counts; the speedup criterion, as it does not depend
on what else runs on the machine) and the wall time (reported beside it; on a shared machine it
inflates the short cached epochs most). The one-off cost of the cache (``extract_features`` on
every slide) is measured too, with the number of epochs after which it has paid for itself.

1. The demo's patch stores are made by the real workflow (``snakemake results/qc/demo.csv`` in
   benchmarks/work/feature_cache; reused when up to date).
2. Every store is encoded once with :func:`gigamil.data.feature_extract.extract_features`.
3. Epochs: :func:`gigamil.train.loop.train_epoch` over all bags with each model.

Writes benchmarks/results/feature_cache.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "work" / "feature_cache"
RESULTS = ROOT / "results" / "feature_cache.json"

sys.path.insert(0, str(REPO / "workflow"))  # this tree's gigamil, also without an install

from gigamil import layout  # noqa: E402
from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.data.feature_extract import extract_features  # noqa: E402
from gigamil.data.features import FeatureBag  # noqa: E402
from gigamil.models.factory import build_mil_model  # noqa: E402
from gigamil.nn.losses import BagLoss  # noqa: E402
from gigamil.settings import ModelConfig, TrainingConfig  # noqa: E402
from gigamil.train.amp import AmpScaler, Optimization  # noqa: E402
from gigamil.train.loop import BagItem, EpochSettings, make_scheduler, train_epoch  # noqa: E402


def patch_stores(cores: int) -> tuple[dict, list[tuple[str, Path, int]]]:
    """The demo's config (frozen encoder) and (slide_id, patch store, label) of every slide,
    made by the real workflow in WORK."""
    WORK.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["model"]["trainable_blocks"] = 0
    (WORK / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copytree(REPO / "resources", WORK / "resources", dirs_exist_ok=True)
    cmd = [
        *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")),
        *("--directory", str(WORK), "--configfile", str(WORK / "config.yaml")),
        *("--cores", str(cores), layout.qc_csv("demo")),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "workflow"), env.get("PYTHONPATH")])
    )
    with open(WORK / "snakemake.log", "w") as log:
        proc = subprocess.run(cmd, cwd=WORK, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"snakemake failed; see {WORK / 'snakemake.log'}")
    import pandas as pd

    sheet = pd.read_csv(WORK / cfg["cohorts"]["demo"]["sheet"])
    classes = [str(c) for c in cfg["classes"]]
    slides = [
        (s, WORK / layout.store_path("demo", s), classes.index(str(lab)))
        for s, lab in zip(sheet["slide_id"], sheet["label"], strict=True)
    ]
    return cfg, slides


def optimization(model: torch.nn.Module, tcfg: TrainingConfig, n_bags: int) -> Optimization:
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(tcfg.lr),
        weight_decay=float(tcfg.weight_decay),
    )
    total = tcfg.epochs * max(1, -(-n_bags // tcfg.bags_per_step))
    return Optimization(
        opt, make_scheduler(opt, tcfg.schedule, total), AmpScaler(False, torch.device("cpu"))
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="epochs of each method (interleaved)")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores for the patch stores")
    args = ap.parse_args()
    torch.set_num_threads(1)

    cfg, slides = patch_stores(args.cores)
    mcfg, tcfg = ModelConfig.from_dict(cfg["model"]), TrainingConfig.from_dict(cfg["training"])
    patch_px = int(cfg["preprocessing"]["patches"]["patch_px"])

    feat_dir = WORK / "features"
    shutil.rmtree(feat_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    feature_stores = [
        extract_features(
            store, feat_dir / f"{s}.zarr", mcfg, cfg["preprocessing"]["patches"], device="cpu"
        )
        for s, store, _ in slides
    ]
    extract_s, extract_cpu = time.perf_counter() - t0, time.process_time() - c0

    live_items = [BagItem(s, ZarrBag(store), y) for s, store, y in slides]
    cached_items = [
        BagItem(s, FeatureBag(f), y) for (s, _, y), f in zip(slides, feature_stores, strict=True)
    ]
    n_patches = sum(len(it.bag) for it in live_items)
    dim = cached_items[0].bag.dim
    loss = BagLoss(tcfg.loss)
    torch.manual_seed(tcfg.seed)
    live = build_mil_model(mcfg, len(cfg["classes"]), patch_px, tcfg.augment, loss)
    torch.manual_seed(tcfg.seed)
    cached = build_mil_model(mcfg, len(cfg["classes"]), patch_px, None, loss, feature_dim=dim)
    runs = {
        "live": (live, live_items, optimization(live, tcfg, len(slides))),
        "cached": (cached, cached_items, optimization(cached, tcfg, len(slides))),
    }
    settings = EpochSettings(
        seed=tcfg.seed,
        bags_per_step=tcfg.bags_per_step,
        chunk=tcfg.max_instances_per_forward_pass,
        progress=False,
    )
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    load: list[float] = []
    for epoch in range(1, args.rounds + 1):
        for name, (model, items, optim) in runs.items():
            t, c = time.perf_counter(), time.process_time()
            train_epoch(model, items, optim, epoch=epoch, settings=settings)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
        load.append(os.getloadavg()[0])
        print(
            f"epoch {epoch}: live {cpu['live'][-1]:.3f} s CPU ({wall['live'][-1]:.3f} s wall), "
            f"cached {cpu['cached'][-1]:.4f} s CPU ({wall['cached'][-1]:.4f} s wall)",
            flush=True,
        )
    live_s, cached_s = (statistics.median(cpu[k]) for k in ("live", "cached"))
    live_w, cached_w = (statistics.median(wall[k]) for k in ("live", "cached"))
    speedup = live_s / cached_s
    break_even = extract_cpu / max(live_s - cached_s, 1e-9)
    result = {
        "benchmark": "feature_cache",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/feature_cache.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "loadavg_1min_during_epochs": load,
        },
        "cohort": {"slides": len(slides), "patches": n_patches, "patch_px": patch_px},
        "encoder": mcfg.encoder,
        "feature_dim": dim,
        "encoder_id": cached_items[0].bag.encoder_id,
        "chunk": settings.chunk,
        "rounds": args.rounds,
        "epoch_cpu_seconds": {k: [round(v, 4) for v in vals] for k, vals in cpu.items()},
        "epoch_wall_seconds": {k: [round(v, 4) for v in vals] for k, vals in wall.items()},
        "median_epoch_cpu_seconds": {"live": round(live_s, 4), "cached": round(cached_s, 4)},
        "median_epoch_wall_seconds": {"live": round(live_w, 4), "cached": round(cached_w, 4)},
        "speedup_cpu": round(speedup, 1),
        "speedup_wall": round(live_w / cached_w, 1),
        "extract_all_slides": {
            "cpu_seconds": round(extract_cpu, 3),
            "wall_seconds": round(extract_s, 3),
        },
        "break_even_epochs_cpu": round(break_even, 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(slides)} slides, {n_patches} patches, {mcfg.encoder} frozen, median epoch CPU time: "
        f"{live_s:.3f} s re-encoding vs {cached_s:.4f} s from the cache: {speedup:.1f}x "
        f"(wall {live_w:.3f} s vs {cached_w:.4f} s: {live_w / cached_w:.1f}x); extraction once "
        f"{extract_cpu:.2f} s CPU (pays off after {break_even:.1f} epochs); {RESULTS}"
    )


if __name__ == "__main__":
    main()
