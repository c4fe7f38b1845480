"""Snakemake script of rule heatmap: gigamil.viz.heatmap.make_heatmap for one slide, with the
attention of every fold model that predicted it averaged (ensemble heatmap) and the mean of
their predictions (gigamil.viz.slide_info) in the titles and the probability colour scale."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

import logging
from pathlib import Path

from gigamil import layout
from gigamil.evaluate.patch_score import heatmap_weights
from gigamil.viz.figures import report_copy
from gigamil.viz.heatmap import HeatmapStyle, make_heatmap, weight_name
from gigamil.viz.slide_info import read_slide_prediction

slide_id = snakemake.wildcards.slide_id
found = layout.attention_files(snakemake.input.attention, slide_id)
log = logging.getLogger("heatmap")
log.info("%s: attention of %d fold model(s): %s", slide_id, len(found), ", ".join(map(str, found)))
prediction = read_slide_prediction(snakemake.input.preds, slide_id, snakemake.params.classes)
log.info("%s", prediction.title().replace("\n", ": "))
hm = snakemake.params.heatmaps
# heatmaps.weights: the mean attention, or the patch score (attention and patch logits)
attention, weight = heatmap_weights(found, hm["weights"], weight_name(snakemake.params.pool))
if not len(attention):  # a slide without patches: every model wrote an empty array
    log.info("%s: no patches, so no prediction and no attention to draw", slide_id)
elif prediction.n_models != len(found):
    log.warning(
        "%s: %d prediction(s) but %d attention file(s); were the predictions rerun?",
        slide_id,
        prediction.n_models,
        len(found),
    )
make_heatmap(
    snakemake.input.store,
    attention,
    Path(snakemake.output.overlay).parent,
    slide_path=snakemake.input.slide,
    tissue_mask=snakemake.input.tissue,
    style=HeatmapStyle(
        normalize=hm["normalize"],
        top_k=int(hm["top_k"]),
        alpha=float(hm["alpha"]),
        cmap=hm["cmap"],
        weight=weight,
    ),
    mpp_override=snakemake.params.slide_mpp,
    prediction=prediction,
    lesion_mask=snakemake.input.lesion or None,  # [] where the slide has no lesion mask
)
# the report embeds JPEG copies (a quarter of the bytes); the PNGs stay the originals
report_copy(snakemake.output.overlay, snakemake.output.overlay_report)
report_copy(snakemake.output.gallery, snakemake.output.gallery_report)
