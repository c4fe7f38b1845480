"""Snakemake script of rule aggregate_cv: gigamil.evaluate.aggregate.aggregate_cv."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

from gigamil import layout
from gigamil.evaluate.aggregate import aggregate_cv
from gigamil.folds import read_folds

params = snakemake.params
folds = read_folds(snakemake.input.folds)
localization = layout.cv_localization(
    params.experiment, folds[folds["role"] == "test"], params.lesion_masks
)
aggregate_cv(
    snakemake.input.preds,
    snakemake.input.folds,
    list(params.classes),
    Path(snakemake.output.summary).parent,
    experiment=params.experiment,
    localization=localization or None,
    n_boot=int(params.n_boot),
    seed=int(params.seed),
)
