"""Benchmark: the colour-histogram baseline with and without gigamil's spatial prior.

gigamil's shipped pool (``model.pool: smabmil``, ``sm_alpha: 0.8``) smooths its attention
scores over the patch grid with the Sm operator, and its localisation AUC is scored on those
smoothed scores; the baseline of ``benchmarks/real_tissue.py`` scored its raw patch scores. A
lesion of the mosaic cohorts is one contiguous region, so the smoothing alone raises a patch
scorer's localisation AUC. This script scores the baseline both ways on the real-tissue draws
(the same cohorts, patch stores and folds as ``real_tissue.py --draws 6``: seeds 0-5), so the
localisation comparison can be made like for like:

    python benchmarks/baseline_smoothing.py [--seeds 0 1 2 3 4 5] [--cores 2] [--demo CLONE]
        [--workdir benchmarks/work/real_tissue] [--out benchmarks/results/baseline_smoothing.json]

A draw whose workdir holds a finished ``real_tissue.py`` run is scored on its stores; a missing
one is built (the cohort, then snakemake up to the folds and patch stores only: no training) with
the repo's config.yaml. Smoothing: :func:`gigamil.evaluate.baseline.smooth_scores` at the run's
``model.sm_alpha``; the slide score is then the top-20 % mean of the smoothed log-odds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "workflow"))

import real_tissue as rt  # noqa: E402 - the benchmark's cohort, config and baseline


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "work" / "real_tissue")
    p.add_argument("--tiles", type=Path, default=rt.DEFAULT_TILES)
    p.add_argument("--cores", type=int, default=2)
    p.add_argument(
        "--demo",
        type=Path,
        default=None,
        metavar="CLONE",
        help="also score a finished demo run (a clone after `snakemake --cores all`), as "
        "real_tissue.py --baseline-on does",
    )
    p.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "baseline_smoothing.json"
    )
    return p.parse_args(argv)


def ensure_draw(wd: Path, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    """The draw's sheet; its cohort, folds and patch stores built first when missing."""
    folds = wd / "results" / "splits" / rt.EXPERIMENT / "folds.csv"
    if (wd / "sheet.csv").is_file() and folds.is_file():
        return pd.read_csv(wd / "sheet.csv", dtype={"slide_id": str})
    from gigamil.tile_pool import packaged_tile_hashes

    cohort_args = rt.parse_args(["--tiles", str(args.tiles)])  # real_tissue.py's defaults
    wd.mkdir(parents=True, exist_ok=True)
    exclude = packaged_tile_hashes() if cohort_args.exclude_packaged else set()
    sheet = rt.build_cohort(wd, cohort_args, seed, exclude)
    geometry = rt.patch_geometry(cohort_args.tiles, cohort_args.tile_mpp, exclude)
    config = rt.write_config(
        wd, rt.fit_folds(geometry, cohort_args.patients, range(seed, seed + 1))
    )
    stores = [f"results/patches/{rt.COHORT}/{s}.zarr" for s in sheet["slide_id"]]
    cmd = [
        *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")),
        *("--directory", str(wd), "--configfile", str(config), "--cores", str(args.cores)),
        str(folds.relative_to(wd)),
        *stores,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "workflow")}
    with open(wd / "snakemake.log", "w") as log:
        subprocess.run(cmd, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return sheet


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    positive = yaml.safe_load((REPO / "config.yaml").read_text())["classes"][1]
    draws: list[dict[str, Any]] = []
    for seed in args.seeds:
        wd = (args.workdir / f"draw{seed}").resolve()
        start = time.perf_counter()
        sheet = ensure_draw(wd, seed, args)
        out = rt.run_baseline(wd, sheet, positive)
        sm = out["smoothed"]
        draws.append(
            {
                "seed": seed,
                "n_slides": len(sheet),
                "baseline": {k: out[k] for k in ("oof_auc", "localization_auc")},
                "baseline_smoothed": {
                    k: sm[k] for k in ("sm_alpha", "oof_auc", "localization_auc")
                },
                "localization_n_slides": out["localization_n_slides"],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(
            f"draw {seed}: baseline OOF AUC {out['oof_auc']:.3f} -> {sm['oof_auc']:.3f} smoothed, "
            f"localisation {out['localization_auc']:.3f} -> {sm['localization_auc']:.3f}",
            flush=True,
        )
    if args.demo is not None:
        out = rt.baseline_on_run(args.demo.resolve())
        demo = {
            "baseline": {k: out[k] for k in ("oof_auc", "localization_auc")},
            "baseline_smoothed": {
                k: out["smoothed"][k] for k in ("sm_alpha", "oof_auc", "localization_auc")
            },
            "localization_n_slides": out["localization_n_slides"],
        }
        print(f"demo: baseline {demo['baseline']} -> smoothed {demo['baseline_smoothed']}")
    result = {
        "command": " ".join(["python", "benchmarks/baseline_smoothing.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": rt.git_commit(),
        "summary": {
            key: rt.mean_sd([d[part][metric] for d in draws])
            for part in ("baseline", "baseline_smoothed")
            for metric in ("oof_auc", "localization_auc")
            for key in [f"{part}_{metric}"]
        },
        "draws": draws,
        **({"demo": demo} if args.demo is not None else {}),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rt.json_safe(result), indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
