"""gigamil.fileutil: outputs written to a temporary file and renamed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import gigamil.fileutil as fileutil
from gigamil.evaluate.patients import write_patient_predictions
from gigamil.evaluate.tables import write_json


def _half_then_fail(path: Path, data: bytes | memoryview) -> None:
    """A write killed midway: half the bytes on disk, then an error."""
    Path(path).write_bytes(bytes(data)[: len(data) // 2])
    raise OSError("killed")


def test_evaluation_outputs_are_never_left_cut_short(tmp_path: Path, monkeypatch) -> None:
    """summary.json, metrics.csv and the patient table were written in place: a failed rerun of
    gigamil evaluate / ensemble left them cut short (the CSVs read as fewer rows)."""
    table = pd.DataFrame({"slide_id": ["a", "b"], "prob_x": [0.25, 0.75]}, index=["r1", "r2"])
    fileutil.atomic_write_csv(table, tmp_path / "m.csv", index=True)
    assert pd.read_csv(tmp_path / "m.csv", index_col=0).equals(table)
    fileutil.atomic_write_csv(table, tmp_path / "p.csv")
    assert pd.read_csv(tmp_path / "p.csv").equals(table.reset_index(drop=True))
    write_json({"auc": 0.5}, tmp_path / "s.json")
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    monkeypatch.setattr(fileutil, "_write_file", _half_then_fail)
    with pytest.raises(OSError, match="killed"):
        write_json({"auc": 0.9, "n": list(range(100))}, tmp_path / "s.json")
    with pytest.raises(OSError, match="killed"):
        fileutil.atomic_write_csv(pd.concat([table] * 50), tmp_path / "m.csv", index=True)
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary left
    slides = pd.DataFrame(
        {
            "cohort": ["c"],
            "slide_id": ["s"],
            "patient_id": ["p"],
            "label": ["x"],
            "prob_x": [1.0],
            "prob_y": [0.0],
        }
    )
    with pytest.raises(OSError, match="killed"):
        write_patient_predictions(slides, ["x", "y"], tmp_path / "patients.csv")
    assert not (tmp_path / "patients.csv").exists()
