"""Probe: put each fold model's slide logits on one scale using its own training slides.

Run by hand after ``benchmarks/screen.py`` runs (it reads their fold models)::

    python benchmarks/fold_calibration_probe.py [VARIANT ...] [--dirs CLONE ...]  # predict, evaluate
    python benchmarks/fold_calibration_probe.py --evaluate-only

``--dirs``: the finished workflow runs (e.g. a demo clone) that ``screen.py --dirs`` screened on
besides the benchmark's draws; a screen run is found by its directory name.

For every screened variant, draw and training seed with six saved fold models, every fold model
predicts all slides of its fold (train, val and test; eval mode, as rule predict_fold does) on the
draw's current patch stores; the bag logits go to ``benchmarks/work/fold_calibration/
predictions.csv``. The evaluation then compares the pooled out-of-fold AUC of the raw test logits
with that of test logits standardised per fold from the fold's own reference slides (never the
test slides): ``mid`` (logit minus the midpoint of the two class-mean logits, divided by their
gap), ``shift`` (minus the midpoint only) and ``med`` (``mid`` with class medians), each with the
training slides (``tr``) or training and validation slides (``trv``) as reference. Writes
``benchmarks/results/fold_calibration_probe.json``. Old screen runs whose draws had other patch
stores are re-predicted on the current stores, so their raw AUC differs from screen.json; the
comparison is always between the same predictions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.evaluate.metrics import binary_auc  # noqa: E402

SCREEN = REPO / "benchmarks" / "work" / "screen"
WORK = REPO / "benchmarks" / "work" / "fold_calibration" / "predictions.csv"
RESULTS = REPO / "benchmarks" / "results" / "fold_calibration_probe.json"
DRAWS = REPO / "benchmarks" / "work" / "real_tissue"
RUNS = {f"draw{i}": (DRAWS / f"draw{i}", "real_tissue", "real") for i in range(3)}


def add_run(path: Path) -> None:
    """Register a finished workflow run (its config.yaml's experiment and single cohort)."""
    import yaml

    cfg = yaml.safe_load((path / "config.yaml").read_text())
    (cohort,) = cfg["cohorts"]
    RUNS[path.name] = (path, str(cfg["experiment"]), str(cohort))


def predict_variant(variant: str) -> None:
    """Append every fold model's logits on all slides of its fold to ``WORK``."""
    from gigamil.train.predict import predict_slides

    done = set()
    if WORK.exists():
        old = pd.read_csv(WORK)
        done = set(zip(old.variant, old.run, old.seed, strict=True))
    for rd in sorted((SCREEN / variant).glob("*/seed*")):
        run, seed = rd.parent.name, rd.name
        if (variant, run, seed) in done or run not in RUNS:
            continue
        if len(list(rd.glob("fold*/model.pt"))) < 6:
            continue
        d, exp, coh = RUNS[run]
        folds = pd.read_csv(d / "results" / "splits" / exp / "folds.csv")
        folds["store"] = [
            str(d / "results" / "patches" / coh / f"{s}.zarr") for s in folds.slide_id
        ]
        folds["cohort"] = coh
        rows = []
        for fold, f in folds.groupby("fold"):
            model = rd / f"fold{fold}" / "model.pt"
            pred = predict_slides(model, f.reset_index(drop=True), None, WORK.parent / "att")
            p = pred[[c for c in pred.columns if c.startswith("prob_")][-1]].clip(1e-7, 1 - 1e-7)
            pred["logit"] = np.log(p / (1 - p))
            pred = pred.merge(f[["slide_id", "role"]], on="slide_id")
            pred["y"] = (pred["label"] == "lesion").astype(int)
            pred["fold"] = fold
            rows.append(pred[["fold", "slide_id", "role", "y", "logit"]])
        df = pd.concat(rows)
        df["variant"], df["run"], df["seed"] = variant, run, seed
        df.to_csv(WORK, mode="a", header=not WORK.exists(), index=False)
        print(variant, run, seed, flush=True)


def standardised(g: pd.DataFrame, ref: list[str], stat: str = "mean", scale: bool = True):
    """Test logits of one run, each fold's shifted (and scaled) by its reference slides."""
    out = []
    for _, gf in g.groupby("fold"):
        r = gf[gf.role.isin(ref)]
        m1, m0 = getattr(r[r.y == 1].logit, stat)(), getattr(r[r.y == 0].logit, stat)()
        t = gf[gf.role == "test"]
        out.append((t.logit - (m1 + m0) / 2) / (max(m1 - m0, 1e-3) if scale else 1.0))
    return pd.concat(out)


def evaluate(path: Path = WORK) -> dict:
    """The comparison over every run of the predictions table at ``path``."""
    df = pd.read_csv(path)
    rows = []
    for (v, run, seed), g in df.groupby(["variant", "run", "seed"]):
        t = g[g.role == "test"]
        r = {"variant": v, "run": run, "seed": seed, "raw": binary_auc(t.y, t.logit)}
        for name, ref in (("tr", ["train"]), ("trv", ["train", "val"])):
            r["mid_" + name] = binary_auc(t.y, standardised(g, ref))
            r["shift_" + name] = binary_auc(t.y, standardised(g, ref, scale=False))
            r["med_" + name] = binary_auc(t.y, standardised(g, ref, "median"))
        rows.append(r)
    res = pd.DataFrame(rows)
    methods = [c for c in res.columns if c not in ("variant", "run", "seed")]
    summary = {}
    for c in methods:
        d = res[c] - res["raw"]
        summary[c] = {
            "mean_oof_auc": float(res[c].mean()),
            "sd": float(res[c].std()),
            "min": float(res[c].min()),
            "better_than_raw": int((d > 0).sum()),
            "worse": int((d < 0).sum()),
            "equal": int((d == 0).sum()),
            "mean_difference": float(d.mean()),
        }
    return {"n_runs": len(res), "summary": summary, "runs": res.round(4).to_dict("records")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*")
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--dirs", type=Path, nargs="*", default=[], help="other screened runs")
    args = ap.parse_args()
    for d in args.dirs:
        add_run(d.resolve())
    logging.basicConfig(level=logging.ERROR)
    if not args.evaluate_only:
        WORK.parent.mkdir(parents=True, exist_ok=True)
        for v in args.variants or sorted(p.name for p in SCREEN.iterdir() if p.is_dir()):
            predict_variant(v)
    out = evaluate()
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    for k, s in out["summary"].items():
        print(
            f"{k:10s} mean OOF AUC {s['mean_oof_auc']:.3f} +- {s['sd']:.3f} (min {s['min']:.3f}); "
            f"vs raw: better {s['better_than_raw']}, worse {s['worse']}, equal {s['equal']}, "
            f"mean difference {s['mean_difference']:+.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
