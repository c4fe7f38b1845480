"""Snakemake script of rule predict_cohort: gigamil.evaluate.ensemble.predict_cohort (the fold
models' ensemble on a cohort without labels; no metrics)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

from gigamil.evaluate.ensemble import predict_cohort

predict_cohort(
    snakemake.input.preds,
    list(snakemake.params.classes),
    Path(snakemake.output.summary).parent,
    cohort=snakemake.wildcards.cohort,
    experiment=snakemake.params.experiment,
    slides=list(snakemake.params.slides),
)
