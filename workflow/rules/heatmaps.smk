"""Rule heatmap: attention heatmap, patch gallery and QuPath GeoJSON (patches; tissue and top-k
annotations) of one slide (gigamil.viz.heatmap). Only the heatmaps section (minus the slide list) is a param, so changing
a drawing option redraws the heatmaps and nothing else. The slides drawn (heatmaps.slides) are
listed by eval_targets() (common.smk).
"""

HEATMAP_DIR = layout.heatmap_dir(EXPERIMENT, "{cohort}", "{slide_id}")
HEATMAP_PARAMS = {
    k: v
    for k, v in ordered_params(("heatmaps",), config["heatmaps"]).items()
    if k != "slides"
}
# The HTML report embeds every image: beyond this many slides the heatmaps stay on disk only.
HEATMAP_REPORT_MAX = 48
try:  # an unknown slide_id in heatmaps.slides: one message before any job
    HEATMAP_SLIDES = layout.heatmap_slides(
        config["heatmaps"]["slides"], SHEETS, PREDICTED_COHORTS
    )
except ConfigError as exc:
    stop(f"gigamil: invalid configuration: {CONFIG_SOURCE}: {exc}")
HEATMAPS_IN_REPORT = len(HEATMAP_SLIDES) <= HEATMAP_REPORT_MAX


rule heatmap:
    input:
        store=lambda wc: layout.store_path(wc.cohort, wc.slide_id),
        slide=slide_path,
        tissue=layout.tissue_mask("{cohort}", "{slide_id}"),
        # every fold model's attention on the cohort; the script averages those holding the
        # slide (all folds for an external cohort, the test fold for a train cohort)
        attention=lambda wc: [
            layout.attention_dir(EXPERIMENT, k, wc.cohort) for k in FOLDS
        ],
        # the same fold models' predictions: label, predicted class and probability for the
        # titles and the probability colour scale
        preds=lambda wc: [
            layout.prediction_csv(EXPERIMENT, k, wc.cohort) for k in FOLDS
        ],
        # the slide's ground-truth lesion mask, where the cohort has one: outlined on the overlay
        lesion=lambda wc: layout.lesion_masks(
            config["cohorts"][wc.cohort], SHEETS[wc.cohort]
        ).get(wc.slide_id, []),
        # and its JSON sidecar (the downsample the outline is drawn at), where a sheet's mask has
        # one: editing it redraws (a demo mask's is written by the job that writes the mask)
        lesion_sidecar=lambda wc: lesion_sidecar(wc.cohort, wc.slide_id),
    output:
        overlay=f"{HEATMAP_DIR}/overlay.png",
        gallery=f"{HEATMAP_DIR}/gallery.png",
        # the report embeds their JPEG copies (a quarter of the bytes: the report holds them all),
        # named by slide: the report lists its items by file name, so a slide's two sit together
        overlay_report=report_output(
            layout.heatmap_jpg(EXPERIMENT, "{cohort}", "{slide_id}", "overlay"),
            "heatmap",
            REPORT_CATEGORIES["heatmaps"],
            subcategory="{cohort}",
            labels=partial(heatmap_labels, "attention overlay"),
            enabled=HEATMAPS_IN_REPORT,
        ),
        gallery_report=report_output(
            layout.heatmap_jpg(EXPERIMENT, "{cohort}", "{slide_id}", "gallery"),
            "gallery",
            REPORT_CATEGORIES["heatmaps"],
            subcategory="{cohort}",
            labels=partial(heatmap_labels, "top/bottom patches"),
            enabled=HEATMAPS_IN_REPORT,
        ),
        attention=f"{HEATMAP_DIR}/attention.npy",
        geojson=f"{HEATMAP_DIR}/patches.geojson",
        # QuPath annotations: the tissue mask (input tissue) and the heatmaps.top_k patches
        annotations=f"{HEATMAP_DIR}/annotations.geojson",
    log:
        layout.log_file("heatmap", EXPERIMENT, "{cohort}", "{slide_id}"),
    benchmark:
        layout.benchmark_file("heatmap", EXPERIMENT, "{cohort}", "{slide_id}")
    group:
        "heatmaps"
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 2000 * attempt,  # MB; more on each retry (OOM)
        runtime=15,
    params:
        heatmaps=HEATMAP_PARAMS,
        classes=CLASSES,
        slide_mpp=slide_mpp_override,
        pool=MODEL_POOL,  # the fold models' (trained_models': theirs)
    script:
        "../scripts/heatmap.py"
