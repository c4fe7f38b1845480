"""benchmarks/baseline_smoothing.py: the colour baseline scored raw and with gigamil's spatial
prior on a finished draw (its sheet, folds and patch stores)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import yaml


def test_scores_a_finished_draw_both_ways(bench, tmp_path, capsys):
    from PIL import Image

    from gigamil.cli import main
    from gigamil.demo_tiles import make_tile_cohort

    rng = np.random.default_rng(0)
    for cls, n, colour in ((0, 60, (225, 150, 190)), (1, 15, (130, 70, 165))):
        (tmp_path / "tiles" / str(cls)).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 14, size=(96, 96, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(tmp_path / "tiles" / str(cls) / f"p{i}.jpg")
    wd = tmp_path / "work" / "draw7"
    sheet = make_tile_cohort(
        wd / "cohort", tiles=tmp_path / "tiles", n_patients=4, slides_per_patient=1,
        tiles_per_slide=(8, 10),
    )  # fmt: skip
    sheet["lesion_mask"] = [
        str(wd / "cohort" / "lesion_masks" / f"{s}.png") for s in sheet.slide_id
    ]
    sheet.to_csv(wd / "sheet.csv", index=False)
    for s in sheet.slide_id:
        store = wd / "results" / "patches" / "real" / f"{s}.zarr"
        args = ["patches", str(wd / "cohort" / "slides" / f"{s}.tiff"), "--out", str(store)]
        assert main([*args, "--mpp", "0.972", "--patch-px", "96", "--no-progress"]) == 0
    order = sheet.sort_values(["label", "slide_id"]).slide_id.tolist()
    folds = pd.DataFrame(
        [
            {"fold": k, "role": "test" if i % 2 == k else "train", "slide_id": s}
            for k in (0, 1)
            for i, s in enumerate(order)
        ]
    )
    (wd / "results" / "splits" / "real_tissue").mkdir(parents=True)
    folds.to_csv(wd / "results" / "splits" / "real_tissue" / "folds.csv", index=False)
    cfg = {
        "experiment": "real_tissue",
        "classes": ["normal", "lesion"],
        "cohorts": {"real": {"sheet": str(wd / "sheet.csv")}},
        "model": {"pool": "smabmil", "sm_alpha": 0.8},
    }
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out.json"
    argv = ["--seeds", "7", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    (draw,) = result["draws"]
    assert draw["seed"] == 7 and draw["baseline_smoothed"]["sm_alpha"] == 0.8
    assert draw["baseline"]["oof_auc"] == 1.0 and draw["localization_n_slides"] == 2
    assert 0.5 < draw["baseline_smoothed"]["localization_auc"] <= 1.0
    assert set(result["summary"]) == {
        "baseline_oof_auc",
        "baseline_localization_auc",
        "baseline_smoothed_oof_auc",
        "baseline_smoothed_localization_auc",
    }
    assert "draw 7: baseline OOF AUC 1.000 -> " in capsys.readouterr().out
