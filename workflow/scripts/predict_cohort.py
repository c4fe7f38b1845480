"""Snakemake script of rule predict_cohort: gigamil.evaluate.ensemble.predict_cohort (the fold
models' ensemble on a cohort without labels; no metrics)."""

from pathlib import Path

from gigamil.evaluate.ensemble import predict_cohort
from gigamil.logutil import setup_logging

setup_logging(snakemake.log[0])
predict_cohort(
    snakemake.input.preds,
    list(snakemake.params.classes),
    Path(snakemake.output.summary).parent,
    cohort=snakemake.wildcards.cohort,
    experiment=snakemake.params.experiment,
)
