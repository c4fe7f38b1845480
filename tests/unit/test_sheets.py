"""Cohort-sheet validation (gigamil.sheets): every bad case gives a message naming the file,
the line and the problem."""

from __future__ import annotations

import re

import pytest
from sheetfiles import CLASSES, good_rows, write_sheet

from gigamil.errors import ConfigError
from gigamil.sheets import load_sheet


def test_good_sheet_loads(tmp_path):
    path = write_sheet(tmp_path, good_rows())
    df = load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert list(df.columns[:5]) == ["cohort", "slide_id", "patient_id", "label", "path"]
    assert df["cohort"].eq("c1").all() and len(df) == 3
    assert df["mpp"].isna().all()


def test_a_sheet_column_named_cohort_is_one_error_naming_the_file(tmp_path):
    """A sheet with its own `cohort` column (e.g. a hospital code) crashed the workflow's
    start with pandas' "cannot insert cohort, already exists"."""
    rows = [{**r, "cohort": "hospital_x"} for r in good_rows()]
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError, match="column 'cohort' is gigamil's .* e.g. to hospital"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_mpp_override_order(tmp_path):
    rows = good_rows()
    rows[0]["mpp"] = 0.25
    for r in rows[1:]:
        r["mpp"] = ""
    path = write_sheet(tmp_path, rows)
    df = load_sheet(path, "c1", CLASSES, cohort_mpp=0.5, base_dir=tmp_path)
    assert df["mpp"].tolist() == [0.25, 0.5, 0.5]  # the sheet row wins over the cohort


def test_missing_sheet(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"cohort 'c1': sheet .*nope.csv not found$"):
        load_sheet(tmp_path / "nope.csv", "c1", CLASSES)
    monkeypatch.chdir(tmp_path)  # a relative path: the message says where it was looked for
    with pytest.raises(ConfigError) as exc:
        load_sheet("sheets/nope.csv", "c1", CLASSES)
    assert str(exc.value) == (
        f"cohort 'c1': sheet sheets/nope.csv not found (looked for {tmp_path.resolve()}/sheets/nope.csv"
        ": relative paths are read from the working directory, snakemake's --directory, else "
        "where it runs)"
    )
    (tmp_path / "ext").mkdir()  # the cohort's folder instead of its sheet
    with pytest.raises(ConfigError, match=r"sheet ext is a folder, not a CSV file \(one row"):
        load_sheet("ext", "c1", CLASSES)


def test_label_and_file_near_misses_are_suggested(tmp_path):
    rows = good_rows()
    rows[2]["label"] = "Lesion"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(
        ConfigError, match=r"label 'Lesion' is not one of .*did you mean 'lesion'\?"
    ):  # one misspelling: the class alone ("did you mean 'Lesion' -> 'lesion'?" read oddly)
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    rows[2]["label"], rows[1]["label"] = "tumour", "normall"  # nothing close to 'tumour'
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert "did you mean 'normall' -> 'normal'?" in str(err.value)
    assert "tumour' ->" not in str(err.value)
    path = write_sheet(tmp_path, good_rows())
    (tmp_path / "s3.svs").rename(tmp_path / "s3.SVS")
    (tmp_path / "s1.svs").rename(tmp_path / "s1.tif")
    (tmp_path / "s1.png").touch()  # two candidates: no guess
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    msg = str(err.value)
    assert "slide file s3.svs not found" in msg and "did you mean s3.SVS?" in msg
    assert "slide file s1.svs not found" in msg and "did you mean s1." not in msg


def test_a_missing_file_names_its_case_unicode_or_link_twin(tmp_path):
    """Names that differ only in letter case or Unicode form (a macOS copy's 'e' + combining
    accent against a typed 'é': they print the same) got a bare 'not found', and so did a
    dangling symbolic link (new-user trial)."""
    import unicodedata

    rows = good_rows()
    rows[0]["path"] = "S1.SVS"
    rows[1]["path"] = "café.svs"
    rows[2]["path"] = "link.svs"
    path = write_sheet(tmp_path, rows, touch=False)
    (tmp_path / "s1.svs").write_bytes(b"x")
    (tmp_path / unicodedata.normalize("NFD", "café.svs")).write_bytes(b"x")
    (tmp_path / "link.svs").symlink_to(tmp_path / "gone.svs")
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    lines = str(err.value).splitlines()[1:]
    assert lines[0].endswith(
        "S1.SVS not found (looked for " + f"{tmp_path}/S1.SVS); did you mean s1.svs?"
    )
    assert "café.svs not found" in lines[1]
    assert lines[1].endswith(
        "a file of this name in another Unicode form is there ('cafe\\u0301.svs'; copies from "
        "macOS keep accents apart): rename the file by typing its name again"
    )
    assert lines[2].endswith(
        f"; it is a symbolic link to {tmp_path}/gone.svs, which does not exist"
    )


def test_missing_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "patient_id"} for r in good_rows()]
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError, match="missing column.*patient_id"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_missing_slide_file(tmp_path):
    path = write_sheet(tmp_path, good_rows())
    (tmp_path / "s3.svs").unlink()
    with pytest.raises(ConfigError, match=r"line 4 \(slide_id 's3'\): slide file s3.svs not found"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    (tmp_path / "s1.svs").unlink()
    with pytest.raises(ConfigError) as err:  # every missing file in one message
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    msg = str(err.value)
    assert "sheet.csv: 2 file(s) not found" in msg
    assert (
        f"line 2 (slide_id 's1'): slide file s1.svs not found (looked for {tmp_path.resolve()}/s1.svs)"
        in msg
    )
    assert "line 4 (slide_id 's3')" in msg
    # generated (demo) cohorts skip the check
    assert len(load_sheet(path, "c1", CLASSES, check_files=False, base_dir=tmp_path)) == 3


def test_missing_lesion_mask_is_named_with_its_row(tmp_path):
    rows = good_rows()
    rows[0]["lesion_mask"] = rows[1]["lesion_mask"] = ""  # the optional column left empty
    rows[2]["lesion_mask"] = "masks/s3.png"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(
        ConfigError, match=r"line 4 \(slide_id 's3'\): lesion mask masks/s3.png not"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "s3.png").touch()
    assert len(load_sheet(path, "c1", CLASSES, base_dir=tmp_path)) == 3


def test_duplicate_slide_id(tmp_path):
    rows = good_rows()
    rows[2]["slide_id"] = "s1"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError, match=r"duplicate slide_id 's1' \(lines 2, 4\)"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_row_errors_name_the_file_line_across_blank_lines(tmp_path):
    """pd.read_csv skips blank lines and reads a quoted cell over two lines as one row; the
    line an error names is still the one an editor shows."""
    path = write_sheet(tmp_path, good_rows())
    head, first, second, third = path.read_text().splitlines()
    second = second.replace("s2,", '"s2",', 1)
    path.write_text(
        "\n".join(["", head, first, "", "   ", second, third.replace("lesion", "tumour")])
    )
    with pytest.raises(ConfigError, match=r"line 7 \(slide_id 's3'\): label 'tumour'"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    path.write_text(f'{head}\n\n{first}\n"s1",p9,normal,"s\n1.svs"\n\n{third}\n')
    with pytest.raises(ConfigError, match=r"duplicate slide_id 's1' \(lines 3, 4\)"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    path.write_text(f'{head}\n"s9",p9,normal,"s\n9.svs"\n\n{first.replace("s1.svs", "x.svs")}\n')
    with pytest.raises(ConfigError, match=r"line 5 \(slide_id 's1'\): slide file x.svs not"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_every_label_not_in_classes_in_one_message(tmp_path):
    rows = good_rows()
    rows[0]["label"], rows[2]["label"] = "Normal", "tumour"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert str(err.value).splitlines() == [
        f"{path}: 2 labels are not one of the classes {CLASSES} of the configuration (its "
        "`classes:` list; without one, the demo's [normal, lesion]); did you mean 'Normal' -> "
        "'normal'?",
        "  line 2 (slide_id 's1'): label 'Normal'",
        "  line 4 (slide_id 's3'): label 'tumour'",
    ]


def test_rows_of_empty_cells_are_skipped_like_blank_lines(tmp_path):
    """A spreadsheet saves trailing rows of empty cells (',,,'); they hold no data."""
    path = write_sheet(tmp_path, good_rows())
    head, *rows = path.read_text().splitlines()
    path.write_text("\n".join([head, rows[0], ",,,", rows[1], rows[2], ",,,", " , ,, "]) + "\n")
    df = load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert list(df["slide_id"]) == ["s1", "s2", "s3"]
    path.write_text("\n".join([head, rows[0], ",,,", rows[1], rows[2].replace("s3.svs", "x")]))
    with pytest.raises(ConfigError, match=r"line 5 \(slide_id 's3'\): slide file x not found"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    path.write_text(f"{head}\n,,,\n\n,,,\n")
    with pytest.raises(ConfigError, match=r"sheet.csv: the sheet has no rows \(only empty ones\)"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_label_not_in_classes(tmp_path):
    rows = good_rows()
    rows[2]["label"] = "tumour"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(
        ConfigError, match=r"line 4 \(slide_id 's3'\): label 'tumour' is not one of"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_patient_with_conflicting_labels(tmp_path):
    rows = good_rows()
    rows[1]["label"] = "lesion"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(  # where, as every other sheet problem says it (new-user trial)
        ConfigError,
        match=r"patient 'p1' has conflicting labels \['lesion', 'normal'\] \(line 2 s1 normal, "
        r"line 3 s2 lesion\); all slides",
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_every_cell_against_the_schema_is_named_at_once(tmp_path):
    """Three bad cells in two rows: one error lists all three with their lines (before, a run
    stopped at the first, and the user fixed a sheet one cell per run)."""
    rows = good_rows()
    rows[0]["slide_id"], rows[0]["patient_id"] = "has space", ""
    rows[2]["slide_id"] = ".."
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 3 cells do not match the sheet's schema " + (
        "(workflow/schemas/sheet.schema.yaml):"
    )
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  line 2 (slide_id 'has space')",
        "  line 2 (slide_id 'has space')",
        "  line 4 (slide_id '..')",
    ]
    assert "patient_id" in str(err.value) and "is not a safe file name" in lines[1] + lines[2]


def test_a_slide_id_too_long_for_a_file_name_is_refused(tmp_path):
    """A 250-character slide_id passed the sheet and crashed the first job with 'File name too
    long' (file names: 255 bytes, and outputs add suffixes such as .qc.png)."""
    rows = good_rows()
    long_id = "".join(f"{i:03d}" for i in range(67))[:200]  # 200 characters, not periodic
    rows[0]["slide_id"] = long_id  # allowed
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows[0]["slide_id"] = long_id + "9"
    with pytest.raises(
        ConfigError, match=r"line 2 .*not only dots; not ending in \.qc; at most 200 characters\)"
    ):
        load_sheet(write_sheet(tmp_path, rows, name="long.csv"), "c1", CLASSES, base_dir=tmp_path)


def test_a_slide_id_ending_in_qc_is_refused(tmp_path):
    """Slide 'a.qc''s tissue mask, results/masks/c/a.qc.png, is slide 'a''s QC image:
    Snakemake stopped with its raw AmbiguousRuleException (a review, 2026-12-06)."""
    rows = good_rows()
    rows[0]["slide_id"] = "a.qc1"  # fine
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    for bad in ("a.qc", "a.QC"):
        rows[0]["slide_id"] = bad
        with pytest.raises(
            ConfigError,
            match=r"line 2 .*: slide_id 'a\.[qQ][cC]' ends in \.qc, the suffix of the tissue masks' QC images: rename it",
        ):
            load_sheet(write_sheet(tmp_path, rows, name="qc.csv"), "c1", CLASSES, base_dir=tmp_path)


def test_a_slide_id_snakemake_would_call_periodic_is_refused_with_its_line(tmp_path):
    """Snakemake refuses a wildcard value ending in one substring repeated 20 times or more
    (PeriodicWildcardError, a traceback after the checks); 19 times is fine (new-user trial)."""
    rows = good_rows()
    rows[1]["slide_id"] = "s_" + "0" * 19
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows[1]["slide_id"] = "s_" + "01" * 20
    with pytest.raises(ConfigError) as err:
        load_sheet(write_sheet(tmp_path, rows, name="p.csv"), "c1", CLASSES, base_dir=tmp_path)
    assert f"line 3 (slide_id 's_{'01' * 20}'): it ends in '01' repeated 20 times, which " in str(
        err.value
    )
    assert "(PeriodicWildcardError)" in str(err.value)


def test_bad_slide_id_and_mpp(tmp_path):
    rows = good_rows()
    rows[0]["slide_id"] = "has space"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(
        ConfigError, match=r"line 2 .*: slide_id 'has space' is not a safe file name \(letters"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    for dots in (".", ".."):  # would name results/... itself or its parent
        rows = good_rows()
        rows[0]["slide_id"] = dots
        path = write_sheet(tmp_path, rows, name="dots.csv")
        with pytest.raises(
            ConfigError, match=rf"line 2 .*: slide_id '{re.escape(dots)}' is not a safe file"
        ):
            load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    rows = good_rows()
    for r, v in zip(rows, ["abc", "", ""], strict=True):
        r["mpp"] = v
    path = write_sheet(tmp_path, rows, name="s2.csv")
    with pytest.raises(
        ConfigError, match=r"line 2 \(slide_id '\w+'\): mpp 'abc' is not a number \(µm/px"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    rows[0]["mpp"] = -1
    path = write_sheet(tmp_path, rows, name="s3.csv")
    with pytest.raises(
        ConfigError,
        match=r"line 2 .*mpp: -1.0 is less than or equal to the minimum of 0 \(Optional microns",
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_an_empty_label_names_the_classes_and_role_predict(tmp_path):
    rows = good_rows()
    rows[1]["label"] = ""
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert f"line 3 (slide_id {rows[1]['slide_id']!r}): label is empty: give one of the " + (
        f"classes {CLASSES} (a cohort only predicted, without labels, takes role: predict)"
    ) in str(err.value)
    load_sheet(path, "c1", CLASSES, base_dir=tmp_path, labels_required=False)  # no label: fine


def test_a_predict_sheet_missing_a_column_lists_its_columns_as_written(tmp_path):
    """A sheet without labels gets an empty label column; the error about another missing
    column listed it as if the file had one (a new user's trial, 2026-12-06)."""
    path = tmp_path / "p.csv"
    path.write_text("slide_id,patient_id,pathh\ns1,p1,s1.svs\n")
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path, labels_required=False)
    assert "its columns: slide_id, patient_id, pathh; did you mean 'pathh' -> path?" in str(
        err.value
    )


def test_empty_sheet(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("slide_id,patient_id,label,path\n")
    with pytest.raises(ConfigError, match="has no rows"):
        load_sheet(path, "c1", CLASSES)


def test_optional_lesion_mask_column_may_be_empty(tmp_path):
    from gigamil.layout import lesion_masks

    rows = good_rows()
    rows[0]["lesion_mask"] = "masks/s1.png"
    rows[1]["lesion_mask"] = ""
    rows[2]["lesion_mask"] = "masks/s3.png"
    (tmp_path / "masks").mkdir()
    for name in ("s1", "s3"):  # the masks exist (a missing one is an error)
        (tmp_path / "masks" / f"{name}.png").touch()
    df = load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    assert lesion_masks({}, df) == {"s1": "masks/s1.png", "s3": "masks/s3.png"}


def test_a_column_given_twice_is_an_error_and_a_variant_beside_it_a_warning(tmp_path, caplog):
    """pandas renamed a second 'label' / 'mpp' column to 'label.1' / 'mpp.1', kept as data: its
    values (other labels, the MPP) were ignored without a word; so were those of 'MPP' beside
    'mpp'."""
    path = tmp_path / "dup.csv"
    path.write_text(
        "slide_id,patient_id,label,path,mpp,mpp,label\ns1,p1,lesion,a.tif,,0.25,normal\n"
    )
    with pytest.raises(ConfigError, match="2 problems with the header") as exc:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert "column 'label' is given 2 times" in str(exc.value)
    assert "column 'mpp' is given 2 times" in str(exc.value)
    rows = [{**r, "MPP": "0.25"} for r in good_rows()]
    for r in rows:
        r["mpp"] = ""
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    assert "column 'MPP' is not read by gigamil (column 'mpp' is)" in caplog.text


def test_a_known_column_spelt_otherwise_is_not_silently_ignored(tmp_path, caplog):
    rows = good_rows()
    for r in rows:
        r["MPP"] = "0.5"  # would be ignored: the slides' own MPP used instead
    with pytest.raises(ConfigError, match=r"column 'MPP' means 'mpp'; .* rename it mpp"):
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows = [{**r, "Slide ID": r["slide_id"]} for r in good_rows()]  # both: a column of its own
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    # two spellings of one missing column: keep one (renaming both would make two)
    rows = [{**r, "MPP": "0.5", "Mpp": "0.5"} for r in good_rows()]
    with pytest.raises(ConfigError, match=r"columns 'MPP', 'Mpp' all mean 'mpp': keep one of them"):
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows = [{**r, "Slide ID": r["slide_id"]} for r in good_rows()]
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows = [{**r, "lesion_masks": "", "mpp_um": "0.5", "scanner": "x"} for r in good_rows()]
    df = load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    assert "column 'lesion_masks' is not read by gigamil (did you mean lesion_mask?)" in caplog.text
    assert "column 'mpp_um' is not read by gigamil (did you mean mpp?)" in caplog.text
    assert "scanner" not in caplog.text and df["mpp"].isna().all()


def test_every_header_problem_and_every_bad_mpp_in_one_error(tmp_path):
    """Label, MPP and file_path: one error names the two misspelt columns and the missing
    one (before: three runs, one problem each); every mpp that is not a number at once."""
    path = tmp_path / "sheet.csv"
    path.write_text("slide_id,patient_id,Label,file_path,MPP\ns1,p1,normal,s1.svs,0.5\n")
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert str(err.value).splitlines() == [
        f"{path}: 3 problems with the header:",
        "- column 'Label' means 'label'; column names are read as spelt: rename it label",
        "- column 'MPP' means 'mpp'; column names are read as spelt: rename it mpp",
        "- missing column(s) path (a sheet needs slide_id, patient_id, label, path; optional: "
        "mpp, site, lesion_mask); its columns: slide_id, patient_id, Label, file_path, MPP; "
        "did you mean 'file_path' -> path?",
    ]
    # other names a sheet often has: each offered for its column (the columns were not listed)
    path.write_text("slide,Patient,diagnosis,file\ns1,p1,normal,s1.svs\n")
    with pytest.raises(ConfigError, match="did you mean 'slide' -> slide_id, 'Patient' -> "):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    rows = good_rows()
    for r, v in zip(rows, ["abc", "0.5", "0,25"], strict=True):
        r["mpp"] = f'"{v}"'
    with pytest.raises(ConfigError) as err:
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    assert str(err.value).splitlines()[1:] == [
        "  line 2 (slide_id 's1'): mpp 'abc'",
        "  line 4 (slide_id 's3'): mpp '0,25'",
    ]
    assert "2 mpp values are not numbers (µm/px, e.g. 0.25;" in str(err.value)
    rows[1]["mpp"] = "-1"  # a number out of range beside them: in the same error
    with pytest.raises(ConfigError, match=r"2 problems:\n- 2 mpp values .*\n.*\n.*\n- line 3 "):
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows[1]["mpp"] = ""
    rows[2]["label"] = "tumour"  # and a label: both in one error, not one per run
    with pytest.raises(ConfigError, match=r"2 problems:\n- 2 mpp values .*\n.*\n.*\n- line 4"):
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)


def test_a_semicolon_or_tab_separated_sheet_gets_a_hint(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("slide_id;patient_id;label;path\ns1;p1;normal;s1.svs\n")
    with pytest.raises(ConfigError, match="separated by ';': save the sheet as comma-separated"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    # a predict cohort's sheet (no label needed) too, and its error does not ask for a label
    path.write_text("slide_id;patient_id;path\ns1;p1;s1.svs\n")
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path, labels_required=False)
    assert "separated by ';'" in str(err.value)
    assert "a sheet needs slide_id, patient_id, path; optional: label, mpp" in str(err.value)
    # a tab-separated one (a spreadsheet's "text, tab delimited") too
    path.write_text("slide_id\tpatient_id\tlabel\tpath\ns1\tp1\tnormal\ts1.svs\n")
    with pytest.raises(ConfigError, match="separated by tabs: save the sheet as comma-separated"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    # ';' with a decimal comma in a row (the usual European export): pandas' own error ("cannot
    # be read as CSV: Expected 1 fields in line 3, saw 2") was all, now the missing columns
    path.write_text(
        "slide_id;patient_id;label;path;mpp\ns1;p1;normal;s1.svs;\ns2;p2;normal;s2.svs;0,5\n"
    )
    with pytest.raises(ConfigError, match="missing column.*separated by ';': .* decimal point"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    path.write_text("slide_id;patient_id;label;path;mpp\ns1;p1;normal;s1.svs;0,5\n")
    with pytest.raises(ConfigError, match="separated by ';': .* decimal point \\(mpp 0.25, not"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_trailing_commas_keep_the_columns_and_a_decimal_comma_is_named(tmp_path):
    """Rows one field longer than the header made pandas take slide_id as the index and shift
    every value a column left ("label '/path/s1.svs' is not one of the classes")."""
    path = write_sheet(tmp_path, good_rows())
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0]] + [f"{line}," for line in lines[1:]]) + "\n")
    df = load_sheet(path, "c1", CLASSES, base_dir=tmp_path)  # a spreadsheet export's commas
    assert df["slide_id"].tolist() == ["s1", "s2", "s3"] and df["label"].iloc[2] == "lesion"
    for rows in ([1], [2], [1, 3]):  # on some rows only: pandas refused a later row with one
        path.write_text(
            "\n".join(f"{line}," if i in rows else line for i, line in enumerate(lines)) + "\n"
        )
        df = load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
        assert df["slide_id"].tolist() == ["s1", "s2", "s3"] and df["label"].iloc[2] == "lesion"
    path.write_text(
        "slide_id,patient_id,label,path,mpp\n"
        "s1,p1,normal,s1.svs,0.25\ns2,p1,normal,s2.svs,0,25\ns3,p2,lesion,s3.svs,0.25\n"
    )
    with pytest.raises(ConfigError, match=r"line 3 has 6 fields but the header has 5 .*'25'"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_every_kind_of_problem_of_a_sheet_in_one_message(tmp_path):
    """A duplicate id, a label outside the classes, a patient with two labels and a missing file:
    fixed in one round, not four."""
    rows = [
        *good_rows(),
        {"slide_id": "s3", "patient_id": "p3", "label": "lesion", "path": "s4.svs"},
        {"slide_id": "s5", "patient_id": "p3", "label": "tumour", "path": "s5.svs"},
        {"slide_id": "s6", "patient_id": "p2", "label": "normal", "path": "s6.svs"},
    ]
    path = write_sheet(tmp_path, rows)
    (tmp_path / "s6.svs").unlink()
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == f"{path}: 4 problems:"
    assert lines[1] == "- duplicate slide_id 's3' (lines 4, 5)"
    assert lines[2].startswith("- line 6 (slide_id 's5'): label 'tumour' is not one of")
    assert lines[3].startswith("- patient 'p2' has conflicting labels ['lesion', 'normal']")
    assert lines[4].startswith("- 1 file(s) not found") and "s6.svs not found" in lines[5]
    # the misspelt label makes no second conflict for patient p3 (s3 lesion, s5 'tumour')
    assert "'p3'" not in str(err.value)


def test_a_sheet_in_the_windows_encoding_says_which_line_and_how_to_save_it(tmp_path):
    """Excel's plain "CSV" on Windows writes cp1252: 'é' is byte 0xe9, not UTF-8."""
    path = tmp_path / "excel.csv"
    text = "slide_id,patient_id,label,path,site\ns1,p1,normal,s1.svs,Hôpital Cochin\n"
    path.write_bytes(text.encode("cp1252"))
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    message = str(err.value)
    assert "line 2 is not UTF-8 text (byte 0xf4 at column 22, 'ô' in the Windows" in message
    assert "'CSV UTF-8 (Comma delimited)'" in message


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "the file is empty (0 bytes): a sheet needs a header line"),
        (b"PK\x03\x04\x14\x00\x06\x00", "a zip archive such as an Excel workbook (.xlsx)"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (.xls)"),
        ("slide_id,patient_id\n".encode("utf-16"), "UTF-16 text (e.g. Excel's 'Unicode Text')"),
        ("slide_id,patient_id\n".encode("utf-16-le"), "UTF-16 text"),  # without a BOM
    ],
)
def test_a_sheet_that_is_no_csv_text_says_what_it_is(tmp_path, content, said):
    """A workbook, UTF-16 text or an empty file was diagnosed as cp1252 bytes, NUL bytes
    printed as column names, or pandas' 'No columns to parse from file' (new-user trial)."""
    path = tmp_path / "sheet.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    message = str(err.value)
    assert message.startswith(f"{path}: {said}")
    assert "\x00" not in message and "cp1252" not in message
    if content:
        assert message.endswith("save it as 'CSV UTF-8 (Comma delimited)' (Excel: Save As)")


def test_a_label_in_other_case_is_suggested_however_far_its_spelling(tmp_path):
    """'LESION' differs from 'lesion' only in case, but too much for difflib's spelling match:
    the hint must still name the class."""
    rows = good_rows()
    rows[2]["label"] = "LESION"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(
        ConfigError, match=r"label 'LESION' is not one of .*did you mean 'lesion'\?"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_an_infinite_mpp_is_not_a_number(tmp_path):
    """'inf' and '1e400' parse as floats: loaded as an infinite MPP, they were refused later with
    a garbled message ("infx finer"). They are named here, as any other mpp that is no number."""
    rows = good_rows()
    rows[0]["mpp"], rows[1]["mpp"] = "inf", "1e400"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(ConfigError, match=r"2 mpp values are not numbers") as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert "mpp 'inf'" in str(err.value) and "mpp '1e400'" in str(err.value)


def test_missing_files_and_folders_are_named_in_one_round(tmp_path):
    """A folder given as a slide was named only once the missing files were fixed."""
    rows = good_rows()
    path = write_sheet(tmp_path, rows)
    (tmp_path / "s1.svs").unlink()
    (tmp_path / "s2.svs").unlink()
    (tmp_path / "s2.svs").mkdir()
    with pytest.raises(ConfigError) as err:
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    text = str(err.value)
    assert "1 file(s) not found" in text and "slide file s1.svs not found" in text
    assert (
        "1 path(s) are folders, not files" in text and "(slide_id 's2'): slide file s2.svs" in text
    )


def test_empty_patient_ids_are_not_one_patient_with_conflicting_labels(tmp_path):
    """Two slides without a patient_id: the empty cells are the problem, not a patient ''
    'with conflicting labels'."""
    rows = good_rows()
    rows[0]["patient_id"] = rows[2]["patient_id"] = ""
    with pytest.raises(ConfigError) as err:
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    assert "patient_id: '' should be non-empty" in str(err.value)
    assert "conflicting labels" not in str(err.value)
