"""Snakemake script of rule extract_features: gigamil.data.feature_extract.extract_features (one
slide's patch store encoded once by the frozen encoder)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from gigamil.data.feature_extract import extract_features

# params.encoder (what the features depend on) only triggers reruns; the model section and the
# device are read from the config, so head or training changes never re-extract
extract_features(
    snakemake.input.store,
    snakemake.output.features,
    model_cfg=snakemake.config["model"],
    patch_cfg=snakemake.config["preprocessing"]["patches"],
    device=snakemake.config["training"]["device"],
    threads=snakemake.threads,
)
