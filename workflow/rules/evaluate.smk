"""Rules aggregate_cv, ensemble, oof_cohort and predict_cohort: cross-validation metrics,
fold-model ensembles with metrics and lesion localisation (external cohorts; oof_cohort: each
train cohort's out-of-fold predictions), and the ensemble's predictions of the unlabelled
``role: predict`` cohorts, without metrics (gigamil.evaluate); subgroups_cv and
subgroups_cohort: the metrics per value of the ``subgroups`` columns. The ensemble rules write
results/eval/{experiment}/ensemble/{cohort}/; wildcard constraints give each its cohorts. The final outputs for rule all are ``eval_targets()`` (common.smk).
"""

# The files of an ensemble (or a train cohort's out-of-fold) evaluation, in the report's order
# (report_outputs numbers them): the page to read first, the plots, then the tables.
ENSEMBLE_REPORT_FILES = {
    "metrics_html": ("metrics.html", "ensemble_metrics"),
    "roc": ("roc.png", "ensemble_roc"),
    "confusion": ("confusion.png", "ensemble_confusion"),
    "predictions": ("predictions.csv", "ensemble_predictions"),
    "patient_predictions": ("patient_predictions.csv", "patient_predictions"),
    "metrics": ("metrics.csv", "metrics_csv"),
    "summary": ("summary.json", "ensemble_summary"),
}


rule aggregate_cv:
    input:
        folds=FOLDS_CSV,
        preds=[
            layout.prediction_csv(EXPERIMENT, k, c)
            for k in FOLDS
            for c in TRAIN_COHORTS
        ],
        localization=layout.localization_inputs(config, SHEETS, TRAIN_COHORTS, FOLDS),
    output:
        **report_outputs(
            layout.eval_dir(EXPERIMENT),
            REPORT_CATEGORIES["cv"],
            {
                "metrics_html": ("metrics.html", "metrics"),
                "roc": ("roc.png", "roc"),
                "confusion": ("confusion.png", "confusion"),
                "per_slide": ("per_slide_predictions.csv", "per_slide"),
                "per_patient": ("per_patient_predictions.csv", "per_patient"),
                "metrics": ("metrics.csv", "metrics_csv"),
                "summary": ("summary.json", "summary"),
            },
            subcategory="metrics and plots",
        ),
    log:
        layout.log_file("aggregate_cv", EXPERIMENT),
    benchmark:
        layout.benchmark_file("aggregate_cv", EXPERIMENT)
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=CLASSES,
        experiment=EXPERIMENT,
        lesion_masks=lambda wc: layout.localization_masks(config, SHEETS, TRAIN_COHORTS),
        n_boot=1000,
        seed=config["cv"]["seed"],
    script:
        "../scripts/aggregate_cv.py"


rule ensemble:
    input:
        preds=lambda wc: [
            layout.prediction_csv(EXPERIMENT, k, wc.cohort) for k in FOLDS
        ],
        localization=lambda wc: layout.localization_inputs(
            config, SHEETS, [wc.cohort], FOLDS
        ),
    output:
        **report_outputs(
            layout.ensemble_dir(EXPERIMENT, "{cohort}"),
            REPORT_CATEGORIES["ensembles"],
            ENSEMBLE_REPORT_FILES,
            subcategory="{cohort}",
        ),
    log:
        layout.log_file("ensemble", EXPERIMENT, "{cohort}"),
    benchmark:
        layout.benchmark_file("ensemble", EXPERIMENT, "{cohort}")
    wildcard_constraints:
        cohort=cohort_regex(EXTERNAL_COHORTS),
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=CLASSES,
        experiment=EXPERIMENT,
        folds=FOLDS,
        lesion_masks=lambda wc: layout.localization_masks(config, SHEETS, [wc.cohort]),
        patient_overlap=lambda wc: patient_overlap(wc.cohort),
        slides=lambda wc: cohort_slide_ids(wc.cohort),  # the predictions must cover exactly these
        n_boot=1000,
        seed=config["cv"]["seed"],
    script:
        "../scripts/ensemble.py"


# A train cohort's out-of-fold evaluation: the same files, each slide scored by the fold model
# that held it out. In the report only with two or more train cohorts (each cohort's own
# figures); with one it would repeat section 1 page for page.
use rule ensemble as oof_cohort with:
    output:
        **report_outputs(
            layout.ensemble_dir(EXPERIMENT, "{cohort}"),
            REPORT_CATEGORIES["ensembles"],
            ENSEMBLE_REPORT_FILES,
            subcategory="{cohort}",
            enabled=len(TRAIN_COHORTS) > 1,
        ),
    wildcard_constraints:
        cohort=cohort_regex(TRAIN_COHORTS),


rule predict_cohort:
    input:
        preds=lambda wc: [
            layout.prediction_csv(EXPERIMENT, k, wc.cohort) for k in FOLDS
        ],
    output:
        **report_outputs(
            layout.ensemble_dir(EXPERIMENT, "{cohort}"),
            REPORT_CATEGORIES["ensembles"],
            {
                "predictions_html": ("predictions.html", "predict_predictions"),
                "predictions": ("predictions.csv", "predict_predictions"),
                "patient_predictions": (
                    "patient_predictions.csv",
                    "patient_predictions",
                ),
                "summary": ("summary.json", "ensemble_summary"),
            },
            subcategory="{cohort}",
        ),
    log:
        layout.log_file("predict_cohort", EXPERIMENT, "{cohort}"),
    benchmark:
        layout.benchmark_file("predict_cohort", EXPERIMENT, "{cohort}")
    wildcard_constraints:
        cohort=cohort_regex(PREDICT_COHORTS),
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        classes=CLASSES,
        experiment=EXPERIMENT,
        slides=lambda wc: cohort_slide_ids(wc.cohort),
    script:
        "../scripts/predict_cohort.py"


# Metrics per value of the `subgroups` sheet columns (e.g. site): out of fold, and per external
# cohort from its ensemble's predictions (gigamil.evaluate.subgroups, as `gigamil subgroups`).
rule subgroups_cv:
    input:
        predictions=f"{layout.eval_dir(EXPERIMENT)}/per_slide_predictions.csv",
        sheets=[config["cohorts"][c]["sheet"] for c in TRAIN_COHORTS],
    output:
        # in the report after the section's six files (their labels are numbered)
        html=report_output(
            f"{layout.eval_dir(EXPERIMENT)}/subgroups.html",
            "subgroups",
            REPORT_CATEGORIES["cv"],
            subcategory="metrics and plots",
            labels={"file": "7. subgroups.html"},
        ),
        csv=f"{layout.eval_dir(EXPERIMENT)}/subgroups.csv",
    log:
        layout.log_file("subgroups_cv", EXPERIMENT),
    benchmark:
        layout.benchmark_file("subgroups_cv", EXPERIMENT)
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        classes=CLASSES,
        by=config["subgroups"],
        n_boot=1000,
        seed=config["cv"]["seed"],
    script:
        "../scripts/subgroups.py"


use rule subgroups_cv as subgroups_cohort with:
    input:
        predictions=f"{layout.ensemble_dir(EXPERIMENT, '{cohort}')}/predictions.csv",
        sheets=lambda wc: [config["cohorts"][wc.cohort]["sheet"]],
    output:
        html=report_output(
            f"{layout.ensemble_dir(EXPERIMENT, '{cohort}')}/subgroups.html",
            "subgroups",
            REPORT_CATEGORIES["ensembles"],
            subcategory="{cohort}",
            labels={"file": "7. subgroups.html"},
        ),
        csv=f"{layout.ensemble_dir(EXPERIMENT, '{cohort}')}/subgroups.csv",
    log:
        layout.log_file("subgroups_cohort", EXPERIMENT, "{cohort}"),
    benchmark:
        layout.benchmark_file("subgroups_cohort", EXPERIMENT, "{cohort}")
    wildcard_constraints:
        cohort=cohort_regex(EXTERNAL_COHORTS),
