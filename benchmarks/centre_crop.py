"""Diagnostic: are the benchmark's misranked slides label noise at the tiles' edges?

PatchCamelyon labels a 96-px tile by its centre 32 x 32 px only, so a tile of a "normal" slide
may show tumour at its edge, which a CNN that learns morphology would be right to see and the
slide label calls wrong. This copies finished draws of ``benchmarks/real_tissue.py`` (their
``config.yaml``, ``results/splits`` and ``results/patches``) and paints every patch white
outside its centre ``--keep`` x ``--keep`` px (each patch is one tile), then runs the colour
baseline on the copies (the same folds). Screen gigamil on them with ``benchmarks/screen.py
NAME --draws --dirs OUT/draw0 OUT/draw1 ...`` and compare both with the full tiles:

    python benchmarks/centre_crop.py --draws 0 1 --keep 48

Writes ``OUT/drawN`` and ``benchmarks/results/centre_crop.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))

from real_tissue import baseline_on_run, git_commit, json_safe  # noqa: E402

from gigamil.data.store import CHUNK_CRC_ATTR, chunk_crcs, open_store  # noqa: E402

DRAWS = REPO / "benchmarks" / "work" / "real_tissue"


def whiten_border(patches: np.ndarray, keep: int) -> np.ndarray:
    """``patches`` (N, H, W, 3) uint8 with every pixel outside the centre ``keep`` x ``keep``
    set to 255 (white, as glass); ValueError when ``keep`` exceeds the patch."""
    _, h, w, _ = patches.shape
    if not 0 < keep <= min(h, w):
        raise ValueError(f"keep {keep} must be in 1..{min(h, w)} (the patch side)")
    out = np.full_like(patches, 255)
    top, left = (h - keep) // 2, (w - keep) // 2
    out[:, top : top + keep, left : left + keep] = patches[:, top : top + keep, left : left + keep]
    return out


def copy_draw(src: Path, dst: Path, keep: int) -> int:
    """Copy the draw's config, splits and patch stores to ``dst``, borders whitened; returns the
    number of stores."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy2(src / "config.yaml", dst / "config.yaml")
    for part in ("splits", "patches"):
        shutil.copytree(src / "results" / part, dst / "results" / part)
    stores = sorted((dst / "results" / "patches").glob("*/*.zarr"))
    for store in stores:
        group = open_store(store, mode="r+")
        arr = group["patches"]
        arr[:] = whiten_border(np.asarray(arr[:]), keep)
        if CHUNK_CRC_ATTR in group.attrs:  # the chunks' new CRCs, or the store reads as damaged
            group.attrs[CHUNK_CRC_ATTR] = {
                **group.attrs[CHUNK_CRC_ATTR],
                "patches": chunk_crcs(store, arr),
            }
    return len(stores)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--keep", type=int, default=48, help="centre px kept (48)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/work/real_tissue_centre")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/centre_crop.json")
    args = parser.parse_args(argv)
    rows = []
    for draw in args.draws:
        src, dst = DRAWS / f"draw{draw}", args.out / f"draw{draw}"
        n = copy_draw(src, dst, args.keep)
        full, centre = baseline_on_run(src), baseline_on_run(dst)
        cfg = yaml.safe_load((src / "config.yaml").read_text())
        rows.append(
            {
                "draw": draw,
                "stores": n,
                "patch_px": cfg["preprocessing"]["patches"]["patch_px"],
                "baseline_full_tiles": {k: full[k] for k in ("oof_auc", "localization_auc")},
                "baseline_centre": {k: centre[k] for k in ("oof_auc", "localization_auc")},
            }
        )
        print(
            f"draw {draw}: {n} stores, centre {args.keep} px kept; colour baseline OOF AUC "
            f"{full['oof_auc']:.3f} (full tiles) -> {centre['oof_auc']:.3f} (centre), "
            f"localisation {full['localization_auc']:.3f} -> {centre['localization_auc']:.3f}"
        )
    record = {
        "command": " ".join(["python", "benchmarks/centre_crop.py", *(argv or sys.argv[1:])]),
        "git_commit": git_commit(),
        "keep_px": args.keep,
        "draws": rows,
    }
    args.json.write_text(json.dumps(json_safe(record), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
