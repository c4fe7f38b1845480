"""gigamil.layout: the results layout, the files that exist for a configuration, and the
helpers the Snakemake scripts share (store column, attention discovery, localisation inputs,
fold prediction CSVs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gigamil import layout
from gigamil.errors import ConfigError, GigamilError
from gigamil.folds import fold_slides


@pytest.fixture
def sheets():
    return {
        "tr": pd.DataFrame({"slide_id": ["a", "b"], "patient_id": ["p", "q"]}),
        "ex": pd.DataFrame({"slide_id": ["c"], "patient_id": ["r"], "lesion_mask": ["m/c.png"]}),
    }


@pytest.fixture
def config():
    return {
        "experiment": "e",
        "ensemble": {"enabled": True},
        "cv": {"folds": 2},
        "heatmaps": {"slides": ["a"]},
        "cohorts": {"tr": {"demo": True}, "ex": {}},
    }


def test_paths_and_wildcard_patterns():
    assert layout.store_path("c", "s") == "results/patches/c/s.zarr"
    assert layout.store_path("{cohort}", "{slide_id}") == "results/patches/{cohort}/{slide_id}.zarr"
    assert layout.tissue_mask("c", "s") == "results/masks/c/s.png"
    assert layout.tissue_qc("c", "s") == "results/masks/c/s.qc.png"
    assert layout.tissue_json("c", "s") == "results/masks/c/s.json"
    assert layout.qc_csv("c") == "results/qc/c.csv"
    assert layout.qc_html("c") == "results/qc/c.html"
    assert layout.folds_csv("e") == "results/splits/e/folds.csv"
    assert layout.model_dir("e", "{fold}") == "results/models/e/fold{fold}"
    assert layout.training_curves("e", 1) == "results/models/e/fold1/training_curves.png"
    assert layout.prediction_csv("e", 1, "c") == "results/predictions/e/fold1/c.csv"
    assert layout.attention_file("e", 2, "c", "s") == (
        "results/predictions/e/fold2/attention/c/s.npy"
    )
    assert layout.ensemble_dir("e", "c") == "results/eval/e/ensemble/c"
    assert layout.heatmap_dir("e", "c", "s") == "results/heatmaps/e/c/s"
    assert layout.demo_sheet() == "results/demo/sheet.csv"
    assert layout.demo_slide("s") == "results/demo/slides/s.tiff"
    assert layout.demo_lesion_meta("s") == "results/demo/lesion_masks/s.json"
    assert layout.log_file("train_fold", "e", "fold{fold}") == "logs/train_fold/e/fold{fold}.log"
    assert layout.benchmark_file("demo_cohort") == "logs/benchmarks/demo_cohort.tsv"


def test_heatmap_slides_and_eval_targets(sheets, config):
    assert layout.heatmap_slides("all", sheets, ["tr", "ex"]) == [
        ("tr", "a"),
        ("tr", "b"),
        ("ex", "c"),
    ]
    assert layout.heatmap_slides("none", sheets, ["tr", "ex"]) == []
    assert layout.heatmap_slides(["c"], sheets, ["tr", "ex"]) == [("ex", "c")]
    with pytest.raises(ConfigError, match="heatmaps.slides: slide_id 'zz' is in no cohort"):
        layout.heatmap_slides(["zz"], sheets, ["tr", "ex"])
    with pytest.raises(ConfigError, match=r"'cc' is in no cohort sheet \(2 such: cc, zz\); did"):
        layout.heatmap_slides(["cc", "zz", "a"], sheets, ["tr", "ex"])
    with pytest.raises(ConfigError) as err:  # 'c' is listed already: no suggestion to add it
        layout.heatmap_slides(["c", "cc"], sheets, ["tr", "ex"])
    assert "did you mean" not in str(err.value)
    with pytest.raises(ConfigError, match="'C' is in no cohort sheet; did you mean c"):
        layout.heatmap_slides(["C"], sheets, ["tr", "ex"])  # another case: difflib missed it
    assert layout.lesion_masks({"demo": True}, sheets["tr"]) == {
        "a": "results/demo/lesion_masks/a.png",
        "b": "results/demo/lesion_masks/b.png",
    }
    assert layout.lesion_masks({}, sheets["ex"]) == {"c": "m/c.png"}
    assert layout.lesion_masks({}, sheets["tr"]) == {}
    assert layout.eval_targets(config, sheets, ["tr"], ["ex"]) == [
        "results/eval/e/summary.json",
        "results/eval/e/per_patient_predictions.csv",
        "results/models/e/fold0/model.pt",
        "results/models/e/fold0/training_curves.png",
        "results/models/e/fold1/model.pt",
        "results/models/e/fold1/training_curves.png",
        "results/eval/e/ensemble/tr/summary.json",
        "results/eval/e/ensemble/tr/patient_predictions.csv",
        "results/eval/e/ensemble/ex/summary.json",
        "results/eval/e/ensemble/ex/patient_predictions.csv",
        "results/heatmaps/e/tr/a/a.overlay.jpg",
    ]
    # subgroups: out of fold, and per external cohort with its ensemble (not without)
    grouped = layout.eval_targets({**config, "subgroups": ["site"]}, sheets, ["tr"], ["ex"])
    assert [t for t in grouped if "subgroups" in t] == [
        "results/eval/e/subgroups.csv",
        "results/eval/e/ensemble/ex/subgroups.csv",
    ]
    alone = {**config, "subgroups": ["site"], "ensemble": {"enabled": False}}
    assert [t for t in layout.eval_targets(alone, sheets, ["tr"], ["ex"]) if "subgroups" in t] == [
        "results/eval/e/subgroups.csv"
    ]
    # a predict cohort: its ensemble predictions even without ensemble.enabled, and heatmaps
    sheets["new"] = pd.DataFrame({"slide_id": ["d"], "patient_id": ["t"]})
    config = {**config, "ensemble": {"enabled": False}, "heatmaps": {"slides": "all"}}
    assert layout.eval_targets(config, sheets, ["tr"], [], ["new"]) == [
        "results/eval/e/summary.json",
        "results/eval/e/per_patient_predictions.csv",
        "results/models/e/fold0/model.pt",
        "results/models/e/fold0/training_curves.png",
        "results/models/e/fold1/model.pt",
        "results/models/e/fold1/training_curves.png",
        "results/eval/e/ensemble/new/summary.json",
        "results/eval/e/ensemble/new/patient_predictions.csv",
        "results/heatmaps/e/tr/a/a.overlay.jpg",
        "results/heatmaps/e/tr/b/b.overlay.jpg",
        "results/heatmaps/e/new/d/d.overlay.jpg",
    ]
    # trained_models: no train cohort, so no CV, fold models, curves nor out-of-fold subgroups
    given = {**config, "subgroups": ["site"], "ensemble": {"enabled": True}}
    assert layout.eval_targets(given, sheets, [], ["ex"], ["new"]) == [
        "results/eval/e/ensemble/ex/summary.json",
        "results/eval/e/ensemble/ex/patient_predictions.csv",
        "results/eval/e/ensemble/ex/subgroups.csv",
        "results/eval/e/ensemble/new/summary.json",
        "results/eval/e/ensemble/new/patient_predictions.csv",
        "results/heatmaps/e/ex/c/c.overlay.jpg",
        "results/heatmaps/e/new/d/d.overlay.jpg",
    ]
    del sheets["new"]
    files = layout.localization_inputs(config, sheets, ["tr"], [0, 1])
    assert "results/patches/tr/a.zarr" in files and "results/demo/lesion_masks/b.json" in files
    assert "results/predictions/e/fold1/attention/tr" in files
    assert layout.localization_inputs(config, sheets, ["ex"], [0]) == [
        "results/patches/ex/c.zarr",
        "m/c.png",
        "results/predictions/e/fold0/attention/ex",
    ]
    assert layout.localization_masks(config, sheets, ["tr", "ex"]) == {
        "tr": layout.lesion_masks({"demo": True}, sheets["tr"]),
        "ex": {"c": "m/c.png"},
    }


def test_localization_masks_do_not_depend_on_the_order_of_the_cohorts(config, sheets):
    """Rule aggregate_cv's ``lesion_masks`` param, compared by its repr: two train cohorts
    written in the other order in config.yaml must give the same one (no rerun)."""
    forward = layout.localization_masks(config, sheets, ["tr", "ex"])
    backward = layout.localization_masks(config, sheets, ["ex", "tr"])
    assert repr(forward) == repr(backward)
    assert list(forward) == ["ex", "tr"]


def test_with_stores_adds_the_store_of_each_slide():
    slides = pd.DataFrame({"cohort": ["x", "y"], "slide_id": ["s1", "s2"], "label": ["0", "1"]})
    out = layout.with_stores(slides)
    assert out["store"].tolist() == ["results/patches/x/s1.zarr", "results/patches/y/s2.zarr"]
    assert out.drop(columns="store").equals(slides) and "store" not in slides.columns


def test_attention_files_finds_the_folds_that_predicted_the_slide(tmp_path):
    dirs = [tmp_path / f"fold{k}" for k in range(3)]
    for d in dirs:
        d.mkdir()
    np.save(dirs[1] / "s.npy", np.ones(3, np.float32))
    np.save(dirs[2] / "s.npy", np.ones(3, np.float32))
    np.save(dirs[0] / "other.npy", np.ones(3, np.float32))
    assert layout.attention_files(map(str, dirs), "s") == [dirs[1] / "s.npy", dirs[2] / "s.npy"]
    with pytest.raises(GigamilError, match="slide t: no fold model predicted it"):
        layout.attention_files(dirs, "t")


def test_localization_inputs_of_cv_and_ensemble_have_one_shape():
    masks = {"tr": {"a": "m/a.png", "b": "m/b.png"}}
    test = pd.DataFrame(
        {"cohort": ["tr", "tr", "tr"], "slide_id": ["a", "b", "z"], "fold": [1, 0, 0]}
    )
    assert layout.cv_localization("e", test, masks) == {
        "a": (
            "results/patches/tr/a.zarr",
            ["results/predictions/e/fold1/attention/tr/a.npy"],
            "m/a.png",
        ),
        "b": (
            "results/patches/tr/b.zarr",
            ["results/predictions/e/fold0/attention/tr/b.npy"],
            "m/b.png",
        ),
    }
    ens = layout.ensemble_localization("e", "tr", [0, 1], masks)
    assert ens["b"] == (
        "results/patches/tr/b.zarr",
        [
            "results/predictions/e/fold0/attention/tr/b.npy",
            "results/predictions/e/fold1/attention/tr/b.npy",
        ],
        "m/b.png",
    )
    assert set(ens) == {"a", "b"}
    assert layout.ensemble_localization("e", "ex", [0], masks) == {}


def test_fold_slides_of_one_cohort():
    folds = pd.DataFrame(
        {
            "cohort": ["x", "y", "x"],
            "slide_id": ["s1", "s2", "s3"],
            "patient_id": ["p1", "p2", "p3"],
            "label": ["0", "1", "1"],
            "fold": [0, 0, 1],
            "role": ["test", "test", "test"],
        }
    )
    assert fold_slides(folds, 0, "test")["slide_id"].tolist() == ["s1", "s2"]
    assert fold_slides(folds, 0, "test", cohort="y")["slide_id"].tolist() == ["s2"]
    assert fold_slides(folds, 0, "test", cohort="y").index.tolist() == [0]


def test_qc_sample_spreads_over_the_cohort():
    ids = [f"s{i}" for i in range(20)]
    assert layout.qc_sample(ids, 4) == ["s0", "s6", "s13", "s19"]
    assert layout.qc_sample(ids[:3], 8) == ["s0", "s1", "s2"]
    assert layout.qc_sample(ids, 1) == ["s0"]
    assert len(layout.qc_sample(ids)) == layout.QC_THUMBNAILS_IN_REPORT


def test_report_categories_are_numbered_without_gaps() -> None:
    on, off = {"ensemble": {"enabled": True}}, {"ensemble": {"enabled": False}}
    full = {
        "qc": "0. Quality control",
        "cv": "1. Cross-validation",
        "ensembles": "2. Ensembles",
        "heatmaps": "3. Heatmaps",
    }
    assert layout.report_categories(on, ["a"], ["ext"], []) == full
    assert layout.report_categories(on, ["a", "b"], [], []) == full  # each train cohort's own
    assert layout.report_categories(off, ["a"], [], ["new"]) == full  # predict: always
    # one train cohort and nothing else (the demo), or ensembles disabled: heatmaps come second
    for cfg, external in ((on, []), (off, ["ext"])):
        cats = layout.report_categories(cfg, ["a"], external, [])
        assert cats["heatmaps"] == "2. Heatmaps" and cats["cv"] == "1. Cross-validation"
        assert not cats["ensembles"][0].isdigit()
    # trained_models: no train cohort, so no cross-validation section
    cats = layout.report_categories(on, [], ["ext"], ["new"])
    assert (cats["ensembles"], cats["heatmaps"]) == ("1. Ensembles", "2. Heatmaps")
    assert cats["cv"] == "Cross-validation"  # not numbered: it would take the ensembles' 1


def test_lesion_masks_do_not_depend_on_the_order_of_the_sheet():
    """The lesion masks are rule params (localisation, heatmaps) and inputs: sorted by slide_id,
    so a user who sorts the sheet by label or patient reruns no job."""
    sheet = pd.DataFrame({"slide_id": ["b", "a", "c"], "lesion_mask": ["m/b.png", "m/a.png", ""]})
    for cohort in ({}, {"demo": True}):
        forward = layout.lesion_masks(cohort, sheet)
        backward = layout.lesion_masks(cohort, sheet.iloc[::-1].reset_index(drop=True))
        assert repr(forward) == repr(backward)
        assert list(forward) == sorted(forward)
    assert layout.lesion_masks({}, sheet) == {"a": "m/a.png", "b": "m/b.png"}


def test_heatmap_slides_keeps_every_listed_slide(sheets):
    """heatmaps.slides: [a, c]: a heatmap for each, in cohort and sheet order."""
    assert layout.heatmap_slides(["c", "a"], sheets, ["tr", "ex"]) == [("tr", "a"), ("ex", "c")]
    assert layout.heatmap_slides(["b", "a"], sheets, ["tr"]) == [("tr", "a"), ("tr", "b")]


def test_heatmap_slides_suggests_no_listed_slide_in_another_case(sheets):
    """heatmaps.slides: [c, C]: 'c' is listed already, so 'C' gets no "did you mean c"."""
    with pytest.raises(ConfigError) as err:
        layout.heatmap_slides(["c", "C"], sheets, ["tr", "ex"])
    assert "'C' is in no cohort sheet" in str(err.value) and "did you mean" not in str(err.value)


def test_heatmap_slides_suggests_an_upper_case_id_before_a_near_one():
    """'abc' for the sheet's ABC: ABC, though difflib alone finds abd nearer."""
    sheets = {"tr": pd.DataFrame({"slide_id": ["ABC", "abd"], "patient_id": ["p", "q"]})}
    with pytest.raises(ConfigError, match="'abc' is in no cohort sheet; did you mean ABC"):
        layout.heatmap_slides(["abc"], sheets, ["tr"])


def test_a_sheet_masks_json_sidecar_is_an_input_where_it_exists(tmp_path, monkeypatch):
    """The evaluation and the heatmap read a lesion mask's downsample from its JSON sidecar
    (wsi.mask_io.mask_sidecar): a sheet's sidecar that exists is listed with the mask,
    so editing or adding one reruns them; a missing one is no input (it is optional); a demo
    cohort's are listed as before (written by rule demo_cohort: no rerun after an update)."""
    from gigamil.evaluate.lesion_mask import mask_sidecars
    from gigamil.wsi.mask_io import mask_sidecar

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.json").write_text('{"downsample": 16}')
    sheet = pd.DataFrame({"slide_id": ["b", "a"], "lesion_mask": ["m/b.png", "m/a.png"]})
    assert layout.mask_files({}, sheet) == ["m/a.png", "m/b.png", "m/a.json"]
    assert str(mask_sidecar(Path("m/a.png"))) == "m/a.json"  # the file mask_downsample reads
    assert mask_sidecars(["m/b.png"]) == [] and mask_sidecars(["m/b.png"], False) == ["m/b.json"]
    demo = pd.DataFrame({"slide_id": ["s"]})
    assert layout.mask_files({"demo": True}, demo) == [
        "results/demo/lesion_masks/s.png",
        "results/demo/lesion_masks/s.json",
    ]
