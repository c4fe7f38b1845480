"""Validation, sheet loading and every global shared by the rule files (included first).

Everything here runs when Snakemake parses the workflow, before any job: a bad config.yaml or
cohort sheet stops the run with one message naming the key, file or row. Paths come from
gigamil.layout; a rule file uses only what is defined here and its own private names, so the
rule files may be included in any order after this one.
"""

import os
import sys
from functools import partial
from pathlib import Path

# The gigamil package lives in workflow/; make it importable here and in every job's script, also
# under `--sdm conda` where it is not pip-installed.
PACKAGE_DIR = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, PACKAGE_DIR)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (PACKAGE_DIR, os.environ.get("PYTHONPATH")) if p
    )
)

from gigamil import layout  # noqa: E402
from gigamil.cohorts import load_cohorts, train_patient_overlap  # noqa: E402
from gigamil.config import (  # noqa: E402
    check_cmap,
    config_warnings,
    read_yaml,
    validate_config,
)
from gigamil.data.feature_spec import (  # noqa: E402
    config_encoder_id,
    encoder_spec,
    reads_feature_cache,
)
from gigamil.errors import ConfigError, GigamilError  # noqa: E402
from gigamil.logutil import console_warnings  # noqa: E402
from gigamil.settings import ordered_params  # noqa: E402
from gigamil.splits import make_cv_folds, sheet_digest, split_digest  # noqa: E402
from gigamil.wsi.preflight import check_slides, sheet_checks  # noqa: E402
from gigamil.wsi.qc import qc_labels  # noqa: E402


def print_run_summary():
    """After a successful run (the Snakefile's onsuccess): the headline figures and the page to
    open for each (gigamil.evaluate.run_summary); nothing in a dry run or before any summary.
    """
    from gigamil.evaluate.run_summary import run_summary_lines
    from gigamil.train.learning import chance_loss, flag_loss

    configfiles = workflow.overwrite_configfiles or []  # the report needs the same ones
    here = Path.cwd()
    snakefile = Path(workflow.main_snakefile).resolve()
    # started elsewhere (-s / --directory): commands and paths that work from any directory
    elsewhere = snakefile != (here / "Snakefile").resolve()
    for line in run_summary_lines(
        EXPERIMENT,
        config["cohorts"],
        shown_root=here.resolve() if elsewhere else None,
        trained_models=list(TRAINED_MODELS.values()) if TRAINED_MODELS else [],
        chance_loss=chance_loss(len(CLASSES), config["training"]["loss"]),
        flag_loss=flag_loss(
            len(CLASSES),
            config["training"]["loss"],
            label_smoothing=config["training"]["label_smoothing"],
        ),
        warnings=TRAINED_WARNINGS,
        configfiles=configfiles,
        snakemake_args=(
            ["-s", str(snakefile), "--directory", str(here.resolve())]
            if elsewhere
            else []
        )
        + config_overrides(),
    ):
        print(line, file=sys.stderr)


def config_overrides():
    """``["--config", "key=value", ...]`` of the run's --config (as Snakemake hands them to its
    jobs), so the printed report command builds this run's experiment; [] without any.
    """
    settings = getattr(workflow, "config_settings", None)
    given = list(getattr(settings, "config_args", None) or [])
    return ["--config", *given] if given else []


def stop(message):
    """End the run with one message on stderr and exit status 1: the error is in the user's
    input, so no traceback (a WorkflowError raised here also prints the line of this file).
    """
    print(message, file=sys.stderr)
    sys.exit(1)


if getattr(workflow, "is_main_process", True):
    console_warnings()  # the checks below warn as "gigamil: warning: ..."
# errors name the configuration file(s) snakemake read (and --config when given)
_sources = [str(f) for f in getattr(workflow, "configfiles", [])]
if getattr(getattr(workflow, "config_settings", None), "config", None):
    _sources.append("--config")
CONFIG_SOURCE = " + ".join(_sources) or "config"
try:
    # a key given twice: YAML (and Snakemake) silently keep the last
    for _file in getattr(workflow, "configfiles", []):
        read_yaml(str(_file))
    _validated = validate_config(config, source=CONFIG_SOURCE)
    # the same-content check reads 2 MiB of every slide: once, in the main process, not again
    # in every job (each job parses this file too)
    SHEETS = load_cohorts(
        _validated, check_content=getattr(workflow, "is_main_process", True)
    )
except ConfigError as exc:
    stop(f"gigamil: invalid configuration: {exc}")
config.clear()
config.update(_validated)

EXPERIMENT = config["experiment"]
CLASSES = list(config["classes"])
TRAIN_COHORTS = [c for c, v in config["cohorts"].items() if v["role"] == "train"]
EXTERNAL_COHORTS = [c for c, v in config["cohorts"].items() if v["role"] == "external"]
# role predict: no labels needed; predicted by the fold models' ensemble, no metrics
PREDICT_COHORTS = [c for c, v in config["cohorts"].items() if v["role"] == "predict"]
PREDICTED_COHORTS = TRAIN_COHORTS + EXTERNAL_COHORTS + PREDICT_COHORTS
DEMO_COHORTS = [c for c, v in config["cohorts"].items() if v.get("demo")]
# the report's sections, numbered as shown (no gap where a run has no ensembles)
REPORT_CATEGORIES = layout.report_categories(
    config, TRAIN_COHORTS, EXTERNAL_COHORTS, PREDICT_COHORTS
)
if getattr(workflow, "is_main_process", True):
    from gigamil.nn.encoders import check_encoder_settings

    try:  # once, here: the jobs would import matplotlib (and timm) for it
        check_cmap(config["heatmaps"]["cmap"])
        # with trained_models each model.pt holds its encoder: model: is read only to cache
        # features (the sender's weights path need not exist here)
        _encoder_warnings = (
            check_encoder_settings(
                config["model"]["encoder"],
                config["model"]["weights"],
                config["model"]["trainable_blocks"],
                config["model"]["batchnorm"],
            )
            if not config.get("trained_models") or reads_feature_cache(config)
            else []
        )
    except ConfigError as exc:
        stop(f"gigamil: invalid configuration: {CONFIG_SOURCE}: {exc}")
    from gigamil.train.accel import device_warning

    _device_warning = device_warning(
        config["training"]["device"], config["training"]["amp"]
    )
    for _warning in [*config_warnings(config), *_encoder_warnings]:
        print(f"gigamil: warning: {_warning}", file=sys.stderr)
    if _device_warning:
        print(f"gigamil: warning: {_device_warning}", file=sys.stderr)
    if config["training"]["tensorboard"]:
        from gigamil.train import monitor

        for _tb_warning in (
            monitor.tensorboard_package_warning(),  # the package, then the folds without
            monitor.tensorboard_warning(
                [layout.model_dir(EXPERIMENT, k) for k in range(config["cv"]["folds"])]
            ),
        ):
            if _tb_warning:
                print(f"gigamil: warning: {_tb_warning}", file=sys.stderr)
    # every slide opens and has a plausible MPP: all unusable slides in one message before any
    # job, instead of one failed tissue_mask job per run (demo slides are generated by a job:
    # those not generated yet are left out, demo.smk checks their MPP)
    try:
        check_slides(
            sheet_checks(SHEETS, skip=DEMO_COHORTS),
            patch_mpp=config["preprocessing"]["patches"]["mpp"],
            mask_mpp=config["preprocessing"]["tissue"]["mask_mpp"],
            patch_px=config["preprocessing"]["patches"]["patch_px"],
        )
    except ConfigError as exc:
        stop(f"gigamil: {exc}")
if getattr(workflow, "is_main_process", True) and TRAIN_COHORTS:
    # the train cohorts can be split into cv.folds (enough patients of every class in every
    # fold's parts): known now, not after preprocessing, when rule make_splits runs
    try:
        make_cv_folds([SHEETS[c] for c in TRAIN_COHORTS], config["cv"])
    except GigamilError as exc:
        stop(f"gigamil: {exc}")
if getattr(workflow, "is_main_process", True) and config["subgroups"]:
    from gigamil.evaluate.subgroups import check_subgroup_columns

    try:  # the columns exist: known now, not after training
        check_subgroup_columns(
            config["subgroups"],
            # the cohorts it scores: external ones only through their ensemble
            [
                SHEETS[c]
                for c in TRAIN_COHORTS
                + (EXTERNAL_COHORTS if config["ensemble"]["enabled"] else [])
            ],
        )
    except GigamilError as exc:
        stop(f"gigamil: invalid configuration: {CONFIG_SOURCE}: {exc}")
FOLDS_CSV = layout.folds_csv(EXPERIMENT)
# the frozen encoder's feature cache (written by extract_features): its encoder_id, or None when the
# encoder learns (or model.feature_cache is off) and training reads the patch stores. The id holds
# the weights file's sha256, so hf-hub: weights must be in the cache of the machine running
# snakemake too (a one-line error otherwise)
try:
    FEATURE_ID = config_encoder_id(config)
except GigamilError as exc:
    stop(f"gigamil: {exc}")
FEATURE_SPEC = (
    encoder_spec(config["model"], config["preprocessing"]["patches"])
    if FEATURE_ID
    else None
)
FEATURE_GPUS = 1 if config["training"]["device"] == "cuda" else 0
# trained_models: fold models trained elsewhere predict (fold -> model.pt); else None and the
# workflow trains cv.folds models of its own. MODEL_POOL: what the attention files hold.
TRAINED_MODELS = None
TRAINED_PATIENTS = set()  # the patient ids they trained on
# their checks' warnings: printed now and again at the end of the run
TRAINED_WARNINGS = []
FOLDS = list(range(config["cv"]["folds"]))
MODEL_POOL = config["model"]["pool"]
if config["trained_models"]:
    from gigamil.train import trained_models

    try:
        TRAINED_MODELS = trained_models.fold_models(
            config["trained_models"],
            own_models=Path(layout.model_dir(EXPERIMENT, 0)).parent,
        )
        if getattr(workflow, "is_main_process", True):  # first: names a damaged file
            TRAINED_WARNINGS = trained_models.check_with_config(
                TRAINED_MODELS, config, FEATURE_ID
            )
        MODEL_POOL = trained_models.models_pool(TRAINED_MODELS)
        TRAINED_PATIENTS, _unrecorded = trained_models.training_patients(TRAINED_MODELS)
        if getattr(workflow, "is_main_process", True):
            TRAINED_WARNINGS += trained_models.check_patient_overlap(
                config["cohorts"],
                {c: SHEETS[c]["patient_id"] for c in config["cohorts"]},
                TRAINED_PATIENTS,
                _unrecorded,
            )
        for _warning in TRAINED_WARNINGS:
            print(f"gigamil: warning: {_warning}", file=sys.stderr)
    except GigamilError as exc:
        stop(f"gigamil: invalid configuration: {CONFIG_SOURCE}: {exc}")
    FOLDS = list(TRAINED_MODELS)


wildcard_constraints:
    cohort="[A-Za-z0-9_-]+",
    slide_id="[A-Za-z0-9_.-]+",
    experiment="[A-Za-z0-9_.-]+",
    fold="[0-9]+",


def cohort_slide_ids(cohort):
    """slide_ids of a cohort, sorted: the jobs' params and inputs built from them (the QC table,
    its thumbnail sample) stay the same when a user sorts the sheet."""
    return sorted(SHEETS[cohort]["slide_id"])


def qc_sheet(cohort):
    """The sheet columns the QC table shows ({slide_id, patient_id, label if any: list}),
    sorted by slide_id as the table's rows, so re-sorting the sheet reruns nothing."""
    cols = [
        c for c in ("slide_id", "patient_id", "label") if c in SHEETS[cohort].columns
    ]
    rows = SHEETS[cohort][cols].astype(str).sort_values("slide_id")
    return {c: rows[c].tolist() for c in cols}


def _row(cohort, slide_id):
    sheet = SHEETS[cohort]
    return sheet.loc[sheet["slide_id"] == slide_id].iloc[0]


def slide_path(wildcards):
    """The slide file of {cohort}/{slide_id}."""
    return _row(wildcards.cohort, wildcards.slide_id)["path"]


def slide_mpp_override(wildcards):
    """MPP override of a slide (sheet `mpp` column, else the cohort's `mpp`), or None."""
    mpp = _row(wildcards.cohort, wildcards.slide_id)["mpp"]
    return None if mpp != mpp else float(mpp)


def cohort_stores(cohorts):
    """Zarr stores of every slide of the given cohorts."""
    return [layout.store_path(c, s) for c in cohorts for s in cohort_slide_ids(c)]


def cohort_bags(cohorts):
    """What training and prediction read for the given cohorts: the feature stores of FEATURE_ID
    when the frozen encoder's features are cached, else the patch stores."""
    return [
        layout.bag_path(c, s, FEATURE_ID) for c in cohorts for s in cohort_slide_ids(c)
    ]


def eval_targets():
    """The final evaluation outputs (inputs of the default target): CV summary, training
    curves, ensembles, predict cohorts' predictions, heatmaps."""
    return layout.eval_targets(
        config, SHEETS, TRAIN_COHORTS, EXTERNAL_COHORTS, PREDICT_COHORTS
    )


def patient_overlap(cohort):
    """Patient ids of an external cohort that the fold models trained on (allowed by its
    allow_patient_overlap; the ensemble's summary records them): those of the train cohorts,
    or with trained_models those its model.pt files record."""
    if TRAINED_MODELS:
        return trained_models.patient_overlap(
            TRAINED_PATIENTS, SHEETS[cohort]["patient_id"]
        )
    return train_patient_overlap(config, SHEETS, cohort)


def fold_model(wildcards):
    """The model.pt that predicts for fold {fold}: trained_models' file, else this
    experiment's own (rule train_fold's output)."""
    if TRAINED_MODELS:
        return str(TRAINED_MODELS[int(wildcards.fold)])
    return f"{layout.model_dir(EXPERIMENT, wildcards.fold)}/model.pt"


def cohort_regex(cohorts):
    """A wildcard constraint matching exactly these cohort names (nothing when empty)."""
    return "|".join(cohorts) if cohorts else "(?!)"


def report_output(path, caption, category, subcategory=None, labels=None, enabled=True):
    """``path`` flagged for the HTML report with the caption workflow/report/{caption}.rst
    (none when ``caption`` is None; ``path`` itself when not ``enabled``). Call it only from
    the .smk files in workflow/rules, as Snakemake resolves the caption relative to the file
    defining the rule."""
    if not enabled:
        return path
    return report(
        path,
        caption=f"../report/{caption}.rst" if caption else None,
        category=category,
        subcategory=subcategory,
        labels=labels,
    )


def report_outputs(out_dir, category, files, subcategory=None, enabled=True):
    """Named outputs ``{name: report_output(out_dir/file, caption, category)}`` of
    ``files = {name: (file, caption)}``; used as ``output: **report_outputs(...)``. Each gets
    the label ``{"file": "<i>. <file>"}``, numbered in the order of ``files``: the report
    sorts a subcategory's results by label (by file name without labels), so the files are
    listed in that order. Not ``enabled``: the same paths, not flagged for the report.
    """
    return {
        name: report_output(
            f"{out_dir}/{file}",
            caption,
            category,
            subcategory=subcategory,
            labels={"file": f"{i}. {file}"},
            enabled=enabled,
        )
        for i, (name, (file, caption)) in enumerate(files.items(), start=1)
    }


def _qc_thumbnail_labels(cohort, slide_id, wildcards):
    """Report labels of a QC thumbnail, read from its mask JSON when the report is made."""
    return {"slide": slide_id, **qc_labels(layout.tissue_json(cohort, slide_id))}


def qc_thumbnails(caption):
    """A sample of every cohort's tissue-mask QC thumbnails (layout.qc_sample) flagged for the
    report, for rule all's input; ``caption`` is relative to the file defining rule all.
    """
    flagged = []
    for c in config["cohorts"]:
        for s in layout.qc_sample(cohort_slide_ids(c)):
            # the JPEG copy (made by qc_report_copy): the report holds every image
            thumbnail = report(
                layout.tissue_qc_jpg(c, s),
                caption=caption,
                category=REPORT_CATEGORIES["qc"],
                subcategory=c,
                labels=partial(_qc_thumbnail_labels, c, s),
            )
            flagged.append(thumbnail)
    return flagged


def heatmap_labels(figure, wildcards):
    """Report labels of a heatmap figure: the slide, its label, the ensemble's prediction,
    probability and whether it is right (read from the fold models' prediction CSVs when the
    report is made), and its localisation AUC (from the cohort's ensemble or CV summary). With
    heatmaps.weights: patch_score the overlay is named a patch score overlay, and the patch
    score's localisation AUC is listed beside the attention's.
    """
    from gigamil.viz.slide_info import prediction_labels
    from gigamil.evaluate.localization import PATCH_KEY, localization_label

    csvs = [layout.prediction_csv(EXPERIMENT, k, wildcards.cohort) for k in FOLDS]
    info = prediction_labels(csvs, CLASSES, wildcards.slide_id)
    summaries = [
        f"{layout.ensemble_dir(EXPERIMENT, wildcards.cohort)}/summary.json",
        f"{layout.eval_dir(EXPERIMENT)}/summary.json",
    ]
    loc = {"localisation AUC": localization_label(summaries, wildcards.slide_id)}
    if config["heatmaps"].get("weights") == "patch_score":
        figure = figure.replace("attention", "patch score")
        loc["patch-score localisation AUC"] = localization_label(
            summaries, wildcards.slide_id, PATCH_KEY
        )
    return {"slide": wildcards.slide_id, **info, **loc, "figure": figure}


def lesion_sidecar(cohort, slide_id):
    """The existing JSON sidecar of a slide's lesion mask in a sheet's ``lesion_mask`` column,
    or [] (none, or a demo cohort's: rule demo_cohort writes it with the mask, an input).
    """
    from gigamil.evaluate.lesion_mask import mask_sidecars

    if config["cohorts"][cohort].get("demo"):
        return []
    mask = layout.lesion_masks(config["cohorts"][cohort], SHEETS[cohort]).get(slide_id)
    return mask_sidecars([mask] if mask else [])
