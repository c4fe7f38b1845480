"""Benchmark: frozen (cached features), partial and full end-to-end training of the encoder on the
real-tissue demo, same patches, same folds (run by hand: `python benchmarks/encoder_modes.py`).

1. benchmarks/work/encoder_modes/base: the demo (the shipped config.yaml and its cohort) is run by
   the real workflow up to its patch stores and folds (``results/qc/demo.csv``,
   ``results/splits/demo/folds.csv``).
2. For each mode a copy of that directory runs the rest of the pipeline up to the CV summary
   (``results/eval/demo/summary.json``: training, prediction, evaluation; for the frozen mode
   also ``extract_features``), with ``model.trainable_blocks`` set to the mode's value and
   everything else as shipped (``--set key=value`` adds overrides to every mode). The modes run
   one after the other, each with ``--cores`` (default 2); the wall time covers those jobs only
   (preprocessing and folds are shared and not timed). The script checks that no mode redid the
   patches or the folds.
3. Reports per mode: OOF slide AUC, localisation AUC of the attention against the lesion masks,
   wall time, the train_fold jobs' summed run time (Snakemake's benchmark files), and the final
   training loss per fold. Writes benchmarks/results/encoder_modes.json and prints a Markdown
   table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "work" / "encoder_modes"
RESULTS = ROOT / "results" / "encoder_modes.json"
EXPERIMENT = "demo"
MODES: dict[str, Any] = {  # name -> model.trainable_blocks
    "frozen (cached features)": 0,
    "partial (last 2 of 4 conv blocks)": 2,
    "full end to end": "all",
}

sys.path.insert(0, str(ROOT))
from real_tissue import deep_update, parse_set  # noqa: E402


def snakemake(wd: Path, cores: int, *targets: str) -> tuple[float, str]:
    """Run the repo's Snakefile in ``wd`` on ``targets``; (wall seconds, log text)."""
    cmd = [
        *(sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")),
        *("--directory", str(wd), "--configfile", str(wd / "config.yaml")),
        *("--cores", str(cores), *targets),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO / "workflow"), env.get("PYTHONPATH")])
    )
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    (wd / "snakemake.log").write_text(text)
    if proc.returncode:
        raise SystemExit(f"snakemake failed in {wd}:\n" + "\n".join(text.splitlines()[-30:]))
    return seconds, text


def write_config(wd: Path, overrides: dict[str, Any]) -> None:
    cfg = deep_update(yaml.safe_load((REPO / "config.yaml").read_text()), overrides)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


FOLDS_CSV = f"results/splits/{EXPERIMENT}/folds.csv"


def prepare_base(base: Path, cores: int, overrides: dict[str, Any]) -> Path:
    """Run the demo in ``base`` up to its patch stores and folds (shared by every variant)."""
    base.mkdir(parents=True, exist_ok=True)
    write_config(base, overrides)
    shutil.copytree(REPO / "resources", base / "resources", dirs_exist_ok=True)
    snakemake(base, cores, f"results/qc/{EXPERIMENT}.csv", FOLDS_CSV)
    return base


def run_variant(base: Path, wd: Path, cores: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` in ``wd`` with config.yaml + ``cfg``, run up to the CV summary:
    ``{wall_seconds, same_folds_as_base}``. Exits if the run redid the shared preprocessing or
    folds (the variants would not be compared on the same patches and folds)."""
    shutil.rmtree(wd, ignore_errors=True)
    shutil.copytree(base, wd, symlinks=True, ignore=shutil.ignore_patterns("locks"))
    write_config(wd, cfg)
    seconds, log = snakemake(wd, cores, f"results/eval/{EXPERIMENT}/summary.json")
    redone = [r for r in ("extract_patches", "tissue_mask", "make_splits") if f"rule {r}:" in log]
    if redone:
        raise SystemExit(f"{wd.name}: the run redid {redone}; variants must share them")
    same = (wd / FOLDS_CSV).read_bytes() == (base / FOLDS_CSV).read_bytes()
    return {"wall_seconds": round(seconds, 1), "same_folds_as_base": same}


def job_seconds(wd: Path, rule: str) -> float:
    """Summed run time (s) of a rule's jobs, from Snakemake's benchmark files."""
    files = (wd / "logs" / "benchmarks" / rule).rglob("*.tsv")
    return float(sum(pd.read_csv(f, sep="\t")["s"].sum() for f in files))


def collect(wd: Path) -> dict[str, Any]:
    res = wd / "results"
    summary = json.loads((res / "eval" / EXPERIMENT / "summary.json").read_text())
    folds = sorted(pd.read_csv(res / "splits" / EXPERIMENT / "folds.csv")["fold"].unique())
    losses = []
    for k in folds:
        log = pd.read_csv(res / "models" / EXPERIMENT / f"fold{k}" / "train_log.csv")
        losses.append(round(float(log["train_loss"].iloc[-1]), 4))
    loc = summary.get("localization_auc")
    return {
        "oof_auc": summary["oof_auc"],
        "oof_auc_ci": summary.get("oof_auc_ci"),
        "localization_auc": loc,
        "localization_auc_sd": summary.get("localization_auc_sd"),
        "final_train_loss_per_fold": losses,
        "train_fold_seconds": round(job_seconds(wd, "train_fold"), 1),
        "extract_features_seconds": round(job_seconds(wd, "extract_features"), 1),
    }


def fmt(value: Any) -> str:
    if isinstance(value, dict):  # {"mean": ..., "sd": ...} in some summaries
        value = value.get("mean")
    return "n/a" if value is None else f"{float(value):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--modes", nargs="*", default=list(MODES), help="subset of the modes")
    args = ap.parse_args()
    overrides = parse_set(args.set)

    base = prepare_base(WORK / "base", args.cores, overrides)
    rows = {}
    for name in args.modes:
        mode_cfg = deep_update(overrides, {"model": {"trainable_blocks": MODES[name]}})
        run = run_variant(base, WORK / name.split()[0], args.cores, mode_cfg)
        rows[name] = {"trainable_blocks": MODES[name], **run, **collect(WORK / name.split()[0])}
        r = rows[name]
        print(
            f"{name}: OOF AUC {fmt(r['oof_auc'])}, localisation AUC {fmt(r['localization_auc'])}, "
            f"{r['wall_seconds']:.0f} s",
            flush=True,
        )

    result = {
        "benchmark": "encoder_modes",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/encoder_modes.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cores": args.cores,
            "loadavg_at_end": os.getloadavg(),
        },
        "config": "config.yaml as shipped (real-tissue demo) + model.trainable_blocks per mode",
        "overrides": overrides,
        "modes": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print("\n| mode | OOF AUC | localisation AUC | wall time (s) |\n|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {fmt(r['oof_auc'])} | {fmt(r['localization_auc'])} | "
            f"{r['wall_seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
