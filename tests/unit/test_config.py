"""config.yaml and cohort-sheet validation: every bad case gives a message naming the problem."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from gigamil.config import (
    config_warnings,
    load_cohorts,
    load_config,
    load_sheet,
    read_yaml,
    validate_config,
)
from gigamil.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["normal", "lesion"]


@pytest.fixture()
def base_config() -> dict:
    with open(REPO / "config.yaml") as fh:
        return yaml.safe_load(fh)


def write_sheet(
    tmp_path: Path, rows: list[dict], name: str = "sheet.csv", touch: bool = True
) -> Path:
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    if touch:
        for r in rows:
            if "path" in r and r["path"]:
                (tmp_path / r["path"]).touch()
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def good_rows() -> list[dict]:
    return [
        {"slide_id": "s1", "patient_id": "p1", "label": "normal", "path": "s1.svs"},
        {"slide_id": "s2", "patient_id": "p1", "label": "normal", "path": "s2.svs"},
        {"slide_id": "s3", "patient_id": "p2", "label": "lesion", "path": "s3.svs"},
    ]


def test_repo_config_is_valid_and_defaults_are_filled(base_config):
    cfg = validate_config(base_config)
    assert cfg["experiment"] == "demo"
    assert cfg["cohorts"]["demo"]["mpp"] is None  # default filled inside a cohort
    minimal = {"cohorts": {"c": {"sheet": "x.csv"}}}
    full = validate_config(minimal)
    assert full["cohorts"]["c"]["role"] == "train"
    assert full["training"]["early_stopping"]["patience"] == 5
    assert full["preprocessing"]["patches"]["patch_px"] == 256
    assert minimal == {"cohorts": {"c": {"sheet": "x.csv"}}}  # input not mutated


def test_every_schema_key_has_description_and_default():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())

    def walk(node: dict, where: str) -> None:
        for key, sub in node.get("properties", {}).items():
            assert "description" in sub, f"{where}.{key} has no description"
            if key not in node.get("required", []):
                assert "default" in sub, f"{where}.{key} has no default"
            walk(sub, f"{where}.{key}")
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            walk(extra, f"{where}.*")

    walk(schema, "config")
    sheet = yaml.safe_load((REPO / "workflow/schemas/sheet.schema.yaml").read_text())
    for key, sub in sheet["properties"].items():
        assert "description" in sub, f"sheet.{key} has no description"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["training"].update(epoch=3), "unknown key training.epoch"),
        (lambda c: c.update(colour="red"), "unknown key colour"),
        (lambda c: c["cohorts"]["demo"].update(shet="x"), "unknown key cohorts.demo.shet"),
        (
            lambda c: c["training"].update(epochs=0),
            "training.epochs: 0 is less than the minimum of 1",
        ),
        (lambda c: c["model"].update(pool="max"), "model.pool: 'max' is not one of"),
        (lambda c: c["model"].update(dropout=1), "model.dropout: 1 is greater than or equal to"),
        (
            lambda c: c["cohorts"]["demo"].update(role="test"),
            "cohorts.demo.role: 'test' is not one of",
        ),
        (
            lambda c: c["cohorts"]["demo"].pop("sheet"),
            "cohorts.demo: 'sheet' is a required property",
        ),
        (lambda c: c.update(classes=["only"]), "classes: ['only'] has 1 item(s); at least 2 are"),
        (
            lambda c: c["heatmaps"].update(normalize="probabilty"),
            "heatmaps.normalize: 'probabilty' is not one of probability, relative, rank, "
            "percentile, minmax; did you mean probability?",
        ),
        (
            lambda c: c.update(experiment=None),
            "experiment: null (an empty value) is not allowed here: give a string",
        ),  # fmt: skip
        (lambda c: c.update(cv=[2]), "cv: [2] is not of type 'object'"),
        (
            lambda c: c["cohorts"]["demo"].update(role="external"),
            "at least one cohort needs role: train",
        ),
        (lambda c: c["cohorts"].update({"bad name": {"sheet": "x"}}), "invalid name 'bad name'"),
        (lambda c: c["cohorts"].update({"..": {"sheet": "x"}}), "invalid name '..'"),
        (lambda c: c.update(experiment=".."), "experiment: '..' is not a safe file name (letters"),
        (lambda c: c.update(experiment="."), "experiment: '.' is not a safe file name"),
        (lambda c: c["training"].update(epoch=3), "unknown key training.epoch (allowed here:"),
        (lambda c: c["training"].update(epoch=3), "; did you mean epochs?"),
        (  # a key of another section: pointed to there
            lambda c: c["training"].update(stain_jitter=0.1),
            "; did you mean training.augment.stain_jitter?",
        ),
        (lambda c: c["model"].update(epochs=3), "; did you mean training.epochs?"),
        (
            lambda c: c["preprocessing"]["patches"].update(mpp=None),
            "preprocessing.patches.mpp: null (an empty value) is not allowed here: give a number",
        ),
        (
            lambda c: c["model"].update(encoder="timm:bad name"),
            "model.encoder: 'timm:bad name' is not allowed here. Patch encoder: torchvision",
        ),
        (
            lambda c: c["model"].update(encoder="resnet_18"),
            "model.encoder: 'resnet_18' is not allowed here (did you mean resnet18",
        ),
    ],
)
def test_bad_config_names_the_key(base_config, edit, message):
    cfg = copy.deepcopy(base_config)
    edit(cfg)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


def test_an_empty_section_takes_its_defaults_and_the_top_level_must_be_a_mapping(base_config):
    """`training:` with every key commented out is YAML's null: the section's defaults apply."""
    cfg = copy.deepcopy(base_config)
    cfg["training"] = None
    cfg["heatmaps"] = None
    out = validate_config(cfg)
    assert (
        out["training"]["epochs"]
        == validate_config({"cohorts": cfg["cohorts"]})["training"]["epochs"]
    )
    assert out["heatmaps"]["alpha"] == 0.5
    with pytest.raises(ConfigError, match="must be a mapping of keys .* not a list"):
        validate_config(["experiment"])  # type: ignore[arg-type]


def test_command_line_strings_are_read_as_the_numbers_typed(base_config):
    """`snakemake --config 'training={"epochs": 3}'` passes "3"; the schema wants an integer."""
    cfg = copy.deepcopy(base_config)
    cfg["training"] = {"epochs": "3", "lr": "1e-3", "amp": "false", "strategy": "frozen"}
    cfg["model"] = {"trainable_blocks": "0", "dropout": "0.25", "pool": "instance"}
    out = validate_config(cfg)
    assert out["training"]["epochs"] == 3 and out["training"]["lr"] == pytest.approx(1e-3)
    assert out["training"]["amp"] is False and out["training"]["strategy"] == "frozen"
    assert out["model"]["trainable_blocks"] == 0 and out["model"]["dropout"] == 0.25
    assert out["model"]["pool"] == "instance"
    cfg["training"]["epochs"] = "three"  # not a number in any reading: still an error
    with pytest.raises(ConfigError, match="training.epochs"):
        validate_config(cfg)
    cfg["training"]["epochs"] = "3"
    cfg["model"]["trainable_blocks"] = "2"  # read as 2: the strategy contradiction is found
    with pytest.raises(ConfigError, match="trainable_blocks"):
        validate_config(cfg)


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cohorts: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("experiment: a\ntraining:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"key training.epochs given twice \(lines 3 and 5\)"):
        load_config(twice)
    # merge keys: a merged key given again here overrides it (YAML), not a duplicate
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b {role: train, sheet: a.csv}\nother: {<<: *b, role: predict}\n")
    assert read_yaml(merged)["other"] == {"role": "predict", "sheet": "a.csv"}
    # in a list of mappings too, named with the item's index
    listed = tmp_path / "listed.yaml"
    listed.write_text("heatmaps:\n  slides:\n    - {a: 1, a: 2}\n")
    with pytest.raises(ConfigError, match=r"key heatmaps.slides.0.a given twice \(lines 3 and 3\)"):
        read_yaml(listed)
    # the same key in two different mappings is fine
    ok = tmp_path / "ok.yaml"
    ok.write_text("cohorts: {}\ntraining: {epochs: 3}\nmodel: {epochs: 3}\n")
    assert read_yaml(ok)["model"] == {"epochs": 3}


def test_good_sheet_loads(tmp_path):
    path = write_sheet(tmp_path, good_rows())
    df = load_sheet(path, "c1", CLASSES, base_dir=tmp_path)
    assert list(df.columns[:5]) == ["cohort", "slide_id", "patient_id", "label", "path"]
    assert df["cohort"].eq("c1").all() and len(df) == 3
    assert df["mpp"].isna().all()


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


def test_label_and_file_near_misses_are_suggested(tmp_path):
    rows = good_rows()
    rows[2]["label"] = "Lesion"
    path = write_sheet(tmp_path, rows)
    with pytest.raises(
        ConfigError, match=r"label 'Lesion' is not one of .*did you mean 'Lesion' -> 'lesion'\?"
    ):
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


def test_slide_ids_that_differ_only_in_case_are_refused(tmp_path, base_config):
    """macOS: results/patches/c/S1.zarr and .../s1.zarr would be one directory."""
    rows = good_rows()
    rows[1]["slide_id"] = "S1"
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"] = {"a": {"sheet": str(write_sheet(tmp_path, rows))}}
    with pytest.raises(
        ConfigError, match=r"'S1', 's1' \(cohort a\) differ only in case \(1 such\)"
    ):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)


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
    with pytest.raises(
        ConfigError, match=r"patient 'p1' has conflicting labels \['lesion', 'normal'\]"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


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
        ConfigError, match=r"line 2 .*mpp: -1.0 is less than or equal to the minimum of 0"
    ):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_empty_sheet(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text("slide_id,patient_id,label,path\n")
    with pytest.raises(ConfigError, match="has no rows"):
        load_sheet(path, "c1", CLASSES)


def other_rows() -> list[dict]:
    """good_rows() of other slides and patients (a second cohort)."""
    return [
        {
            **r,
            "slide_id": f"x{r['slide_id']}",
            "patient_id": f"x{r['patient_id']}",
            "path": f"x{r['path']}",
        }
        for r in good_rows()
    ]


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
    from gigamil.config import train_patient_overlap

    assert train_patient_overlap(cfg, sheets, "b") == ["p1"]
    assert train_patient_overlap(cfg, sheets, "a") == []


def test_same_slide_content_in_two_cohorts_is_refused(tmp_path, base_config):
    """Issue 15, item 4: a copy of a slide (other name, other folder) in a second cohort."""
    from gigamil.config import slide_fingerprint

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
    assert slide_fingerprint(tmp_path / "missing.svs") is None
    assert slide_fingerprint(tmp_path / "s1.svs") != slide_fingerprint(tmp_path / "s2.svs")
    # the workflow's job processes skip the content comparison (the main process made it)
    sheets = load_cohorts(validate_config(cfg), base_dir=tmp_path, check_content=False)
    assert set(sheets) == {"a", "b"}


def test_a_known_column_spelt_otherwise_is_not_silently_ignored(tmp_path, caplog):
    rows = good_rows()
    for r in rows:
        r["MPP"] = "0.5"  # would be ignored: the slides' own MPP used instead
    with pytest.raises(ConfigError, match=r"column 'MPP' means 'mpp'; .* rename it mpp"):
        load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows = [{**r, "Slide ID": r["slide_id"]} for r in good_rows()]  # both: a column of its own
    load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    rows = [{**r, "lesion_masks": "", "mpp_um": "0.5", "scanner": "x"} for r in good_rows()]
    df = load_sheet(write_sheet(tmp_path, rows), "c1", CLASSES, base_dir=tmp_path)
    assert "column 'lesion_masks' is not read by gigamil (did you mean lesion_mask?)" in caplog.text
    assert "column 'mpp_um' is not read by gigamil (did you mean mpp?)" in caplog.text
    assert "scanner" not in caplog.text and df["mpp"].isna().all()


def test_heatmap_colour_map_is_checked_with_a_suggestion():
    from gigamil.config import check_cmap

    check_cmap("jet")
    with pytest.raises(
        ConfigError, match="'jett' is not a matplotlib colour map; did you mean jet"
    ):
        check_cmap("jett")


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
    with pytest.raises(ConfigError, match=r"cohort a: slide file 's3.svs' is listed 2 times "):
        load_cohorts(validate_config(cfg), base_dir=tmp_path)
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


def test_a_semicolon_separated_sheet_gets_a_hint(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("slide_id;patient_id;label;path\ns1;p1;normal;s1.svs\n")
    with pytest.raises(ConfigError, match="separated by ';': save the sheet as comma-separated"):
        load_sheet(path, "c1", CLASSES, base_dir=tmp_path)


def test_warning_when_min_epochs_leaves_early_stopping_nothing_to_do(base_config):
    assert config_warnings(validate_config(base_config)) == []  # the demo: 48 epochs, 20 warm-up
    short = {**base_config, "training": {**base_config["training"], "epochs": 2}}
    (msg,) = config_warnings(validate_config(short))
    assert "min_epochs (20) >= training.epochs (2)" in msg and "last" in msg
    em = {**short, "training": {**short["training"], "strategy": "em"}}
    assert config_warnings(validate_config(em)) == []  # em does not use training.epochs


def test_warning_when_a_train_cohort_allows_patient_overlap(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"]["demo"]["allow_patient_overlap"] = True
    (msg,) = config_warnings(validate_config(cfg))
    assert "cohorts.demo.allow_patient_overlap applies to external cohorts only" in msg
