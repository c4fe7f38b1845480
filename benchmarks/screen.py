"""Screen a training variant on the real-tissue benchmark's draws, without snakemake.

Run by hand after ``python benchmarks/real_tissue.py`` (it reuses each draw's patch stores,
folds, lesion masks and config.yaml):

    python benchmarks/screen.py NAME [--draws 0 1 2] [--seeds 0] [--set model.dropout=0.25 ...]
    python benchmarks/screen.py NAME --draws --dirs CLONE   # a finished demo run in CLONE

For every draw, training seed and fold it calls the package directly, as the workflow's rules
do: :func:`gigamil.train.run.train_fold` on the fold's ``train``/``val`` slides (the split of
:func:`gigamil.splits.make_folds` with the screen's ``cv`` settings, e.g. ``--set
cv.val_fraction=0``: the draw's validation patients train too, in folds.csv's order; the draw's
``config.yaml`` ``model:``/``training:`` sections plus the ``--set`` overrides, the seed as
``training.seed``), :func:`gigamil.train.predict.predict_slides` on its ``test`` slides and
:func:`gigamil.evaluate.localization.slide_localization` of their attention against the lesion
masks; folds run ``--workers`` at a time (one CPU thread each). With the settings of a
benchmark run it gives that snakemake run's figures exactly (``sm_alpha`` 0.5, draws 0/1/2, seed 0:
OOF AUC 0.806/0.806/0.951, localisation 0.821/0.723/0.798; the demo: 0.903/0.772) in about a
third of the time of
``benchmarks/real_tissue_variant.sh`` (no DAG, no heatmaps). Prints one line per variant (OOF
AUC per draw and seed, with ``--seeds`` > 1 the seed ensemble's (mean probability per slide),
mean localisation AUC, median final training loss and epochs, seconds) and appends it to
``benchmarks/work/screen/results.txt``, its figures to ``benchmarks/results/screen.json``
(committed: the evidence for a default); the per-slide predictions go to
``benchmarks/work/screen/NAME/``. A draw keeps the ``config.yaml`` it was built with: where its
``model``/``training``/``cv`` settings differ from the repo's ``config.yaml`` (both with the
``--set`` overrides), the screen says so before training and records the differences in the
variant's record (``settings_differ_from_config_yaml``); pass the shipped values with ``--set``
to screen a variant against the shipped settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import deep_update, git_commit, parse_set  # noqa: E402

from gigamil.evaluate.metrics import binary_auc  # noqa: E402

DRAWS = REPO / "benchmarks" / "work" / "real_tissue"
OUT = REPO / "benchmarks" / "work" / "screen"
RESULTS = REPO / "benchmarks" / "results" / "screen.json"


def screen_folds(
    draw_folds: pd.DataFrame, cv: dict[str, Any], sheet: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The folds the workflow's split (:func:`gigamil.splits.make_folds`) makes from a draw's
    slides with the screen's ``cv`` settings (e.g. ``cv.val_fraction=0``: the draw's validation
    patients train too): folds.csv's rows and order. With the draw's own ``cv.folds``,
    ``cv.seed`` and ``cv.stratify_by`` the test folds are the draw's (its patches were cut for
    them); the assignment of test patients does not depend on ``val_fraction``. ``sheet``
    (slide_id and the ``cv.stratify_by`` columns) is needed only with ``stratify_by``.

    Raises SystemExit if the draw's folds.csv came from other ``cv`` settings than these
    (different test folds)."""
    from gigamil.splits import make_folds

    slides = draw_folds.drop_duplicates(["cohort", "slide_id"])[
        ["cohort", "slide_id", "patient_id", "label"]
    ]
    strata = list(cv.get("stratify_by", []))
    extra = [c for c in strata if c not in slides.columns]  # e.g. site; cohort is in folds.csv
    if extra and sheet is not None:  # folds.csv lacks the sheet's other columns to balance
        slides = slides.merge(sheet[["slide_id", *extra]], on="slide_id", how="left")
    folds = make_folds(
        slides,
        int(cv["folds"]),
        float(cv["val_fraction"]),
        int(cv["seed"]),
        strata,
    )

    def tests(df: pd.DataFrame) -> set[tuple[int, str]]:
        t = df[df.role == "test"]
        return set(zip(t["fold"], t["slide_id"], strict=True))

    if tests(folds) != tests(draw_folds):
        raise SystemExit(
            "the draw's folds.csv has other test folds than cv.folds / cv.seed / "
            "cv.stratify_by give: screen with the draw's cv settings"
        )
    return folds


def fold_job(
    job: tuple[str, Path, int, int, dict[str, Any], pd.DataFrame],
) -> tuple[list[dict], dict]:
    """Train, predict and localise one fold of one draw (job: name, draw dir, training seed,
    fold, config, :func:`screen_folds`); (per-slide rows, fold summary)."""
    from gigamil.evaluate.localization import slide_localization
    from gigamil.evaluate.patch_score import patch_logit_file
    from gigamil.train.predict import predict_slides
    from gigamil.train.run import train_fold

    name, draw, seed, fold, cfg, folds = job
    logging.basicConfig(level=logging.WARNING)
    (cohort,) = cfg["cohorts"]
    classes = [str(c) for c in cfg["classes"]]
    sheet = pd.read_csv(draw / cfg["cohorts"][cohort]["sheet"]).set_index("slide_id")
    masks = draw / "results" / cohort / "lesion_masks"  # a demo cohort's generated masks
    if "lesion_mask" not in sheet.columns and masks.is_dir():
        sheet["lesion_mask"] = [str(masks / f"{s}.png") for s in sheet.index]
    f = folds[folds["fold"] == fold].copy()
    f["store"] = [str(draw / "results" / "patches" / cohort / f"{s}.zarr") for s in f.slide_id]
    out = OUT / name / draw.name / f"seed{seed}" / f"fold{fold}"
    training = {**cfg["training"], "seed": seed}
    t0 = time.time()
    # in make_folds' order, as the workflow reads folds.csv (the order of the bags is part of
    # the training's random stream)
    train, val = f[f.role == "train"], f[f.role == "val"]
    model = train_fold(
        train,
        val,
        classes,
        cfg["model"],
        training,
        out,
        resume=False,
        fold=fold,
        log_every_s=1e9,
    )
    seconds = time.time() - t0
    test = f[f.role == "test"].set_index("slide_id", drop=False)
    pred = predict_slides(model, test.reset_index(drop=True), None, out / "attention")
    rows = []
    for r in pred.itertuples(index=False):
        positive = str(r.label) != classes[0]
        loc = loc_patch = float("nan")
        if positive and "lesion_mask" in sheet.columns:
            att_file = out / "attention" / f"{r.slide_id}.npy"
            mask = draw / sheet.loc[r.slide_id, "lesion_mask"]
            res = slide_localization(
                test.loc[r.slide_id, "store"],
                np.load(att_file),
                mask,
                patch_logits=np.load(patch_logit_file(att_file)),
            )
            loc, loc_patch = res["localization_auc"], res["patch_score_localization_auc"]
        prob = float(getattr(r, f"prob_{classes[-1]}"))
        rows.append(
            {
                "draw": draw.name,
                "seed": seed,
                "fold": fold,
                "slide_id": r.slide_id,
                "y": int(positive),
                "p": prob,
                "loc": loc,
                "loc_patch": loc_patch,
            }
        )
    log = pd.read_csv(out / "train_log.csv")  # with training.replicates > 1: every member's rows
    members = [g for _, g in log.groupby("replicate")] if "replicate" in log else [log]
    info = {
        "draw": draw.name,
        "seed": seed,
        "fold": fold,
        "seconds": seconds,
        "epochs": float(np.mean([len(g) for g in members])),
        "final_loss": float(np.mean([g["train_loss"].iloc[-1] for g in members])),
    }
    return rows, info


def per_draw_figures(df: pd.DataFrame) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``({draw: OOF AUC per training seed}, {draw: mean localisation AUC per seed})`` of the
    per-slide rows ``df`` (draw, seed, slide_id, y, p, loc), draws and seeds in sorted order."""
    oof, loc = {}, {}
    for draw, d in df.groupby("draw", sort=True):
        oof[draw] = [binary_auc(g["y"], g["p"]) for _, g in d.groupby("seed")]
        loc[draw] = [float(v) for v in d.groupby("seed")["loc"].mean()]
    return oof, loc


def patch_score_figures(df: pd.DataFrame) -> dict[str, list[float]]:
    """``{draw: mean localisation AUC of the patch score per seed}`` (as
    :func:`per_draw_figures`); empty for rows without ``loc_patch`` (screens before
    2026-12-07)."""
    if "loc_patch" not in df:
        return {}
    return {
        draw: [float(v) for v in d.groupby("seed")["loc_patch"].mean()]
        for draw, d in df.groupby("draw", sort=True)
    }


def summary_line(
    name: str, sets: list[str], df: pd.DataFrame, info: pd.DataFrame, seconds: float
) -> str:
    parts = [name, " ".join(sets) or "(shipped settings)"]
    oof, loc = per_draw_figures(df)
    patch = patch_score_figures(df)
    for draw, d in df.groupby("draw", sort=True):
        text = f"{draw} OOF " + "/".join(f"{a:.3f}" for a in oof[draw])
        if len(oof[draw]) > 1:
            ens = d.groupby("slide_id").agg(y=("y", "first"), p=("p", "mean"))
            text += f" ensemble {binary_auc(ens['y'], ens['p']):.3f}"
        text += " loc " + "/".join(f"{v:.3f}" for v in loc[draw])
        if draw in patch:
            text += " patch score " + "/".join(f"{v:.3f}" for v in patch[draw])
        parts.append(text)
    aucs = [a for v in oof.values() for a in v]
    parts.append(f"mean {np.mean(aucs):.3f} min {np.min(aucs):.3f}")
    parts.append(
        f"final loss {info['final_loss'].median():.3f}, epochs {info['epochs'].median():.0f}, {seconds:.0f} s"
    )
    return " | ".join(parts)


def result_record(sets: list[str], df: pd.DataFrame, info: pd.DataFrame, seconds: float) -> dict:
    """The variant's figures for ``benchmarks/results/screen.json``: OOF and mean localisation
    AUC per draw (one per training seed, in the order of ``seeds``: sorted, whatever order
    ``--seeds`` gave), their mean and minimum over draws and seeds, the median final training
    loss and epochs, the wall time."""
    oof, loc = per_draw_figures(df)
    aucs = [a for v in oof.values() for a in v]
    return {
        "set": sets,
        "seeds": sorted({int(s) for s in df["seed"]}),  # the order of each draw's values
        "oof_auc": {k: [round(a, 4) for a in v] for k, v in oof.items()},
        "localization_auc": {k: [round(a, 4) for a in v] for k, v in loc.items()},
        "patch_score_localization_auc": {  # of the patch score (since 2026-12-07)
            k: [round(a, 4) for a in v] for k, v in patch_score_figures(df).items()
        },
        "mean_oof_auc": round(float(np.mean(aucs)), 4),
        "min_oof_auc": round(float(np.min(aucs)), 4),
        "final_loss_median": round(float(info["final_loss"].median()), 4),
        "epochs_median": float(info["epochs"].median()),
        "seconds": round(seconds),
    }


SCREENED_SECTIONS = ("model", "training", "cv")


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for a nested mapping (lists and scalars are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def settings_differences(cfg: dict, reference: dict) -> dict[str, list[Any]]:
    """``{"cv.val_fraction": [draw's value, reference's value], ...}``: the keys of the
    ``model``/``training``/``cv`` sections on which a draw's configuration (its config.yaml plus
    the ``--set`` overrides) differs from the reference (the repo's config.yaml plus the same
    overrides); a key missing on one side counts as None there. Comments in the draws'
    config.yaml files are not read: a draw built before a default changed keeps the old value,
    and a screen on it tests the variant against the settings of then."""
    a = flat({k: cfg.get(k, {}) for k in SCREENED_SECTIONS})
    b = flat({k: reference.get(k, {}) for k in SCREENED_SECTIONS})
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def save_record(path: Path, name: str, record: dict) -> None:
    """Add (or replace) ``name``'s record in the JSON file ``path``, with the git commit."""
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = {**record, "git_commit": git_commit()}
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name", help="the variant's name (its output folder)")
    ap.add_argument("--draws", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument(
        "--dirs",
        type=Path,
        nargs="*",
        default=[],
        help="other finished workflow runs to screen on too (e.g. a clone after the demo's "
        "snakemake run): their config.yaml, results/splits, results/patches, lesion masks",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--workers", type=int, default=2, help="folds trained at once")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = []
    overrides = parse_set(args.set)
    reference = deep_update(yaml.safe_load((REPO / "config.yaml").read_text()), overrides)
    differs: dict[str, dict[str, list[Any]]] = {}
    for draw in [DRAWS / f"draw{d}" for d in args.draws] + [d.resolve() for d in args.dirs]:
        if not (draw / "config.yaml").is_file():
            raise SystemExit(f"no {draw}/config.yaml: run python benchmarks/real_tissue.py first")
        cfg = deep_update(yaml.safe_load((draw / "config.yaml").read_text()), overrides)
        diff = settings_differences(cfg, reference)
        if diff:
            differs[draw.name] = diff
            shown = ", ".join(f"{k} {v[0]!r} (config.yaml: {v[1]!r})" for k, v in diff.items())
            print(f"note: {draw.name} trains with its own settings where they differ: {shown}")
        draw_folds = pd.read_csv(
            draw / "results" / "splits" / cfg["experiment"] / "folds.csv",
            dtype={"slide_id": str, "patient_id": str, "cohort": str},
        )
        (cohort,) = cfg["cohorts"]
        sheet = pd.read_csv(draw / cfg["cohorts"][cohort]["sheet"], dtype={"slide_id": str})
        folds = screen_folds(draw_folds, cfg["cv"], sheet)
        jobs += [
            (args.name, draw, s, k, cfg, folds)
            for s in args.seeds
            for k in range(cfg["cv"]["folds"])
        ]
    t0 = time.time()
    results = []
    with ProcessPoolExecutor(args.workers) as ex:
        for done, result in enumerate(ex.map(fold_job, jobs), start=1):  # in the jobs' order
            results.append(result)
            print(f"  {done} of {len(jobs)} folds done ({time.time() - t0:.0f} s)", flush=True)
    df = pd.DataFrame([row for rows, _ in results for row in rows])
    info = pd.DataFrame([i for _, i in results])
    (OUT / args.name).mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / args.name / "predictions.csv", index=False)
    info.to_csv(OUT / args.name / "folds.csv", index=False)
    line = summary_line(args.name, args.set, df, info, time.time() - t0)
    print(line)
    with (OUT / "results.txt").open("a") as fh:
        fh.write(line + "\n")
    record = result_record(args.set, df, info, time.time() - t0)
    if differs:  # the draws' own settings, where not those of the repo's config.yaml
        record["settings_differ_from_config_yaml"] = differs
    save_record(RESULTS, args.name, record)


if __name__ == "__main__":
    main()
