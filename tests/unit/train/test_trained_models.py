"""gigamil.train.trained_models: fold models trained elsewhere (config key trained_models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigamil.errors import ConfigError
from gigamil.models.factory import build_mil_model
from gigamil.settings import ModelConfig
from gigamil.train.checkpoint import FINISHED, atomic_save, load_checkpoint
from gigamil.train.model_file import model_checkpoint, model_header
from gigamil.train.trained_models import (
    check_patient_overlap,
    check_trained_models,
    check_with_config,
    config_preprocessing,
    fold_models,
    models_pool,
    training_patients,
)

CLASSES = ["normal", "lesion"]
PATCHES = {"patch_px": 32, "mpp": 0.5, "stain_normalization": None}
PREPROCESSING = {
    "patches": {
        "min_tissue": 0.5,
        "stride_px": None,
        "codec": "zstd",
        "jpeg_quality": 90,
        "patch_px": 32,
    },
    "tissue": {"threshold": "otsu", "close_um": 32.0},
}


def _save(path: Path, pool: str = "abmil", **header_keys) -> Path:
    """A small random-init model.pt at ``path`` (patches of 32 px at 0.5 µm/px)."""
    cfg = ModelConfig.from_dict({"encoder": "smallcnn", "pool": pool})
    model = build_mil_model(cfg, 2, 32)
    keys = {"patch_mpp": 0.5, "classes": CLASSES, "patch_px": 32, **header_keys}
    header = model_header(cfg.to_dict(), **keys)
    return atomic_save(model_checkpoint(model, header, 3, {}), path)


@pytest.fixture()
def models(tmp_path: Path) -> Path:
    for k in (0, 1, 3):
        _save(tmp_path / "exp" / f"fold{k}" / "model.pt", pool="smabmil")
    (tmp_path / "exp" / "fold1" / "last.pt").write_bytes(b"")  # other files are left alone
    (tmp_path / "exp" / "folds.csv").write_text("")
    return tmp_path / "exp"


def test_fold_models_are_found_by_fold_number_and_sorted(models: Path, tmp_path: Path):
    found = fold_models(models)
    assert found == {k: models / f"fold{k}" / "model.pt" for k in (0, 1, 3)}
    assert list(found) == [0, 1, 3]
    assert models_pool(found) == "smabmil"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("missing", "trained_models: {tmp}/missing does not exist"),
        ("exp/fold1", "give the folder holding the fold folders, {tmp}/exp"),
        ("exp/fold1/model.pt", "give the folder holding the fold folders, {tmp}/exp"),
        (".", "it holds experiments' folders: give one of them, e.g. {tmp}/exp"),
    ],
)
def test_a_folder_one_level_off_names_the_one_to_give(models, tmp_path, given, message):
    with pytest.raises(ConfigError, match="no fold<k>/model.pt|does not exist") as err:
        fold_models(tmp_path / given)
    assert str(err.value).endswith(message.format(tmp=tmp_path))  # that folder, not below it


def test_only_folders_named_fold_and_a_number_are_folds(tmp_path: Path):
    """A backup beside the folds (fold1_old, fold2.bak) is no fold 1 or 2 of the ensembles."""
    for name in ("fold0", "fold1_old", "fold2.bak", "foldx", "old_fold3"):
        _save(tmp_path / name / "model.pt")
    assert fold_models(tmp_path) == {0: tmp_path / "fold0" / "model.pt"}


def test_this_experiments_own_models_folder_is_refused(models: Path):
    """train_fold writes results/models/{experiment}: given models there would be overwritten."""
    with pytest.raises(ConfigError, match="this experiment's own models folder"):
        fold_models(models, own_models=models / "fold0" / "..")


def test_matching_models_pass_and_a_missing_fold_is_a_warning(models: Path):
    warnings = check_trained_models(fold_models(models), CLASSES, PATCHES)
    assert warnings == [
        "trained_models: no model.pt for fold(s) 2: the ensembles average the 3 fold model(s) "
        "found (folds 0, 1, 3)"
    ]


@pytest.mark.parametrize(
    ("folds", "warnings"),
    [
        ((0, 1), []),
        (
            (0, 3),
            [
                "no model.pt for fold(s) 1, 2: the ensembles average the 2 fold model(s) found "
                "(folds 0, 3)"
            ],
        ),
        (
            (2,),
            [
                "no model.pt for fold(s) 0, 1: the ensembles average the 1 fold model(s) found "
                "(folds 2)"
            ],
        ),
    ],
)
def test_every_fold_below_the_highest_without_a_model_is_named(tmp_path, folds, warnings):
    """Folds 0 and 3 given: both 1 and 2 are missing (not only the count of models short)."""
    for k in folds:
        _save(tmp_path / f"fold{k}" / "model.pt")
    found = check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)
    assert found == [f"trained_models: {w}" for w in warnings]


def test_every_fold_model_is_checked_not_only_the_first(tmp_path: Path):
    """A folder mixing models of two projects: the later fold's other classes are refused."""
    _save(tmp_path / "fold0" / "model.pt")
    _save(tmp_path / "fold1" / "model.pt", classes=["lesion", "normal"])
    with pytest.raises(
        ConfigError,
        match="fold1/model.pt \\(fold 1\\) cannot predict with this configuration; set classes",
    ):
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)


@pytest.mark.parametrize(("mpp", "refused"), [(0.503, False), (0.497, False), (0.52, True)])
def test_the_resolution_must_agree_to_one_percent(tmp_path: Path, mpp: float, refused: bool):
    """The MPP_TOLERANCE of the stores: 0.6 % off is the same resolution, 4 % is not."""
    _save(tmp_path / "fold0" / "model.pt")
    models, patches = fold_models(tmp_path), {**PATCHES, "mpp": mpp}
    if refused:
        with pytest.raises(ConfigError, match=f"preprocessing.patches.mpp: 0.5 \\(here {mpp}\\)"):
            check_trained_models(models, CLASSES, patches)
    else:
        assert check_trained_models(models, CLASSES, patches) == []


@pytest.mark.parametrize(
    ("classes", "patches", "encoder_id", "message"),
    [
        (["lesion", "normal"], PATCHES, None, "classes: [normal, lesion] (the model's output"),
        (
            CLASSES,
            {**PATCHES, "patch_px": 64},
            None,
            "preprocessing.patches.patch_px: 32 (here 64)",
        ),
        (CLASSES, {**PATCHES, "mpp": 0.25}, None, "preprocessing.patches.mpp: 0.5 (here 0.25)"),
        (CLASSES, PATCHES, "enc", "they read patches (their encoder is in model.pt), but this"),
    ],
)
def test_a_model_the_config_cannot_feed_names_the_setting(
    tmp_path, classes, patches, encoder_id, message
):
    _save(tmp_path / "fold0" / "model.pt")
    with pytest.raises(ConfigError, match="fold0/model.pt \\(fold 0\\) cannot predict") as err:
        check_trained_models(fold_models(tmp_path), classes, patches, encoder_id)
    assert message in str(err.value)


def test_models_of_cached_features_need_the_same_feature_cache(tmp_path: Path):
    _save(tmp_path / "fold0" / "model.pt", features={"encoder_id": "enc-a", "dim": 8})
    models = fold_models(tmp_path)
    assert check_trained_models(models, CLASSES, PATCHES, "enc-a") == []
    for here, said in ((None, "this configuration reads patches"), ("enc-b", "encoder enc-b")):
        with pytest.raises(ConfigError, match="cached features of encoder enc-a") as err:
            check_trained_models(models, CLASSES, PATCHES, here)
        assert said in str(err.value)


def test_stain_normalisation_must_match(tmp_path: Path):
    _save(tmp_path / "fold0" / "model.pt", stain_normalization="macenko")
    with pytest.raises(ConfigError, match="stain_normalization: macenko \\(here None\\)"):
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)


def test_other_preprocessing_than_the_training_patches_is_a_warning(tmp_path: Path):
    recorded = {"preprocessing.patches.min_tissue": 0.25, "preprocessing.patches.stride_px": 32}
    _save(tmp_path / "fold0" / "model.pt", preprocessing=recorded)
    here = config_preprocessing(PREPROCESSING)
    assert here["preprocessing.patches.stride_px"] == 32  # null: the patch size
    assert "preprocessing.patches.jpeg_quality" not in here  # zstd: no quality
    assert here["preprocessing.tissue.threshold"] == "otsu"
    warnings = check_trained_models(fold_models(tmp_path), CLASSES, PATCHES, None, here)
    assert warnings == [
        "trained_models: the models' training patches had preprocessing.patches.min_tissue "
        "0.25 (here 0.5): patches cut otherwise may be scored differently"
    ]


def test_unfinished_damaged_or_foreign_files_are_refused(tmp_path: Path):
    path = _save(tmp_path / "a" / "fold0" / "model.pt")
    import torch

    ckpt = torch.load(path, weights_only=True)
    atomic_save({**ckpt, FINISHED: False}, path)
    with pytest.raises(ConfigError, match="its training has not finished"):
        check_trained_models(fold_models(tmp_path / "a"), CLASSES, PATCHES)
    atomic_save({"weights": torch.ones(1)}, tmp_path / "b" / "fold0" / "model.pt")
    with pytest.raises(ConfigError, match="not a fold's model.pt \\(it lacks"):
        check_trained_models(fold_models(tmp_path / "b"), CLASSES, PATCHES)
    (tmp_path / "c" / "fold0").mkdir(parents=True)
    (tmp_path / "c" / "fold0" / "model.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ConfigError, match="trained_models: .*not a readable gigamil checkpoint"):
        check_trained_models(fold_models(tmp_path / "c"), CLASSES, PATCHES)


def test_a_damaged_file_asks_for_a_fresh_copy_not_for_retraining(tmp_path: Path):
    """The training project's advice (delete it: train_fold writes it again) would drop the
    fold here, where nothing trains."""
    path = _save(tmp_path / "fold0" / "model.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError) as err:
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)
    assert "ask the sender for a fresh copy" in str(err.value)
    assert "train_fold" not in str(err.value) and "delete it" not in str(err.value)


def test_a_last_pt_renamed_model_pt_is_named_as_such(tmp_path: Path):
    import torch

    state = {"model": {"w": torch.ones(1)}, "optimizer": {}, "early_stopping": {}}
    atomic_save(state, tmp_path / "fold0" / "model.pt")
    with pytest.raises(ConfigError, match="a trainer's resumable state \\(a last.pt\\)"):
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)


def test_one_model_in_two_fold_folders_is_refused(tmp_path: Path):
    import shutil

    _save(tmp_path / "fold0" / "model.pt")
    _save(tmp_path / "fold1" / "model.pt")
    (tmp_path / "fold2").mkdir()
    shutil.copy2(tmp_path / "fold0" / "model.pt", tmp_path / "fold2" / "model.pt")
    with pytest.raises(ConfigError, match="fold2/model.pt is the same model as fold 0's"):
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)


def test_fewer_models_than_cv_folds_is_a_warning(tmp_path: Path):
    """fold1 of two removed: no gap below the highest fold, but cv.folds (the config the models
    were trained with) says there were two."""
    _save(tmp_path / "fold0" / "model.pt")
    models = fold_models(tmp_path)
    assert check_trained_models(models, CLASSES, PATCHES, n_folds=1) == []
    assert check_trained_models(models, CLASSES, PATCHES, n_folds=2) == [
        "trained_models: no model.pt for fold(s) 1: the ensembles average the 1 fold model(s) "
        "found (folds 0) (cv.folds is 2: check that it is the number of folds the models were "
        "trained with)"
    ]


def test_missing_last_folds_are_named_beside_a_gap(tmp_path: Path):
    """Folds 0, 1 and 3 of six: only fold 2 was named, not 4 and 5 (a review)."""
    for k in (0, 1, 3):
        _save(tmp_path / f"fold{k}" / "model.pt")
    (warning,) = check_trained_models(fold_models(tmp_path), CLASSES, PATCHES, n_folds=6)
    assert "no model.pt for fold(s) 2, 4, 5" in warning


def test_an_older_model_copied_into_two_folds_is_refused(tmp_path: Path):
    """A model.pt without its sha256 key (older format) copied into two fold folders passed:
    the check compared the recorded digests only; the file's own hash stands in now."""
    import shutil

    import torch

    path = _save(tmp_path / "fold0" / "model.pt")
    ckpt = torch.load(path, weights_only=False)
    ckpt.pop("sha256", None)
    torch.save(ckpt, path)
    (tmp_path / "fold1").mkdir()
    shutil.copy2(path, tmp_path / "fold1" / "model.pt")
    with pytest.raises(ConfigError, match="fold1/model.pt is the same model as fold 0's"):
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)


def test_fold_models_of_two_pools_are_a_warning(tmp_path: Path):
    _save(tmp_path / "fold0" / "model.pt", pool="smabmil")
    _save(tmp_path / "fold1" / "model.pt", pool="instance")
    warnings = check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)
    assert any("differ in model.pool (instance folds 1; smabmil folds 0)" in w for w in warnings)


def test_the_folder_holds_something_else_or_this_projects_models(tmp_path: Path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "fold0.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="no fold<k>/model.pt under .*; it holds fold0.pt"):
        fold_models(tmp_path / "flat")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="; it is empty"):
        fold_models(tmp_path / "empty")
    for exp in ("mine", "theirs"):  # results/models given: the hint names the other's folder
        _save(tmp_path / "models" / exp / "fold0" / "model.pt")
    with pytest.raises(ConfigError) as err:
        fold_models(tmp_path / "models", own_models=tmp_path / "models" / "mine")
    assert str(err.value).endswith(f"e.g. {tmp_path / 'models' / 'theirs'}")


def test_a_relative_folder_is_named_with_its_absolute_path(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"shared/m \\({tmp_path}/shared/m\\) does not exist"):
        fold_models("shared/m")


def test_training_patients_in_this_projects_cohorts(tmp_path: Path):
    seen = {"slides": [["a", "s1"], ["a", "s2"]], "patient_ids": ["p1", "p2"]}
    _save(tmp_path / "fold0" / "model.pt", training_slides=seen)
    seen = {"slides": [["a", "s3"]], "patient_ids": ["p3"]}
    _save(tmp_path / "fold1" / "model.pt", training_slides=seen)
    _save(tmp_path / "fold2" / "model.pt")  # from before training_slides was recorded
    trained, unrecorded = training_patients(fold_models(tmp_path))
    assert trained == {"p1", "p2", "p3"} and unrecorded == [2]
    cohorts = {
        "ext": {"role": "external"},
        "new": {"role": "predict"},
        "ok": {"role": "external", "allow_patient_overlap": True},
        "clean": {"role": "external"},
    }
    patients = {"ext": ["p3", "x"], "new": ["p1"], "ok": ["p2"], "clean": ["y"]}
    with pytest.raises(ConfigError) as err:
        check_patient_overlap(cohorts, patients, trained)
    assert "cohort ext: 1 patient id(s) that the trained_models fold models trained on (p3)" in (
        str(err.value)
    )
    assert "set cohorts.ext.allow_patient_overlap: true" in str(err.value)
    del cohorts["ext"]
    assert check_patient_overlap(cohorts, patients, trained, unrecorded)[0] == (
        "trained_models: the model.pt of fold(s) 2 records no training patients (written before "
        "2026-12-05): whether the external cohorts hold patients they trained on is not checked "
        "for them"
    )
    predict_only = {"new": cohorts["new"]}
    assert len(check_patient_overlap(predict_only, patients, trained, unrecorded)) == 1
    assert check_patient_overlap(cohorts, patients, trained) == [
        "cohort new: 1 patient id(s) that the trained_models fold models trained on (p1): they "
        "have seen these patients' slides (no metrics here)",
        "cohort ok: 1 patient id(s) that the trained_models fold models trained on (p2) "
        "(allowed by cohorts.ok.allow_patient_overlap)",
    ]


def test_preprocessing_warnings_name_every_folds_value_and_only_settings_given_here(
    tmp_path: Path,
):
    """Folds whose patches differed each give their value; a setting this configuration does
    not record (the JPEG quality of models trained on JPEG, here zstd) is no warning of its own:
    the codec's is the one."""
    for k, min_tissue in ((0, 0.25), (1, 0.3), (2, 0.5)):
        recorded = {
            "preprocessing.patches.min_tissue": min_tissue,
            "preprocessing.patches.codec": "jpeg",
            "preprocessing.patches.jpeg_quality": 80,
        }
        _save(tmp_path / f"fold{k}" / "model.pt", preprocessing=recorded)
    here = config_preprocessing(PREPROCESSING)
    assert check_trained_models(fold_models(tmp_path), CLASSES, PATCHES, None, here) == [
        "trained_models: the models' training patches had preprocessing.patches.min_tissue "
        "0.25 (here 0.5) / 0.3 (here 0.5): patches cut otherwise may be scored differently",
        "trained_models: the models' training patches had preprocessing.patches.codec "
        "'jpeg' (here 'zstd'): patches cut otherwise may be scored differently",
    ]


def test_a_file_without_its_model_config_is_refused_before_any_job(tmp_path: Path):
    """Without model_config no network can be built for it: refused by the check, not later."""
    import torch

    path = _save(tmp_path / "fold0" / "model.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model_config"]
    atomic_save(ckpt, path)
    with pytest.raises(ConfigError, match="not a fold's model.pt \\(it lacks \\['model_config'\\]"):
        check_trained_models(fold_models(tmp_path), CLASSES, PATCHES)


def test_two_folders_of_one_fold_number_are_refused(tmp_path: Path):
    """fold1/ and fold01/ are both fold 1: which one predicts must not depend on the listing."""
    for name in ("fold0", "fold1", "fold01"):
        _save(tmp_path / name / "model.pt")
    with pytest.raises(ConfigError, match="fold01 and .*fold1 are both fold 1; keep one"):
        fold_models(tmp_path)


def test_patients_are_compared_as_text_and_at_most_five_are_named():
    """Ids read as numbers from a sheet match the recorded (text) ids; a train cohort (a
    config that trains, given to model-info --config) is not checked."""
    trained = {f"{i}" for i in range(101, 107)}
    cohorts = {"new": {"role": "predict"}, "own": {"role": "train"}}
    patients = {"new": list(range(101, 107)), "own": [101]}
    assert check_patient_overlap(cohorts, patients, trained) == [
        "cohort new: 6 patient id(s) that the trained_models fold models trained on (101, 102, "
        "103, 104, 105 ...): they have seen these patients' slides (no metrics here)"
    ]
    five = {"new": [101, 102, 103, 104, 105]}
    assert "(101, 102, 103, 104, 105): they" in check_patient_overlap(cohorts, five, trained)[0]


def test_the_config_check_compares_the_feature_cache_of_the_config(tmp_path: Path):
    """check_with_config (model-info --config, the workflow) passes the config's encoder on:
    models of cached features and a config reading another cache are refused."""
    _save(tmp_path / "fold0" / "model.pt", features={"encoder_id": "enc-a", "dim": 8})
    _save(tmp_path / "fold1" / "model.pt", features={"encoder_id": "enc-a", "dim": 8})
    config = {
        "classes": CLASSES,
        "preprocessing": {**PREPROCESSING, "patches": {**PREPROCESSING["patches"], **PATCHES}},
        "cv": {"folds": 2},
    }
    models = fold_models(tmp_path)
    assert check_with_config(models, config, "enc-a") == []
    with pytest.raises(ConfigError, match="encoder enc-b"):
        check_with_config(models, config, "enc-b")


def test_a_model_that_recorded_it_did_not_learn_is_a_warning(tmp_path: Path):
    """A fold model whose training loss ended near chance (its learning record) predicts
    nothing: the receiving project is told at the start, naming the file and fold and, in a
    fold of replicates, the member that stayed at chance (so the sender knows which seed to
    train again); a model that learned, or records nothing, is not mentioned."""
    from gigamil.train.learning import log_columns

    levels = log_columns(2, "ce")
    flat = {"final_train_loss": 0.69, **levels, "learned": False}
    good = {"final_train_loss": 0.2, **levels, "learned": True}
    for fold, record in enumerate([good, flat, None, [good, flat]]):  # fold 2: no record
        path = _save(tmp_path / "m" / f"fold{fold}" / "model.pt")
        ckpt = load_checkpoint(path)
        if isinstance(record, list):  # fold 3: two members
            member = {k: ckpt.pop(k) for k in ("state_dict", "epoch", "metrics")}
            ckpt["replicates"] = [
                {"seed": r, **member, "learning": m} for r, m in enumerate(record)
            ]
        elif record:
            ckpt["learning"] = record
        atomic_save(ckpt, path)
    warnings = check_trained_models(fold_models(tmp_path / "m"), CLASSES, PATCHES)
    said = (
        " training loss ended at 0.690 (mean of the last 3 epochs; chance level 0.693, flagged at >= 0.624): DID NOT LEARN: "
        "its predictions mean nothing (README, 'When a fold does not learn'); ask the sender to "
        "train it again"
    )
    assert warnings == [
        f"trained_models: {tmp_path}/m/fold1/model.pt (fold 1){said}",
        f"trained_models: {tmp_path}/m/fold3/model.pt (fold 3, replicate1){said}",
    ]


def test_one_folder_written_three_ways_gives_the_same_model_paths(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The model.pt paths are predict_fold's inputs: writing the folder as ./exp, exp/ or its
    absolute path must not make Snakemake re-predict every slide; a folder outside the working
    directory is absolute however it is written."""
    monkeypatch.chdir(tmp_path)
    expected = {k: Path("exp") / f"fold{k}" / "model.pt" for k in (0, 1, 3)}
    for spelling in ("exp", "./exp", "exp/", str(tmp_path / "exp"), "exp/../exp"):
        assert fold_models(spelling) == expected, spelling
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    outside = {k: tmp_path / "exp" / f"fold{k}" / "model.pt" for k in (0, 1, 3)}
    assert fold_models("../exp") == outside == fold_models(tmp_path / "exp")


def test_a_linked_folder_keeps_the_spelling_of_its_link(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A project's shared/exp may be a symbolic link to where the models are stored: its model
    paths stay the link's (inside the project, relative), as same_spelling's docstring says,
    not the storage folder's absolute path (which resolving the link would give)."""
    run = tmp_path / "run"
    (run / "shared").mkdir(parents=True)
    (run / "shared" / "exp").symlink_to(models, target_is_directory=True)
    monkeypatch.chdir(run)
    linked = {k: Path("shared") / "exp" / f"fold{k}" / "model.pt" for k in (0, 1, 3)}
    assert fold_models("shared/exp") == linked == fold_models(run / "shared" / "exp")


def test_a_sibling_folder_named_like_the_run_is_outside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Inside the working directory means below it as a path, not a name that starts alike:
    run-old/exp from run is outside (absolute), not a crash on a failed relative_to."""
    for k in (0, 1):
        _save(tmp_path / "run-old" / "exp" / f"fold{k}" / "model.pt")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    outside = {k: tmp_path / "run-old" / "exp" / f"fold{k}" / "model.pt" for k in (0, 1)}
    assert fold_models("../run-old/exp") == outside


def test_a_model_whose_loss_is_not_judged_is_no_warning(tmp_path: Path):
    """A shared model.pool: instance model records ``learned`` None (not judged): the
    receiving project is not told to have it trained again."""
    from gigamil.train.learning import log_columns

    path = _save(tmp_path / "m" / "fold0" / "model.pt")
    ckpt = load_checkpoint(path)
    levels = log_columns(2, weak_patch_labels=True)
    ckpt["learning"] = {"final_train_loss": 0.68, **levels, "learned": None}
    atomic_save(ckpt, path)
    assert check_trained_models(fold_models(tmp_path / "m"), CLASSES, PATCHES) == []
