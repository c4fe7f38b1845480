"""gigamil.train.model_info: what a model.pt is, and the config keys to predict with it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from gigamil.config import validate_config
from gigamil.errors import GigamilError
from gigamil.models.factory import build_mil_model
from gigamil.settings import ModelConfig
from gigamil.train.checkpoint import FINISHED, atomic_save, load_checkpoint
from gigamil.train.model_file import model_checkpoint, model_header
from gigamil.train.model_info import (
    config_fragment,
    describe_model,
    folder_warnings,
    json_safe,
    model_header_of,
    not_a_model,
)
from gigamil.train.trained_models import (
    check_trained_models,
    config_preprocessing,
    fold_models,
)

REPO = Path(__file__).resolve().parents[3]
RECORDED = {  # what a fold's training stores recorded (fold_data.store_preprocessing)
    "preprocessing.patches.min_tissue": 0.25,
    "preprocessing.patches.stride_px": 48,
    "preprocessing.patches.codec": "jpeg",
    "preprocessing.patches.jpeg_quality": 80,
    "preprocessing.tissue.threshold": 20,
    "preprocessing.tissue.close_um": 16.0,
}


def _model_pt(path: Path, replicates: int = 1, **header_keys) -> Path:
    cfg = ModelConfig.from_dict({"encoder": "smallcnn", "pool": "smabmil", "att_dim": 16})
    model = build_mil_model(cfg, 2, 96)
    keys = {"classes": ["benign", "tumour"], "patch_px": 96, "patch_mpp": 0.5, **header_keys}
    ckpt = model_checkpoint(model, model_header(cfg.to_dict(), **keys), 7, {"val_auc": 0.8})
    if replicates > 1:
        member = {k: ckpt.pop(k) for k in ("state_dict", "epoch", "metrics")}
        ckpt["replicates"] = [{"seed": s, **member} for s in range(replicates)]
    return atomic_save({**ckpt, FINISHED: True}, path)


def test_the_config_keys_it_gives_predict_with_the_model_without_a_warning(tmp_path: Path):
    """The printed keys, put into a project's config.yaml, pass the trained_models check with
    no error and no preprocessing warning: they are exactly what the model needs."""
    path = _model_pt(tmp_path / "fold0" / "model.pt", preprocessing=RECORDED)
    fragment = config_fragment(model_header_of(path))
    assert fragment["classes"] == ["benign", "tumour"]
    assert fragment["preprocessing"]["patches"] == {
        "patch_px": 96,
        "mpp": 0.5,
        "min_tissue": 0.25,
        "stride_px": 48,
        "codec": "jpeg",
        "jpeg_quality": 80,
    }
    with open(REPO / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    cfg["classes"] = fragment["classes"]
    for section, values in fragment["preprocessing"].items():
        cfg["preprocessing"][section].update(values)
    cfg["cohorts"]["demo"]["role"] = "predict"
    cfg = validate_config({**cfg, "trained_models": str(tmp_path)})
    models = fold_models(tmp_path)
    here = config_preprocessing(cfg["preprocessing"])
    patches = cfg["preprocessing"]["patches"]
    assert check_trained_models(models, cfg["classes"], patches, None, here) == []
    # and the repo's config as it is (other classes, patch size, µm/px) cannot
    with open(REPO / "config.yaml") as fh:
        plain = validate_config(yaml.safe_load(fh))
    with pytest.raises(GigamilError, match="set classes: \\[benign, tumour\\]"):
        check_trained_models(models, plain["classes"], plain["preprocessing"]["patches"])


def test_a_model_without_recorded_preprocessing_gives_the_patch_keys_only(tmp_path: Path):
    path = _model_pt(tmp_path / "model.pt", patch_mpp=None, stain_normalization="macenko")
    assert config_fragment(model_header_of(path))["preprocessing"] == {
        "patches": {"patch_px": 96, "stain_normalization": "macenko"}
    }


def test_the_summary_names_classes_input_members_and_training_slides(tmp_path: Path):
    seen = {"slides": [["a", "s1"], ["a", "s2"], ["b", "s3"]], "patient_ids": ["p1", "p1", "p2"]}
    path = _model_pt(tmp_path / "model.pt", replicates=2, training_slides=seen)
    header = model_header_of(path)
    assert "state_dict" not in header and "state_dict" not in header["replicates"][0]
    assert header["replicates"][1]["seed"] == 1  # the members' other keys are kept
    text = "\n".join(describe_model(path, header))
    assert "2 replicate models (seeds 0, 1; the weights of epochs 7, 7)" in text
    assert "classes: benign, tumour (output order; positive class tumour)" in text
    assert "input: patches of 96 px at 0.5 µm/px, stain normalisation none" in text
    assert "smallcnn, trained from random initialisation" in text
    assert "pool: smabmil, att_dim 16" in text
    assert "3 slides of 2 patients (training and validation; cohorts: a, b)" in text
    assert "NOT finished" not in text
    assert "learned: not recorded (a model.pt from before 2026-12-06)" in text
    ckpt = load_checkpoint(path)
    atomic_save({**ckpt, FINISHED: False}, path)
    assert "(training NOT finished)" in describe_model(path, model_header_of(path))[0]


def test_a_damaged_file_is_refused(tmp_path: Path):
    path = _model_pt(tmp_path / "model.pt")
    path.write_bytes(path.read_bytes()[:-1000])  # cut short, as by a broken copy
    with pytest.raises(GigamilError, match="model.pt: not a readable gigamil checkpoint"):
        model_header_of(path)


def test_cli_prints_the_summary_and_the_config_keys(tmp_path: Path, capsys):
    from gigamil.cli import main

    path = _model_pt(tmp_path / "model.pt", preprocessing=RECORDED)
    assert main(["model-info", str(path)]) == 0
    out = capsys.readouterr().out
    summary, keys = out.split("\nconfig.yaml keys of a project predicting with it")
    assert summary.startswith(f"{path}: a gigamil ")
    fragment = yaml.safe_load(keys.split("\n", 1)[1])
    assert fragment == config_fragment(model_header_of(path))
    assert "classes: [benign, tumour]\n" in keys
    assert main(["model-info", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"] == copy.deepcopy(fragment)
    assert printed["header"]["patch_px"] == 96 and "state_dict" not in printed["header"]


def test_cli_on_a_folder_describes_every_fold_and_checks_a_config(tmp_path: Path, capsys):
    """`gigamil model-info DIR --config CONFIG.yaml`: the workflow's trained_models check before
    a run; a config that cannot feed the models is an error naming the setting."""
    from gigamil.cli import main

    for k in (0, 1):
        _model_pt(tmp_path / "models" / f"fold{k}" / "model.pt", preprocessing=RECORDED)
    with open(REPO / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(cfg))
    fragment = config_fragment(model_header_of(tmp_path / "models" / "fold0" / "model.pt"))
    cfg["classes"] = fragment["classes"]
    for section, values in fragment["preprocessing"].items():
        cfg["preprocessing"][section].update(values)
    cfg["cv"]["folds"] = 3
    models = str(tmp_path / "models")
    sheet = str(REPO / "resources" / "demo" / "sheet.csv")
    cfg.update(trained_models=models, cohorts={"new": {"sheet": sheet, "role": "predict"}})
    (tmp_path / "fits.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["model-info", models, "--config", str(tmp_path / "fits.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count(": a gigamil ") == 2 and "fold1/model.pt: a gigamil" in out
    assert (
        "warning: trained_models: no model.pt for fold(s) 2: the ensembles average the 2 fold model(s) found (folds 0, 1) (cv.folds is 3"
        in out
    )
    assert out.rstrip().endswith("fits.yaml can predict with these 2 fold models (warnings above)")
    assert main(["model-info", models, "--json", "--config", str(tmp_path / "fits.yaml")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed["headers"]) == ["fold0", "fold1"]
    assert printed["check"]["ok"] and len(printed["check"]["warnings"]) == 1
    assert printed["config"]["cv"] == {"folds": 2}  # a folder: its folds, for cv.folds
    assert main(["model-info", models, "--config", str(tmp_path / "plain.yaml")]) == 2
    err = capsys.readouterr().err
    assert "cannot predict with this configuration; set classes: [benign, tumour]" in err


def test_cli_tells_a_config_that_trains_its_own_models_so(tmp_path: Path, capsys):
    """The training project's own config.yaml (a train cohort, no trained_models) was told it
    "can predict with these 6 fold models", though such a config refuses trained_models: now it
    is told that it trains its own models, after the checks of classes and preprocessing."""
    from gigamil.cli import main

    for k in (0, 1):
        _model_pt(tmp_path / "models" / f"fold{k}" / "model.pt", preprocessing=RECORDED)
    with open(REPO / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    fragment = config_fragment(model_header_of(tmp_path / "models" / "fold0" / "model.pt"))
    cfg["classes"] = fragment["classes"]
    for section, values in fragment["preprocessing"].items():
        cfg["preprocessing"][section].update(values)
    cfg["cv"]["folds"] = 2
    config = tmp_path / "trains.yaml"
    config.write_text(yaml.safe_dump(cfg))
    models = str(tmp_path / "models")
    assert main(["model-info", models, "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "can predict with" not in out
    assert out.rstrip().endswith(
        "trains.yaml trains its own fold models (cohorts: demo has role: train), so the "
        "trained_models checks of its cohorts' patients do not apply; its classes and "
        "preprocessing fit these 2 fold models. To predict with them elsewhere, copy the folder "
        "holding their fold<k>/model.pt (e.g. to shared/<name>) and give the copy as "
        "trained_models in a config whose cohorts have role: external or predict (README, "
        "'Sharing trained models')"
    )
    assert main(["model-info", models, "--json", "--config", str(config)]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check == {"config": str(config), "ok": True, "warnings": [], "trains_own_models": True}
    cfg["classes"] = ["normal", "lesion"]  # the checks of what the models take still apply
    config.write_text(yaml.safe_dump(cfg))
    assert main(["model-info", models, "--config", str(config)]) == 2
    assert "set classes: [benign, tumour]" in capsys.readouterr().err


def test_cli_names_a_last_pt_copies_nan_and_patients_the_models_trained_on(tmp_path: Path, capsys):
    """What a new-user trial found: a last.pt crashed model-info, a fold copied twice and the
    models' training patients in a cohort passed, and --json wrote NaN (not JSON)."""
    import hashlib
    import shutil

    import torch

    from gigamil.cli import main

    models = tmp_path / "models"
    seen = {"slides": [["a", "s1"]], "patient_ids": ["demo_p01"]}
    first = _model_pt(models / "fold0" / "model.pt", training_slides=seen)
    ckpt = load_checkpoint(first)
    atomic_save({**ckpt, "metrics": {"val_auc": float("nan")}}, first)
    (models / "fold1").mkdir()
    shutil.copy2(first, models / "fold1" / "model.pt")
    assert main(["model-info", str(models)]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(first.read_bytes()).hexdigest()
    assert f"  file sha256: {digest}" in out
    assert f"warning: {models / 'fold1' / 'model.pt'} is the same file as fold 0's" in out
    assert main(["model-info", str(first), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # standard JSON: NaN written as null
    assert printed["header"]["metrics"] == {"val_auc": None}
    assert printed["header"]["file_sha256"] == digest
    # a cohort of the config holding a patient the models trained on: refused, as in the run
    with open(REPO / "config.yaml") as fh:
        cfg = yaml.safe_load(fh)
    sheet = pd.read_csv(REPO / "resources/demo/sheet.csv")
    sheet.to_csv(tmp_path / "sheet.csv", index=False)
    cfg["classes"] = ["benign", "tumour"]
    cfg["preprocessing"]["patches"]["mpp"] = 0.5
    cfg["cohorts"] = {"ext": {"sheet": str(tmp_path / "sheet.csv"), "role": "external"}}
    cfg["trained_models"] = str(models)
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["model-info", str(first), "--config", str(tmp_path / "b.yaml")]) == 2
    assert (
        "cohort ext: 1 patient id(s) that the trained_models fold models trained on (demo_p01)"
        in (capsys.readouterr().err)
    )
    # a trainer's last.pt under a model.pt name: said, no traceback
    state = {"model": {"w": torch.ones(1)}, "optimizer": {}, "early_stopping": {}}
    atomic_save(state, tmp_path / "last" / "fold0" / "model.pt")
    assert main(["model-info", str(tmp_path / "last")]) == 2
    assert "it is a trainer's resumable state (a last.pt)" in capsys.readouterr().err


def test_the_summary_of_a_multiclass_feature_model_from_pretrained_weights():
    """Three classes: no positive class; weights and feature cache named; a model.pt from
    before the finished mark (no such key) is not said to be unfinished."""
    header = {
        "model_config": {"encoder": "resnet18", "pool": "abmil", "att_dim": 64},
        "classes": ["a", "b", "c"],
        "patch_px": 224,
        "weights_sha256": "0123456789abcdef",
        "features": {"encoder_id": "enc-1"},
        "epoch": 4,
    }
    text = "\n".join(describe_model("m.pt", header))
    assert "classes: a, b, c (output order)\n" in text and "positive class" not in text
    assert "resnet18, started from weights of sha256 0123456789ab…" in text
    assert "; reads cached features of encoder enc-1" in text
    assert "one model, the weights of epoch 4" in text and "NOT finished" not in text
    assert "an unrecorded µm/px" in text and "not recorded (a model.pt from before" in text


def test_cv_folds_is_given_for_a_folder_of_two_folds_or_more_only():
    """cv.folds is at least 2 in the schema: one fold model gives no cv key to paste."""
    header = {"classes": ["x", "y"], "patch_px": 32}
    assert "cv" not in config_fragment(header) and "cv" not in config_fragment(header, 1)
    assert config_fragment(header, 2)["cv"] == {"folds": 2}


def test_json_safe_writes_every_non_finite_number_as_null():
    value = {"m": {"a": float("inf"), "b": -float("inf")}, "t": (1.0, float("nan")), 3: "x"}
    assert json_safe(value) == {"m": {"a": None, "b": None}, "t": [1.0, None], "3": "x"}
    json.dumps(json_safe(value), allow_nan=False)


def test_folder_warnings_name_each_copy_after_the_first_fold_and_missing_folds():
    models = {k: Path(f"m/fold{k}/model.pt") for k in (0, 1, 3)}
    assert folder_warnings(models, {0: "d", 1: "d", 3: "d"}) == [
        "no model.pt for fold(s) 2",
        "m/fold1/model.pt is the same file as fold 0's (copied twice?)",
        "m/fold3/model.pt is the same file as fold 0's (copied twice?)",
    ]
    assert folder_warnings({0: models[0], 1: models[1]}, {0: "a", 1: "b"}) == []


def test_cli_on_a_folder_with_a_gap_and_folds_that_differ(tmp_path: Path, capsys):
    """Folds 0 and 2: cv.folds 3 (the folds the models were trained in), the missing fold
    said, and a note when the fold models' config keys differ."""
    from gigamil.cli import main

    models = tmp_path / "models"
    _model_pt(models / "fold0" / "model.pt")
    _model_pt(models / "fold2" / "model.pt", stain_normalization="macenko")
    assert main(["model-info", str(models)]) == 0
    out = capsys.readouterr().out
    assert "warning: no model.pt for fold(s) 1" in out
    assert "note: the fold models differ in these keys; shown: the first fold's" in out
    assert main(["model-info", str(models), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["cv"] == {"folds": 3}
    assert printed["warnings"] == ["no model.pt for fold(s) 1"]


def test_only_a_trainers_state_is_called_a_last_pt():
    """A file with an optimizer but no early-stopping state is some other checkpoint: its
    missing keys are named, not a last.pt."""
    other = not_a_model({"optimizer": {}}, "x.pt")
    assert other == "x.pt: not a fold's model.pt (it lacks ['model_config', 'classes', 'patch_px'])"
    last = not_a_model({"optimizer": {}, "early_stopping": {}, "classes": ["a"]}, "x.pt")
    assert last.endswith(
        "lacks ['model_config', 'patch_px']); it is a trainer's resumable "
        "state (a last.pt): use the fold's model.pt"
    )


def test_the_summary_says_whether_each_member_learned(tmp_path: Path):
    """model.pt's learning record (written when training finishes) is shown per member: the
    receiver of a shared model sees that one member never left the chance level."""
    from gigamil.train.learning import log_columns

    levels = log_columns(2, "ce")
    path = _model_pt(tmp_path / "model.pt", replicates=2)
    ckpt = load_checkpoint(path)
    for member, final in zip(ckpt["replicates"], (0.21, 0.69), strict=True):
        member["learning"] = {"final_train_loss": final, **levels, "learned": final < 0.62}
    atomic_save(ckpt, path)
    lines = describe_model(path, model_header_of(path))
    assert lines[-2:] == [
        "  replicate0 training loss ended at 0.210 (mean of the last 3 epochs; chance level 0.693, flagged at >= 0.624): "
        "learned",
        "  replicate1 training loss ended at 0.690 (mean of the last 3 epochs; chance level 0.693, flagged at >= 0.624): "
        "DID NOT LEARN",
    ]


def test_a_member_without_a_learning_record_is_said_so_beside_one_with(tmp_path: Path):
    """A fold whose members were trained before and after model.pt recorded it: the older
    member is not left out of the summary (mutation audit)."""
    from gigamil.train.learning import log_columns

    path = _model_pt(tmp_path / "model.pt", replicates=2)
    ckpt = load_checkpoint(path)
    ckpt["replicates"][1]["learning"] = {
        "final_train_loss": 0.3,
        **log_columns(2, "ce"),
        "learned": True,
    }
    atomic_save(ckpt, path)
    assert describe_model(path, model_header_of(path))[-2:] == [
        "  replicate0 learned: not recorded (a model.pt from before 2026-12-06)",
        "  replicate1 training loss ended at 0.300 (mean of the last 3 epochs; chance level 0.693, flagged at >= 0.624): "
        "learned",
    ]


def test_the_summary_says_which_slides_trained_and_points_a_member_to_its_fold(tmp_path: Path):
    """A new-user trial read 'training and validation' for a fold without validation slides
    (cv.val_fraction: 0: every val_ metric NaN) and took fold2/replicate0/model.pt, one
    member, for a fold model to share."""
    seen = {"slides": [["a", "s1"], ["a", "s2"]], "patient_ids": ["p1", "p2"]}
    fold = _model_pt(tmp_path / "fold2" / "model.pt", training_slides=seen)
    text = "\n".join(describe_model(fold, model_header_of(fold)))
    assert "2 slides of 2 patients (training and validation; cohorts: a)" in text
    assert "share that one" not in text
    member = tmp_path / "fold2" / "replicate0" / "model.pt"
    header = {**model_header_of(fold), "metrics": {"val_auc": float("nan"), "val_loss": None}}
    text = "\n".join(describe_model(member, header))
    assert "2 slides of 2 patients (training; no validation slides; cohorts: a)" in text
    assert f"one member of {fold}, which averages the members: share that one" in text
    header = {**header, "metrics": {"train_loss": 0.2}}
    assert "(training and validation, if any;" in "\n".join(describe_model(member, header))


def test_output_piped_into_a_reader_that_stops_is_no_error(tmp_path: Path):
    """gigamil model-info --json | head printed 'error: Broken pipe' twice."""
    import subprocess
    import sys

    path = _model_pt(tmp_path / "fold0" / "model.pt")
    cmd = f"{sys.executable} -m gigamil model-info {path} --json | head -1"
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "{" and out.stderr == ""


def test_only_a_replicate_with_its_fold_model_beside_it_points_to_that_file(tmp_path: Path):
    """The 'share that one' hint names the fold's model.pt, so it is given only where that
    file exists and the file described is in a ``replicate<r>`` folder below it: a member whose
    fold model is not written yet, or a fold model whose parent folder happens to hold a
    model.pt, gets none."""
    lone = _model_pt(tmp_path / "a" / "fold0" / "replicate0" / "model.pt")
    assert "share that one" not in "\n".join(describe_model(lone, model_header_of(lone)))
    _model_pt(tmp_path / "b" / "model.pt")  # a stray model.pt above the fold folder
    fold = _model_pt(tmp_path / "b" / "fold1" / "model.pt")
    assert "share that one" not in "\n".join(describe_model(fold, model_header_of(fold)))


def test_a_model_started_from_named_weights_without_a_checksum_says_so(tmp_path):
    """The header is written before the model is built, so a torchvision name not yet in the
    cache has no checksum: model-info said 'trained from random initialisation' (a review)."""
    from gigamil.train.model_info import describe_model

    header = {
        "model_config": {"encoder": "resnet18", "weights": "IMAGENET1K_V1"},
        "classes": ["normal", "lesion"],
        "weights_sha256": None,
        "patch_px": 224,
        "patch_mpp": 0.5,
    }
    text = "\n".join(describe_model(tmp_path / "model.pt", header))
    assert "started from weights IMAGENET1K_V1 (checksum not recorded)" in text
    assert "random initialisation" not in text


def test_one_model_pt_is_named_by_its_fold_folder():
    """model-info on fold3/model.pt called it fold 0 in every check's message."""
    from gigamil.commands.model_info import _fold_of

    assert _fold_of(Path("m/fold3/model.pt")) == 3 and _fold_of(Path("model.pt")) == 0


def test_cli_json_of_one_model_pt_of_a_fold_other_than_0(tmp_path: Path, capsys):
    """model-info fold3/model.pt --json ended in a KeyError traceback (the header was looked
    up as fold 0's, the file being named fold 3 by its folder)."""
    from gigamil.cli import main

    path = _model_pt(tmp_path / "fold3" / "model.pt")
    assert main(["model-info", str(path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["header"]["patch_px"] == 96 and printed["config"]["classes"] == [
        "benign",
        "tumour",
    ]
