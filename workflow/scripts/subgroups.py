"""Snakemake script of rules subgroups_cv and subgroups_cohort:
gigamil.evaluate.subgroups.report_subgroups (metrics per value of the `subgroups` columns)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

from gigamil.evaluate.subgroups import report_subgroups

params = snakemake.params
report_subgroups(
    snakemake.input.predictions,
    list(snakemake.input.sheets),
    list(params.by),
    list(params.classes),
    Path(snakemake.output.csv).parent,
    n_boot=int(params.n_boot),
    seed=int(params.seed),
    # the configuration check found each column in a scored cohort's sheet, maybe another's
    missing_as_empty=True,
)
