"""gigamil.evaluate.subgroups and ``gigamil subgroups``: metrics per value of a sheet column."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, roc_auc_score

from gigamil.cli import main
from gigamil.errors import GigamilError
from gigamil.evaluate import subgroups as sg

CLASSES = ["normal", "lesion"]


def _preds(n: int = 16, seed: int = 0) -> pd.DataFrame:
    """Two slides per patient, labels alternating by patient, noisy probabilities."""
    rng = np.random.default_rng(seed)
    label = np.array(["normal", "lesion"])[(np.arange(n) // 2) % 2]
    p = np.clip((label == "lesion") * 0.4 + rng.uniform(0.1, 0.6, n), 0, 1)
    return pd.DataFrame(
        {
            "cohort": "c",
            "slide_id": [f"s{i}" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "label": label,
            "prob_normal": 1 - p,
            "prob_lesion": p,
        }
    )


def _sheet(preds: pd.DataFrame, site: list[str]) -> pd.DataFrame:
    return preds[["slide_id", "patient_id"]].assign(path="x.svs", site=site)


def test_each_subgroup_has_the_metrics_of_its_slides():
    preds = _preds()
    site = ["A" if i < 8 else "B" for i in range(16)]
    site[15] = ""  # an empty cell is a group of its own
    table = sg.subgroup_metrics(
        sg.join_columns(preds, [_sheet(preds, site)], ["site"]), CLASSES, ["site"], n_boot=50
    )
    assert list(table["value"]) == ["all", sg.EMPTY, "A", "B"]
    for value, rows in (("all", slice(0, 16)), ("A", slice(0, 8)), ("B", slice(8, 15))):
        part = preds.iloc[rows]
        row = table.set_index("value").loc[value]
        y = (part["label"] == "lesion").to_numpy()
        assert row["auc"] == pytest.approx(roc_auc_score(y, part["prob_lesion"]))
        pred = part["prob_lesion"] > part["prob_normal"]
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        assert row["brier"] == pytest.approx(brier_score_loss(y, part["prob_lesion"]))
        assert row["n_slides"] == len(part) and row["n_patients"] == part["patient_id"].nunique()
        assert row["n_lesion"] == int(y.sum()) and row["n_normal"] == int((~y).sum())
        assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    one = table.set_index("value").loc[sg.EMPTY]  # slide s15 alone: one class, no AUC
    assert np.isnan(one["auc"]) and one["note"] == (
        "only lesion: no AUC, balanced accuracy = its recall; "
        "1 patient(s): the interval is not reliable"
    )
    assert table.set_index("value").loc["A", "note"] == "4 patient(s): the interval is not reliable"


def test_unpredicted_slides_are_counted_not_scored():
    preds = _preds()
    preds.loc[3, ["prob_normal", "prob_lesion"]] = np.nan  # a slide without patches
    site = ["A"] * 8 + ["B"] * 8
    table = sg.subgroup_metrics(preds.assign(site=site), CLASSES, ["site"], n_boot=20)
    assert table.loc[0, "n_unpredicted"] == 1 and table.loc[0, "n_slides"] == 15
    assert table["n_slides"].tolist() == [15, 7, 8]  # the unpredicted slide is site A's
    assert table["n_unpredicted"].tolist() == [1, 1, 0]


def test_the_bootstrap_resamples_patients(monkeypatch):
    """The intervals resample patients (a patient's slides stay together), not slides."""
    seen = []
    real = sg.M.bootstrap_ci

    def spy(*args, **kwargs):
        seen.append(kwargs.get("groups"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sg.M, "bootstrap_ci", spy)
    preds = _preds()
    sg.subgroup_metrics(preds.assign(site="A"), CLASSES, ["site"], n_boot=10)
    assert len(seen) == 2 and all(list(g) == list(preds["patient_id"]) for g in seen)


def test_columns_come_from_the_predictions_or_the_sheets_and_errors_name_the_problem():
    preds = _preds(4)
    assert list(sg.join_columns(preds, [], ["cohort"])["cohort"]) == ["c"] * 4  # no sheet needed
    sheet = _sheet(preds, ["A", "B", "A", "B"])
    with pytest.raises(GigamilError, match=r"--by scanner: not a column .*site"):
        sg.join_columns(preds, [sheet], ["scanner"])
    with pytest.raises(GigamilError, match=r"--by site: not a column .*\(no --sheet\)"):
        sg.join_columns(preds, [], ["site"])
    with pytest.raises(GigamilError, match=r"1 predicted slide\(s\) are in no sheet given: s3"):
        sg.join_columns(preds, [sheet.iloc[:3]], ["site"])
    with pytest.raises(GigamilError, match=r"slide s0 is in two sheet rows"):
        sg.join_columns(preds, [sheet, sheet.iloc[:1]], ["site"])
    with pytest.raises(GigamilError, match=r"--by patient_id: group by a column"):
        sg.join_columns(preds, [sheet], ["patient_id"])
    with pytest.raises(GigamilError, match=r"4 of the 4 slides have no label"):
        sg.subgroup_metrics(preds.assign(label="", site="A"), CLASSES, ["site"])


def test_cli_writes_the_table_and_prints_it(tmp_path, capsys):
    preds = _preds()
    preds.to_csv(tmp_path / "per_slide_predictions.csv", index=False)
    _sheet(preds, ["A", "B"] * 8).to_csv(tmp_path / "sheet.csv", index=False)
    args = ["subgroups", "--predictions", str(tmp_path / "per_slide_predictions.csv")]
    args += ["--sheet", str(tmp_path / "sheet.csv"), "--by", "site", "cohort"]
    assert main([*args, "--out", str(tmp_path / "sg"), "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "sg" / "subgroups.csv", keep_default_na=False)
    assert list(table["column"]) == ["all", "site", "site", "cohort"]
    assert list(table["value"]) == ["all", "A", "B", "c"]
    page = (tmp_path / "sg" / "subgroups.html").read_text()
    assert "percentile bootstrap over patients" in page and "<td>site</td>" in page
    assert "<title>subgroups of cohort(s) c (" in page
    assert "site     A" in out and str(tmp_path / "sg" / "subgroups.csv") in out


def test_sheets_after_one_flag_or_repeated_flags_are_all_read(tmp_path, capsys):
    """``--sheet a.csv b.csv`` and ``--sheet a.csv --sheet b.csv`` give the same table (as
    ``gigamil splits --sheet`` is repeated): no sheet is dropped."""
    preds = _preds()
    preds.to_csv(tmp_path / "p.csv", index=False)
    sheet = _sheet(preds, ["A", "B"] * 8)
    sheet.iloc[:8].to_csv(tmp_path / "a.csv", index=False)
    sheet.iloc[8:].to_csv(tmp_path / "b.csv", index=False)
    base = ["subgroups", "--predictions", str(tmp_path / "p.csv"), "--by", "site", "--n-boot", "5"]
    a, b = str(tmp_path / "a.csv"), str(tmp_path / "b.csv")
    assert main([*base, "--sheet", a, b, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--sheet", a, "--sheet", b, "--out", str(tmp_path / "two")]) == 0
    one = (tmp_path / "one" / "subgroups.csv").read_text()
    assert one == (tmp_path / "two" / "subgroups.csv").read_text() and "\nsite,B,8," in one


def test_config_check_names_unknown_and_reserved_columns():
    preds = _preds()
    sheets = [_sheet(preds, ["A"] * 16), preds[["slide_id", "patient_id"]].assign(scanner="x")]
    sg.check_subgroup_columns(["site", "scanner", "cohort"], sheets)  # each in one sheet: fine
    with pytest.raises(GigamilError, match="'tissue' is a column of no scored cohort's sheet"):
        sg.check_subgroup_columns(["site", "tissue"], sheets)
    with pytest.raises(
        GigamilError, match=r"\(their columns that can name groups: scanner, site\)"
    ):
        sg.check_subgroup_columns(["tissue"], sheets)  # ids and paths name no group
    with pytest.raises(GigamilError, match="sheet; did you mean site\\?"):
        sg.check_subgroup_columns(["sitee"], sheets)
    with pytest.raises(GigamilError, match="sheet; did you mean site\\?"):
        sg.check_subgroup_columns(["Site"], sheets)
    for reserved in ("label", "slide_id", "prob_lesion"):
        with pytest.raises(GigamilError, match=f"{reserved!r} names no group"):
            sg.check_subgroup_columns([reserved], sheets)


def test_report_subgroups_reads_the_files_and_writes_the_table(tmp_path):
    preds = _preds()
    preds.to_csv(tmp_path / "pred.csv", index=False)
    site = ["A" if i % 8 < 4 else "B" for i in range(16)]
    _sheet(preds, site).to_csv(tmp_path / "sheet.csv", index=False)
    sheet = str(tmp_path / "sheet.csv")
    table = sg.report_subgroups(
        tmp_path / "pred.csv", [sheet, sheet], ["site"], CLASSES, tmp_path / "out", n_boot=50
    )  # a sheet given twice (two cohorts sharing it) is read once: no "two sheet rows" error
    assert table["value"].tolist() == ["all", "A", "B"]
    b = preds[np.array(site) == "B"]
    assert table.loc[2, "auc"] == pytest.approx(
        roc_auc_score(b["label"] == "lesion", b["prob_lesion"])
    )
    written = pd.read_csv(tmp_path / "out" / "subgroups.csv")
    assert written["n_slides"].tolist() == [16, 8, 8]
    assert "subgroups of cohort(s) c" in (tmp_path / "out" / "subgroups.html").read_text()


def test_a_column_missing_from_the_scopes_sheets_is_the_empty_group_in_the_workflow(tmp_path):
    """A column only the external cohort's sheet has (the configuration check passes) failed
    rule subgroups_cv at the end of a whole run; the workflow puts those slides in (empty)."""
    preds = _preds()
    preds.to_csv(tmp_path / "pred.csv", index=False)
    _sheet(preds, ["A"] * 16).to_csv(tmp_path / "sheet.csv", index=False)
    args = (tmp_path / "pred.csv", [str(tmp_path / "sheet.csv")], ["site", "scanner"], CLASSES)
    with pytest.raises(GigamilError, match="--by scanner: not a column"):
        sg.report_subgroups(*args, tmp_path / "cli", n_boot=5)  # gigamil subgroups: a typo
    table = sg.report_subgroups(*args, tmp_path / "wf", n_boot=5, missing_as_empty=True)
    assert table[table["column"] == "scanner"]["value"].tolist() == [sg.EMPTY]


def test_the_page_shows_no_interval_for_a_few_patients_and_counts_unpredicted_slides():
    """A 2-patient group read "1.000 (1.00-1.00)", and slides without a prediction were only
    in the CSV (a group looked like one class with a normal slide silently gone)."""
    preds = _preds(n=24)
    preds.loc[0, ["prob_normal", "prob_lesion"]] = np.nan
    site = ["A"] * 20 + ["B"] * 4  # A: 10 patients, B: 2
    table = sg.subgroup_metrics(
        sg.join_columns(preds, [_sheet(preds, site)], ["site"]), CLASSES, ["site"], 50
    )
    shown = sg.format_table(table).set_index("value")
    assert re.fullmatch(r"\d\.\d{3} \(\d\.\d\d-\d\.\d\d\)", shown.loc["A", "auc"])
    assert re.fullmatch(r"\d\.\d{3}", shown.loc["B", "auc"])  # no interval, the note says why
    assert shown.loc["A", "n_unpredicted"] == 1 and shown.loc["B", "n_unpredicted"] == 0
    clean = sg.subgroup_metrics(
        sg.join_columns(_preds(n=24), [_sheet(preds, site)], ["site"]), CLASSES, ["site"], 50
    )
    assert "n_unpredicted" not in sg.format_table(clean).columns


def test_a_prediction_column_names_no_group_and_a_column_given_twice_is_one_group():
    """``--by pred`` or ``--by prob_lesion`` would give a row per predicted class or per
    probability, not a subgroup: refused like ``label``; ``--by site site`` gives site's rows
    once; a label of spaces is no label."""
    preds = _preds(4).assign(pred="lesion", site=["A", "B", "A", "B"])
    for column in ("pred", "prob_lesion"):
        with pytest.raises(GigamilError, match=rf"--by {column}: group by a column"):
            sg.join_columns(preds, [], [column])
    table = sg.subgroup_metrics(preds, CLASSES, ["site", "site"], n_boot=5)
    assert list(table["value"]) == ["all", "A", "B"]
    with pytest.raises(GigamilError, match=r"1 of the 4 slides have no label"):
        sg.subgroup_metrics(preds.assign(label=["normal", "lesion", " ", "lesion"]), CLASSES, [])


def test_sheet_values_follow_the_slide_ids_not_the_row_order():
    """A sheet in another row order than the predictions (and a missing cell read as NaN)
    gives each slide its own row's value."""
    preds = _preds(6)
    sheet = _sheet(preds, ["A", "B", "C", "D", "E", None]).iloc[::-1]
    joined = sg.join_columns(preds, [sheet], ["site"])
    assert list(joined["site"]) == ["A", "B", "C", "D", "E", sg.EMPTY]


def test_ten_patients_are_enough_for_an_interval_and_the_seed_is_used():
    """MIN_PATIENTS_FOR_CI patients (10) get no note; the bootstrap uses the given seed (the
    same seed reproduces the intervals, another one moves them)."""
    preds = _preds(20).assign(site="A")  # 10 patients
    one = sg.subgroup_metrics(preds, CLASSES, ["site"], n_boot=30, seed=1)
    assert list(one["note"]) == ["", ""]
    again = sg.subgroup_metrics(preds, CLASSES, ["site"], n_boot=30, seed=1)
    other = sg.subgroup_metrics(preds, CLASSES, ["site"], n_boot=30, seed=2)
    pd.testing.assert_frame_equal(one, again)
    assert not one["brier_ci_low"].equals(other["brier_ci_low"])


def test_a_slide_with_any_probability_missing_is_unpredicted_and_none_predicted_is_an_error():
    preds = _preds().assign(site="A")
    preds.loc[5, "prob_normal"] = np.nan  # half a prediction is none
    table = sg.subgroup_metrics(preds, CLASSES, ["site"], n_boot=5)
    assert table["n_unpredicted"].tolist() == [1, 1] and table["n_slides"].tolist() == [15, 15]
    assert np.isfinite(table[["auc", "brier", "balanced_accuracy"]].to_numpy()).all()
    with pytest.raises(GigamilError, match=r"no slide has a prediction"):
        sg.subgroup_metrics(preds.assign(prob_lesion=np.nan), CLASSES, ["site"])


def test_the_formatted_table_shows_three_decimals_the_interval_and_the_note():
    """A metric is ``0.912 (0.85-0.97)``; without an interval just the value; an undefined one
    ``-``; the counts and the note are shown, n_unpredicted too when a group has such slides."""
    row = {
        "column": "site",
        "value": "A",
        "n_slides": 4,
        "n_patients": 12,
        "n_normal": 2,
        "n_lesion": 2,
        "auc": 0.91234,
        "auc_ci_low": 0.8512,
        "auc_ci_high": 0.9688,
        "balanced_accuracy": 0.75,
        "balanced_accuracy_ci_low": np.nan,
        "balanced_accuracy_ci_high": np.nan,
        "brier": np.nan,
        "brier_ci_low": 0.1,
        "brier_ci_high": 0.2,
        "note": "2 patient(s): the interval is not reliable",
        "n_unpredicted": 1,
    }
    shown = sg.format_table(pd.DataFrame([row]))
    assert list(shown.columns) == [
        "column",
        "value",
        "n_slides",
        "n_patients",
        "n_normal",
        "n_lesion",
        "n_unpredicted",
        "auc",
        "balanced_accuracy",
        "brier",
        "note",
    ]
    assert shown.iloc[0][["auc", "balanced_accuracy", "brier"]].tolist() == [
        "0.912 (0.85-0.97)",
        "0.750",
        "-",
    ]
    assert shown.iloc[0]["note"] == row["note"]


def test_the_csv_keeps_six_significant_digits_and_the_cli_passes_seed_and_cohorts(tmp_path):
    """``--seed`` reaches the bootstrap (the same seed, the same file; another, other
    intervals), the page's title lists every cohort, the CSV's numbers have six significant
    digits (FLOAT_FORMAT), not fewer."""
    preds = _preds()
    preds["cohort"] = ["c2"] * 8 + ["c1"] * 8
    preds.to_csv(tmp_path / "p.csv", index=False)
    args = ["subgroups", "--predictions", str(tmp_path / "p.csv"), "--by", "cohort"]
    for out, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        assert main([*args, "--n-boot", "20", "--seed", seed, "--out", str(tmp_path / out)]) == 0
    a, b, c = ((tmp_path / d / "subgroups.csv").read_text() for d in "abc")
    assert a == b != c
    assert (
        "<title>subgroups of cohort(s) c1, c2 (" in (tmp_path / "c" / "subgroups.html").read_text()
    )
    table = sg.subgroup_metrics(preds, CLASSES, ["cohort"], n_boot=20, seed=2)
    read = pd.read_csv(tmp_path / "c" / "subgroups.csv", keep_default_na=False)
    assert read["brier"].tolist() == pytest.approx(table["brier"].tolist(), rel=1e-5)


def test_errors_name_the_slide_in_two_rows_and_up_to_five_unknown_slides(tmp_path):
    """The duplicated slide named is the one in two rows (not the sheet's first); unknown
    slides are listed up to five, with their count; the outputs go to a new nested folder."""
    preds = _preds(8)
    sheet = _sheet(preds, ["A"] * 8)
    with pytest.raises(GigamilError, match=r"slide s5 is in two sheet rows"):
        sg.join_columns(preds, [sheet, sheet.iloc[5:6]], ["site"])
    with pytest.raises(
        GigamilError, match=r"7 predicted .*: s1, s2, s3, s4, s5, \.\.\. \(7 in all\)"
    ):
        sg.join_columns(preds, [sheet.iloc[:1]], ["site"])
    table = sg.subgroup_metrics(preds.assign(site="A"), CLASSES, ["site"], n_boot=5)
    paths = sg.write_subgroups(table, tmp_path / "new" / "dir", "t")
    assert [p.name for p in paths] == ["subgroups.csv", "subgroups.html"]
    assert all(p.is_file() for p in paths)


def test_an_all_empty_float_column_is_the_empty_group_without_a_pandas_warning():
    """fillna("") on a float column warns in pandas 3 (and will raise): a Python caller's
    all-NaN column of the predictions is one group (empty)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        joined = sg.join_columns(_preds().assign(cohort=np.nan), [], ["cohort"])
    assert set(joined["cohort"]) == {sg.EMPTY}


def test_a_subgroup_without_one_of_three_classes_says_which_classes_its_figures_cover():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    label = np.array(classes)[np.arange(30) % 3]
    p = rng.dirichlet([1, 1, 1], 30) + 0.5 * (label[:, None] == np.array(classes))
    p /= p.sum(axis=1, keepdims=True)
    preds = pd.DataFrame(
        {
            "cohort": "x",
            "slide_id": [f"s{i}" for i in range(30)],
            "patient_id": [f"p{i}" for i in range(30)],
            "label": label,
            **{f"prob_{c}": p[:, k] for k, c in enumerate(classes)},
            "site": np.where((label == "c") | (np.arange(30) >= 15), "B", "A"),
        }
    )
    table = sg.subgroup_metrics(preds, classes, ["site"], n_boot=20).set_index("value")
    assert table.loc["A", "note"] == "no c: AUC and balanced accuracy over a, b"
    a = preds[preds["site"] == "A"]
    expected = np.mean([roc_auc_score(a["label"] == c, a[f"prob_{c}"]) for c in ("a", "b")])
    assert table.loc["A", "auc"] == pytest.approx(expected)  # one-vs-rest of the two present
    assert table.loc["B", "note"] == ""


def test_missing_as_empty_keeps_the_columns_the_sheets_have():
    """The workflow's (empty) group is for a column no sheet has; a column a sheet has keeps
    its values beside it."""
    preds = _preds()
    site = ["A" if i < 8 else "B" for i in range(16)]
    joined = sg.join_columns(preds, [_sheet(preds, site)], ["site", "scanner"], True)
    assert joined["site"].tolist() == site
    assert set(joined["scanner"]) == {sg.EMPTY}


def test_pred_names_no_group():
    preds = _preds()
    with pytest.raises(GigamilError, match="--by pred: group by a column"):
        sg.join_columns(preds.assign(pred="normal"), [], ["pred"])
    with pytest.raises(GigamilError, match="'pred' names no group"):
        sg.check_subgroup_columns(["pred"], [_sheet(preds, ["A"] * 16)])


def test_config_check_lists_no_column_the_sheets_leave_empty():
    """The sheet loader adds an empty mpp column to a sheet without one: a trial's sheet of
    slide_id, patient_id, label, path and lesion_mask was told 'their columns: cohort, mpp'."""
    preds = _preds()
    sheet = preds[["slide_id", "patient_id"]].assign(mpp=float("nan"), site="", lesion_mask="m")
    with pytest.raises(GigamilError) as err:
        sg.check_subgroup_columns(["site"], [sheet])  # a column left blank names no group
    assert str(err.value).endswith(
        "(their columns that can name groups: none but cohort: add one, e.g. site)"
    )
    sg.check_subgroup_columns(["site"], [sheet, sheet.assign(site="A")])  # filled in one: fine


def test_config_check_suggests_the_column_of_another_case_before_a_near_name():
    """'site' beside a sheet's SITE and sites: SITE (difflib alone would say sites); a
    lesion_mask column is a path, never suggested nor listed."""
    preds = _preds()
    sheet = preds[["slide_id", "patient_id"]].assign(SITE="A", sites="x", lesion_mask="m.png")
    with pytest.raises(
        GigamilError,
        match=r"did you mean SITE\? \(their columns that can name groups: SITE, sites\)",
    ):
        sg.check_subgroup_columns(["site"], [sheet])
    with pytest.raises(GigamilError) as err:
        sg.check_subgroup_columns(["lesion_mas"], [sheet])
    assert "lesion_mask" not in str(err.value)


def test_the_page_embeds_the_forest_plot(tmp_path):
    preds = _preds()
    table = sg.subgroup_metrics(
        sg.join_columns(preds, [_sheet(preds, ["A"] * 16)], ["site"]), CLASSES, ["site"], 20
    )
    sg.write_subgroups(table, tmp_path, "t")
    assert "<img src='data:image/png;base64," in (tmp_path / "subgroups.html").read_text()


def test_missing_as_empty_without_sheets_is_still_the_no_sheet_error():
    with pytest.raises(GigamilError, match=r"--by site: not a column .*\(no --sheet\)"):
        sg.join_columns(_preds(), [], ["site"], missing_as_empty=True)


def test_a_slides_own_files_name_no_group_in_the_config_and_the_cli():
    """`subgroups: [path]` was called "a column of no scored cohort's sheet" (false: the sheet
    has it) while `gigamil subgroups --by path` grouped by each slide's file."""
    preds = _preds()
    sheet = _sheet(preds, ["A"] * 16).assign(lesion_mask="")
    for column in ("path", "lesion_mask"):
        with pytest.raises(GigamilError, match=f"{column!r} names no group"):
            sg.check_subgroup_columns([column], [sheet])
        with pytest.raises(GigamilError, match=f"--by {column}: group by a column such as"):
            sg.join_columns(preds, [sheet], [column])
