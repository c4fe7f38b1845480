"""Rules train_fold, training_curves and predict_fold: one training job per fold (and a plot of
its train_log.csv), one prediction job per fold and cohort (gigamil.train.run).

With trained_models (fold models trained elsewhere) predict_fold reads their model.pt files
and nothing is trained. train_fold reads only the train cohorts' stores and has only the model and training sections
(and the classes) as params, so adding an external cohort never retrains. Each fold directory
also holds last.pt, deliberately not a declared output: Snakemake leaves it in place when a job
dies, and the trainer resumes from it (it ignores a last.pt written with another configuration).
GPU jobs ask for gpu=1 only when training.device is cuda. With a frozen encoder whose features are
cached (FEATURE_ID), both rules read the feature stores of rule extract_features instead of the
patch stores. training.strategy em runs all its rounds inside train_fold (features encoded in the
job each round), so its rule graph is the end-to-end one.
"""

from gigamil.data.feature_spec import train_params

TRAIN_GPUS = 1 if config["training"]["device"] == "cuda" else 0
# the params hold the settings that change what is trained, one spelling per training (without
# the log-only keys such as training.tensorboard, nor device and max_instances_per_forward_pass,
# so switching those retrains nothing; feature_spec.train_params); the script reads the config
# (with trained_models nothing is trained here: model: is not read, its weights need not exist)
MODEL_PARAMS, TRAINING_PARAMS = (
    train_params(config, cached=FEATURE_ID is not None)
    if not TRAINED_MODELS
    else ({}, {})
)
MODEL_DIR = layout.model_dir(EXPERIMENT, "{fold}")


rule train_fold:
    input:
        folds=FOLDS_CSV,
        stores=cohort_bags(TRAIN_COHORTS),
    output:
        model=f"{MODEL_DIR}/model.pt",
        train_log=f"{MODEL_DIR}/train_log.csv",
    log:
        layout.log_file("train_fold", EXPERIMENT, "fold{fold}"),
    benchmark:
        layout.benchmark_file("train_fold", EXPERIMENT, "fold{fold}")
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,  # MB; more on each retry (OOM)
        runtime=24 * 60,
        gpu=TRAIN_GPUS,
    params:
        model=MODEL_PARAMS,
        training=TRAINING_PARAMS,
        classes=CLASSES,
        features=FEATURE_ID,
    script:
        "../scripts/train_fold.py"


rule training_curves:
    input:
        train_log=f"{MODEL_DIR}/train_log.csv",
    output:
        png=report_output(
            layout.training_curves(EXPERIMENT, "{fold}"),
            "training_curves",
            REPORT_CATEGORIES["cv"],
            subcategory="training curves",
            labels={"fold": "{fold}"},
        ),
    log:
        layout.log_file("training_curves", EXPERIMENT, "fold{fold}"),
    benchmark:
        layout.benchmark_file("training_curves", EXPERIMENT, "fold{fold}")
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        experiment=EXPERIMENT,
    script:
        "../scripts/training_curves.py"


rule predict_fold:
    input:
        model=fold_model,  # with trained_models, theirs (no folds: no train cohort)
        folds=[] if TRAINED_MODELS else FOLDS_CSV,
        stores=lambda wc: cohort_bags([wc.cohort]),
    output:
        csv=layout.prediction_csv(EXPERIMENT, "{fold}", "{cohort}"),
        attention=directory(layout.attention_dir(EXPERIMENT, "{fold}", "{cohort}")),
    log:
        layout.log_file("predict_fold", EXPERIMENT, "fold{fold}", "{cohort}"),
    benchmark:
        layout.benchmark_file("predict_fold", EXPERIMENT, "fold{fold}", "{cohort}")
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,  # MB; more on each retry (OOM)
        runtime=4 * 60,
        gpu=TRAIN_GPUS,
    params:
        role=lambda wc: config["cohorts"][wc.cohort]["role"],
        # what the predictions copy from an external/predict cohort's sheet, not the file: touching
        # or sorting it re-predicts nothing (the script reads it from the config's path)
        sheet_digest=lambda wc: (
            sheet_digest([SHEETS[wc.cohort]])
            if config["cohorts"][wc.cohort]["role"] != "train"
            else ""
        ),
        classes=CLASSES,
        features=FEATURE_ID,
    script:
        "../scripts/predict_fold.py"
