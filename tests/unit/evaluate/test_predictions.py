"""The fold models' prediction CSVs: written with ``fold`` after the ids, read back as written."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gigamil.errors import GigamilError
from gigamil.evaluate.predictions import (
    PRED_ID_COLUMNS,
    missing_folds,
    read_predictions,
    write_fold_predictions,
)


def test_write_fold_predictions_puts_fold_after_the_ids(tmp_path):
    preds = pd.DataFrame(
        {
            "slide_id": ["s1", "s2"],
            "patient_id": ["p1", "p2"],
            "cohort": ["c", "c"],
            "label": ["a", "b"],
            "prob_a": [0.7, np.nan],
            "prob_b": [0.3, np.nan],
            "pred": ["a", ""],
        }
    )
    path = tmp_path / "sub" / "preds.csv"
    out = write_fold_predictions(preds, 3, path)
    assert list(out.columns) == [*PRED_ID_COLUMNS, "fold", "prob_a", "prob_b", "pred"]
    back = read_predictions([path], ["a", "b"])
    assert back["fold"].tolist() == [3, 3] and back["pred"].tolist() == ["a", ""]
    assert np.isnan(back.loc[1, "prob_a"]) and back.loc[0, "prob_a"] == 0.7
    assert "fold" not in preds.columns
    with pytest.raises(GigamilError, match="lack column"):
        write_fold_predictions(preds.drop(columns="label"), 0, path)
    # one model's file (gigamil predict without --fold): an error for evaluate / ensemble, fold
    # -1 where a fold is not needed (a heatmap's title)
    out.drop(columns="fold").to_csv(tmp_path / "one.csv", index=False)
    with pytest.raises(
        GigamilError, match=r"missing column\(s\) fold \(gigamil predict writes it with --fold K"
    ):
        read_predictions([tmp_path / "one.csv"], ["a", "b"])
    assert read_predictions([tmp_path / "one.csv"], ["a", "b"], need_fold=False)[
        "fold"
    ].tolist() == [
        -1,
        -1,
    ]
    # a file that is not a CSV (an attention .npy given by mistake): a clear error
    np.save(tmp_path / "att.npy", np.zeros(3, np.float32))
    with pytest.raises(GigamilError, match="not a prediction CSV"):
        read_predictions([tmp_path / "att.npy"], ["a", "b"])


def test_a_slide_predicted_by_the_model_that_validated_on_it_is_not_out_of_fold():
    """A fold's validation slides chose its epoch (early stopping): they are not unseen."""
    from gigamil.evaluate.predictions import oof_predictions

    folds = pd.DataFrame(
        {
            "fold": [0, 0, 0, 1, 1, 1],
            "cohort": ["c"] * 6,
            "slide_id": ["a", "b", "v", "a", "b", "v"],
            "patient_id": ["pa", "pb", "pv", "pa", "pb", "pv"],
            "label": ["normal", "lesion", "normal"] * 2,
            "role": ["test", "train", "val", "train", "test", "test"],
        }
    )
    preds = pd.DataFrame(
        {
            "fold": [0, 1, 1, 0],
            "cohort": ["c"] * 4,
            "slide_id": ["a", "b", "v", "v"],
            "patient_id": ["pa", "pb", "pv", "pv"],
            "label": ["normal", "lesion", "normal", "normal"],
            "prob_normal": [0.9, 0.2, 0.7, 0.6],
            "prob_lesion": [0.1, 0.8, 0.3, 0.4],
        }
    )
    with pytest.raises(
        GigamilError, match="slide c/v is predicted by fold 0, whose model used it for val"
    ):
        oof_predictions(preds, folds)
    assert oof_predictions(preds.iloc[:3], folds)["slide_id"].tolist() == ["a", "b", "v"]


def test_an_incomplete_file_of_one_of_two_fold_models_is_refused():
    """Two fold models (2-fold CV) on an external cohort: a slide both predicted shows it is a
    cohort every model predicts, so a file that lacks a slide is incomplete."""
    from gigamil.evaluate.predictions import check_every_model_predicted_every_slide

    full = pd.DataFrame({"slide_id": ["s1", "s2", "s3"]})
    with pytest.raises(GigamilError, match=r"b\.csv lacks the prediction of 1 slide\(s\) .*\(s3\)"):
        check_every_model_predicted_every_slide([full, full.iloc[:2]], ["a.csv", "b.csv"], "ext")
    check_every_model_predicted_every_slide([full, full], ["a.csv", "b.csv"], "ext")
    # a train cohort: each slide in its out-of-fold model's file only
    check_every_model_predicted_every_slide([full.iloc[:1], full.iloc[1:]], ["a", "b"], "c")


@pytest.mark.parametrize("prob_b", ["0.7", "0.70004", "0.66"])
def test_probabilities_must_sum_to_one_up_to_rounding(tmp_path, prob_b):
    """0.3 + 0.66 = 0.96 is a damaged row, not a prediction; 0.3 + 0.70004 a rounded copy."""
    path = tmp_path / "p.csv"
    path.write_text(
        "slide_id,patient_id,cohort,label,fold,prob_a,prob_b,pred\n"
        f"s1,p1,c,a,0,0.3,{prob_b},b\ns2,p2,c,b,0,0.5,0.5,a\n"
    )
    if prob_b == "0.66":
        with pytest.raises(GigamilError, match="row 2 .*probabilities sum to 0.96, not 1"):
            read_predictions([path], ["a", "b"])
    else:
        back = read_predictions([path], ["a", "b"])
        assert back["prob_b"].tolist() == [float(prob_b), 0.5]


def test_missing_folds_are_the_gaps_below_the_highest_fold_given():
    """Folds 0, 1, 3 (one file of many cohorts): 2 is missing; a fold that is no whole number,
    or no fold column, gives no answer rather than a wrong one; an empty fold cell is skipped."""

    def file(*folds):
        fold = pd.Series(folds, dtype=object)
        return pd.DataFrame({"slide_id": [f"s{i}" for i in range(len(folds))], "fold": fold})

    assert missing_folds([file(0, 0), file(1), file(3)]) == ([2], [0, 1, 3])
    assert missing_folds([file(0, None), file(2)]) == ([1], [0, 2])
    assert missing_folds([file(0), file("x"), file(3)]) == ([], [])
    assert missing_folds([file(0.0), file(" 3 "), file(np.float64(1))]) == ([2], [0, 1, 3])
    assert missing_folds([file(0), file(1.5)]) == ([], [])
    assert missing_folds([file(0), file(float("inf"))]) == ([], [])
    # a file of no rows (a fold without test slides): its fold is unknown, so no gap is named
    assert missing_folds([file(0), file(), file(3)]) == ([], [])
    assert missing_folds([pd.DataFrame({"slide_id": ["s0"]})]) == ([], [])


_KILLED_WRITER = """
import resource, signal, sys
import numpy as np, pandas as pd
from gigamil.evaluate.predictions import write_fold_predictions
n = 300
p = np.linspace(0.01, 0.99, n)
table = pd.DataFrame({"slide_id": [f"S{i:04d}" for i in range(n)], "patient_id": "P",
    "cohort": "c", "label": "a", "prob_a": 1 - p, "prob_b": p, "pred": "a",
    "model_sha256": "0" * 64})
if sys.argv[1] == "kill":  # the write past 8300 bytes: SIGXFSZ kills the process mid-write
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8300, 8300))
write_fold_predictions(table, 0, sys.argv[2])
"""


def test_a_prediction_csv_is_never_left_cut_short_by_a_killed_job(tmp_path):
    """A job killed while writing its prediction CSV (SIGKILL, a time limit, a full disk) left
    the file cut short in place, which read_predictions took for a file of fewer slides, its
    cut row a slide 'without patches'; now the earlier file stays whole (or there is none)."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "fold0.csv"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    run = [sys.executable, "-c", _KILLED_WRITER]
    subprocess.run([*run, "full", str(out)], check=True, env=env)
    before = out.read_bytes()
    assert len(before) > 8300
    killed = subprocess.run([*run, "kill", str(out)], env=env)
    assert killed.returncode == -signal.SIGXFSZ
    assert out.read_bytes() == before
    assert len(read_predictions([out], ["a", "b"])) == 300


def test_a_prediction_csv_cut_inside_its_last_row_is_refused(tmp_path):
    """A file cut after its last row's ``pred`` (damaged after it was written whole) was read
    with that row's ``model_learned`` and ``model_sha256`` empty (a crash-safety review); a
    hand-edited file whose last line only lacks its line end still reads."""
    table = pd.DataFrame(
        {
            "slide_id": ["s1", "s2"], "patient_id": ["p1", "p2"], "cohort": "c",
            "label": ["a", "b"], "prob_a": [0.7, 0.2], "prob_b": [0.3, 0.8], "pred": ["a", "b"],
            "model_learned": True, "model_sha256": "ab" * 32,
        }
    )  # fmt: skip
    whole = tmp_path / "whole.csv"
    write_fold_predictions(table, 0, whole)
    text = whole.read_text()
    cut = tmp_path / "cut.csv"
    cut.write_text(text[: text.rindex(",b,") + 2])  # the last row ends after its pred
    with pytest.raises(GigamilError, match=r"cut\.csv: cut short \(its last row lacks cells\)"):
        read_predictions([cut], ["a", "b"])
    no_line_end = tmp_path / "edited.csv"
    no_line_end.write_text(text.rstrip("\n"))
    assert (
        len(read_predictions([no_line_end], ["a", "b"]))
        == len(read_predictions([whole], ["a", "b"]))
        == 2
    )
