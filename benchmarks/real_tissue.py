"""Benchmark: gigamil vs a colour-histogram baseline on mosaic cohorts of real labelled tiles.

Run by hand (not a test):

    python benchmarks/real_tissue.py [--tiles DIR] [--seed 0] [--draws 3] [--cores 2]
                                     [--set training.epochs=2 ...]

For each draw (seeds seed, seed+1, ...):
1. Builds a mosaic cohort (gigamil.demo_tiles.make_tile_cohort, the generator of the real-tissue
   demo) from a folder of labelled tiles (``0/`` normal, ``1/`` tumour). Default: the shared
   PatchCamelyon tiles ../shared/data/pcam-valid without the tiles packaged for the demo
   (``--exclude-packaged``, on by default), i.e. other tiles than the demo's.
2. Runs the real pipeline on it with snakemake (``--snakefile <repo>/Snakefile --directory
   benchmarks/work/real_tissue/draw{seed}``), with the repo's config.yaml settings (plus the
   ``--set`` overrides) and that cohort as the only, ``train``, cohort, up to the
   cross-validation summary (results/eval/real_tissue/summary.json); the patches follow the
   tiles (preprocessing.patches.mpp = --tile-mpp, patch_px = the tiles' side, so that every
   patch is one tile as in the demo) unless ``--set`` names them. The work dir is wiped first,
   so the wall time covers everything: masks, patches, splits, training, prediction, evaluation.
3. Runs the colour-histogram baseline (gigamil.evaluate.baseline: weak-label logistic regression
   on per-patch RGB histograms, slide score = mean of the top 20 % patch scores) on the same patch
   stores and the same folds (results/splits/real_tissue/folds.csv), out of fold.
4. Reports per draw and mean ± sd over draws: gigamil OOF AUC, localisation AUC, wall time and
   final training loss per model (fold × replicate) (results/models/real_tissue/fold{k}/train_log.csv); the
   baseline's OOF AUC and localisation AUC; the fraction of tiles that became patches; and the
   paired difference of the two OOF AUCs on the draw's slides with a 95 % patient-level paired
   bootstrap interval and the fraction of resamples in which gigamil is ahead
   (gigamil.evaluate.metrics.paired_auc_difference): whether a draw's difference is more than
   which slides the cohort happened to hold. Writes WORKDIR/real_tissue.json (``--out``; the
   committed records in benchmarks/results/ name theirs).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
WORK = ROOT / "work" / "real_tissue"
DEFAULT_TILES = REPO.parent / "shared" / "data" / "pcam-valid"
EXPERIMENT = "real_tissue"
COHORT = "real"

sys.path.insert(0, str(REPO / "workflow"))  # this tree's gigamil, also without an install


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["training.epochs=2", "cv.folds=4"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. training.epochs=2")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def git_commit() -> str:
    """The repository's HEAD commit, for a result file ("unknown" outside a git checkout)."""
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() or "unknown"


def deep_update(base: dict, upd: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in upd.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_cohort(
    wd: Path, args: argparse.Namespace, seed: int, exclude: Collection[str] = ()
) -> pd.DataFrame:
    """The mosaic cohort in wd/cohort and its sheet (absolute paths, lesion_mask column), from
    the tiles of ``args.tiles`` whose sha256 is not in ``exclude``."""
    from gigamil.demo_tiles import make_tile_cohort

    cohort = wd / "cohort"
    sheet = make_tile_cohort(
        cohort,
        seed=seed,
        n_patients=args.patients,
        slides_per_patient=args.slides_per_patient,
        tiles=args.tiles,
        exclude=exclude,
        tiles_per_slide=tuple(args.tiles_per_slide),
        tile_mpp=args.tile_mpp,
    )
    sheet["path"] = [str(Path(p).resolve()) for p in sheet["path"]]
    sheet["lesion_mask"] = [
        str((cohort / "lesion_masks" / f"{s}.png").resolve()) for s in sheet["slide_id"]
    ]
    sheet.to_csv(wd / "sheet.csv", index=False)
    return sheet


def patch_geometry(
    tiles: Path | None,
    tile_mpp: float,
    exclude: Collection[str] = (),
    pool: list[Any] | None = None,
) -> dict[str, Any]:
    """The ``preprocessing.patches`` overrides that make every patch one tile, as in the demo:
    ``mpp`` = the tiles' µm/px, ``patch_px`` = the side of the usable tiles (not in ``exclude``,
    enough tissue: the tiles the cohort builder draws from), which must all be square and of one
    size (:func:`gigamil.tile_pool.tile_side`); ``pool``: those tiles, when already read.
    Raises GigamilError otherwise or for no usable tile."""
    from gigamil.errors import GigamilError
    from gigamil.tile_pool import tile_side, usable_pool

    pool = usable_pool(tiles, exclude) if pool is None else pool
    if not pool:
        raise GigamilError(f"tile source {tiles}: no usable tile (not excluded, with tissue)")
    return {"preprocessing": {"patches": {"mpp": float(tile_mpp), "patch_px": tile_side(pool)}}}


def check_tile_supply(
    tiles: Path | None,
    exclude: Collection[str],
    args: argparse.Namespace,
    pool: list[Any] | None = None,
) -> None:
    """Raise GigamilError before the first draw if any draw (seeds ``args.seed`` ..) needs more
    usable tiles of a class than the folder holds: a long run does not fail at a later draw."""
    from gigamil.demo_tiles import tiles_needed
    from gigamil.errors import GigamilError
    from gigamil.tile_pool import CLASS_DIRS, MIN_TILE_TISSUE, usable_pool

    have = {c: 0 for c in (0, 1)}
    for t in usable_pool(tiles, exclude) if pool is None else pool:
        have[t.label] += 1
    seeds = range(args.seed, args.seed + args.draws)
    kw = {"n_patients": args.patients, "slides_per_patient": args.slides_per_patient}
    need = [tiles_needed(s, tiles_per_slide=tuple(args.tiles_per_slide), **kw) for s in seeds]
    short = [
        f"{have[c]} usable tiles in {CLASS_DIRS[c]}/ but draw seed {seed} needs {n[c]}"
        for c in (0, 1)
        for seed, n in zip(seeds, need, strict=True)
        if n[c] > have[c]
    ]
    if short:
        raise GigamilError(
            f"tile source {tiles}: {'; '.join(short)} (usable: not excluded, >= "
            f"{MIN_TILE_TISSUE:g} tissue; {supply_detail(tiles, exclude)}): use fewer draws, "
            "--patients or --slides-per-patient, or more tiles"
        )


def supply_detail(tiles: Path | None, exclude: Collection[str]) -> str:
    """Where a class folder's tiles went: missing folder, tiles in all, the demo's packaged ones
    left out (``--exclude-packaged``, on by default) and those with too little tissue."""
    from gigamil.tile_pool import (
        CLASS_DIRS,
        MIN_TILE_TISSUE,
        read_tile_pool,
        unique_tiles,
        usable_tiles,
    )

    if tiles is None:
        return "the packaged tiles"
    parts = []
    every = unique_tiles(read_tile_pool(tiles))
    for c in (0, 1):
        if not (Path(tiles) / CLASS_DIRS[c]).is_dir():
            parts.append(f"{CLASS_DIRS[c]}/ does not exist")
            continue
        mine = [t for t in every if t.label == c]
        kept = [t for t in mine if t.sha256 not in exclude]
        note = f"{len(mine)} tiles in {CLASS_DIRS[c]}/"
        if len(kept) < len(mine):
            note += (
                f", {len(mine) - len(kept)} of them the demo's (--no-exclude-packaged keeps them)"
            )
        low = len(kept) - len(usable_tiles(kept, MIN_TILE_TISSUE))
        parts.append(note + (f", {low} with too little tissue" if low else ""))
    return "; ".join(parts)


def check_out(out: Path, seeds: range) -> None:
    """Raise GigamilError before any work when ``out`` holds draws of seeds this run would not
    redo (its JSON is rewritten after every draw: a run continuing a killed one with ``--seed``
    would silently replace the draws the killed run kept). Rerunning the same command redoes
    every draw and may replace them."""
    from gigamil.errors import GigamilError

    if not out.is_file():
        return
    try:
        record = json.loads(out.read_text())
        kept = [int(d["seed"]) for d in record["draws"]]  # no draws: not a result either
    except (ValueError, KeyError, TypeError, AttributeError):
        raise GigamilError(f"{out}: not a real_tissue.py result; pass another --out") from None
    other = sorted(set(kept) - set(seeds))
    if other:
        raise GigamilError(
            f"{out} holds draw(s) of seed {', '.join(map(str, other))}, which this run (seeds "
            f"{seeds.start}-{seeds.stop - 1}) would drop when it writes the file: pass another "
            "--out (e.g. one per batch of draws), or delete it"
        )


def fit_folds(overrides: dict[str, Any], n_patients: int, seeds: range) -> dict[str, Any]:
    """``overrides`` with ``cv.folds`` lowered to the patients of the smaller class when the
    cohort has fewer (``--patients`` below 12 with the repo's 6 folds), unless ``--set`` gave
    ``cv.folds``: a fold needs a test patient of each class. GigamilError for a class with
    fewer than 2 patients."""
    from gigamil.demo_io import patient_labels

    if "folds" in overrides.get("cv", {}):
        return overrides
    folds = int(yaml.safe_load((REPO / "config.yaml").read_text())["cv"]["folds"])
    fewest = min(
        min(labels.count(c) for c in set(labels))
        for labels in (patient_labels(seed, n_patients) for seed in seeds)
    )
    if fewest < 2:  # known now, not after the cohort is built and preprocessed
        from gigamil.errors import GigamilError

        raise GigamilError(
            f"--patients {n_patients} leaves a class with {fewest} patient(s) in a draw; "
            "cross-validation needs at least 2 of each class: use --patients 4 or more"
        )
    if fewest >= folds:
        return overrides
    print(f"cv.folds: {folds} -> {fewest} ({fewest} patients in the smaller class)")
    return deep_update(overrides, {"cv": {"folds": fewest}})


def draw_config(overrides: dict[str, Any], sheet: str) -> dict[str, Any]:
    """The repo's config.yaml with the cohort replaced by ours (its ``sheet``) and the
    overrides applied: what every draw runs."""
    cfg = deep_update(yaml.safe_load((REPO / "config.yaml").read_text()), overrides)
    cfg["experiment"] = EXPERIMENT
    cfg["cohorts"] = {COHORT: {"sheet": sheet, "role": "train"}}
    return cfg


def check_settings(overrides: dict[str, Any]) -> None:
    """:func:`draw_config` validated now, before any cohort is built: a ``--set
    training.epochs=0`` failed inside snakemake, after the first draw's cohort and
    preprocessing. Raises ConfigError."""
    from gigamil.config import validate_config

    validate_config(draw_config(overrides, "sheet.csv"), source="config.yaml with --set")


def write_config(wd: Path, overrides: dict[str, Any]) -> Path:
    """Write the draw's :func:`draw_config` to ``wd/config.yaml``."""
    cfg = draw_config(overrides, str(wd / "sheet.csv"))
    path = wd / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


PROGRESS_S = 60.0  # seconds between progress lines of a running draw


def pipeline_progress(log_path: Path) -> str:
    """Snakemake's last ``N of M steps (P%) done`` in its log, or that it is starting."""
    import re

    text = log_path.read_text(errors="replace") if log_path.is_file() else ""
    done = re.findall(r"(\d+) of (\d+) steps \((\d+%)\) done", text)
    return f"{done[-1][0]} of {done[-1][1]} steps done" if done else "building the cohort's DAG"


def run_pipeline(wd: Path, config: Path, cores: int) -> float:
    """snakemake up to the CV summary; returns the wall time in seconds."""
    target = f"results/eval/{EXPERIMENT}/summary.json"
    cmd = [
        *(sys.executable, "-m", "snakemake"),
        *("--snakefile", str(REPO / "Snakefile"), "--directory", str(wd)),
        *("--configfile", str(config), "--cores", str(cores), target),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "workflow"), *filter(None, [env.get("PYTHONPATH")])]
    )
    start, log_path = time.perf_counter(), wd / "snakemake.log"
    print(f"  snakemake running (its log: {log_path})", flush=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:  # a line every PROGRESS_S: minutes of silence otherwise
            try:
                proc.wait(timeout=PROGRESS_S)
            except subprocess.TimeoutExpired:
                elapsed = time.perf_counter() - start
                print(f"  {pipeline_progress(log_path)} ({elapsed:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-30:]
        raise SystemExit(
            f"snakemake failed ({proc.returncode}); {wd}/snakemake.log:\n" + "\n".join(tail)
        )
    return seconds


def collect_gigamil(wd: Path, experiment: str = EXPERIMENT) -> dict[str, Any]:
    """OOF and localisation AUC from summary.json, per-fold training figures from train_log.csv."""
    res = wd / "results"
    summary = json.loads((res / "eval" / experiment / "summary.json").read_text())
    folds = sorted(pd.read_csv(res / "splits" / experiment / "folds.csv")["fold"].unique())
    per_fold = []
    for k in folds:
        log = pd.read_csv(res / "models" / experiment / f"fold{k}" / "train_log.csv")
        # training.replicates > 1: one entry per member (the log's replicate column)
        members = log.groupby("replicate") if "replicate" in log else [(None, log)]
        for member, rows in members:
            last = rows.iloc[-1]
            per_fold.append(
                {
                    "fold": int(k),
                    **({} if member is None else {"replicate": int(member)}),
                    "epochs": int(last["epoch"]),
                    "best_epoch": int(last["best_epoch"]),
                    "final_train_loss": float(last["train_loss"]),
                    "min_train_loss": float(rows["train_loss"].min()),
                }
            )
    per_slide = pd.read_csv(res / "eval" / experiment / "per_slide_predictions.csv")
    return {
        "oof_auc": summary["oof_auc"],
        "oof_auc_ci": summary.get("oof_auc_ci"),
        "patient_auc": summary.get("patient_auc"),
        "balanced_accuracy": summary.get("balanced_accuracy"),
        "brier": summary.get("brier"),  # absent from summaries before 2026-12-05
        "predicted": {str(k): int(v) for k, v in per_slide["pred"].value_counts().items()},
        "fold_auc": summary.get("fold_auc"),
        "localization_auc": summary.get("localization_auc"),
        "localization_auc_sd": summary.get("localization_auc_sd"),
        "localization_n_slides": summary.get("localization_n_slides"),
        # the patch score's (attention and patch logits; absent before 2026-12-07)
        "patch_score_localization_auc": summary.get("patch_score_localization_auc"),
        "folds": per_fold,
    }


def one_class_note(predicted: dict[str, int], classes: list[str]) -> str:
    """A warning when every predicted slide got the same class (``predicted``: slides per
    predicted class): the OOF AUC ranks slides and can be high while the probabilities sit on
    the wrong side of 0.5 for a whole class, which only the balanced accuracy shows."""
    called = [c for c, n in predicted.items() if n > 0]
    if len(called) != 1:
        return ""
    missing = ", ".join(c for c in classes if c not in called)
    return (
        f" | NOTE: every slide predicted {called[0]} (none {missing}): the ranking (AUC) may"
        " be right, the probabilities' scale is not (balanced accuracy 0.5)"
    )


def compare_oof(wd: Path, baseline: dict[str, Any], positive: str) -> dict[str, Any]:
    """gigamil's (its ``prob_<positive>``) minus the baseline's OOF AUC on the same slides,
    paired patient bootstrap."""
    ours = pd.read_csv(wd / "results" / "eval" / EXPERIMENT / "per_slide_predictions.csv")
    return paired_with_baseline(ours, f"prob_{positive}", baseline["per_slide"], str(wd))


def ahead_text(d: dict[str, Any]) -> str:
    """How often gigamil's OOF AUC is above the baseline's in the paired bootstrap: strictly
    ahead and level separately (ties are common on small cohorts; a record written before both
    were kept has only ``p_a_better``, ties counted half)."""
    if "p_a_ahead" not in d:
        return f"gigamil ahead in {d['p_a_better']:.0%} of resamples (ties counted half)"
    return f"gigamil ahead in {d['p_a_ahead']:.0%} of resamples, level in {d['p_level']:.0%}"


def paired_with_baseline(
    ours: pd.DataFrame, score: str, per_slide: list[dict], where: str, y: str | None = None
) -> dict[str, Any]:
    """OOF AUC of ``ours[score]`` minus the baseline's (``per_slide``: its slide_id, label 0/1
    and score per slide) on the same slides, labels from the baseline, with the paired patient
    bootstrap of :func:`gigamil.evaluate.metrics.paired_auc_difference`. ``ours`` has one row per
    slide with ``slide_id`` and ``patient_id``; its column ``y`` (if given) must hold the same
    0/1 labels. RuntimeError, naming ``where``, if the two scored different slides or labels."""
    from gigamil.evaluate.metrics import paired_auc_difference

    theirs = pd.DataFrame(per_slide)[["slide_id", "label", "score"]]
    theirs = theirs.rename(columns={"label": "label_baseline", "score": "score_baseline"})
    both = ours.merge(theirs, on="slide_id", validate="1:1")
    if len(both) != len(ours) or len(both) != len(theirs):
        raise RuntimeError(f"{where}: gigamil and the baseline scored different slides")
    if y is not None and not (both[y] == both["label_baseline"]).all():
        raise RuntimeError(f"{where}: labels differ between gigamil and the baseline")
    return paired_auc_difference(
        both["label_baseline"].to_numpy(),
        both[score].to_numpy(),
        both["score_baseline"].to_numpy(),
        groups=both["patient_id"].to_numpy(),
    )


def tile_coverage(wd: Path, sheet: pd.DataFrame) -> float:
    """Fraction of the cohort's tiles that became patches (tissue detection on the mosaics)."""
    from gigamil.data.store import read_store

    tiles = pd.read_csv(wd / "cohort" / "tiles.csv")
    hit = 0
    for s in sheet["slide_id"]:
        _, _, grid, _ = read_store(wd / "results" / "patches" / COHORT / f"{s}.zarr")
        t = tiles[tiles["slide_id"] == s]
        hit += len(set(zip(t["row"], t["col"], strict=True)) & set(map(tuple, grid.tolist())))
    return hit / len(tiles)


def run_baseline(
    wd: Path,
    sheet: pd.DataFrame,
    positive: str,
    experiment: str = EXPERIMENT,
    cohort: str = COHORT,
) -> dict[str, Any]:
    """The colour-histogram baseline on the patches and folds of the workflow run in ``wd``
    (lesion-mask paths in ``sheet`` relative to ``wd`` or absolute); with ``smoothed``, its
    figures with the patch scores smoothed over the grid as the run's ``model.pool: smabmil``
    smooths attention (its ``model.sm_alpha``; wd/config.yaml)."""
    from gigamil.config import validate_config
    from gigamil.evaluate.baseline import evaluate_stores

    folds = pd.read_csv(
        wd / "results" / "splits" / experiment / "folds.csv", dtype={"slide_id": str}
    )
    stores = {s: wd / "results" / "patches" / cohort / f"{s}.zarr" for s in sheet["slide_id"]}
    labels = dict(zip(sheet["slide_id"], (sheet["label"] == positive).astype(int), strict=True))
    masks = {  # slides without a mask (normal ones may have none) are not localised
        s: wd / m
        for s, m in zip(sheet["slide_id"], sheet["lesion_mask"], strict=True)
        if isinstance(m, str) and m
    }
    model = validate_config(yaml.safe_load((wd / "config.yaml").read_text()))["model"]
    alpha = model["sm_alpha"] if model["pool"] == "smabmil" else None
    start = time.perf_counter()
    out = evaluate_stores(stores, labels, folds, masks, sm_alpha=alpha)
    out["seconds"] = time.perf_counter() - start
    return out


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None (JSON has no NaN), numpy scalars -> Python numbers, recursively."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def mean_sd(values: list[float]) -> dict[str, float | None]:
    vals = [float(v) for v in values if v is not None and v == v]
    return {
        "mean": statistics.fmean(vals) if vals else None,
        "sd": statistics.stdev(vals) if len(vals) > 1 else None,
        "n": len(vals),
    }


def fmt(stat: dict[str, float | None], digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    sd = "" if stat["sd"] is None else f" ± {stat['sd']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}{sd}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from gigamil.commands._argtypes import SLIDES_PER_PATIENT

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tiles", type=Path, default=DEFAULT_TILES, help="labelled tile folder (0/, 1/)"
    )
    p.add_argument(
        "--exclude-packaged",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave out the tiles packaged for the demo (default: on)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw (default 0)")
    p.add_argument(
        "--draws", type=int, default=3, help="cohorts to build, seeds seed.. (default 3)"
    )
    p.add_argument(
        "--patients",
        type=int,
        default=16,
        help="patients per cohort, half of them lesion (default 16, the demo's; below 12, "
        "cv.folds is lowered to the patients of a class unless --set cv.folds=N)",
    )
    p.add_argument(
        "--slides-per-patient",
        type=SLIDES_PER_PATIENT,  # N or LO-HI, as gigamil demo's
        default="1-2",
        help="N, or LO-HI drawn per patient (default 1-2, the demo's; 2 before 2026-12-07)",
    )
    p.add_argument(
        "--tiles-per-slide",
        type=int,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="tissue tiles per slide, an inclusive range (default: the demo's, 20 28)",
    )
    p.add_argument(
        "--tile-mpp",
        type=float,
        default=None,
        help="µm/px of the tiles (default 0.972, PatchCamelyon's); resized tiles have another: "
        "e.g. PCam's 96-px tiles resized to 64 px are 0.972 x 96 / 64 = 1.458 µm/px",
    )
    p.add_argument("--cores", type=int, default=2, help="snakemake --cores (default 2)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config.yaml keys, e.g. --set training.epochs=2 training.seed=1 "
        "(as screen.py; --set may also be repeated)",
    )
    p.add_argument("--workdir", type=Path, default=WORK)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default: WORKDIR/real_tissue.json; the committed records under "
        "benchmarks/results/ are written with an explicit --out)",
    )
    p.add_argument(
        "--baseline-on",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="only run the colour baseline on a finished workflow run (e.g. a clone after the "
        "demo's snakemake run: its config.yaml, one cohort with lesion masks), print its OOF "
        "and localisation AUC beside the run's own figures (--out records both), and stop",
    )
    args = p.parse_args(argv)
    from gigamil.demo_io import check_cohort_size
    from gigamil.demo_tiles import PCAM_MPP, TILES_PER_SLIDE
    from gigamil.errors import GigamilError
    from gigamil.wsi.mpp import MPP_MAX, MPP_MIN

    if args.draws < 1:
        p.error(f"--draws must be at least 1 (got {args.draws})")
    try:  # 3-1, 0 or 10 slides: before the tile folder is read
        check_cohort_size(args.patients, args.slides_per_patient)
    except GigamilError as exc:
        p.error(f"--patients {args.patients} --slides-per-patient {args.slides_per_patient}: {exc}")
    fixed = sorted({"experiment", "cohorts"} & parse_set(args.overrides).keys())
    if fixed:  # write_config sets them: a --set of them would be dropped without a word
        p.error(f"--set {', '.join(fixed)}: set by the benchmark itself, cannot be overridden")
    if args.tile_mpp is None and args.tiles != DEFAULT_TILES:
        print(
            f"--tile-mpp not given: the tiles of {args.tiles} are taken as PatchCamelyon's "
            f"{PCAM_MPP} µm/px",
            file=sys.stderr,
        )
    args.tiles_per_slide = args.tiles_per_slide or list(TILES_PER_SLIDE)
    args.tile_mpp = PCAM_MPP if args.tile_mpp is None else args.tile_mpp
    if not MPP_MIN <= args.tile_mpp <= MPP_MAX:
        p.error(
            f"--tile-mpp {args.tile_mpp:g} µm/px is outside {MPP_MIN:g}-{MPP_MAX:g}: give the "
            "tiles' µm/px, e.g. 0.972 for PatchCamelyon's 96-px tiles, 1.458 for them resized "
            "to 64 px"
        )
    args.out = args.workdir / "real_tissue.json" if args.out is None else args.out
    return args


def baseline_wall_note(baseline: dict[str, Any]) -> str:
    """``, wall 2.0 s on the pipeline's patches``: the baseline's own time beside gigamil's
    (its patch stores are the pipeline's, whose extraction gigamil's wall time includes)."""
    if baseline.get("seconds") is None:
        return ""
    return f", wall {baseline['seconds']:.1f} s on the pipeline's patches"


def smoothed_note(baseline: dict[str, Any]) -> str:
    """`` (smoothed as gigamil's attention: OOF AUC, localisation)`` of a baseline result, or
    "" without the smoothed figures."""
    if "smoothed" not in baseline:
        return ""
    sm = baseline["smoothed"]
    return (
        f" (smoothed as gigamil's attention, sm_alpha {sm['sm_alpha']:g}: OOF AUC "
        f"{sm['oof_auc']:.3f}, localisation {sm['localization_auc']:.3f})"
    )


def baseline_on_run(wd: Path) -> dict[str, Any]:
    """The colour baseline on the finished workflow run in ``wd`` (its config.yaml's experiment
    and single cohort; the sheet's ``lesion_mask`` column)."""
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    if len(cfg["cohorts"]) != 1:
        raise SystemExit(
            f"--baseline-on: {wd}/config.yaml has {len(cfg['cohorts'])} cohorts, not 1"
        )
    (cohort,) = cfg["cohorts"]
    sheet = pd.read_csv(wd / cfg["cohorts"][cohort]["sheet"], dtype={"slide_id": str})
    return run_baseline(wd, sheet, str(cfg["classes"][1]), cfg["experiment"], cohort)


def gigamil_of_run(wd: Path) -> dict[str, Any] | None:
    """The finished run's own figures (:func:`collect_gigamil` of its config.yaml's
    experiment); None when it has no evaluation (results/eval/{experiment}/summary.json)."""
    experiment = str(yaml.safe_load((wd / "config.yaml").read_text())["experiment"])
    if not (wd / "results" / "eval" / experiment / "summary.json").is_file():
        return None
    return collect_gigamil(wd, experiment)


def patch_score_note(ours: dict[str, Any]) -> str:
    """`` (patch score 0.807)``: gigamil's localisation AUC of the patch score, "" without."""
    score = ours.get("patch_score_localization_auc")
    return "" if score is None else f" (patch score {score:.3f})"


def gigamil_run_line(ours: dict[str, Any] | None) -> str:
    """``gigamil on the run: OOF AUC 0.972, patient AUC 1.000, ...``: the run's own figures."""
    if ours is None:
        return "gigamil on the run: no evaluation (summary.json) yet, its figures not recorded"
    losses = [f["final_train_loss"] for f in ours["folds"]]
    loc = ours["localization_auc"]
    return (
        f"gigamil on the run: OOF AUC {ours['oof_auc']:.3f}, patient AUC "
        f"{ours['patient_auc']:.3f}, balanced accuracy {ours['balanced_accuracy']:.3f}, "
        + (
            f"localisation AUC {loc:.3f} ± {ours['localization_auc_sd']:.3f} "
            f"({ours['localization_n_slides']} slides), "
            if loc is not None
            else ""
        )
        + f"final training loss {min(losses):.3f}-{max(losses):.3f} ({len(losses)} models)"
    )


def write_baseline_record(
    path: Path,
    run_dir: Path,
    baseline: dict[str, Any],
    argv: list[str] | None,
    gigamil: dict[str, Any] | None = None,
) -> None:
    """``--baseline-on RUN_DIR --out FILE``: the baseline's figures beside the run's own
    (``gigamil``: :func:`collect_gigamil`, e.g. the demo's figures README reports), with the
    command, the date, this repository's commit and RUN_DIR's (the code that made the run)."""
    run_commit = subprocess.run(
        ["git", "-C", str(run_dir), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {
        "command": " ".join(["python", "benchmarks/real_tissue.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "run_dir_git_commit": run_commit or "unknown",
        **({"gigamil": gigamil} if gigamil is not None else {}),
        "baseline": baseline,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(record), indent=1, allow_nan=False) + "\n")


def write_result(
    args: argparse.Namespace,
    argv: list[str] | None,
    started: dict[str, str],
    overrides: dict[str, Any],
    draws: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write ``args.out`` with the draws done so far (after every draw: a crash or a kill
    keeps the finished draws; ``draws_requested`` says how many were asked for). Returns the
    summary (mean ± sd over the draws done)."""
    summary = {
        "gigamil_oof_auc": mean_sd([d["gigamil"]["oof_auc"] for d in draws]),
        "gigamil_balanced_accuracy": mean_sd(
            [d["gigamil"].get("balanced_accuracy") for d in draws]
        ),
        "gigamil_localization_auc": mean_sd([d["gigamil"]["localization_auc"] for d in draws]),
        "gigamil_patch_score_localization_auc": mean_sd(
            [d["gigamil"].get("patch_score_localization_auc") for d in draws]
        ),
        "gigamil_wall_seconds": mean_sd([d["gigamil"]["wall_seconds"] for d in draws]),
        "gigamil_final_train_loss": mean_sd(
            [f["final_train_loss"] for d in draws for f in d["gigamil"]["folds"]]
        ),
        "baseline_oof_auc": mean_sd([d["baseline"]["oof_auc"] for d in draws]),
        "baseline_localization_auc": mean_sd([d["baseline"]["localization_auc"] for d in draws]),
        # the baseline's own time, on the pipeline's patch stores (their extraction is in
        # gigamil's wall time)
        "baseline_wall_seconds": mean_sd([d["baseline"].get("seconds") for d in draws]),
        "oof_auc_difference": mean_sd([d["gigamil_minus_baseline"]["difference"] for d in draws]),
    }
    smoothed = [d["baseline"]["smoothed"] for d in draws if "smoothed" in d["baseline"]]
    if smoothed:  # the baseline with gigamil's spatial prior (model.sm_alpha)
        summary["baseline_smoothed_oof_auc"] = mean_sd([b["oof_auc"] for b in smoothed])
        summary["baseline_smoothed_localization_auc"] = mean_sd(
            [b["localization_auc"] for b in smoothed]
        )
    result = {
        "command": " ".join(["python", "benchmarks/real_tissue.py", *(argv or sys.argv[1:])]),
        **started,  # date and git commit at the start
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cores": args.cores},
        "tiles": str(args.tiles),
        "exclude_packaged": args.exclude_packaged,
        "cohort": {
            "patients": args.patients,
            "slides_per_patient": args.slides_per_patient,
            "tiles_per_slide": args.tiles_per_slide,
            "tile_mpp": args.tile_mpp,
        },
        "config_overrides": overrides,  # with the tiles' patch geometry (since 32b3f24)
        "draws_requested": args.draws,
        "summary": summary,
        "draws": draws,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(json_safe(result), indent=1, allow_nan=False) + "\n")
    tmp.replace(args.out)  # never a half-written result file
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.baseline_on is not None:
        out = baseline_on_run(args.baseline_on.resolve())
        print(
            f"colour baseline on {args.baseline_on}: OOF AUC {out['oof_auc']:.3f}, "
            f"localisation AUC {out['localization_auc']:.3f} "
            f"({out['localization_n_slides']} slides), {out['seconds']:.0f} s{smoothed_note(out)}"
        )
        ours = gigamil_of_run(args.baseline_on.resolve())
        print(gigamil_run_line(ours))
        if args.out is not None:  # a record, as README's demo figures have
            write_baseline_record(args.out, args.baseline_on.resolve(), out, argv, ours)
        return 0
    from gigamil.tile_pool import packaged_tile_hashes, usable_pool

    started = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),  # the code that runs, even if HEAD moves meanwhile
    }
    overrides = parse_set(args.overrides)
    given = overrides.get("preprocessing", {}).get("patches", {})
    exclude = packaged_tile_hashes() if args.exclude_packaged else set()
    pool = usable_pool(args.tiles, exclude)  # read (and its skipped files warned of) once
    if not {"mpp", "patch_px"} <= set(given):  # --set wins over the tiles' geometry
        geometry = patch_geometry(args.tiles, args.tile_mpp, exclude, pool)
        overrides = deep_update(geometry, overrides)
    check_tile_supply(args.tiles, exclude, args, pool)
    check_out(args.out, range(args.seed, args.seed + args.draws))
    overrides = fit_folds(overrides, args.patients, range(args.seed, args.seed + args.draws))
    check_settings(overrides)
    used = overrides["preprocessing"]["patches"]
    print(f"patches: {used['patch_px']} px at {used['mpp']} µm/px", end="")
    if given:
        print(
            " (--set: if a patch is not one tile, the 'tiles -> patches' fraction is not "
            "meaningful)"
        )
    else:
        print(" (the tiles' size and µm/px: every patch is one tile)")
    classes = [str(c) for c in yaml.safe_load((REPO / "config.yaml").read_text())["classes"]]
    positive = classes[1]
    draws: list[dict[str, Any]] = []
    summary = None
    for seed in range(args.seed, args.seed + args.draws):
        wd = (args.workdir / f"draw{seed}").resolve()
        shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir(parents=True)
        sheet = build_cohort(wd, args, seed, exclude)
        wall = run_pipeline(wd, write_config(wd, overrides), args.cores)
        draw = {
            "seed": seed,
            "n_slides": len(sheet),
            "n_tiles": int(len(pd.read_csv(wd / "cohort" / "tiles.csv"))),
            "tile_patch_fraction": tile_coverage(wd, sheet),
            "gigamil": {**collect_gigamil(wd), "wall_seconds": wall},
            "baseline": run_baseline(wd, sheet, positive),
        }
        draw["gigamil_minus_baseline"] = compare_oof(wd, draw["baseline"], positive)
        draws.append(draw)
        g, b, d = draw["gigamil"], draw["baseline"], draw["gigamil_minus_baseline"]
        losses = ", ".join(f"{f['final_train_loss']:.3f}" for f in g["folds"])
        print(
            f"draw seed {seed}: gigamil OOF AUC {g['oof_auc']:.3f}, balanced accuracy "
            f"{g['balanced_accuracy']:.3f}, localisation "
            f"{g['localization_auc']:.3f}{patch_score_note(g)}, wall {wall:.0f} s, "
            f"final train loss per model [{losses}]"
            f" | baseline OOF AUC {b['oof_auc']:.3f}, localisation {b['localization_auc']:.3f}"
            f"{smoothed_note(b)}{baseline_wall_note(b)}"
            f" | tiles -> patches {draw['tile_patch_fraction']:.3f} | OOF AUC difference "
            f"{d['difference']:+.3f} (95 % CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f}, "
            f"{ahead_text(d)}){one_class_note(g['predicted'], classes)}",
            flush=True,
        )
        summary = write_result(args, argv, started, overrides, draws)
    assert summary is not None  # --draws >= 1 (parse_args)
    print(f"over {len(draws)} draw(s), mean ± sd:")
    width = max(map(len, summary))  # one column for the values
    for key, stat in summary.items():
        print(f"  {key:{width}s} {fmt(stat, 1 if 'seconds' in key else 3)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from gigamil.errors import GigamilError

    try:
        raise SystemExit(main())
    except GigamilError as exc:  # one line, no traceback (e.g. no tile folder: pass --tiles DIR)
        raise SystemExit(f"real_tissue.py: error: {exc}") from None
    except KeyboardInterrupt:  # the draws finished so far are in --out already
        print(
            "real_tissue.py: interrupted; the draws finished before it (if any) are in --out",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
