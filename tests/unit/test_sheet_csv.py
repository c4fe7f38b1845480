"""gigamil.sheet_csv: a sheet's CSV as text, and its problems in one error (the checks of the
rows, through gigamil.sheets.load_sheet: test_sheets.py)."""

from __future__ import annotations

import re

import pytest
from sheetfiles import good_rows, write_sheet

from gigamil.errors import ConfigError
from gigamil.sheet_csv import _separator_hint, raise_problems, read_sheet_csv


def test_problems_are_one_error_each_on_its_item_with_further_lines_indented(tmp_path):
    raise_problems(tmp_path / "s.csv", [])  # none: nothing
    with pytest.raises(ConfigError) as err:
        raise_problems(tmp_path / "s.csv", ["bad label\nline 2", "bad mpp"], "problems")
    assert str(err.value) == f"{tmp_path / 's.csv'}: 2 problems:\n- bad label\n  line 2\n- bad mpp"
    with pytest.raises(ConfigError) as err:  # no path: no prefix
        raise_problems(None, ["bad label"])
    assert str(err.value) == "bad label"


def test_a_comma_separated_header_gets_no_separator_hint():
    assert _separator_hint("slide_id;patient_id;label;path") != ""
    assert _separator_hint("slide_id,patient_id,label,path,note; x") == ""


def test_a_label_column_added_to_a_sheet_without_labels_comes_third(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "label"} for r in good_rows()]
    df = read_sheet_csv(write_sheet(tmp_path, rows), labels_required=False)
    assert list(df.columns) == ["slide_id", "patient_id", "label", "path"]
    assert (df["label"] == "").all()


def test_a_header_without_rows_is_a_sheet_without_rows(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("slide_id,patient_id,label,path\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: the sheet has no rows") + "$"):
        read_sheet_csv(path)


def test_a_header_with_trailing_commas_is_not_a_column_given_twice(tmp_path):
    path = write_sheet(tmp_path, good_rows())
    path.write_text("".join(line + ",,\n" for line in path.read_text().splitlines()))
    df = read_sheet_csv(path)
    assert df["slide_id"].tolist() == ["s1", "s2", "s3"]


def test_a_column_spelt_otherwise_alone_is_not_said_to_be_beside_its_namesake(tmp_path, caplog):
    rows = [{("Label" if k == "label" else k): v for k, v in r.items()} for r in good_rows()]
    with pytest.raises(ConfigError, match="column 'Label' means 'label'"):
        read_sheet_csv(write_sheet(tmp_path, rows))
    assert "(column 'label' is)" not in caplog.text


def test_spaces_after_the_commas_of_the_header_are_not_part_of_the_names(tmp_path):
    path = write_sheet(tmp_path, good_rows())
    head, *rows = path.read_text().splitlines()
    path.write_text("\n".join([head.replace(",", ", "), *rows]) + "\n")
    assert list(read_sheet_csv(path).columns) == ["slide_id", "patient_id", "label", "path"]


def test_a_users_column_beside_the_optional_one_it_resembles_is_not_warned_about(tmp_path, caplog):
    rows = [{**r, "lesion_mask": "", "lesion_masks": "x"} for r in good_rows()]
    df = read_sheet_csv(write_sheet(tmp_path, rows))
    assert "lesion_masks" in df.columns and "did you mean" not in caplog.text
