"""Patient-level folds from the pulp integer program: disjoint, balanced, deterministic."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from gigamil.errors import GigamilError
from gigamil.folds import (
    FOLD_COLUMNS,
    check_folds,
    fold_slides,
    fold_slides_with_stores,
    read_folds,
    split_report,
    write_folds,
)
from gigamil.splits import _most_frequent, feasible_folds, make_folds, sheet_digest, split_digest


def _sheet(patients: list[tuple[str, str, int]], site: dict | None = None) -> pd.DataFrame:
    """Slides from (patient_id, label, n_slides) triples."""
    rows = []
    for pid, label, n in patients:
        for s in range(n):
            row = {"cohort": "c", "slide_id": f"{pid}_s{s}", "patient_id": pid, "label": label}
            if site is not None:
                row["site"] = site[pid]
            rows.append(row)
    return pd.DataFrame(rows)


def _uneven_sheet(seed: int = 3) -> pd.DataFrame:
    """Uneven slides per patient (1..9), a rare class (5 patients) and a common one (23)."""
    rng = np.random.default_rng(seed)
    pats = [(f"A{i}", "common", int(rng.integers(1, 10))) for i in range(23)]
    pats += [(f"R{i}", "rare", int(rng.integers(1, 4))) for i in range(5)]
    return _sheet(pats)


def _test_patients(folds: pd.DataFrame) -> pd.DataFrame:
    """Patients per fold and label in the test parts."""
    test = folds[folds["role"] == "test"]
    return test.groupby(["fold", "label"])["patient_id"].nunique().unstack(fill_value=0)


def test_patient_disjoint_and_balanced_on_uneven_sheet():
    sheet = _uneven_sheet()
    folds = make_folds(sheet, folds=5, val_fraction=0.2, seed=0)
    assert list(folds.columns) == FOLD_COLUMNS
    # every slide is test exactly once; a patient's slides share one role in every fold
    assert folds[folds.role == "test"].groupby("slide_id").size().eq(1).all()
    assert folds.groupby(["fold", "patient_id"])["role"].nunique().eq(1).all()
    test_sets = [set(fold_slides(folds, k, "test")["patient_id"]) for k in range(5)]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not test_sets[i] & test_sets[j]
    counts = _test_patients(folds)
    # 23 common patients over 5 folds: 4 or 5 each; the 5 rare ones: exactly one per fold
    assert counts["common"].between(4, 5).all() and counts["common"].sum() == 23
    assert counts["rare"].eq(1).all()
    # every training part keeps both classes in train and in val
    for k in range(5):
        for role in ("train", "val"):
            part = fold_slides(folds, k, role)
            assert set(part["label"]) == {"common", "rare"}, (k, role)


def test_many_slides_per_patient_stay_together_and_slides_are_balanced():
    # two patients with 20 slides each, the rest with 1 or 2
    pats = [("big1", "pos", 20), ("big2", "neg", 20)]
    pats += [(f"p{i}", "pos", 1 + i % 2) for i in range(8)]
    pats += [(f"n{i}", "neg", 1 + i % 2) for i in range(8)]
    sheet = _sheet(pats)
    folds = make_folds(sheet, folds=3, val_fraction=0.25, seed=1)
    test = folds[folds.role == "test"]
    big = test[test.patient_id.isin(["big1", "big2"])]
    fold_of_big = big.groupby("patient_id")["fold"].unique()
    assert all(len(v) == 1 for v in fold_of_big)  # all 20 slides in one fold
    # the two 20-slide patients are put in different folds (slide-count balance)
    assert fold_of_big["big1"][0] != fold_of_big["big2"][0]
    counts = _test_patients(folds)
    assert counts["pos"].between(3, 3).all() and counts["neg"].between(3, 3).all()


def test_site_stratification_balances_sites():
    pats, site = [], {}
    for i in range(24):
        pid = f"P{i}"
        pats.append((pid, "pos" if i % 2 else "neg", 1))
        site[pid] = "A" if i < 12 else "B"
    sheet = _sheet(pats, site)
    folds = make_folds(sheet, folds=3, seed=0, stratify_by=["site"])
    test = folds[folds.role == "test"].merge(sheet[["slide_id", "site"]], on="slide_id")
    per_site = test.groupby(["fold", "site"]).size().unstack()
    assert per_site.eq(4).all().all()
    per_site_label = test.groupby(["fold", "site", "label"]).size()
    assert per_site_label.eq(2).all()
    # the split's log (split_report) shows the balance per site, which folds.csv does not hold
    report = split_report(folds)
    assert list(report.columns) == ["fold", "role", "label", "site", "slides", "patients"]
    tested = report[report["role"] == "test"].set_index(["fold", "site", "label"])["patients"]
    assert tested.to_dict() == per_site_label.to_dict()
    assert "site" not in folds.columns  # folds.csv's columns are unchanged
    blank = sheet.assign(site=sheet["site"].where(sheet.index != 0, ""))
    shown = split_report(make_folds(blank, folds=3, seed=0, stratify_by=["site"]))["site"]
    assert "(empty)" in set(shown) and "" not in set(shown)  # as gigamil subgroups shows it
    # the validation parts are stratified too: each fold validates on every site and label
    folds = make_folds(sheet, folds=3, seed=0, stratify_by=["site"], val_fraction=0.25)
    val = folds[folds.role == "val"].merge(sheet[["slide_id", "site"]], on="slide_id")
    per_val = val.groupby(["fold", "site", "label"]).size()
    assert len(per_val) == 3 * 2 * 2 and per_val.eq(1).all()


def test_deterministic_for_a_seed_and_seed_changes_assignment():
    sheet = _uneven_sheet()
    a = make_folds(sheet, folds=4, seed=5)
    b = make_folds(sheet.sample(frac=1.0, random_state=0), folds=4, seed=5)
    pd.testing.assert_frame_equal(a, b)
    c = make_folds(sheet, folds=4, seed=6)
    assert not a.equals(c)


def test_class_with_fewer_patients_than_folds_is_a_clear_error():
    pats = [(f"A{i}", "common", 1) for i in range(10)] + [("R0", "rare", 3), ("R1", "rare", 1)]
    with pytest.raises(GigamilError, match=r"class 'rare' has 2 patient\(s\) but cv.folds is 3"):
        make_folds(_sheet(pats), folds=3)


def test_conflicting_patient_label_and_unknown_stratum_are_errors():
    sheet = _sheet([(f"A{i}", "x", 1) for i in range(4)] + [(f"B{i}", "y", 1) for i in range(4)])
    bad = sheet.copy()
    bad.loc[len(bad)] = {"cohort": "c", "slide_id": "extra", "patient_id": "A0", "label": "y"}
    with pytest.raises(GigamilError, match="patient 'A0' has slides with different labels"):
        make_folds(bad, folds=2)
    with pytest.raises(GigamilError, match="column 'site'"):
        make_folds(sheet, folds=2, stratify_by=["site"])


def test_leakage_check_catches_a_patient_in_two_roles(tmp_path):
    sheet = _uneven_sheet()
    folds = make_folds(sheet, folds=3, seed=0)
    path = tmp_path / "folds.csv"
    write_folds(folds, path)
    back = read_folds(path)
    assert back["fold"].dtype.kind == "i" and len(back) == len(folds)
    # an edited fold cell was a ValueError traceback; a folder as the path leaked a temporary
    for cell in ("x", "", "1.5"):
        bad = folds.astype({"fold": str})
        bad.loc[bad.index[3], "fold"] = cell
        bad.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(GigamilError, match=f"bad.csv: row 5: fold '{cell}' is not a fold"):
            read_folds(tmp_path / "bad.csv")
    (tmp_path / "dir").mkdir()
    with pytest.raises(GigamilError, match="dir: is a folder; give the path of the folds.csv"):
        write_folds(folds, tmp_path / "dir")
    assert not list(tmp_path.glob(".folds.*"))
    # move one slide of a multi-slide test patient into train: leakage
    leaky = folds.copy()
    test0 = leaky[(leaky.fold == 0) & (leaky.role == "test")]
    pid = test0.groupby("patient_id").size().idxmax()
    row = test0.index[test0.patient_id == pid][0]
    leaky.loc[row, "role"] = "train"
    with pytest.raises(GigamilError, match=f"leakage: patient '{pid}' is test and train in fold 0"):
        check_folds(leaky)
    leaky.to_csv(path, index=False)
    with pytest.raises(GigamilError, match="leakage"):
        read_folds(path)
    # a slide tested in two folds
    twice = folds.copy()
    r = twice.index[(twice.fold == 1) & (twice.patient_id == pid)]
    twice.loc[r, "role"] = "test"
    with pytest.raises(GigamilError, match="test slide in several folds"):
        check_folds(twice)


def test_cli_splits_writes_folds_and_reports_errors_on_one_line(tmp_path, capsys):
    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    path = tmp_path / "cohortA.csv"
    sheet.to_csv(path, index=False)
    out = tmp_path / "folds.csv"
    assert main(["splits", "--sheet", str(path), "--out", str(out), "--folds", "4"]) == 0
    folds = read_folds(out)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    assert set(folds["cohort"]) == {"cohortA"}
    assert main(["splits", "--sheet", str(path), "--out", str(out)]) == 0  # the schema's cv
    folds = read_folds(out)
    assert folds["fold"].nunique() == 5 and set(folds["role"]) == {"train", "val", "test"}
    capsys.readouterr()
    assert main(["splits", "--sheet", str(path), "--out", str(out), "--folds", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # the advice in this command's terms: its flags, not the config keys it has no file for
    assert len(err) == 1 and "class 'rare' has 5 patient(s) but --folds is 6" in err[0]
    assert "cv." not in err[0] and "lower --folds to at most" in err[0]
    (tmp_path / "empty.csv").write_bytes(b"")  # a traceback (EmptyDataError) before
    assert main(["splits", "--sheet", str(tmp_path / "empty.csv"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the file is empty (0 bytes)" in err[0]
    # the other options too, and a value joined as on a command line
    few = _sheet(
        [(f"N{i}", "normal", 1) for i in range(2)] + [(f"L{i}", "lesion", 1) for i in range(2)]
    ).drop(columns="cohort")
    few["path"] = "x.svs"
    few.to_csv(path, index=False)
    assert main(["splits", "--sheet", str(path), "--out", str(out), "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "or set --val-fraction 0 (no validation patients" in err and "cv." not in err
    assert main(["splits", "--sheet", str(path), "--out", str(out), "--folds", "1"]) == 2
    assert "--folds must be at least 2 (got 1)" in capsys.readouterr().err
    args = ["splits", "--sheet", str(path), "--out", str(out), "--folds", "2"]
    assert main([*args, "--val-fraction", "0"]) == 0  # the advice, followed
    few["label"] = " " + few["label"]  # "s1,p1, normal,x.svs": read stripped, as load_sheet does
    few.to_csv(path, index=False)
    assert main([*args, "--val-fraction", "0"]) == 0
    assert set(read_folds(out)["label"]) == {"normal", "lesion"}


def test_cli_splits_refuses_two_sheets_of_one_file_name(tmp_path, capsys):
    """The cohort name is the file stem: demo/sheet.csv and ext/sheet.csv (both written by
    `gigamil demo`) would merge into one cohort 'sheet'."""
    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    for d in ("demo", "ext"):
        (tmp_path / d).mkdir()
        sheet.assign(slide_id=d + sheet["slide_id"]).to_csv(tmp_path / d / "sheet.csv", index=False)
    args = ["splits", "--out", str(tmp_path / "folds.csv")]
    args += [
        "--sheet",
        str(tmp_path / "demo/sheet.csv"),
        "--sheet",
        str(tmp_path / "ext/sheet.csv"),
    ]
    capsys.readouterr()
    assert main(args) == 2
    assert "would all be cohort 'sheet'" in capsys.readouterr().err
    assert not (tmp_path / "folds.csv").exists()


def test_every_fold_trains_and_validates_on_every_class():
    """2 patients per class and 2 folds: no validation patient of a class in some fold; before,
    folds.csv was written anyway and the fold trained/validated on one class (issue 15, item 6)."""
    two = _sheet(
        [(f"N{i}", "normal", 1) for i in range(2)] + [(f"L{i}", "lesion", 1) for i in range(2)]
    )
    with pytest.raises(
        GigamilError,
        match=r"class '(normal|lesion)' has 2 patient\(s\) .*"
        r"test, training and validation parts: add patients of class.*\(at least 4 per "
        r"class for cv.folds 2; with cv.folds raised to 3, at least 3\), or set "
        r"cv.val_fraction: 0 \(no validation patients; 2 per class then suffice\)",
    ):
        make_folds(two, 2)
    make_folds(two, 2, val_fraction=0.0)  # the advice, followed
    # enough patients for the test parts, too few left for training + validation in a fold
    three = _sheet(
        [(f"N{i}", "normal", 1) for i in range(8)] + [(f"L{i}", "lesion", 1) for i in range(3)]
    )
    with pytest.raises(
        GigamilError,
        match=r"fold \d's (training|validation) part has no patient "
        r"of class 'lesion' \(that class has 3 patient\(s\), 2 in fold \d's test part\): "
        r"raise cv.folds to 3",
    ):
        make_folds(three, 2)
    assert feasible_folds(2) == [] and feasible_folds(3) == [3]
    assert feasible_folds(6) == [2, 3, 4, 5, 6]
    folds = make_folds(three, 3)  # one lesion patient per test, training and validation part
    for _, part in folds.groupby("fold"):
        for role in ("train", "val", "test"):
            assert set(part.loc[part.role == role, "label"]) == {"normal", "lesion"}


def test_no_validation_part() -> None:
    """cv.val_fraction 0: every non-test patient trains; two patients per class suffice."""
    two = _sheet(
        [(f"N{i}", "normal", 1) for i in range(2)] + [(f"L{i}", "lesion", 1) for i in range(2)]
    )
    folds = make_folds(two, 2, val_fraction=0.0)
    assert set(folds["role"]) == {"train", "test"}
    for _, part in folds.groupby("fold"):
        for role in ("train", "test"):
            assert set(part.loc[part.role == role, "label"]) == {"normal", "lesion"}
    with pytest.raises(GigamilError, match="validation"):
        make_folds(two, 2, val_fraction=0.2)
    assert feasible_folds(2, validation=False) == [2] and feasible_folds(2) == []
    with pytest.raises(GigamilError, match=r"in \[0, 1\)"):
        make_folds(two, 2, val_fraction=1.0)


def test_every_class_short_of_patients_is_named_at_once_smallest_first():
    from gigamil.splits import make_cv_folds

    sheet = _sheet([(f"N{i}", "normal", 1) for i in range(2)] + [("T0", "tumour", 1)])
    cv = {"folds": 5, "val_fraction": 0.2, "seed": 0, "stratify_by": []}
    with pytest.raises(GigamilError) as err:
        make_cv_folds([sheet], cv)
    msg = str(err.value)
    assert (
        "class 'tumour' has 1 patient(s), class 'normal' has 2 patient(s) but cv.folds is 5" in msg
    )
    # advice that works when followed: enough for these folds, or the fewest with fewer folds
    assert (
        "add patients of classes 'tumour' and 'normal' (at least 5 per class for cv.folds 5; "
        "with cv.folds lowered to 3, at least 3)"
    ) in msg
    cv_nv = cv | {"folds": 3, "val_fraction": 0}  # the new-user trial's case
    with pytest.raises(
        GigamilError,
        match=r"at least 3 per class for cv.folds 3; with cv.folds "
        r"lowered to 2, at least 2\)",
    ):
        make_cv_folds([sheet], cv_nv)
    # four patients of each class, five folds: both classes are short, and both are named
    four = _sheet(
        [(f"N{i}", "normal", 1) for i in range(4)] + [(f"T{i}", "tumour", 1) for i in range(4)]
    )
    with pytest.raises(GigamilError, match="at most 4 or add patients of classes 'normal' and"):
        make_cv_folds([four], cv)
    ok = _sheet(
        [(f"N{i}", "normal", 1) for i in range(6)] + [(f"T{i}", "tumour", 1) for i in range(6)]
    )
    folds = make_cv_folds([ok.iloc[:6], ok.iloc[6:]], cv)  # the sheets of two cohorts, joined
    assert set(folds["patient_id"]) == set(ok["patient_id"]) and folds["fold"].nunique() == 5


def test_split_digest_follows_only_what_the_folds_read():
    site = {f"P{i}": "a" if i % 2 else "b" for i in range(6)}
    sheet = _sheet([(f"P{i}", "x" if i < 3 else "y", 2) for i in range(6)], site)
    sheet["path"] = [f"s{i}.tiff" for i in range(len(sheet))]
    cv = {"folds": 2, "stratify_by": []}
    base = split_digest([sheet], cv)
    assert len(base) == 64 and split_digest([sheet.copy()], cv) == base
    other = sheet.assign(path="elsewhere.svs", lesion_mask="m.png", mpp=0.5)
    assert split_digest([other], cv) == base  # columns the folds do not read
    relabelled = sheet.copy()
    relabelled.loc[0, "label"] = "y"
    moved = sheet.copy()
    moved.loc[1, "patient_id"] = "P5"
    resited = sheet.copy()
    resited.loc[0, "site"] = "c"
    assert split_digest([relabelled], cv) != base
    assert split_digest([moved], cv) != base
    assert split_digest([sheet.iloc[:-1]], cv) != base  # a slide removed
    assert split_digest([resited], cv) == base  # site is not a stratum here ...
    strat = {"folds": 2, "stratify_by": ["site"]}
    assert split_digest([resited], strat) != split_digest([sheet], strat)  # ... but here it is
    # the folds of equal digests are equal
    assert make_folds(other, 3).equals(make_folds(sheet, 3))
    # predict_fold's digest of an external sheet: the same columns, any row order
    assert sheet_digest([other.iloc[::-1]]) == base and sheet_digest([relabelled]) != base


def test_stratifying_by_cohort_gives_a_digest_and_folds():
    """``cv.stratify_by: [cohort]`` (README's example): the digest reads the cohort column once
    (it crashed the workflow's parse naming a non-unique column) and changes with a cohort."""
    site = {f"P{i}": "a" for i in range(8)}
    sheet = _sheet([(f"P{i}", "x" if i < 4 else "y", 1) for i in range(8)], site)
    sheet["cohort"] = ["c1" if i % 2 else "c2" for i in range(len(sheet))]
    cv = {"folds": 2, "stratify_by": ["cohort"]}
    base = split_digest([sheet], cv)
    moved = sheet.assign(cohort=sheet["cohort"].where(sheet.index != 0, "c3"))
    assert len(base) == 64 and split_digest([moved], cv) != base
    folds = make_folds(sheet, 2, stratify_by=["cohort"])
    test = folds[folds["role"] == "test"]
    assert test.groupby("fold")["cohort"].nunique().eq(2).all()  # each fold tests both cohorts


def test_a_stratify_column_missing_from_one_cohorts_sheet_is_an_error_naming_it():
    """Two train sheets, one without the ``site`` column: the pooled table holds no value for
    that cohort's slides (a traceback from an empty min() before); a single missing value
    counts as an empty cell."""
    site = {f"P{i}": "a" if i % 2 else "b" for i in range(12)}
    sheet = _sheet([(f"P{i}", "x" if i < 6 else "y", 1) for i in range(12)], site)
    sheet["cohort"] = ["c1" if i % 3 else "c2" for i in range(12)]
    lacking = sheet.assign(site=sheet["site"].where(sheet["cohort"] == "c1"))
    with pytest.raises(GigamilError, match=r"column 'site' is not in the sheet of cohort\(s\) c2"):
        make_folds(lacking, 3, stratify_by=["site"])
    one = sheet.assign(site=sheet["site"].where(sheet.index != 1))  # one cell: a value of ''
    assert make_folds(one, 3, stratify_by=["site"]).equals(
        make_folds(
            sheet.assign(site=sheet["site"].where(sheet.index != 1, "")), 3, stratify_by=["site"]
        )
    )


def test_sorting_a_sheet_changes_neither_the_folds_nor_their_digest():
    """A user sorts the sheet in a spreadsheet: the split, and so the trained models, stay."""
    site = {f"P{i}": "a" if i % 2 else "b" for i in range(8)}
    sheet = _sheet([(f"P{i}", "x" if i < 4 else "y", 2) for i in range(8)], site)
    sheet.loc[0, "site"] = "c"  # patient P0: sites b and c once each, a tie
    shuffled = sheet.sample(frac=1, random_state=3).reset_index(drop=True)
    assert not shuffled["slide_id"].equals(sheet["slide_id"])
    for cv in ({"folds": 2, "stratify_by": []}, {"folds": 2, "stratify_by": ["site"]}):
        assert split_digest([shuffled], cv) == split_digest([sheet], cv)
        strata = cv["stratify_by"]
        assert make_folds(shuffled, 4, stratify_by=strata).equals(
            make_folds(sheet, 4, stratify_by=strata)
        )
    tied = sheet[sheet["patient_id"] == "P0"]
    assert list(tied["site"]) == ["c", "b"]
    assert _most_frequent(tied["site"]) == _most_frequent(tied["site"][::-1]) == "b"


def test_cli_splits_with_config_names_each_option_where_it_was_set(tmp_path, capsys):
    """With --config, advice names the config key of a value from the config and the flag of a
    value given on the command line."""
    import yaml

    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    sheet.to_csv(tmp_path / "a.csv", index=False)
    cfg = {
        "experiment": "x",
        "classes": sorted(set(sheet["label"])),
        "cohorts": {"a": {"sheet": str(tmp_path / "a.csv")}},
        "cv": {"folds": 6},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    args = ["splits", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "f.csv")]
    capsys.readouterr()
    assert main(args) == 2
    assert "but cv.folds is 6" in capsys.readouterr().err  # the config's value
    assert main([*args, "--folds", "1"]) == 2
    assert "--folds must be at least 2 (got 1)" in capsys.readouterr().err  # the flag's
    assert main([*args, "--folds", "4"]) == 0


def test_cli_splits_sheet_reads_its_header_as_load_sheet_does_and_refuses_case_twins(
    tmp_path, capsys
):
    """--sheet: a header cell ' label' is label (it read no classes at all: 'not one of the
    classes []'); 'Lesion' beside 'lesion' would silently be a third class."""
    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    path = tmp_path / "a.csv"
    sheet.rename(columns={"label": " label"}).to_csv(path, index=False)
    args = ["splits", "--sheet", str(path), "--out", str(tmp_path / "f.csv"), "--folds", "3"]
    assert main(args) == 0
    assert set(read_folds(tmp_path / "f.csv")["label"]) == set(sheet["label"])
    first = sheet["label"].iloc[0]
    sheet.loc[sheet["patient_id"] == sheet["patient_id"].iloc[0], "label"] = first.title()
    sheet.to_csv(path, index=False)
    capsys.readouterr()
    assert main(args) == 2
    twins = f"{first.title()!r} ({path}) and {first!r} ({path})"
    assert f"labels {twins} differ only in case" in capsys.readouterr().err


def test_a_patient_in_two_train_cohorts_keeps_one_role_per_fold():
    """Patients with slides in two train cohorts (same patient_id): each fold gives all their
    slides, whichever cohort, one role, and every slide is tested exactly once."""
    a = _uneven_sheet(seed=5)
    b = a.drop_duplicates("patient_id").assign(
        cohort="b", slide_id=lambda d: "b_" + d["slide_id"]
    )  # one more slide of every patient, in another cohort
    folds = make_folds(pd.concat([a, b], ignore_index=True), folds=3, val_fraction=0.2, seed=1)
    roles = folds.groupby(["fold", "patient_id"])["role"].nunique()
    assert (roles == 1).all()
    assert set(folds["cohort"]) == {"c", "b"}
    assert (folds[folds["role"] == "test"].groupby(["cohort", "slide_id"]).size() == 1).all()
    assert len(folds[folds["role"] == "test"]) == len(a) + len(b)


def test_check_folds_finds_each_kind_of_incomplete_split():
    sheet = _uneven_sheet()
    folds = make_folds(sheet, folds=3, seed=0)
    check_folds(folds, sheet)
    # a slide that is never a test slide
    never = folds.copy()
    slide = never.loc[(never["fold"] == 0) & (never["role"] == "test"), "slide_id"].iloc[0]
    pid = never.loc[never["slide_id"] == slide, "patient_id"].iloc[0]
    never.loc[(never["fold"] == 0) & (never["patient_id"] == pid), "role"] = "train"
    with pytest.raises(GigamilError, match=r"slide c/\S+ is never a test slide"):
        check_folds(never)
    # a fold without one of the slides
    with pytest.raises(GigamilError, match="the folds do not all cover the same slides"):
        check_folds(folds.drop(folds.index[(folds["fold"] == 2)][:1]))
    # folds of other slides than the sheet's
    with pytest.raises(GigamilError, match=r"does not match the sheets \(e.g. slide c/"):
        check_folds(folds, sheet.iloc[1:])


def test_the_validation_parts_follow_the_seed():
    """With the test parts fixed, another seed picks other validation patients (the seed is
    part of each fold's validation draw), and the same seed the same ones."""
    from gigamil.splits import _fold_roles, patient_table

    sheet = _uneven_sheet()
    patients = patient_table(sheet, [])
    fold_of = np.arange(len(patients)) % 3  # the same test parts for every seed
    a = _fold_roles(patients, fold_of, 3, 0.3, 0, [])
    assert np.array_equal(a, _fold_roles(patients, fold_of, 3, 0.3, 0, []))
    others = [_fold_roles(patients, fold_of, 3, 0.3, s, []) for s in (1, 2, 3)]
    assert all((o == "test").sum() == (a == "test").sum() for o in others)
    assert any(not np.array_equal(o == "val", a == "val") for o in others)


def test_each_class_has_its_slides_spread_over_the_folds():
    """Two 10-slide patients in each class: the folds split each class's slides evenly (both
    big lesion patients in one fold and both big normal ones in the other would balance the
    folds' totals, not each class)."""
    pats = [("P1", "pos", 10), ("P2", "pos", 10), ("N1", "neg", 10), ("N2", "neg", 10)]
    pats += [(f"p{i}", "pos", 1) for i in range(4)] + [(f"n{i}", "neg", 1) for i in range(4)]
    for seed in range(4):
        folds = make_folds(_sheet(pats), folds=2, val_fraction=0, seed=seed)
        test = folds[folds.role == "test"]
        per_class = test.groupby(["fold", "label"]).size().unstack()
        assert (per_class == 12).all().all(), (seed, per_class)


def _two_folds() -> pd.DataFrame:
    """Two slides of two patients, each the test slide of one fold."""
    rows = [
        (0, "test", "c", "s1", "p1", "a"),
        (0, "train", "c", "s2", "p2", "b"),
        (1, "train", "c", "s1", "p1", "a"),
        (1, "test", "c", "s2", "p2", "b"),
    ]
    return pd.DataFrame(rows, columns=FOLD_COLUMNS)


def test_check_folds_refuses_an_empty_table_and_a_slide_twice_in_one_fold():
    check_folds(_two_folds())
    with pytest.raises(GigamilError, match="folds.csv: no rows"):
        check_folds(pd.DataFrame(columns=FOLD_COLUMNS))
    folds = _two_folds()
    twice = pd.concat([folds, folds.iloc[[1]]], ignore_index=True)
    with pytest.raises(GigamilError, match="slide c/s2 appears twice in one fold"):
        check_folds(twice)


def test_read_folds_refuses_a_negative_fold_number(tmp_path):
    bad = _two_folds().astype({"fold": str})
    bad.loc[bad.index[2], "fold"] = "-1"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(GigamilError, match="bad.csv: row 4: fold '-1' is not a fold number"):
        read_folds(tmp_path / "bad.csv")
    bad.loc[bad.index[2], "fold"] = "inf"  # passed, then a raw pandas IntCastingNaNError
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(GigamilError, match="bad.csv: row 4: fold 'inf' is not a fold number"):
        read_folds(tmp_path / "bad.csv")
    _two_folds().drop(columns="fold").to_csv(tmp_path / "nofold.csv", index=False)
    with pytest.raises(GigamilError, match="nofold.csv: missing column fold"):
        read_folds(tmp_path / "nofold.csv")


def test_fold_slides_of_one_cohort():
    folds = _two_folds()
    folds.loc[folds["slide_id"] == "s2", "cohort"] = "d"
    assert fold_slides(folds, 1, "train", cohort="c")["slide_id"].tolist() == ["s1"]
    assert fold_slides(folds, 1, "train", cohort="d").empty
    assert fold_slides(folds, 1, "test")["slide_id"].tolist() == ["s2"]


def test_split_report_counts_patients_once_and_keeps_a_slide_without_a_stratum():
    rows = [
        (0, "test", "c", "s1", "p1", "a"),
        (0, "test", "c", "s1b", "p1", "a"),
        (0, "train", "c", "s2", "p2", "b"),
        (1, "train", "c", "s1", "p1", "a"),
        (1, "train", "c", "s1b", "p1", "a"),
        (1, "test", "c", "s2", "p2", "b"),
    ]
    folds = pd.DataFrame(rows, columns=FOLD_COLUMNS)
    folds.attrs["strata"] = {"site": {"c/s1": "x", "c/s1b": "x"}}  # s2: no value
    report = split_report(folds)
    assert report["slides"].sum() == len(folds)
    row = report[(report["fold"] == 0) & (report["role"] == "test")].iloc[0]
    assert (row["slides"], row["patients"], row["site"]) == (2, 1, "x")


def test_write_folds_writes_only_the_fold_columns(tmp_path):
    write_folds(_two_folds().assign(site="x"), tmp_path / "folds.csv")
    assert (tmp_path / "folds.csv").read_text().splitlines()[0] == ",".join(FOLD_COLUMNS)
    leaky = _two_folds()
    leaky.loc[0, "role"] = "val"  # s1 is then never a test slide
    with pytest.raises(GigamilError, match="never a test slide"):
        write_folds(leaky, tmp_path / "leaky.csv")
    assert not (tmp_path / "leaky.csv").exists()


def test_fold_slides_with_stores_names_the_missing_stores(tmp_path):
    rows = [
        (f, "test" if i % 2 == f else "train", "c", f"s{i}", f"p{i}", "a")
        for f in (0, 1)
        for i in range(6)
    ]
    write_folds(pd.DataFrame(rows, columns=FOLD_COLUMNS), tmp_path / "folds.csv")
    stores = tmp_path / "stores"
    with pytest.raises(GigamilError, match="folds.csv: no fold 2; it has folds 0 to 1"):
        fold_slides_with_stores(tmp_path / "folds.csv", 2, ["train"], stores)
    for i in (0, 1, 2):
        (stores / "c" / f"s{i}.zarr").mkdir(parents=True)
    with pytest.raises(GigamilError) as err:
        fold_slides_with_stores(tmp_path / "folds.csv", 0, ["train", "test"], stores)
    assert "fold 0: 3 of its 6 train and test slides have no store under" in str(err.value)
    assert "s4.zarr)" in str(err.value) and "..." not in str(err.value)  # all three named
    (stores / "c" / "s0.zarr").rmdir()
    with pytest.raises(GigamilError, match=r"s0.zarr, ...\); --stores names"):
        fold_slides_with_stores(tmp_path / "folds.csv", 0, ["train", "test"], stores)
    for i in (0, 3, 4, 5):
        (stores / "c" / f"s{i}.zarr").mkdir(exist_ok=True)
    train, test = fold_slides_with_stores(tmp_path / "folds.csv", 0, ["train", "test"], stores)
    assert train["slide_id"].tolist() == ["s1", "s3", "s5"]
    assert test["store"].tolist() == [str(stores / "c" / f"s{i}.zarr") for i in (0, 2, 4)]


def test_the_sheet_digest_of_no_sheets_is_that_of_the_header_alone():
    """trained_models, no train cohort: rule make_splits' split_digest of the train cohorts'
    sheets (none) is still computed when the workflow is parsed; it is that of the empty
    table's header, not an error."""
    header = "cohort,slide_id,patient_id,label\n"
    assert sheet_digest([]) == hashlib.sha256(header.encode()).hexdigest()
    assert split_digest([], {"folds": 5, "stratify_by": []}) == sheet_digest([])
    assert sheet_digest([], ["site"]) != sheet_digest([])
    one = pd.DataFrame({"cohort": ["c"], "slide_id": ["s"], "patient_id": ["p"], "label": ["x"]})
    assert sheet_digest([one]) != sheet_digest([])


@pytest.mark.parametrize("content", [b"", "fold,slide_id\n".encode("utf-16")])
def test_an_empty_or_utf16_folds_file_is_one_error_not_a_traceback(tmp_path, content):
    """pandas' EmptyDataError / UnicodeDecodeError reached the user as a traceback."""
    path = tmp_path / "folds.csv"
    path.write_bytes(content)
    with pytest.raises(GigamilError, match="cannot be read as a folds CSV"):
        read_folds(path)


def test_the_advice_for_a_class_too_small_for_any_fold_works_when_followed():
    """Two patients of a class: with 2 folds and validation patients, 3 per class do not
    suffice (a fold tests 2 of them: the advice 'at least 3' met the next error), and with 3
    folds cv.val_fraction 0 does not help (3 folds need 3 patients): neither is advised."""
    sheet = _sheet([(f"N{i}", "normal", 1) for i in range(6)])

    def with_lesion(n: int) -> pd.DataFrame:
        return pd.concat([sheet, _sheet([(f"L{i}", "lesion", 1) for i in range(n)])])

    with pytest.raises(GigamilError) as err:
        make_folds(with_lesion(2), 2)
    assert (
        "add patients of class 'lesion' (at least 4 per class for cv.folds 2; with cv.folds "
        "raised to 3, at least 3), or set cv.val_fraction: 0 (no validation patients; 2 per "
        "class then suffice)"
    ) in str(err.value)
    make_folds(with_lesion(4), 2)  # each way out, followed
    make_folds(with_lesion(3), 3)
    make_folds(with_lesion(2), 2, val_fraction=0.0)
    with pytest.raises(GigamilError, match="at least 3 per class") as err:
        make_folds(with_lesion(2), 3)
    assert "val_fraction" not in str(err.value)
    with pytest.raises(GigamilError, match="lower cv.folds to at most 2"):
        make_folds(with_lesion(2), 3, val_fraction=0.0)  # the advice it gave before


def test_many_strata_still_give_folds():
    """150 patients of 15 sites: the solver found no assignment within its node limit and the
    split failed ('the fold assignment program failed (Not Solved)'); it now improves on a
    feasible start, and the sites still spread over the folds."""
    rng = np.random.default_rng(0)
    pats = [(f"P{i}", "ab"[int(rng.random() < 0.3)], int(rng.integers(1, 4))) for i in range(150)]
    site = {pid: f"s{rng.integers(0, 15)}" for pid, _, _ in pats}
    sheet = _sheet(pats, site)
    folds = make_folds(sheet, 5, val_fraction=0.0, stratify_by=["site"])
    check_folds(folds, sheet)
    test = folds[folds["role"] == "test"].drop_duplicates("patient_id")
    per_class = test.groupby(["label", "fold"]).size().unstack()
    assert (per_class.max(axis=1) - per_class.min(axis=1)).max() <= 1
    per_site = test.assign(site=test["patient_id"].map(site)).groupby(["site", "fold"]).size()
    spread = per_site.unstack(fill_value=0)
    assert (spread.max(axis=1) - spread.min(axis=1)).max() <= 2


def test_cli_splits_checks_stratify_by_as_a_config_does(tmp_path, capsys):
    """--stratify-by label (or a column twice) ended in pandas' traceback 'cannot insert label,
    already exists'; now the config's check, in the flag's terms."""
    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    sheet["site"] = ["a", "b"] * (len(sheet) // 2) + ["a"] * (len(sheet) % 2)
    sheet.to_csv(tmp_path / "a.csv", index=False)
    args = ["splits", "--sheet", str(tmp_path / "a.csv"), "--out", str(tmp_path / "f.csv")]
    capsys.readouterr()
    assert main([*args, "--stratify-by", "label"]) == 2
    assert "--stratify-by: the folds always balance the label" in capsys.readouterr().err
    assert main([*args, "--stratify-by", "n_slides"]) == 2
    assert "--stratify-by: cannot stratify by 'n_slides'" in capsys.readouterr().err
    assert main([*args, "--stratify-by", "site", "site"]) == 0


def test_cli_splits_config_without_train_cohorts_is_one_error(tmp_path, capsys):
    """Only external cohorts (trained_models): pandas' 'No objects to concatenate' before."""
    import yaml

    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    sheet.to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "models").mkdir()
    cfg = {
        "experiment": "x",
        "classes": sorted(set(sheet["label"])),
        "trained_models": str(tmp_path / "models"),
        "cohorts": {"a": {"sheet": str(tmp_path / "a.csv"), "role": "external"}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    args = ["splits", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "f.csv")]
    assert main(args) == 2
    assert "no cohort has role: train" in capsys.readouterr().err


def test_cli_splits_refuses_one_patient_under_two_spellings(tmp_path, capsys):
    """P1 in one sheet and p1 in another were two patients to the folds (one person trained on
    and tested in one fold), though the workflow refuses them; now the command does too."""
    from gigamil.cli import main

    sheet = _uneven_sheet().drop(columns="cohort")
    sheet["path"] = "x.svs"
    sheet.to_csv(tmp_path / "a.csv", index=False)
    other = sheet.assign(
        slide_id="b" + sheet["slide_id"], patient_id=sheet["patient_id"].str.lower()
    )
    other.to_csv(tmp_path / "b.csv", index=False)
    args = ["splits", "--out", str(tmp_path / "f.csv"), "--sheet", str(tmp_path / "a.csv")]
    capsys.readouterr()
    assert main([*args, "--sheet", str(tmp_path / "b.csv")]) == 2
    assert "differ from another only in case" in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()
