"""Rules tissue_mask, extract_patches, qc_table, qc_report_copy: slide ingestion (gigamil.wsi).

Only the preprocessing sub-dicts of config.yaml are params here, so changing a training or
heatmap key does not redo the masks or the patch stores; keys added later are left out at their
"off" value (PatchConfig.rule_params), so an update of gigamil redoes no store. The params'
keys are in a fixed order (settings.ordered_params): reordering keys in config.yaml redoes nothing.
"""

from gigamil.settings import PatchConfig

PATCH_PARAMS = PatchConfig.from_dict(config["preprocessing"]["patches"]).rule_params()


rule tissue_mask:
    input:
        slide=slide_path,
    output:
        mask=layout.tissue_mask("{cohort}", "{slide_id}"),
        qc=layout.tissue_qc("{cohort}", "{slide_id}"),
        json=layout.tissue_json("{cohort}", "{slide_id}"),
    log:
        layout.log_file("tissue_mask", "{cohort}", "{slide_id}"),
    benchmark:
        layout.benchmark_file("tissue_mask", "{cohort}", "{slide_id}")
    group:
        "preprocess"
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,  # MB; more on each retry (OOM)
        runtime=lambda wc, attempt: 5 * attempt,  # minutes; more on each retry
    params:
        tissue=ordered_params(
            ("preprocessing", "tissue"), config["preprocessing"]["tissue"]
        ),
        slide_mpp=slide_mpp_override,
    script:
        "../scripts/tissue_mask.py"


rule extract_patches:
    input:
        slide=slide_path,
        mask=layout.tissue_mask("{cohort}", "{slide_id}"),
        mask_json=layout.tissue_json("{cohort}", "{slide_id}"),
    output:
        store=directory(layout.store_path("{cohort}", "{slide_id}")),
    log:
        layout.log_file("extract_patches", "{cohort}", "{slide_id}"),
    benchmark:
        layout.benchmark_file("extract_patches", "{cohort}", "{slide_id}")
    group:
        "preprocess"
    conda:
        "../../envs/gigamil.yaml"
    threads: 4
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,  # MB; more on each retry (OOM)
        runtime=lambda wc, attempt: 20 * attempt,  # minutes; more on each retry
    params:
        patches=PATCH_PARAMS,
        slide_mpp=slide_mpp_override,
    script:
        "../scripts/extract_patches.py"


rule qc_table:
    input:
        masks=lambda wc: [
            layout.tissue_json(wc.cohort, s) for s in cohort_slide_ids(wc.cohort)
        ],
        stores=lambda wc: cohort_stores([wc.cohort]),
    output:
        csv=layout.qc_csv("{cohort}"),
        html=report_output(
            layout.qc_html("{cohort}"), "qc_table", REPORT_CATEGORIES["qc"], "{cohort}"
        ),
    log:
        layout.log_file("qc_table", "{cohort}"),
    benchmark:
        layout.benchmark_file("qc_table", "{cohort}")
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        slide_ids=lambda wc: cohort_slide_ids(wc.cohort),
        # patient and label columns of the table
        sheet=lambda wc: qc_sheet(wc.cohort),
    script:
        "../scripts/qc_table.py"


rule qc_report_copy:
    input:
        png=layout.tissue_qc("{cohort}", "{slide_id}"),
    output:
        # the report embeds this JPEG copy (a fifth of the bytes); nothing downstream reads it,
        # so it never reruns a mask or a patch store
        jpg=layout.tissue_qc_jpg("{cohort}", "{slide_id}"),
    log:
        layout.log_file("qc_report_copy", "{cohort}", "{slide_id}"),
    benchmark:
        layout.benchmark_file("qc_report_copy", "{cohort}", "{slide_id}")
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/report_copy.py"
