"""Snakemake script of rule heatmap: gigamil.viz.heatmap.make_heatmap for one slide, with the
attention of every fold model that predicted it averaged (ensemble heatmap)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

import logging
from pathlib import Path

from gigamil import layout
from gigamil.evaluate.localization import mean_attention
from gigamil.viz.heatmap import HeatmapStyle, make_heatmap

slide_id = snakemake.wildcards.slide_id
found = layout.attention_files(snakemake.input.attention, slide_id)
logging.getLogger("heatmap").info(
    "%s: attention of %d fold model(s): %s", slide_id, len(found), ", ".join(map(str, found))
)
hm = snakemake.params.heatmaps
make_heatmap(
    snakemake.input.store,
    mean_attention(found),
    Path(snakemake.output.overlay).parent,
    slide_path=snakemake.input.slide,
    tissue_mask=snakemake.input.tissue,
    style=HeatmapStyle(
        normalize=hm["normalize"],
        top_k=int(hm["top_k"]),
        alpha=float(hm["alpha"]),
        cmap=hm["cmap"],
    ),
    title=f"{snakemake.wildcards.cohort}/{slide_id} ({len(found)} model(s))",
    mpp_override=snakemake.params.slide_mpp,
)
