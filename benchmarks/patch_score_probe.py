"""Probe: which per-patch score of the same trained fold models localises lesions best?

Run by hand on finished runs (no training):

    python benchmarks/patch_score_probe.py --runs DEMO_CLONE benchmarks/work/real_tissue/draw6 ... \
        [--screen benchmarks/work/screen/NAME --screen-dirs DEMO_CLONE DRAW_DIRS...] --out FILE.json

A run is a snakemake work directory (the demo's clone, or a ``benchmarks/real_tissue.py`` draw):
its ``results/eval/*/per_slide_predictions.csv`` gives each slide's fold, its
``results/models/*/fold{k}/model.pt`` the fold models, the sheet's ``lesion_mask`` column (or a
demo cohort's ``results/<cohort>/lesion_masks``) the masks. A screen (``benchmarks/screen.py``)
gives the fold models of other training seeds for the same directories. For every lesion slide
the probe loads its out-of-fold model (every replicate member), computes per patch

- ``att``: the attention (what gigamil's localisation AUC scores; reproduces it),
- ``s_raw``: the attention scores before the Sm smoothing,
- ``z``: the patch logits (the bag classifier on each patch's features),
- ``sm_z``: the patch logits smoothed over the patch grid (Sm, the model's ``sm_alpha``),
- ``att_x_sig``: attention × sigmoid(z) (Javed et al. 2022's additive contribution, mapped),
- ``patch_score``: the mean of the percentile ranks of ``att`` and ``sm_z``
  (:func:`gigamil.evaluate.patch_score.patch_score`, what prediction now reports),

each averaged over the members, and the mean per-slide localisation AUC of each.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from gigamil.data.bags import ZarrBag  # noqa: E402
from gigamil.evaluate.localization import lesion_fraction, read_store_geometry  # noqa: E402
from gigamil.evaluate.metrics import binary_auc  # noqa: E402
from gigamil.evaluate.patch_score import patch_score  # noqa: E402
from gigamil.models.ensemble import ReplicateEnsemble  # noqa: E402
from gigamil.nn.pooling import grid_adjacency, smooth  # noqa: E402
from gigamil.train.checkpoint import load_model  # noqa: E402

SCORES = ("att", "s_raw", "z", "sm_z", "att_x_sig", "patch_score")


def member_scores(member: torch.nn.Module, x: torch.Tensor, adj: torch.Tensor) -> dict:
    """The per-patch scores (N,) of one member on one bag (patches ``x``, adjacency ``adj``)."""
    head = member.attention_model
    h = member.encode(x)
    _, att = head(h, adj)
    z = head.instance_logits(h)[:, 0]
    s_raw = head.w(head.act(head.V(h))).squeeze(-1)
    return {
        "att": att.numpy(),
        "s_raw": s_raw.numpy(),
        "z": z.numpy(),
        "sm_z": smooth(z, adj, head.sm_alpha).numpy(),
        "att_x_sig": (att * torch.sigmoid(z)).numpy(),
    }


def masks_of(wd: Path) -> dict[str, Path]:
    """Lesion mask per slide id: the sheet's ``lesion_mask`` column, else a demo cohort's."""
    out = {}
    for sheet in [*wd.glob("sheet.csv"), *wd.glob("resources/demo/sheet.csv")]:
        df = pd.read_csv(sheet)
        if "lesion_mask" in df:
            out.update(
                {
                    s: wd / m
                    for s, m in zip(df.slide_id, df.lesion_mask, strict=True)
                    if isinstance(m, str)
                }
            )
    for png in wd.glob("results/*/lesion_masks/*.png"):
        out.setdefault(png.stem, png)
    return {s: p for s, p in out.items() if p.is_file()}


def probe_run(name: str, wd: Path, folds: dict[str, int], model_of) -> dict[str, float]:
    """Mean per-slide localisation AUC of each score over the lesion slides of one run."""
    masks, members, per = masks_of(wd), {}, {}
    for sid, fold in sorted(folds.items()):
        store = next((wd / "results" / "patches").glob(f"*/{sid}.zarr"))
        if sid not in masks:
            continue
        coords, _, attrs = read_store_geometry(store)
        y = lesion_fraction(coords, attrs, masks[sid]) >= 0.5
        if y.all() or not y.any():
            continue
        if fold not in members:
            model, _ = load_model(model_of(fold))
            members[fold] = model.members if isinstance(model, ReplicateEnsemble) else [model]
        bag = ZarrBag(store)
        x, adj = bag.load(), grid_adjacency(bag.grid)
        with torch.inference_mode():
            outs = [member_scores(m, x, adj) for m in members[fold]]
        mean = {k: np.mean([o[k] for o in outs], axis=0) for k in outs[0]}
        mean["patch_score"] = patch_score(mean["att"], mean["sm_z"])
        per[sid] = {k: binary_auc(y, mean[k]) for k in SCORES}
    result = {k: round(float(np.mean([p[k] for p in per.values()])), 4) for k in SCORES}
    print(f"{name} ({len(per)} slides): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    return {**result, "n_slides": len(per)}


def runs_of(args: argparse.Namespace):
    """(name, work dir, {slide: fold}, fold -> model.pt) of every run asked for."""
    for wd in args.runs:
        ps = pd.read_csv(next((wd / "results" / "eval").glob("*/per_slide_predictions.csv")))
        models = next((wd / "results" / "models").glob("*/fold0")).parent
        yield (
            str(wd),
            wd,
            dict(zip(ps.slide_id, ps.fold, strict=True)),
            lambda f, m=models: m / f"fold{f}/model.pt",
        )
    if args.screen is not None:
        pred = pd.read_csv(args.screen / "predictions.csv")
        dirs = {d.name: d for d in args.screen_dirs}
        for (draw, seed), g in pred.groupby(["draw", "seed"]):
            root = args.screen / draw / f"seed{seed}"
            yield (
                f"{args.screen.name} {draw} seed {seed}",
                dirs[draw],
                dict(zip(g.slide_id, g.fold, strict=True)),
                lambda f, r=root: r / f"fold{f}" / "model.pt",
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="snakemake work directories")
    p.add_argument("--screen", type=Path, help="a screen's directory (its other-seed models)")
    p.add_argument("--screen-dirs", nargs="*", type=Path, default=[], help="the screen's draws")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    result = {name: probe_run(name, *rest) for name, *rest in runs_of(args)}
    record = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "benchmarks/patch_score_probe.py", *(argv or sys.argv[1:])]),
        "mean_localization_auc": result,
    }
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
