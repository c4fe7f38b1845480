"""Rule make_splits: patient-level cross-validation folds (gigamil.splits).

No input files: params are the cv section, the classes, the train-cohort names and a digest of
what the folds read from the sheets, in sorted order (gigamil.splits.split_digest), so adding an
external cohort, changing training keys, sorting a sheet, editing a sheet column the folds do not
read (path, lesion_mask, mpp) or moving a sheet file keeps the folds and the trained models. The
script reads the sheets from the paths in the config (snakemake.config: not a rerun trigger).
"""


rule make_splits:
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
        cv=ordered_params(("cv",), config["cv"]),
        # sorted: the folds do not depend on the order of the cohorts in config.yaml, so
        # writing them in another order must not re-split (nor rerun what reads folds.csv)
        cohorts=sorted(TRAIN_COHORTS),
        classes=CLASSES,
        sheet_digest=split_digest([SHEETS[c] for c in TRAIN_COHORTS], config["cv"]),
    script:
        "../scripts/make_splits.py"
