"""The ``bench`` fixture: the benchmark script a test module is named after, imported as a module
(``test_gpu.py`` → ``benchmarks/gpu.py``); the benchmarks are scripts, not a package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request):  # noqa: ANN201
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _finished_run(root, run, experiment: str, cohort: str, model: dict | None = None) -> None:  # noqa: ANN001
    """A workflow run as the colour baseline reads it, without training: a 4-slide mosaic
    cohort of plain coloured tiles (in ``run/cohort``; lesion masks relative to ``run``, as the
    demo's sheet has them), its patch
    stores in ``run/results/patches/{cohort}/``, two folds in
    ``run/results/splits/{experiment}/folds.csv`` and ``run/config.yaml`` (``model`` added)."""
    import numpy as np
    import pandas as pd
    import yaml
    from PIL import Image

    from gigamil.cli import main
    from gigamil.demo_tiles import make_tile_cohort

    rng = np.random.default_rng(0)
    for cls, n, colour in ((0, 60, (225, 150, 190)), (1, 15, (130, 70, 165))):
        (root / "tiles" / str(cls)).mkdir(parents=True)
        for i in range(n):
            img = np.clip(np.array(colour) + rng.normal(0, 14, size=(96, 96, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / "tiles" / str(cls) / f"p{i}.jpg")
    sheet = make_tile_cohort(
        run / "cohort", tiles=root / "tiles", n_patients=4, slides_per_patient=1,
        tiles_per_slide=(8, 10),
    )  # fmt: skip
    sheet["lesion_mask"] = [f"cohort/lesion_masks/{s}.png" for s in sheet.slide_id]  # relative
    sheet.to_csv(run / "sheet.csv", index=False)
    for s in sheet.slide_id:
        store = run / "results" / "patches" / cohort / f"{s}.zarr"
        args = ["patches", str(run / "cohort" / "slides" / f"{s}.tiff"), "--out", str(store)]
        assert main([*args, "--mpp", "0.972", "--patch-px", "96", "--no-progress"]) == 0
    order = sheet.sort_values(["label", "slide_id"]).slide_id.tolist()
    folds = pd.DataFrame(
        [
            {"fold": k, "role": "test" if i % 2 == k else "train", "slide_id": s}
            for k in (0, 1)
            for i, s in enumerate(order)
        ]
    )
    (run / "results" / "splits" / experiment).mkdir(parents=True)
    folds.to_csv(run / "results" / "splits" / experiment / "folds.csv", index=False)
    cfg = {
        "experiment": experiment,
        "classes": ["normal", "lesion"],
        "cohorts": {cohort: {"sheet": "sheet.csv"}},
        **({"model": model} if model else {}),
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.fixture
def finished_run():  # noqa: ANN201
    """:func:`_finished_run`: build a finished run (cohort, stores, folds, config) to score."""
    return _finished_run
