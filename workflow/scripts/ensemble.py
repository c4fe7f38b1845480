"""Snakemake script of rule ensemble: gigamil.evaluate.ensemble.ensemble_cohort."""

from pathlib import Path

from gigamil.evaluate.ensemble import ensemble_cohort
from gigamil.logutil import setup_logging

setup_logging(snakemake.log[0])
ensemble_cohort(
    snakemake.input.preds,
    list(snakemake.params.classes),
    Path(snakemake.output.summary).parent,
    cohort=snakemake.wildcards.cohort,
    experiment=snakemake.params.experiment,
    n_boot=int(snakemake.params.n_boot),
    seed=int(snakemake.params.seed),
)
