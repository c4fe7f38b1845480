"""Snakemake script of rule training_curves: gigamil.viz.plots.plot_training_curves of one fold."""

import logging

from gigamil.logutil import setup_logging
from gigamil.viz.plots import plot_training_curves

setup_logging(snakemake.log[0])
fold = snakemake.wildcards.fold
info = plot_training_curves(
    snakemake.input.train_log,
    snakemake.output.png,
    f"{snakemake.params.experiment}: fold {fold} training curves",
)
logging.getLogger("training_curves").info("fold %s: %s", fold, info)
