"""The Python helpers of workflow/rules/common.smk that turn the loaded cohort sheets into rule
params (a slide's MPP override, a cohort's slide ids, the QC table's rows), tested without
Snakemake: each ``def`` is read from the .smk file and run against sheets loaded by
:func:`gigamil.sheets.load_sheet`."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
from sheetfiles import CLASSES, good_rows, write_sheet

from gigamil import layout
from gigamil.sheets import load_sheet

REPO = Path(__file__).resolve().parents[2]


def _smk_helpers(sheets: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every top-level ``def`` of common.smk (a function and the indented or blank lines after
    it), run in a namespace whose ``SHEETS`` are ``sheets``."""
    lines = (REPO / "workflow" / "rules" / "common.smk").read_text().splitlines()
    namespace: dict[str, Any] = {"SHEETS": sheets, "layout": layout, "FEATURE_ID": None}
    i = 0
    while i < len(lines):
        if not re.match(r"def \w+\(", lines[i]):
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j][0].isspace()):
            j += 1
        exec(compile("\n".join(lines[i:j]), "common.smk", "exec"), namespace)  # noqa: S102
        i = j
    return namespace


def test_slide_mpp_override_is_the_sheet_then_the_cohort_else_none(tmp_path):
    """A rule's ``slide_mpp`` param: the row's ``mpp``, else the cohort's ``mpp``, else None,
    so that the job reads the slide's own MPP (an empty cell is NaN in the loaded sheet; NaN
    handed on as an override would give patches of no size)."""
    rows = good_rows()
    rows[0]["mpp"], rows[1]["mpp"], rows[2]["mpp"] = "0.25", "", ""
    path = write_sheet(tmp_path, rows)
    sheets = {
        "own": load_sheet(path, "own", CLASSES, base_dir=tmp_path),
        "cohort": load_sheet(path, "cohort", CLASSES, cohort_mpp=0.5, base_dir=tmp_path),
    }
    override = _smk_helpers(sheets)["slide_mpp_override"]

    def mpp(cohort: str, slide_id: str) -> float | None:
        return override(SimpleNamespace(cohort=cohort, slide_id=slide_id))

    assert mpp("own", "s1") == 0.25 and mpp("cohort", "s1") == 0.25  # the sheet's row wins
    assert mpp("cohort", "s2") == 0.5 and isinstance(mpp("cohort", "s2"), float)
    assert mpp("own", "s2") is None and mpp("own", "s3") is None  # the slide file's own


def test_slide_ids_and_qc_rows_do_not_depend_on_the_order_of_the_sheet(tmp_path):
    """The QC job's params (slide ids, sheet rows) and the ensemble's ``slides`` are sorted by
    slide_id: a user who sorts the sheet by patient or label reruns no job."""
    rows = good_rows()
    forward = load_sheet(write_sheet(tmp_path, rows, "f.csv"), "c", CLASSES, base_dir=tmp_path)
    backward = load_sheet(
        write_sheet(tmp_path, rows[::-1], "b.csv"), "c", CLASSES, base_dir=tmp_path
    )
    params = []
    for sheet in (forward, backward):
        helpers = _smk_helpers({"c": sheet})
        params.append(repr((helpers["cohort_slide_ids"]("c"), helpers["qc_sheet"]("c"))))
        assert helpers["cohort_slide_ids"]("c") == ["s1", "s2", "s3"]
        assert helpers["qc_sheet"]("c")["slide_id"] == ["s1", "s2", "s3"]
        assert helpers["qc_sheet"]("c")["patient_id"] == ["p1", "p1", "p2"]
    assert params[0] == params[1]


def test_heatmap_labels_and_captions_name_the_patch_score_where_it_is_drawn(tmp_path):
    """With heatmaps.weights: patch_score the report still called each overlay an "attention
    overlay", captioned it and its gallery as attention, and listed only the attention's
    localisation AUC beside a figure of the patch score."""
    import json
    from types import SimpleNamespace as NS

    import jinja2

    helpers = _smk_helpers({})
    summary = tmp_path / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "localization_auc_per_slide": {"s1": 0.7},
                "patch_score_localization_auc_per_slide": {"s1": 0.85},
            }
        )
    )
    helpers.update(EXPERIMENT="x", FOLDS=[0], CLASSES=["normal", "lesion"])
    helpers["layout"] = NS(
        prediction_csv=lambda *a: tmp_path / "none.csv",
        ensemble_dir=lambda *a: tmp_path / "no_ensemble",
        eval_dir=lambda *a: tmp_path,
    )
    wildcards = NS(cohort="demo", slide_id="s1")
    captions = {}
    for weights in ("attention", "patch_score"):
        helpers["config"] = {"heatmaps": {"weights": weights}}
        labels = helpers["heatmap_labels"]("attention overlay", wildcards)
        snakemake = NS(config=helpers["config"], wildcards=wildcards)
        captions[weights] = {
            name: jinja2.Template((REPO / "workflow" / "report" / name).read_text()).render(
                snakemake=snakemake
            )
            for name in ("heatmap.rst", "gallery.rst")
        }
        assert labels["localisation AUC"] == "0.700"
        if weights == "attention":
            assert labels["figure"] == "attention overlay"
            assert "patch-score localisation AUC" not in labels
    assert labels["figure"] == "patch score overlay"
    assert labels["patch-score localisation AUC"] == "0.850"
    assert captions["attention"]["heatmap.rst"].startswith("Attention heatmap of slide s1")
    assert captions["patch_score"]["heatmap.rst"].startswith("Patch-score heatmap of slide s1")
    assert "patch score" not in captions["attention"]["heatmap.rst"]
    assert captions["attention"]["gallery.rst"].startswith("The highest-attention")
    assert "patch-score patches of slide\ns1" in captions["patch_score"]["gallery.rst"]
