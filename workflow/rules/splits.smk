"""Rule make_splits: patient-level cross-validation folds (gigamil.splits).

Inputs are only the train cohorts' sheets and params only the cv section, the classes and the
train-cohort names, so adding an external cohort or changing training keys keeps the folds.
"""


rule make_splits:
    input:
        sheets=[config["cohorts"][c]["sheet"] for c in TRAIN_COHORTS],
    output:
        folds=FOLDS_CSV,
    log:
        layout.log_file("make_splits", EXPERIMENT),
    benchmark:
        layout.benchmark_file("make_splits", EXPERIMENT)
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        cv=config["cv"],
        cohorts=TRAIN_COHORTS,
        classes=CLASSES,
    script:
        "../scripts/make_splits.py"
