"""Snakemake script of rule predict_fold: gigamil.train.run.predict_slides for one fold model on
one cohort (its test slides for a train cohort, every slide for an external cohort)."""

from pathlib import Path

from gigamil.config import load_sheet
from gigamil.evaluate.splits import fold_slides, read_folds
from gigamil.logutil import setup_logging
from gigamil.train.run import predict_slides

setup_logging(snakemake.log[0])
fold = int(snakemake.wildcards.fold)
cohort = snakemake.wildcards.cohort
classes = list(snakemake.params.classes)
if snakemake.params.role == "train":
    slides = fold_slides(read_folds(snakemake.input.folds), fold, "test")
    slides = slides[slides["cohort"] == cohort].reset_index(drop=True)
else:
    sheet = load_sheet(snakemake.input.sheet, cohort=cohort, classes=classes, check_files=False)
    slides = sheet[["cohort", "slide_id", "patient_id", "label"]]
slides = slides.assign(
    store=[
        snakemake.params.store_pattern.format(cohort=c, slide_id=s)
        for c, s in zip(slides["cohort"], slides["slide_id"], strict=True)
    ]
)
preds = predict_slides(
    Path(snakemake.input.model),
    slides,
    Path(snakemake.output.csv),
    Path(snakemake.output.attention),
    device=snakemake.params.device,
    threads=snakemake.threads,
    max_instances_per_forward_pass=int(snakemake.params.max_instances),
)
preds.insert(4, "fold", fold)  # slide_id, patient_id, cohort, label, fold, prob_..., pred
preds.to_csv(snakemake.output.csv, index=False)
