"""Probe: does the class-means logit calibration over-stretch models that barely separate their
own training slides, and would a bound from the spread of their training logits change the
out-of-fold AUC of well-trained runs?

Run by hand on finished runs (a workflow run, ``benchmarks/screen.py`` runs, the draws of
``benchmarks/real_tissue.py``):

    python benchmarks/calibration_scale_probe.py NAME=MODELS_DIR:FOLDS_CSV:STORES_DIR ...

``MODELS_DIR`` holds ``fold{k}/model.pt`` (the fold's model, one or ``training.replicates``
members), ``FOLDS_CSV`` the folds.csv they were trained on, ``STORES_DIR`` the patch stores
(``{slide_id}.zarr``). ``training.logit_calibration: class_means`` maps a member's bag logit z
to ``(z - m) * s`` with ``s = 2 ln 9 / gap`` (``gap``: the difference of the two class-mean
logits of its training and validation slides). Three choices of ``s`` for a model whose classes
are barely apart on its own slides are compared: ``cap`` (``min(2 ln 9 / gap, 20)``, gigamil
before 2026-12-05), ``product`` (:func:`gigamil.train.logit_calibration.fit_class_means`: above
the cap, ``min(20, gap / sd²)``, the log-odds slope of two Gaussian classes with the pooled
within-class variance ``sd²`` of those logits, linear discriminant analysis) and ``lda_all``
(``min(2 ln 9 / gap, gap / sd²)`` for every model, not only the capped ones). For every run:
the members at the cap and those ``lda_all`` would lower, and the pooled out-of-fold AUC and
probability range under each. Writes ``benchmarks/results/calibration_scale_probe.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.metrics import roc_auc  # noqa: E402
from gigamil.models.ensemble import ReplicateEnsemble  # noqa: E402
from gigamil.train.checkpoint import load_model  # noqa: E402
from gigamil.train.logit_calibration import (  # noqa: E402
    MAX_SCALE,
    TARGET_LOGIT,
    capped,
    fit_class_means,
    lda_slope,
)

RESULTS = REPO / "benchmarks" / "results" / "calibration_scale_probe.json"
VARIANTS = ("cap", "product", "lda_all")


def member_logits(model: torch.nn.Module, bags: dict[str, ZarrBag]) -> list[dict[str, float]]:
    """Raw bag logits {slide_id: z} of every member of a fold model."""
    members = list(model.members) if isinstance(model, ReplicateEnsemble) else [model]
    out = []
    with torch.inference_mode():
        for m in members:
            m.eval()
            out.append(
                {
                    s: float(m(b, max_instances_per_forward_pass=256)[0].reshape(-1)[0])
                    for s, b in bags.items()
                }
            )
    return out


def probe_run(name: str, models: Path, folds_csv: Path, stores: Path) -> dict:
    folds = pd.read_csv(folds_csv, dtype=str)
    folds["fold"] = folds["fold"].astype(int)
    classes = None
    bags = {s: ZarrBag(stores / f"{s}.zarr") for s in sorted(set(folds["slide_id"]))}
    bags = {s: b for s, b in bags.items() if len(b)}
    rows: list[dict] = []
    oof: dict[str, dict[str, float]] = {key: {} for key in VARIANTS}
    labels = {}
    for k in sorted(set(folds["fold"])):
        model, ckpt = load_model(models / f"fold{k}" / "model.pt")
        classes = ckpt["classes"]
        f = folds[folds["fold"] == k]
        y_of = {r.slide_id: classes.index(r.label) for r in f.itertuples()}
        labels.update(y_of)
        ref = [s for s in f.loc[f["role"] != "test", "slide_id"] if s in bags]
        test = [s for s in f.loc[f["role"] == "test", "slide_id"] if s in bags]
        zs = member_logits(model, {s: bags[s] for s in ref + test})
        fold_pred: dict[str, list[np.ndarray]] = {key: [] for key in VARIANTS}
        for i, z in enumerate(zs):
            zr = np.array([z[s] for s in ref])
            yr = np.array([y_of[s] for s in ref])
            cal = fit_class_means(zr, yr)
            if cal is None:
                continue
            gap = float(np.diff(cal["class_mean_logits"])[0])
            s_lda = lda_slope(zr, yr)
            scales = {
                "cap": min(2 * TARGET_LOGIT / gap, MAX_SCALE),
                "product": cal["scale"],
                "lda_all": min(2 * TARGET_LOGIT / gap, s_lda),
            }
            zt = np.array([z[s] for s in test])
            for key, sc in scales.items():
                fold_pred[key].append((zt - cal["offset"]) * sc)
            rows.append(
                {
                    "fold": k,
                    "member": i,
                    "gap": gap,
                    "scale_lda": s_lda,
                    **{f"scale_{key}": sc for key, sc in scales.items()},
                    "capped": capped(gap),
                    "lowered_by_lda_all": bool(s_lda < 2 * TARGET_LOGIT / gap),
                }
            )
        for key in fold_pred:
            if fold_pred[key]:
                mean = np.mean(fold_pred[key], axis=0)
                oof[key].update(dict(zip(test, mean, strict=True)))
    out = {"run": name, "members": rows}
    for key, pred in oof.items():
        ids = sorted(pred)
        y = np.array([labels[s] for s in ids])
        p1 = 1 / (1 + np.exp(-np.array([pred[s] for s in ids])))
        out[f"oof_auc_{key}"] = float(roc_auc(y, np.stack([1 - p1, p1], 1)))
        out[f"oof_prob_range_{key}"] = [float(p1.min()), float(p1.max())]
    out["n_capped"] = sum(r["capped"] for r in rows)
    out["n_lowered_by_lda_all"] = sum(r["lowered_by_lda_all"] for r in rows)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=MODELS_DIR:FOLDS_CSV:STORES_DIR")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for spec in args.runs:
        name, paths = spec.split("=", 1)
        models, folds_csv, stores = (Path(p) for p in paths.split(":"))
        r = probe_run(name, models, folds_csv, stores)
        results.append(r)
        figures = ", ".join(
            f"{key} {r[f'oof_auc_{key}']:.3f} (P {r[f'oof_prob_range_{key}'][0]:.3f}-"
            f"{r[f'oof_prob_range_{key}'][1]:.3f})"
            for key in VARIANTS
        )
        print(
            f"{name}: {len(r['members'])} members, {r['n_capped']} at the cap, "
            f"{r['n_lowered_by_lda_all']} lowered by lda_all; OOF AUC {figures}",
            flush=True,
        )
    args.out.write_text(
        json.dumps(
            {
                "probe": "calibration_scale",
                "target_logit": TARGET_LOGIT,
                "max_scale": MAX_SCALE,
                "runs": results,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
