"""Snakemake script of rule qc_report_copy: gigamil.viz.figures.report_copy (a figure's JPEG copy
for the HTML report)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

import logging

from gigamil.viz.figures import report_copy

out = report_copy(snakemake.input.png, snakemake.output.jpg)
logging.getLogger("report_copy").info("%s -> %s", snakemake.input.png, out)
