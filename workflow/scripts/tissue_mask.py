"""Snakemake script of rule tissue_mask: gigamil.wsi.tissue.make_mask."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from gigamil.wsi.tissue import TissueParams, make_mask

make_mask(
    snakemake.input.slide,
    snakemake.output.mask,
    snakemake.output.qc,
    snakemake.output.json,
    TissueParams.from_dict(snakemake.params.tissue),
    slide_mpp=snakemake.params.slide_mpp,
)
