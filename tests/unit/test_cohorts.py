"""The cohorts of a configuration together (gigamil.cohorts): loading them, the classes the
train cohorts teach, and slide identity and patient leakage across cohorts."""

from __future__ import annotations

import copy

import pytest
from sheetfiles import good_rows, other_rows, write_sheet

from gigamil.cohorts import load_cohorts
from gigamil.config import validate_config
from gigamil.errors import ConfigError


def test_slide_ids_that_differ_only_in_case_are_refused(tmp_path, base_config):
    """macOS: results/patches/c/S1.zarr and .../s1.zarr would be one directory."""
    rows = good_rows()
    rows[1]["slide_id"] = "S1"
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {"a": {"sheet": str(write_sheet(tmp_path, rows))}}
    with pytest.raises(
        ConfigError, match=r"'S1', 's1' \(cohort a\) differ only in case or Unicode form \(1 such\)"
    ):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)


def test_every_cohorts_sheet_problems_come_in_one_error(tmp_path, base_config):
    """Run from the wrong directory: all three sheets are missing, and the error names all
    three (before, one per run); a good sheet beside them is not named."""
    cfg = copy.deepcopy(base_config)
    good = write_sheet(tmp_path, good_rows())
    cfg["cohorts"] = {
        "main": {"sheet": "sheets/main.csv"},
        "ok": {"sheet": str(good), "role": "external"},
        "ext": {"sheet": "sheets/ext.csv", "role": "external"},
        "new": {"sheet": "sheets/new.csv", "role": "predict"},
    }
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == "3 problems in the cohort sheets:"
    assert [line.split(":")[0] for line in lines[1:]] == [  # list items (the CLI keeps them)
        "- cohort 'main'",
        "- cohort 'ext'",
        "- cohort 'new'",
    ]
    assert lines[2].endswith("sheets/ext.csv not found")
    rows = good_rows()
    rows[0]["label"] = "tumour"
    bad = write_sheet(tmp_path, rows, name="bad.csv")
    cfg["cohorts"] = {"a": {"sheet": str(bad)}, "b": {"sheet": str(bad), "role": "external"}}
    with pytest.raises(ConfigError) as err:  # one sheet, two cohorts: each problem says whose
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[1].startswith(f"- cohort 'a': {bad}: line 2 (slide_id 's1'): label 'tumour'")
    assert lines[2].startswith(f"- cohort 'b': {bad}: line 2")
    rows[1]["label"] = "tumour"  # a problem of several lines: indented under its cohort
    worse = write_sheet(tmp_path, rows, name="worse.csv")
    cfg["cohorts"] = {"a": {"sheet": str(worse)}, "b": {"sheet": "sheets/b.csv"}}
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    lines = str(err.value).splitlines()
    assert lines[0] == "2 problems in the cohort sheets:"
    assert lines[1].startswith(f"- cohort 'a': {worse}: 2 labels are not one of the classes")
    assert lines[2:4] == [
        "    line 2 (slide_id 's1'): label 'tumour'",
        "    line 3 (slide_id 's2'): label 'tumour'",
    ]
    assert lines[4].startswith("- cohort 'b': sheet ")


def test_load_cohorts_uses_cohort_settings(tmp_path, base_config):
    path = write_sheet(tmp_path, good_rows())
    other = write_sheet(tmp_path, other_rows(), name="other.csv")
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(path), "mpp": 0.3},
        "b": {"sheet": str(other), "role": "external"},
    }
    sheets = load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert set(sheets) == {"a", "b"}
    assert sheets["a"]["mpp"].tolist() == [0.3] * 3 and sheets["b"]["mpp"].isna().all()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.update(path="s1.svs"), r"slide file '.*s1.svs' is in cohorts a, b"),
        (lambda r: r.update(slide_id="s1"), r"slide_id 's1' is in cohorts a, b"),
        (lambda r: r.update(slide_id="S1"), r"slide_ids 'S1', 's1' \(cohort a, b\) differ only in"),
        (lambda r: r.update(patient_id="p1", label="lesion"), r"patient 'p1' has labels"),
        (
            lambda r: r.update(patient_id="p1", label="normal"),
            r"cohort b: 1 patient\(s\) also in a "
            r"train cohort \(p1\).*set cohorts.b.allow_patient_overlap: true",
        ),
    ],
)
def test_leakage_across_cohorts_stops_before_any_job(tmp_path, base_config, edit, message):
    """Issue 15, items 3-4: ids unique across cohorts, no slide file in two cohorts, one label
    per patient, no train patient in an external cohort (unless allowed)."""
    rows = other_rows()
    edit(rows[0])
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
        "b": {"sheet": str(write_sheet(tmp_path, rows, name="b.csv")), "role": "external"},
    }
    with pytest.raises(ConfigError, match=message):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)


def test_sheet_and_cross_cohort_problems_come_in_one_error(tmp_path, base_config):
    """A label typo in one cohort, a slide_id reused across cohorts and a train patient in an
    external cohort took three runs to find (one problem per run)."""
    rows = other_rows()
    rows[0].update(slide_id="s1")  # s1 is also in cohort a
    rows[1].update(patient_id="p1", label="normal")  # a train patient of cohort a
    typo = [{**r, "slide_id": f"y{r['slide_id']}", "patient_id": f"y{r['patient_id']}",
             "path": f"y{r['path']}"} for r in good_rows()]  # fmt: skip
    typo[0]["label"] = "tumour"
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
        "b": {"sheet": str(write_sheet(tmp_path, rows, name="b.csv")), "role": "external"},
        "c": {"sheet": str(write_sheet(tmp_path, typo, name="c.csv")), "role": "external"},
    }
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    text = str(err.value)
    assert text.startswith("2 problems in the cohort sheets:"), text
    assert "- cohort 'c': " in text and "label 'tumour'" in text
    assert "2 problems across cohorts:" in text
    assert "slide_id 's1' is in cohorts a, b" in text
    assert "cohort b: 1 patient(s) also in a train cohort (p1)" in text


def test_a_sheet_with_problems_of_its_own_is_checked_across_cohorts_too(tmp_path, base_config):
    """A new user's second cohort with a missing slide file and a slide_id of the first cohort:
    both in one message (the reused id was reported only once the file was fixed)."""
    rows = other_rows()
    rows[0].update(slide_id="s1")  # s1 is also in cohort a
    rows[1].update(path="nope.svs")
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
        "b": {"sheet": str(write_sheet(tmp_path, rows, name="b.csv")), "role": "external"},
    }
    (tmp_path / "nope.svs").unlink()
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    text = str(err.value)
    assert text.startswith("2 problems in the cohort sheets:"), text
    assert "slide file nope.svs not found" in text
    assert "slide_id 's1' is in cohorts a, b (" in text
    assert "b.csv line 2; 1 such: s1); a slide may belong to one cohort only: give each" in text


def test_allowed_patient_overlap_is_a_warning(tmp_path, base_config, caplog):
    rows = other_rows()
    rows[0].update(patient_id="p1", label="normal")
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
        "b": {
            "sheet": str(write_sheet(tmp_path, rows, name="b.csv")),
            "role": "external",
            "allow_patient_overlap": True,
        },
    }
    sheets = load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert "also in a train cohort (p1)" in caplog.text
    from gigamil.cohorts import train_patient_overlap

    assert train_patient_overlap(cfg, sheets, "b") == ["p1"]
    assert train_patient_overlap(cfg, sheets, "a") == []


def test_same_slide_content_in_two_cohorts_is_refused(tmp_path, base_config):
    """Issue 15, item 4: a copy of a slide (other name, other folder) in a second cohort."""
    from gigamil.cohorts import slide_fingerprint

    rows, others = good_rows(), other_rows()
    for i, r in enumerate(rows + others):
        (tmp_path / r["path"]).write_bytes(bytes([i]) * (3 << 20))  # 3 MiB, distinct
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, rows, touch=False))},
        "b": {"sheet": str(write_sheet(tmp_path, others, name="b.csv", touch=False))},
    }
    cfg["cohorts"]["b"]["role"] = "external"
    load_cohorts(validate_config(cfg), base_dir=tmp_path)  # distinct files: fine
    copy_dir = tmp_path / "copies"
    copy_dir.mkdir()
    (copy_dir / "renamed.svs").write_bytes((tmp_path / "s3.svs").read_bytes())
    others[1]["path"] = "copies/renamed.svs"
    cfg["cohorts"]["b"]["sheet"] = str(write_sheet(tmp_path, others, name="b.csv", touch=False))
    with pytest.raises(ConfigError, match=r"a/s3 \(s3.svs\), b/xs2 \(renamed.svs\) have the same"):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    # two copies: both named in one error (the first pair only, before; a new-user trial)
    (copy_dir / "again.svs").write_bytes((tmp_path / "s1.svs").read_bytes())
    others[0]["path"] = "copies/again.svs"
    cfg["cohorts"]["b"]["sheet"] = str(write_sheet(tmp_path, others, name="b.csv", touch=False))
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert "b/xs2 (renamed.svs)" in str(err.value) and "b/xs1 (again.svs)" in str(err.value)
    assert slide_fingerprint(tmp_path / "missing.svs") is None
    assert slide_fingerprint(tmp_path / "s1.svs") != slide_fingerprint(tmp_path / "s2.svs")
    # the workflow's job processes skip the content comparison (the main process made it)
    sheets = load_cohorts(validate_config(cfg), base_dir=tmp_path, check_content=False)
    assert set(sheets) == {"a", "b"}


def test_a_class_without_training_slides_is_refused(tmp_path, base_config):
    cfg = copy.deepcopy(base_config)
    cfg["classes"] = ["normal", "lesion", "itc"]
    cfg["cohorts"] = {"a": {"sheet": str(write_sheet(tmp_path, good_rows()))}}
    with pytest.raises(ConfigError, match=r"classes: 'itc' has no slide in the train cohort"):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    # an external cohort may lack a class (only the train cohorts teach the classes)
    rows = [
        {**r, "slide_id": f"e{i}", "patient_id": f"q{i}", "path": f"e{i}.svs"}
        for i, r in enumerate(good_rows())
    ]
    cfg["cohorts"]["e"] = {"sheet": str(write_sheet(tmp_path, rows, "e.csv")), "role": "external"}
    cfg["classes"] = ["normal", "lesion"]
    assert set(load_cohorts(validate_config(cfg), base_dir=tmp_path)) == {"a", "e"}


def test_one_slide_twice_in_one_cohort_is_refused(tmp_path, base_config):
    """The same file (one path, or a byte-identical copy) in two rows of one cohort: it could
    be trained on in one row and tested in another."""
    rows = good_rows()
    for i, r in enumerate(rows):
        (tmp_path / r["path"]).write_bytes(bytes([i]) * (3 << 20))  # 3 MiB, distinct
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {"a": {"sheet": str(write_sheet(tmp_path, rows, touch=False))}}
    load_cohorts(validate_config(cfg), base_dir=tmp_path)  # distinct files of one size: fine
    rows.append({"slide_id": "s4", "patient_id": "p3", "label": "lesion", "path": "s3.svs"})
    write_sheet(tmp_path, rows, touch=False)
    with pytest.raises(ConfigError, match=r"cohort a: slide file 's3.svs' is listed 2 times ") as e:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert "same content" not in str(e.value)  # one mistake, one message
    # in two cohorts: one message naming both (it blamed the first cohort for two rows of one,
    # and added 'same content')
    ext = [{**rows[-1], "slide_id": "x4", "patient_id": "q4"}]
    cfg["cohorts"]["ext"] = {"sheet": str(write_sheet(tmp_path, ext, "ext.csv", touch=False))}
    cfg["cohorts"]["ext"]["role"] = "external"
    write_sheet(tmp_path, rows[:-1], touch=False)
    with pytest.raises(ConfigError, match=r"slide file .*s3.svs' is in cohorts a, ext") as e:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert "listed 2 times" not in str(e.value) and "same content" not in str(e.value)
    del cfg["cohorts"]["ext"]
    write_sheet(tmp_path, rows, touch=False)
    (tmp_path / "copy.svs").write_bytes((tmp_path / "s3.svs").read_bytes())
    rows[-1]["path"] = "copy.svs"
    write_sheet(tmp_path, rows, touch=False)
    with pytest.raises(
        ConfigError,
        match=r"a/s3 \(s3.svs\), a/s4 \(copy.svs\) have the same "
        r"content .* in one cohort",
    ):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    (tmp_path / "copy.svs").write_bytes(bytes([9]) * (2 << 20))  # another size: not read
    load_cohorts(validate_config(cfg), base_dir=tmp_path)


def _predict_cohort(tmp_path, base_config, rows, role="predict"):
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
        "new": {"sheet": str(write_sheet(tmp_path, rows, name="new.csv")), "role": role},
    }
    return load_cohorts(validate_config(cfg), base_dir=tmp_path)


def test_predict_cohort_needs_no_labels(tmp_path, base_config, caplog):
    """A `role: predict` cohort: the label column may be missing or empty (given labels are
    still checked); a train patient there is a warning, not an error (no metrics)."""
    rows = [{k: v for k, v in r.items() if k != "label"} for r in other_rows()]
    sheet = _predict_cohort(tmp_path, base_config, rows)["new"]
    assert sheet["label"].tolist() == ["", "", ""] and sheet["slide_id"].tolist()[0] == "xs1"
    assert list(sheet.columns[:5]) == ["cohort", "slide_id", "patient_id", "label", "path"]
    rows = other_rows()
    rows[0]["label"], rows[1]["label"] = "", ""  # xp1 unlabelled, xp2 labelled
    rows[2]["patient_id"] = "p1"  # a train patient, with its train label
    rows[2]["label"] = "normal"
    sheet = _predict_cohort(tmp_path, base_config, rows)["new"]
    assert sheet["label"].tolist() == ["", "", "normal"]
    assert "cohort new: 1 patient(s) also in a train cohort (p1)" in caplog.text
    rows[2]["label"] = "tumour"
    with pytest.raises(ConfigError, match="label 'tumour' is not one of the classes"):
        _predict_cohort(tmp_path, base_config, rows)
    rows[2]["label"] = "lesion"  # p1 is normal in the train cohort
    with pytest.raises(ConfigError, match="patient 'p1' has labels"):
        _predict_cohort(tmp_path, base_config, rows)
    # an external cohort still needs labels
    rows = [{k: v for k, v in r.items() if k != "label"} for r in other_rows()]
    with pytest.raises(ConfigError, match="missing column.*label"):
        _predict_cohort(tmp_path, base_config, rows, role="external")
    rows = other_rows()
    rows[0]["label"] = ""
    with pytest.raises(ConfigError, match="line 2 .*label"):
        _predict_cohort(tmp_path, base_config, rows, role="external")


def test_patient_ids_that_differ_only_in_case_are_refused_where_they_could_leak(
    tmp_path, base_config, caplog
):
    """'p1' and 'P1' in the train (or external) cohorts were two patients with a warning: one
    person's slides could be trained on and tested in one fold. In a predict cohort (no
    metrics) such ids stay a warning."""
    rows = good_rows()
    rows[1]["patient_id"] = rows[0]["patient_id"].upper()
    rows[1]["label"] = rows[0]["label"]
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {"a": {"sheet": str(write_sheet(tmp_path, rows))}}
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert "patient_id(s) of the train and external cohorts differ from another only" in str(
        err.value
    )
    assert f"'{rows[1]['patient_id']}', '{rows[0]['patient_id']}'" in str(err.value)
    assert "patient_id(s) differ" not in caplog.text  # the error, not also a warning before it
    caplog.clear()
    new = other_rows()
    new[0]["patient_id"] = good_rows()[0]["patient_id"].upper()  # 'P1' beside train 'p1'
    new[0]["label"] = good_rows()[0]["label"]
    _predict_cohort(tmp_path, base_config, new)
    assert "patient_id(s) differ from another only in case, spaces or Unicode form" in caplog.text


def test_an_external_patient_of_the_second_train_cohort_is_caught(tmp_path, base_config):
    """The overlap check compares the external cohort with every train cohort, not the first;
    and an external id that is a train id in other case or with a space is caught too."""
    y_rows = [
        {**r, "slide_id": f"y{r['slide_id']}", "patient_id": f"y{r['patient_id']}",
         "path": f"y{r['path']}"} for r in good_rows()
    ]  # fmt: skip
    for ext_pid, message in (
        ("yp2", "cohort ext: 1 patient(s) also in a train cohort (yp2)"),
        ("YP2", "differ from another only in case, spaces or Unicode form ('YP2', 'yp2')"),
        ("y p2", "differ from another only in case, spaces or Unicode form ('y p2', 'yp2')"),
    ):
        ext = other_rows()
        ext[2]["patient_id"] = ext_pid  # a lesion patient, as yp2 is
        cfg = copy.deepcopy(base_config)
        cfg["cohorts"] = {
            "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
            "b": {"sheet": str(write_sheet(tmp_path, y_rows, name="b.csv"))},
            "ext": {"sheet": str(write_sheet(tmp_path, ext, name="e.csv")), "role": "external"},
        }
        with pytest.raises(ConfigError) as err:
            load_cohorts(validate_config(cfg), base_dir=tmp_path)
        assert message in str(err.value), ext_pid


def test_the_demo_cohort_loads_before_its_slides_are_generated(tmp_path, base_config):
    """`demo: true` (the shipped config.yaml): the slides and lesion masks are written by rule
    demo_cohort, a job of the run, so the sheet's files must not be required when the workflow
    starts (a new user's first `snakemake` would stop at "44 file(s) not found"); a plain
    cohort's must exist."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / base_config["cohorts"]["demo"]["sheet"]
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"]["demo"]["sheet"] = str(shipped)
    sheets = load_cohorts(validate_config(cfg), base_dir=tmp_path)  # no slide exists here
    assert len(sheets["demo"]) == 22
    cfg["cohorts"]["demo"]["demo"] = False
    with pytest.raises(ConfigError, match=r"44 file\(s\) not found"):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)


def test_an_unlabelled_slide_of_a_train_patient_in_a_predict_cohort_is_no_conflict(
    tmp_path, base_config, caplog
):
    """A predict cohort's empty label is no label: a new, unlabelled slide of train patient p1
    (normal) is a warning about the overlap, not "patient 'p1' has labels ['', 'normal']"."""
    rows = other_rows()
    rows[0].update(patient_id="p1", label="")
    sheet = _predict_cohort(tmp_path, base_config, rows)["new"]
    assert sheet["label"].tolist()[0] == ""
    assert "cohort new: 1 patient(s) also in a train cohort (p1)" in caplog.text


def test_same_content_is_found_from_the_last_mebibyte_and_for_a_pair_of_unique_size(
    tmp_path, base_config
):
    """slide_fingerprint hashes the first and the last MiB: two scans whose first MiB agree
    (a long shared header) but whose tails differ are two slides; a copy is caught also when
    it and its original are the only files of their size."""
    from gigamil.cohorts import slide_fingerprint

    head = bytes(range(256)) * 4096  # 1 MiB, the same in both files
    (tmp_path / "a.svs").write_bytes(head + b"\1" * (2 << 20))
    (tmp_path / "b.svs").write_bytes(head + b"\2" * (2 << 20))
    assert slide_fingerprint(tmp_path / "a.svs") != slide_fingerprint(tmp_path / "b.svs")
    rows, others = good_rows(), other_rows()
    for i, r in enumerate(rows + others):  # distinct files of distinct sizes
        (tmp_path / r["path"]).write_bytes(bytes([i]) * ((1 << 20) + 1000 * i))
    (tmp_path / "copy.svs").write_bytes((tmp_path / "s3.svs").read_bytes())
    others[1]["path"] = "copy.svs"  # the only other file of s3.svs's size
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, rows, touch=False))},
        "b": {"sheet": str(write_sheet(tmp_path, others, "b.csv", touch=False))},
    }
    cfg["cohorts"]["b"]["role"] = "external"
    with pytest.raises(ConfigError, match=r"a/s3 \(s3.svs\), b/xs2 \(copy.svs\) have the same"):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)


def test_a_class_seen_only_in_an_external_cohort_is_refused(tmp_path, base_config):
    """The models learn the classes of the train cohorts only: a class that only an external
    cohort has would be an output never trained on, whatever the external sheet holds."""
    cfg = copy.deepcopy(base_config)
    cfg["classes"] = ["normal", "lesion", "itc"]
    ext = other_rows()
    ext[2]["label"] = "itc"
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, good_rows()))},
        "e": {"sheet": str(write_sheet(tmp_path, ext, "e.csv")), "role": "external"},
    }
    with pytest.raises(ConfigError, match=r"classes: 'itc' has no slide in the train cohort"):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)


def test_slide_paths_that_are_folders_are_named_not_a_traceback(tmp_path, base_config):
    """Two rows naming folders (e.g. DICOM series): every folder has the same size, so they
    looked like copies and fingerprinting one raised IsADirectoryError, a traceback. Now the
    sheet names them."""
    rows = good_rows()
    for row in rows[:2]:
        (tmp_path / f"{row['slide_id']}_dir").mkdir()
        row["path"] = f"{row['slide_id']}_dir"
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {"a": {"sheet": str(write_sheet(tmp_path, rows))}}
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    text = str(err.value)
    assert "2 path(s) are folders, not files" in text and "for DICOM one .dcm file" in text
    assert f"slide file {rows[0]['slide_id']}_dir" in text
    assert "same content" not in text and "copies" not in text


def test_demo_true_on_a_cohort_of_other_slides_is_an_error():
    """demo: true copied from the demo's config onto one's own cohort gave Snakemake's
    MissingInputException for the demo's lesion masks (new-user trial); the demo's own sheet,
    or part of it, passes."""
    import pandas as pd

    from gigamil.cohorts import check_demo_cohorts

    demo_ids = ["demo_p01_s1", "demo_p01_s2", "demo_p02_s1"]
    config = {"cohorts": {"demo": {"demo": True}, "mine": {"demo": False}}}
    sheets = {
        "demo": pd.DataFrame({"slide_id": demo_ids[:2]}),
        "mine": pd.DataFrame({"slide_id": ["s1", "s2", "s3", "s4"]}),
    }
    check_demo_cohorts(config, sheets, demo_ids)
    config["cohorts"]["mine"]["demo"] = True
    with pytest.raises(ConfigError) as err:
        check_demo_cohorts(config, sheets, demo_ids)
    assert str(err.value) == (
        "cohorts.mine.demo: true is for the built-in demo cohort (sheet "
        "resources/demo/sheet.csv), whose slides rule demo_cohort generates; cohort mine's sheet "
        "lists other slides (s1, s2, s3, ...): remove demo: true from cohort mine"
    )


def test_patient_ids_in_two_unicode_forms_are_one_spelling_clash(tmp_path, base_config):
    """'José' typed as one character (NFC) in the train sheet and as 'e' plus a combining accent
    (NFD, as macOS copies have it) in the external one print alike: they were two patients and
    passed the overlap check; now refused, the two spellings shown with escapes."""
    import unicodedata

    rows = good_rows()
    rows[2]["patient_id"] = unicodedata.normalize("NFC", "José")
    ext = other_rows()
    ext[2]["patient_id"] = unicodedata.normalize("NFD", "José")
    ext[2]["label"] = rows[2]["label"]
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, rows))},
        "ext": {"sheet": str(write_sheet(tmp_path, ext, name="e.csv")), "role": "external"},
    }
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    assert "only in case, spaces or Unicode form ('Jose\\u0301', 'Jos\\xe9')" in str(err.value)


def test_empty_patient_ids_are_no_patient_across_cohorts(tmp_path, base_config):
    """An empty patient_id in a train and in an external cohort: each sheet names its empty
    cell; no "patient '' has labels ... in different cohorts" nor "1 patient(s) also in a
    train cohort ()" beside them."""
    rows, ext = good_rows(), other_rows()
    rows[2]["patient_id"] = ext[0]["patient_id"] = ""
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {
        "a": {"sheet": str(write_sheet(tmp_path, rows))},
        "b": {"sheet": str(write_sheet(tmp_path, ext, name="b.csv")), "role": "external"},
    }
    with pytest.raises(ConfigError) as err:
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
    text = str(err.value)
    assert text.startswith("2 problems in the cohort sheets:")
    assert text.count("patient_id: '' should be non-empty") == 2
    assert "different cohorts" not in text and "also in a train cohort" not in text
