"""Snakemake script of rule qc_table: gigamil.wsi.qc.write_qc_table (CSV and HTML page)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from gigamil.wsi.qc import write_qc_table

write_qc_table(
    snakemake.output.csv,
    snakemake.params.slide_ids,
    snakemake.input.masks,
    snakemake.input.stores,
    out_html=snakemake.output.html,
    title=f"cohort {snakemake.wildcards.cohort}: slide QC",
    sheet=snakemake.params.sheet,
)
