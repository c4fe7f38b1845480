"""Snakemake script of rule training_curves: gigamil.viz.plots.plot_training_curves of one fold."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

import logging

from gigamil.viz.plots import plot_training_curves

fold = snakemake.wildcards.fold
info = plot_training_curves(
    snakemake.input.train_log,
    snakemake.output.png,
    f"{snakemake.params.experiment}: fold {fold} training curves",
)
logging.getLogger("training_curves").info("fold %s: %s", fold, info)
