"""Rule make_splits: patient-level cross-validation folds (gigamil.evaluate.splits).

Inputs are only the train cohorts' sheets and params only the cv section, the classes and the
train-cohort names, so adding an external cohort or changing training keys keeps the folds.
"""

from gigamil.evaluate import targets as evaltargets

FOLDS = list(range(config["cv"]["folds"]))
FOLDS_CSV = evaltargets.folds_csv(EXPERIMENT)


rule make_splits:
    input:
        sheets=[config["cohorts"][c]["sheet"] for c in TRAIN_COHORTS],
    output:
        folds=FOLDS_CSV,
    log:
        f"logs/make_splits/{EXPERIMENT}.log",
    benchmark:
        f"logs/benchmarks/make_splits/{EXPERIMENT}.tsv"
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
