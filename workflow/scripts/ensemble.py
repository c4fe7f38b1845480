"""Snakemake script of rule ensemble: gigamil.evaluate.ensemble.ensemble_cohort."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

from gigamil import layout
from gigamil.evaluate.ensemble import ensemble_cohort

params = snakemake.params
cohort = snakemake.wildcards.cohort
localization = layout.ensemble_localization(
    params.experiment, cohort, list(params.folds), params.lesion_masks
)
ensemble_cohort(
    snakemake.input.preds,
    list(params.classes),
    Path(snakemake.output.summary).parent,
    cohort=cohort,
    experiment=params.experiment,
    n_boot=int(params.n_boot),
    seed=int(params.seed),
    localization=localization or None,
    patient_overlap=list(params.patient_overlap),
    slides=list(params.slides),
)
