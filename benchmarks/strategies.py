"""Benchmark: the three training strategies (``training.strategy``: frozen, em, end_to_end) on the
real-tissue demo, same patches, same folds, one run (by hand: `python benchmarks/strategies.py`).

1. benchmarks/work/strategies/base: the demo (the shipped config.yaml and its cohort) is run by
   the real workflow up to its patch stores and folds (``results/qc/demo.csv``,
   ``results/splits/demo/folds.csv``).
2. For each strategy a copy of that directory runs the rest of the pipeline up to the CV summary
   (``results/eval/demo/summary.json``: training, prediction, evaluation; for ``frozen`` also
   ``extract_features``) with ``training.strategy`` set and everything else as shipped
   (``--set key=value`` adds overrides to every strategy; ``training.em`` keeps its schema
   defaults). The strategies run one after the other, each with ``--cores`` (default 2); the
   wall time covers those jobs only (preprocessing and folds are shared and not timed). The
   script checks that no strategy redid the patches or the folds.
3. Reports per strategy: OOF slide AUC, localisation AUC of the attention against the lesion
   masks, wall time, the train_fold jobs' summed run time and the largest peak resident memory
   (``max_rss``) of a train_fold job (and of an extract_features job), both from Snakemake's
   benchmark files. Writes benchmarks/results/strategies.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "work" / "strategies"
RESULTS = ROOT / "results" / "strategies.json"
EXPERIMENT = "demo"
STRATEGIES = ("frozen", "em", "end_to_end")

sys.path.insert(0, str(ROOT))
from encoder_modes import collect, fmt, prepare_base, run_variant  # noqa: E402
from real_tissue import deep_update, git_commit, parse_set  # noqa: E402


def peak_rss_mb(wd: Path, rule: str) -> float | None:
    """The largest peak resident memory (MB, ``max_rss``) of a rule's jobs, from Snakemake's
    benchmark files; None when the rule ran no job."""
    files = list((wd / "logs" / "benchmarks" / rule).rglob("*.tsv"))
    if not files:
        return None
    values = [pd.read_csv(f, sep="\t")["max_rss"].max() for f in files]
    return round(float(max(values)), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    args = ap.parse_args()
    overrides = parse_set(args.set)

    base = prepare_base(WORK / "base", args.cores, overrides)
    rows = {}
    for name in args.strategies:
        wd = WORK / name
        cfg = deep_update(overrides, {"training": {"strategy": name}})
        rows[name] = {
            **run_variant(base, wd, args.cores, cfg),
            "train_fold_peak_rss_mb": peak_rss_mb(wd, "train_fold"),
            "extract_features_peak_rss_mb": peak_rss_mb(wd, "extract_features"),
            **collect(wd),
        }
        r = rows[name]
        print(
            f"{name}: OOF AUC {fmt(r['oof_auc'])}, localisation AUC "
            f"{fmt(r['localization_auc'])}, {r['wall_seconds']:.0f} s, train_fold peak RSS "
            f"{r['train_fold_peak_rss_mb']} MB",
            flush=True,
        )

    result = {
        "benchmark": "strategies",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/strategies.py " + " ".join(sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cores": args.cores,
            "loadavg_at_end": os.getloadavg(),
        },
        "config": "config.yaml as shipped (real-tissue demo) + training.strategy per strategy",
        "overrides": overrides,
        "strategies": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        "\n| strategy | OOF AUC | localisation AUC | wall time (s) | train_fold peak RSS (MB) |"
        "\n|---|---|---|---|---|"
    )
    for name, r in rows.items():
        print(
            f"| {name} | {fmt(r['oof_auc'])} | {fmt(r['localization_auc'])} | "
            f"{r['wall_seconds']:.0f} | {r['train_fold_peak_rss_mb']} |"
        )


if __name__ == "__main__":
    main()
