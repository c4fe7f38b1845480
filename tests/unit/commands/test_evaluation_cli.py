"""`gigamil evaluate` and `gigamil ensemble` by hand: inputs they once read as other data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from gigamil.cli import main
from gigamil.errors import GigamilError


def _fold_file(path, fold: int, rng) -> str:
    """One fold model's predictions of a table of two cohorts: ``ext`` labelled (4 slides) and
    ``new`` without labels (2 slides), as `gigamil predict` writes them for one slide table."""
    p1 = rng.uniform(0.05, 0.95, 6)
    df = pd.DataFrame(
        {
            "slide_id": [f"s{i}" for i in range(6)],
            "patient_id": [f"p{i}" for i in range(6)],
            "cohort": ["ext"] * 4 + ["new"] * 2,
            "label": ["normal", "lesion"] * 2 + ["", ""],
            "fold": fold,
            "prob_normal": 1 - p1,
            "prob_lesion": p1,
        }
    )
    df["pred"] = np.where(p1 >= 0.5, "lesion", "normal")
    df.to_csv(path, index=False)
    return str(path)


def test_an_unlabelled_cohort_in_files_of_several_cohorts_gets_predictions_only(tmp_path, capsys):
    """`gigamil ensemble --cohort new` on files that also hold a labelled cohort refused it:
    '2 of the 2 slides have no label ... while the others have one' (the others: another
    cohort's), where an unlabelled cohort gets its predictions without metrics."""
    from gigamil.evaluate.ensemble import has_labels

    rng = np.random.default_rng(0)
    paths = [_fold_file(tmp_path / f"fold{k}.csv", k, rng) for k in range(2)]
    out = tmp_path / "new"
    args = ["ensemble", "--cohort", "new", "--out", str(out), "--n-boot", "10"]
    assert main([*args, "--predictions", *paths]) == 0
    assert "no labels, no metrics" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] is None and summary["n_slides"] == 2
    assert has_labels(paths) and has_labels(paths, "ext") and not has_labels(paths, "new")
    args = ["ensemble", "--cohort", "ext", "--out", str(tmp_path / "ext"), "--n-boot", "10"]
    assert main([*args, "--predictions", *paths]) == 0  # the labelled one: metrics
    assert json.loads(capsys.readouterr().out)["n_slides"] == 4


def test_evaluate_refuses_a_slide_in_two_localization_rows(tmp_path):
    """`gigamil evaluate --localization` with a slide in two rows (ensemble's table: one row
    per fold model) scored the last row's attention alone, silently: a localisation AUC of
    another model than the slide's out-of-fold one (0.0 in place of 1.0 in a trial)."""
    from gigamil.commands.evaluate import cv_localization

    rows = {"store": "s.zarr", "mask": "m.png"}
    table = pd.DataFrame(
        [
            {"slide_id": "a", "attention": "fold0/a.npy", **rows},
            {"slide_id": "b", "attention": "fold1/b.npy", **rows},
            {"slide_id": "a", "attention": "fold1/a.npy", **rows},
        ]
    )
    table.to_csv(tmp_path / "loc.csv", index=False)
    with pytest.raises(GigamilError, match=r"loc.csv: slide a is in 2 rows: .* one row per slide"):
        cv_localization(str(tmp_path / "loc.csv"))
    table.iloc[:2].to_csv(tmp_path / "one.csv", index=False)
    assert cv_localization(str(tmp_path / "one.csv")) == {
        "a": ("s.zarr", "fold0/a.npy", "m.png"),
        "b": ("s.zarr", "fold1/b.npy", "m.png"),
    }
