"""Snakemake script of rule tissue_mask: gigamil.wsi.tissue.make_mask."""

from gigamil.logutil import setup_logging
from gigamil.wsi.tissue import TissueParams, make_mask

setup_logging(snakemake.log[0])
make_mask(
    snakemake.input.slide,
    snakemake.output.mask,
    snakemake.output.qc,
    snakemake.output.json,
    TissueParams.from_dict(snakemake.params.tissue),
    slide_mpp=snakemake.params.slide_mpp,
)
