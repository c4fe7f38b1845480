"""Snakemake script of rule predict_fold: gigamil.train.predict.predict_slides for one fold model on
one cohort (its test slides for a train cohort, every slide of an external or predict cohort); the CSV is
written once, with the fold, by gigamil.evaluate.predictions.write_fold_predictions."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

from gigamil import layout
from gigamil.config import ROLE_PREDICT
from gigamil.evaluate.predictions import write_fold_predictions
from gigamil.folds import fold_slides, read_folds
from gigamil.sheets import load_sheet
from gigamil.train.predict import predict_slides

fold = int(snakemake.wildcards.fold)
cohort = snakemake.wildcards.cohort
classes = list(snakemake.params.classes)
if snakemake.params.role == "train":
    slides = fold_slides(read_folds(snakemake.input.folds), fold, "test", cohort=cohort)
else:
    sheet = load_sheet(
        snakemake.config["cohorts"][cohort]["sheet"],  # not an input: see the rule's params
        cohort=cohort,
        classes=classes,
        check_files=False,
        labels_required=snakemake.params.role != ROLE_PREDICT,  # predict cohorts: no labels
    )
    slides = sheet[["cohort", "slide_id", "patient_id", "label"]]
preds = predict_slides(
    Path(snakemake.input.model),
    layout.with_stores(slides, snakemake.params.features),
    None,
    Path(snakemake.output.attention),
    # where and in what chunks: read from the config, not params, so changing them re-predicts
    # nothing (the predictions are the same up to floating-point rounding)
    device=snakemake.config["training"]["device"],
    threads=snakemake.threads,
    max_instances_per_forward_pass=snakemake.config["training"]["max_instances_per_forward_pass"],
)
write_fold_predictions(preds, fold, snakemake.output.csv)
