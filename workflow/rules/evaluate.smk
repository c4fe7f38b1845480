"""Rules aggregate_cv and ensemble: cross-validation metrics, fold-model ensembles and lesion
localisation (gigamil.evaluate). ``eval_targets()`` lists the final outputs for rule all.
"""

EVAL_DIR = evaltargets.eval_dir(EXPERIMENT)
eval_targets = lambda: evaltargets.eval_targets(
    config, SHEETS, TRAIN_COHORTS, EXTERNAL_COHORTS
)


rule aggregate_cv:
    input:
        folds=FOLDS_CSV,
        preds=[
            evaltargets.prediction_csv(EXPERIMENT, k, c)
            for k in FOLDS
            for c in TRAIN_COHORTS
        ],
        localization=evaltargets.localization_inputs(
            config, SHEETS, TRAIN_COHORTS, FOLDS, store_path
        ),
    output:
        summary=report(
            f"{EVAL_DIR}/summary.json",
            caption="../report/summary.rst",
            category="1. Cross-validation",
        ),
        metrics=report(
            f"{EVAL_DIR}/metrics.csv",
            caption="../report/metrics.rst",
            category="1. Cross-validation",
        ),
        metrics_html=report(
            f"{EVAL_DIR}/metrics.html",
            caption="../report/metrics.rst",
            category="1. Cross-validation",
        ),
        per_slide=report(
            f"{EVAL_DIR}/per_slide_predictions.csv",
            caption="../report/per_slide.rst",
            category="1. Cross-validation",
        ),
        roc=report(
            f"{EVAL_DIR}/roc.png",
            caption="../report/roc.rst",
            category="1. Cross-validation",
        ),
        confusion=report(
            f"{EVAL_DIR}/confusion.png",
            caption="../report/confusion.rst",
            category="1. Cross-validation",
        ),
    log:
        f"logs/aggregate_cv/{EXPERIMENT}.log",
    benchmark:
        f"logs/benchmarks/aggregate_cv/{EXPERIMENT}.tsv"
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        classes=CLASSES,
        experiment=EXPERIMENT,
        lesion_masks=lambda wc: evaltargets.localization_masks(
            config, SHEETS, TRAIN_COHORTS
        ),
        store_pattern=lambda wc: STORE_PATTERN,
        attention_pattern=lambda wc: evaltargets.attention_pattern(EXPERIMENT),
        n_boot=1000,
        seed=config["cv"]["seed"],
    script:
        "../scripts/aggregate_cv.py"


rule ensemble:
    input:
        preds=lambda wc: [
            evaltargets.prediction_csv(EXPERIMENT, k, wc.cohort) for k in FOLDS
        ],
        localization=lambda wc: evaltargets.localization_inputs(
            config, SHEETS, [wc.cohort], FOLDS, store_path
        ),
    output:
        summary=f"{EVAL_DIR}/ensemble/{{cohort}}/summary.json",
        predictions=report(
            f"{EVAL_DIR}/ensemble/{{cohort}}/predictions.csv",
            caption="../report/ensemble_predictions.rst",
            category="2. Ensembles",
            subcategory="{cohort}",
        ),
        metrics=report(
            f"{EVAL_DIR}/ensemble/{{cohort}}/metrics.csv",
            caption="../report/ensemble_metrics.rst",
            category="2. Ensembles",
            subcategory="{cohort}",
        ),
        metrics_html=report(
            f"{EVAL_DIR}/ensemble/{{cohort}}/metrics.html",
            caption="../report/ensemble_metrics.rst",
            category="2. Ensembles",
            subcategory="{cohort}",
        ),
        roc=report(
            f"{EVAL_DIR}/ensemble/{{cohort}}/roc.png",
            caption="../report/ensemble_roc.rst",
            category="2. Ensembles",
            subcategory="{cohort}",
        ),
        confusion=report(
            f"{EVAL_DIR}/ensemble/{{cohort}}/confusion.png",
            caption="../report/ensemble_confusion.rst",
            category="2. Ensembles",
            subcategory="{cohort}",
        ),
    log:
        f"logs/ensemble/{EXPERIMENT}/{{cohort}}.log",
    benchmark:
        f"logs/benchmarks/ensemble/{EXPERIMENT}/{{cohort}}.tsv"
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
        lesion_masks=lambda wc: evaltargets.localization_masks(
            config, SHEETS, [wc.cohort]
        ),
        store_pattern=lambda wc: STORE_PATTERN,
        attention_pattern=lambda wc: evaltargets.attention_pattern(EXPERIMENT),
        n_boot=1000,
        seed=config["cv"]["seed"],
    script:
        "../scripts/ensemble.py"
