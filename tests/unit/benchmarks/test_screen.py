"""benchmarks/screen.py: its summary line (the screening itself is run by hand)."""

from __future__ import annotations

import pandas as pd


def test_summary_line_per_draw_seed_and_ensemble(bench) -> None:
    rows = []
    for seed, flip in ((0, False), (1, True)):
        for i in range(4):
            y = i % 2
            p = (1 - y if flip and i < 2 else y) * 0.8 + 0.1
            loc = 0.7 if y else float("nan")
            rows.append(
                {"draw": "draw0", "seed": seed, "slide_id": f"s{i}", "y": y, "p": p, "loc": loc}
            )
    df = pd.DataFrame(rows)
    info = pd.DataFrame({"final_loss": [0.1, 0.3], "epochs": [20, 30]})
    line = bench.summary_line("v", ["model.dropout=0.25"], df, info, 12.0)
    assert line.startswith("v | model.dropout=0.25 | draw0 OOF 1.000/0.500 ensemble ")
    assert "loc 0.700/0.700" in line and "mean 0.750 min 0.500" in line
    assert "final loss 0.200, epochs 25, 12 s" in line and "patch score" not in line
    line = bench.summary_line("v", [], df.assign(loc_patch=df["loc"] + 0.1), info, 12.0)
    assert "loc 0.700/0.700 patch score 0.800/0.800 |" in line


def test_result_record_and_save_keep_other_variants(bench, tmp_path) -> None:
    import json

    df = pd.DataFrame(
        {
            "draw": ["draw0"] * 4 + ["demo"] * 4,
            "seed": [0] * 8,
            "slide_id": [f"s{i}" for i in range(8)],
            "y": [0, 1, 0, 1] * 2,
            "p": [0.1, 0.9, 0.2, 0.8, 0.9, 0.8, 0.2, 0.3],
            "loc": [float("nan"), 0.6, float("nan"), 0.8] * 2,
            "loc_patch": [float("nan"), 0.7, float("nan"), 0.9] * 2,
        }
    )
    info = pd.DataFrame({"final_loss": [0.1, 0.3], "epochs": [20, 30]})
    record = bench.result_record(["training.lr=0.001"], df, info, 12.4)
    assert record["oof_auc"] == {"demo": [0.5], "draw0": [1.0]}
    assert record["localization_auc"] == {"demo": [0.7], "draw0": [0.7]}
    assert record["patch_score_localization_auc"] == {"demo": [0.8], "draw0": [0.8]}
    assert record["mean_oof_auc"] == 0.75 and record["min_oof_auc"] == 0.5
    assert record["seconds"] == 12 and record["epochs_median"] == 25
    path = tmp_path / "screen.json"
    bench.save_record(path, "a", record)
    bench.save_record(path, "b", {**record, "set": []})
    saved = json.loads(path.read_text())
    assert sorted(saved) == ["a", "b"] and saved["a"]["set"] == ["training.lr=0.001"]
    assert "git_commit" in saved["b"]


def test_settings_differences_name_each_key_that_differs(bench) -> None:
    draw = {"cv": {"val_fraction": 0.2, "folds": 6}, "training": {"epochs": 60, "augment": {}}}
    ref = {
        "cv": {"val_fraction": 0, "folds": 6},
        "training": {"epochs": 48, "augment": {"hue_jitter": 0.05}},
        "heatmaps": {"top_k": 8},  # not a screened section
    }
    assert bench.settings_differences(draw, ref) == {
        "cv.val_fraction": [0.2, 0],
        "training.augment.hue_jitter": [None, 0.05],
        "training.epochs": [60, 48],
    }
    assert bench.settings_differences(ref, ref) == {}
    assert bench.flat({"a": {"b": [1, 2]}, "c": 3}) == {"a.b": [1, 2], "c": 3}


def test_screen_folds_are_the_workflow_split_for_the_screen_settings(bench) -> None:
    import pytest

    from gigamil.splits import make_folds

    sheet = pd.DataFrame(
        {
            "cohort": "c",
            "slide_id": [f"p{i:02d}_s{j}" for i in range(12) for j in (1, 2)],
            "patient_id": [f"p{i:02d}" for i in range(12) for _ in (1, 2)],
            "label": [("normal", "lesion")[i % 2] for i in range(12) for _ in (1, 2)],
            "site": [("a", "b")[(i // 2) % 2] for i in range(12) for _ in (1, 2)],
        }
    )
    draw = make_folds(sheet, 4, val_fraction=0.25, seed=0)  # a draw built with validation
    cv = {"folds": 4, "val_fraction": 0, "seed": 0, "stratify_by": []}
    folds = bench.screen_folds(draw, cv)
    pd.testing.assert_frame_equal(folds, make_folds(sheet, 4, val_fraction=0, seed=0))
    assert set(folds.role) == {"train", "test"}
    for k in range(4):  # the draw's validation patients train; the test folds are the draw's
        mine, theirs = folds[folds.fold == k], draw[draw.fold == k]
        assert set(mine[mine.role == "test"].slide_id) == set(
            theirs[theirs.role == "test"].slide_id
        )
        assert set(mine[mine.role == "train"].slide_id) == set(
            theirs[theirs.role != "test"].slide_id
        )
    # the draw's own settings give its folds.csv back
    same = {**cv, "val_fraction": 0.25}
    pd.testing.assert_frame_equal(bench.screen_folds(draw, same), draw)
    strat = make_folds(sheet, 4, val_fraction=0.25, seed=0, stratify_by=["site"])
    got = bench.screen_folds(strat, {**same, "stratify_by": ["site"]}, sheet)
    pd.testing.assert_frame_equal(got, strat)
    by_cohort = make_folds(sheet, 4, val_fraction=0.25, seed=0, stratify_by=["cohort"])
    no_cohort = sheet.drop(columns="cohort")  # a cohort's sheet has no cohort column
    got = bench.screen_folds(by_cohort, {**same, "stratify_by": ["cohort"]}, no_cohort)
    pd.testing.assert_frame_equal(got, by_cohort)
    with pytest.raises(SystemExit, match="other test folds"):
        bench.screen_folds(draw, {**cv, "seed": 5})
