"""config.yaml validation: every bad case gives a message naming the problem (the cohort sheets:
test_sheets.py, the cohorts together: test_cohorts.py)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from gigamil.config import (
    config_warnings,
    load_config,
    read_yaml,
    validate_config,
)
from gigamil.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


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
        (  # a --configfile of only the keys to change: it replaces config.yaml
            lambda c: c.pop("cohorts"),
            "'cohorts' is a required property: a configuration names its cohorts, and a "
            "--configfile replaces config.yaml instead of adding to it",
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
        (  # the key's description, not cut at its "e.g."
            lambda c: c.update(subgroups="site"),
            "subgroups: 'site' is not of type 'array' (Sheet columns (e.g. `[site, scanner]`, or "
            "`cohort`) to report",
        ),
        (
            lambda c: c["heatmaps"].update(slides="demo_p01_s1"),
            "heatmaps.slides: 'demo_p01_s1' is not allowed here (a list of one is written "
            "[demo_p01_s1]). `all`, `none`, or a list",
        ),
        (  # a near name is the hint, not "a list of one"
            lambda c: c["heatmaps"].update(slides="nonee"),
            "heatmaps.slides: 'nonee' is not allowed here (did you mean none?). `all`",
        ),
        (
            lambda c: c["cohorts"]["demo"].update(role="external"),
            "at least one cohort needs role: train",
        ),
        (  # and the error names the way to predict with models trained elsewhere
            lambda c: c["cohorts"]["demo"].update(role="external"),
            "set trained_models: their folder",
        ),
        (  # models given: nothing trains, so a train cohort would be silently unused
            lambda c: c.update(trained_models="shared/models"),
            "cohorts: demo has role: train, but trained_models gives the fold models",
        ),
        (lambda c: c["cohorts"].update({"bad name": {"sheet": "x"}}), "invalid name 'bad name'"),
        (lambda c: c["cohorts"].update({"..": {"sheet": "x"}}), "invalid name '..'"),
        (lambda c: c.update(experiment=".."), "experiment: '..' is not a safe file name (letters"),
        (lambda c: c.update(experiment="."), "experiment: '.' is not a safe file name"),
        (  # the sheets' labels are stripped: ' lesion' could never match one (new-user trial)
            lambda c: c.update(classes=["normal", " lesion"]),
            "classes.1: ' lesion' has spaces at its start or end, which the sheets' labels are",
        ),
        (lambda c: c["training"].update(epoch=3), "unknown key training.epoch (allowed here:"),
        (lambda c: c["training"].update(epoch=3), "; did you mean epochs?"),
        (  # a key of another section: pointed to there
            lambda c: c["training"].update(stain_jitter=0.1),
            "; did you mean training.augment.stain_jitter?",
        ),
        (lambda c: c["model"].update(epochs=3), "; did you mean training.epochs?"),
        (  # --config 'training={epochs:10}': YAML reads one key, 'epochs:10' (new-user trial)
            lambda c: c["training"].update({"epochs:10": None}),
            "unknown key training.epochs:10 (allowed here: amp, augment, ",
        ),
        (
            lambda c: c["training"].update({"epochs:10": None}),
            "; YAML needs a space after the colon: epochs: 10",
        ),
        (  # at the top level (--config epochs=10): where it goes, and how --config writes it
            # (Snakemake's own parser stops at --config training.epochs=10 with a traceback)
            lambda c: c.update(stain_jitter=0.1),
            "did you mean training.augment.stain_jitter? (in a config file it belongs under "
            "training: > augment:; with --config, write the section as a mapping: --config "
            """'training={"augment": {"stain_jitter": 0.1}}')""",
        ),
        (  # a value of the wrong type or out of range: what the key is, from the schema
            lambda c: c["cohorts"]["demo"].update(mpp="abc"),
            "cohorts.demo.mpp: 'abc' is not of type 'number', 'null' (Microns per pixel at level 0",
        ),
        (
            lambda c: c["training"].update(lr=-1),
            "training.lr: -1 is less than or equal to the minimum of 0 (AdamW learning rate)",
        ),
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
        (
            lambda c: c["cv"].update(stratify_by=["label"]),
            "cv.stratify_by: the folds always balance the label",
        ),
        (lambda c: c["cv"].update(stratify_by=["patient_id"]), "cannot stratify by 'patient_id'"),
        (lambda c: c["cv"].update(stratify_by=["n"]), "'n' (a name the fold splitter uses"),
        # a review of the configuration (each a traceback, or a name with a line break, before)
        (
            lambda c: c["cohorts"].update({False: c["cohorts"].pop("demo")}),
            "cohorts: the name False is a boolean in YAML, not a name: quote it as written",
        ),
        (
            lambda c: c["cohorts"].update({2024: {"sheet": "x.csv"}}),
            "cohorts: the name 2024 is a number in YAML",
        ),
        (
            lambda c: c["training"].update({5: "x", "foo": 1}),
            "unknown key training.5, training.foo",
        ),
        (lambda c: c.update(experiment="demo\n"), "experiment: 'demo\\n' is not a safe"),
        (lambda c: c.update(classes=["normal", "lesion\n"]), "'lesion\\n' has spaces"),
        (
            lambda c: c["training"].update(strategy="em", warmup_epochs=100),
            "strategy em trains in rounds of its own",
        ),
        (lambda c: c["training"].update(seed=2**64), "is greater than the maximum of 4294967295"),
        (lambda c: c.update(experiment=2024), "2024 is a number in YAML, not a string: quote it,"),
        (lambda c: c["cv"].update(stratify_by=["n_slides"]), "'n_slides' (a name the fold"),
        (
            lambda c: c["cv"].update(stratify_by=["site", "site"]),
            "cv.stratify_by: ['site', 'site']",
        ),
        (  # YAML reads unquoted 0 / 1 as numbers: the sheets' labels are strings
            lambda c: c.update(classes=[0, 1]),
            "classes.0: 0 is a number in YAML, not a string: quote it as the sheets spell it",
        ),
        (lambda c: c.update(classes=[False, True]), "classes.0: False is a boolean in YAML"),
        (  # closer to cpu by spelling; what a user means by it is cuda
            lambda c: c["training"].update(device="gpu"),
            "training.device: 'gpu' is not one of auto, cpu, cuda; did you mean cuda?",
        ),
        (  # the choices as config.yaml spells them (false, not Python's False)
            lambda c: c["training"].update(amp="fp32"),
            "training.amp: 'fp32' is not one of auto, bf16, fp16, false, true",
        ),
        # known before any job (a review found them raised inside train_fold, after
        # preprocessing; and a 253-character cohort name failed a job with 'File name too long')
        (
            lambda c: c["model"].update(pool="instance", instance_loss=0.5),
            "model.instance_loss applies to the attention pools",
        ),
        (
            lambda c: c["training"].update(device="cpu", amp="fp16"),
            "training.amp: fp16 needs a CUDA device (training.device is cpu)",
        ),
        (lambda c: c["cohorts"].update({"c" * 101: c["cohorts"]["demo"]}), "c" * 101),
        (  # factors 1 ± s: above 1 a negative factor inverts the patch
            lambda c: c["training"]["augment"].update(color_jitter=1.5),
            "training.augment.color_jitter: 1.5 is greater than the maximum of 1",
        ),
    ],
)
def test_bad_config_names_the_key(base_config, edit, message):
    cfg = copy.deepcopy(base_config)
    edit(cfg)
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


def test_every_schema_problem_comes_in_one_message(base_config):
    """Three typos took three runs (each a dry run of 12-20 s)."""
    cfg = copy.deepcopy(base_config)
    cfg["clases"] = cfg.pop("classes", ["normal", "lesion"])
    cfg["cv"] = {"val_fracton": 0.1}
    cfg["training"] = {"epoch": 3}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    lines = str(err.value).splitlines()
    assert lines[0] == "config.yaml: 3 problems in the configuration:"
    assert [ln.split(" (")[0] for ln in lines[1:]] == [
        "- unknown key clases",
        "- unknown key cv.val_fracton",
        "- unknown key training.epoch",
    ]


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
    # out of range: the error names the range, as for the same number in config.yaml
    for key, typed, message in (
        ("epochs", "-3", "training.epochs: -3 is less than the minimum of 1"),
        ("lr", "-0.1", "training.lr: -0.1 is less than or equal to the minimum of 0"),
        ("seed", "-1", "training.seed: -1 is less than the minimum of 0"),
    ):
        bad = copy.deepcopy(cfg)
        bad["training"] = {**cfg["training"], "epochs": "3", key: typed}
        with pytest.raises(ConfigError, match=re.escape(message)):
            validate_config(bad)
    cfg["training"]["epochs"] = "3"
    cfg["model"]["trainable_blocks"] = "2"  # read as 2: the strategy contradiction is found
    with pytest.raises(ConfigError, match="trainable_blocks"):
        validate_config(cfg)


def test_a_whole_number_has_one_form_per_key(base_config):
    """Snakemake compares rule params by repr: `mask_mpp: 8` after `8.0`, or `val_fraction:
    0.0` after `0`, redid every mask, store and model with the same values; and `epochs: 48.0`
    passed the schema (JSON Schema counts 48.0 as an integer), then failed in a job."""
    cfg = copy.deepcopy(base_config)
    shipped = validate_config(cfg)
    cfg["preprocessing"]["tissue"] |= {"mask_mpp": 8, "min_area_um2": 20000}
    cfg["cv"] |= {"val_fraction": 0.0, "folds": float(shipped["cv"]["folds"])}
    cfg["training"] |= {"epochs": 48.0, "seed": 0.0, "max_instances_per_forward_pass": 128.0}
    cfg["model"] = {**cfg.get("model", {}), "att_dim": 64.0}
    out = validate_config(cfg)
    for path in (("preprocessing", "tissue"), ("cv",)):  # equal values, equal params
        a, b = shipped, out
        for key in path:
            a, b = a[key], b[key]
        assert repr(a) == repr(b), path
    assert out["preprocessing"]["tissue"]["mask_mpp"] == 8.0  # the default's form: 8.0
    assert isinstance(out["preprocessing"]["tissue"]["mask_mpp"], float)
    assert out["cv"]["val_fraction"] == 0 and isinstance(out["cv"]["val_fraction"], int)
    for key in ("epochs", "seed", "max_instances_per_forward_pass"):
        assert type(out["training"][key]) is int, key
    assert type(out["model"]["att_dim"]) is int and type(out["cv"]["folds"]) is int
    assert out["training"]["lr"] == shipped["training"]["lr"]  # not whole: as written
    assert repr(validate_config(base_config)) == repr(shipped)  # the shipped file: unchanged


def test_a_whole_number_of_a_key_of_several_types_has_one_form(base_config):
    """Keys of ``oneOf`` types had no ``type`` for the canonicalisation to read: ``threshold:
    20.0`` and ``20`` made different params (every mask redone), and ``trainable_blocks: 2.0``
    passed the schema, then was refused as not an integer."""
    cfg = copy.deepcopy(base_config)
    cfg["preprocessing"]["tissue"] |= {"threshold": 20.0}
    cfg["model"] = {**cfg.get("model", {}), "encoder": "resnet18", "trainable_blocks": 2.0}
    out = validate_config(cfg)
    assert type(out["preprocessing"]["tissue"]["threshold"]) is int
    assert type(out["model"]["trainable_blocks"]) is int and out["model"]["trainable_blocks"] == 2
    cfg["preprocessing"]["tissue"]["threshold"] = 20.5  # not whole: as written
    assert validate_config(cfg)["preprocessing"]["tissue"]["threshold"] == 20.5
    cfg["preprocessing"]["tissue"]["threshold"] = "otsu"
    assert validate_config(cfg)["preprocessing"]["tissue"]["threshold"] == "otsu"


def test_nan_and_infinite_numbers_are_refused_by_key(base_config):
    """YAML's .nan and .inf pass the schema's bounds (nan > 0 and nan <= 0 are both false):
    a cohort's ``mpp: .nan`` was accepted and then ignored (the scanner's MPP used), a
    ``patches.mpp: .inf`` reached the jobs."""
    cfg = copy.deepcopy(base_config)
    cfg["preprocessing"]["patches"]["mpp"] = float("inf")
    next(iter(cfg["cohorts"].values()))["mpp"] = float("nan")
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "preprocessing.patches.mpp: inf is not a finite number" in str(err.value)
    assert f"cohorts.{next(iter(cfg['cohorts']))}.mpp: nan is not a finite number" in str(err.value)


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


def test_heatmap_colour_map_is_checked_with_a_suggestion():
    from gigamil.config import check_cmap

    check_cmap("jet")
    with pytest.raises(
        ConfigError, match="'jett' is not a matplotlib colour map; did you mean jet"
    ):
        check_cmap("jett")


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


def test_warning_when_the_median_kernel_is_even(base_config):
    """median_px 4 was silently used as 5 (a median blur needs an odd kernel)."""
    cfg = copy.deepcopy(base_config)
    cfg["preprocessing"] = {"tissue": {"median_px": 4}}
    (msg,) = config_warnings(validate_config(cfg))
    assert msg.startswith("preprocessing.tissue.median_px 4 is even") and "5 is used" in msg
    cfg["preprocessing"]["tissue"]["median_px"] = 5
    assert config_warnings(validate_config(cfg)) == []


def test_warning_when_a_foundation_model_has_no_weights(base_config):
    """model.encoder uni without weights silently built a random ViT-L and called its features
    'uni'; with weights named (a local file or the Hugging Face cache) there is no warning."""
    cfg = copy.deepcopy(base_config)
    cfg["model"]["encoder"] = "uni"
    (msg,) = config_warnings(validate_config(cfg))
    assert msg.startswith("model.encoder uni with model.weights null builds the architecture")
    assert "hf-hub:MahmoodLab/UNI" in msg
    cfg["model"]["weights"] = "hf-hub:MahmoodLab/UNI"
    assert config_warnings(validate_config(cfg)) == []


def test_command_line_strings_of_a_cohort_are_read_as_typed(base_config):
    """`--config 'cohorts={"ext": {"sheet": "e.csv", "mpp": "0.25"}}'` passes a cohort's values
    as strings too: a cohort's keys (the schema's additionalProperties) are read as typed, like
    the keys of the named sections, not refused as "not of type 'number'"."""
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"]["ext"] = {
        "sheet": "e.csv",
        "role": "external",
        "mpp": "0.25",
        "allow_patient_overlap": "true",
    }
    out = validate_config(cfg)["cohorts"]["ext"]
    assert out["mpp"] == 0.25 and out["allow_patient_overlap"] is True


def test_an_empty_nested_section_takes_its_defaults(base_config):
    """`early_stopping:` (or `tissue:`) with every key commented out is YAML's null inside a
    section: its defaults apply, as for an empty top-level section."""
    cfg = copy.deepcopy(base_config)
    cfg["training"] = {**cfg["training"], "early_stopping": None, "augment": None}
    cfg["preprocessing"] = {"tissue": None, "patches": cfg["preprocessing"]["patches"]}
    out = validate_config(cfg)
    defaults = validate_config({"cohorts": cfg["cohorts"]})
    assert out["training"]["early_stopping"] == defaults["training"]["early_stopping"]
    assert out["training"]["augment"] == defaults["training"]["augment"]
    assert out["preprocessing"]["tissue"] == defaults["preprocessing"]["tissue"]


def test_warning_when_min_epochs_equals_epochs(base_config):
    """min_epochs == epochs leaves early stopping nothing to choose either (the docstring's
    "with the two equal" case): the warning is given, and not one epoch below."""
    cfg = copy.deepcopy(base_config)
    cfg["training"] = {**cfg["training"], "epochs": 20}
    cfg["training"]["early_stopping"] = {**cfg["training"]["early_stopping"], "min_epochs": 20}
    (msg,) = config_warnings(validate_config(cfg))
    assert "min_epochs (20) >= training.epochs (20)" in msg
    cfg["training"]["early_stopping"]["min_epochs"] = 19
    assert config_warnings(validate_config(cfg)) == []


def test_check_slide_id_refuses_names_that_leave_their_folder():
    """Every writer of per-slide files calls check_slide_id: an id like ``../x`` or ``/abs``
    would write outside its results folder."""
    from gigamil.config import check_slide_id

    assert check_slide_id("s1.a-b_c") == "s1.a-b_c"
    for bad in ("../x", "/tmp/abs", "..", ".", "a/b", "has space", "s1\n"):
        with pytest.raises(ConfigError, match="is not a safe file name"):
            check_slide_id(bad)


def test_a_long_description_is_cut_at_its_last_sentence_end_within_the_limit():
    """A key's description in an error: whole sentences up to 240 characters, an
    abbreviation's full stop (e.g., i.e.) is no sentence end; a first sentence longer than the
    limit is kept whole."""
    from gigamil.schemas import _summary

    first, second = "A" * 50 + ".", "B" * 100 + ", i.e. " + "C" * 60 + "."
    text = f"{first} {second} {'D' * 100}. end"
    assert _summary(text) == f"{first} {second}"[:-1]
    assert _summary("short. text.") == "short. text"
    assert _summary(f"{first} {'B' * 100}, i.e. {'C' * 150}. end") == first[:-1]
    long_first = "E" * 300
    assert _summary(f"{long_first}. F.") == long_first
    assert _summary("G" * 300) == "G" * 300


def test_trained_models_need_no_train_cohort(base_config):
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"]["demo"]["role"] = "predict"
    cfg["trained_models"] = "shared/models"
    assert validate_config(cfg)["trained_models"] == "shared/models"
    del cfg["trained_models"]
    base = validate_config(base_config)
    assert base["trained_models"] is None  # the default: the workflow trains


def test_trained_models_with_train_cohorts_names_every_one(base_config):
    """Two train cohorts beside trained_models: the error lists both to change, not the first."""
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"]["site_b"] = {"sheet": "resources/site_b.csv", "role": "train"}
    cfg["cohorts"]["new"] = {"sheet": "resources/new.csv", "role": "predict"}
    cfg["trained_models"] = "shared/models"
    with pytest.raises(ConfigError, match="cohorts: demo, site_b has role: train, but"):
        validate_config(cfg)


def test_with_trained_models_only_the_unscored_external_cohort_is_warned_about(base_config):
    """Nothing trains: warnings about training keys would be noise; an external cohort without
    the ensemble would get no metrics."""
    cfg = copy.deepcopy(base_config)
    cfg["cohorts"]["demo"]["role"] = "external"
    cfg["training"]["early_stopping"]["min_epochs"] = 99
    cfg.update(trained_models="shared/models", ensemble={"enabled": False})
    warnings = config_warnings(validate_config(cfg))
    assert warnings == [
        "ensemble.enabled is false: the external cohort(s) demo get each trained_models fold "
        "model's predictions and heatmaps but no ensemble and no metrics; set "
        "ensemble.enabled: true to score them"
    ]
    cfg["ensemble"]["enabled"] = True
    assert config_warnings(validate_config(cfg)) == []


def test_null_on_the_command_line_is_null_for_a_key_that_may_be_null(base_config):
    """snakemake --config trained_models=null hands over the string 'null', a valid path to
    the schema: it was looked for as a folder; model.weights 'null' as a weight name."""
    cfg = copy.deepcopy(base_config)
    cfg["trained_models"] = "null"
    cfg["model"]["weights"] = "~"
    out = validate_config(cfg)
    assert out["trained_models"] is None and out["model"]["weights"] is None
