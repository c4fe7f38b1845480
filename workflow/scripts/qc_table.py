"""Snakemake script of rule qc_table: gigamil.wsi.qc.write_qc_table (CSV and HTML page)."""

from gigamil.logutil import setup_logging
from gigamil.wsi.qc import write_qc_table

setup_logging(snakemake.log[0])
write_qc_table(
    snakemake.output.csv,
    snakemake.params.slide_ids,
    snakemake.input.masks,
    snakemake.input.stores,
    out_html=snakemake.output.html,
    title=f"cohort {snakemake.wildcards.cohort}: slide QC",
)
