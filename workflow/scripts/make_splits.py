"""Snakemake script of rule make_splits: gigamil.splits.make_cv_folds."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

import logging

from gigamil.folds import split_report, write_folds
from gigamil.sheets import load_sheet
from gigamil.splits import make_cv_folds

sheets = [  # paths from the config, not params: moving a sheet must not rerun the split
    load_sheet(
        snakemake.config["cohorts"][cohort]["sheet"],
        cohort=cohort,
        classes=list(snakemake.params.classes),
        check_files=False,
    )
    for cohort in snakemake.params.cohorts
]
folds = make_cv_folds(sheets, snakemake.params.cv)
write_folds(folds, snakemake.output.folds)
logging.getLogger("make_splits").info("folds:\n%s", split_report(folds).to_string(index=False))
