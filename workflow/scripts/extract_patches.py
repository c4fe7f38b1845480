"""Snakemake script of rule extract_patches: gigamil.wsi.extract.extract_patches."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from gigamil.wsi.extract import extract_patches
from gigamil.wsi.mask_io import mask_params_for, read_mask_png
from gigamil.wsi.patching import PatchParams

extract_patches(
    snakemake.input.slide,
    snakemake.output.store,
    PatchParams.from_dict(snakemake.params.patches),
    mask=read_mask_png(snakemake.input.mask),
    mask_params=mask_params_for(snakemake.input.mask),
    slide_mpp=snakemake.params.slide_mpp,
    slide_id=snakemake.wildcards.slide_id,
    threads=snakemake.threads,
    progress=False,
)
