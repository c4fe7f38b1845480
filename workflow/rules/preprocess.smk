"""Rules tissue_mask, extract_patches, qc_table: slide ingestion (gigamil.wsi).

Only the preprocessing sub-dicts of config.yaml are params here, so changing a training or
heatmap key does not redo the masks or the patch stores.
"""


rule tissue_mask:
    input:
        slide=slide_path,
    output:
        mask="results/masks/{cohort}/{slide_id}.png",
        qc="results/masks/{cohort}/{slide_id}.qc.png",
        json="results/masks/{cohort}/{slide_id}.json",
    log:
        "logs/tissue_mask/{cohort}/{slide_id}.log",
    benchmark:
        "logs/benchmarks/tissue_mask/{cohort}/{slide_id}.tsv"
    group:
        "preprocess"
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=lambda wc, attempt: 5 * attempt,  # minutes; more on each retry
    params:
        tissue=config["preprocessing"]["tissue"],
        slide_mpp=slide_mpp_override,
    script:
        "../scripts/tissue_mask.py"


rule extract_patches:
    input:
        slide=slide_path,
        mask="results/masks/{cohort}/{slide_id}.png",
        mask_json="results/masks/{cohort}/{slide_id}.json",
    output:
        store=directory("results/patches/{cohort}/{slide_id}.zarr"),
    log:
        "logs/extract_patches/{cohort}/{slide_id}.log",
    benchmark:
        "logs/benchmarks/extract_patches/{cohort}/{slide_id}.tsv"
    group:
        "preprocess"
    conda:
        "../../envs/gigamil.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 20 * attempt,  # minutes; more on each retry
    params:
        patches=config["preprocessing"]["patches"],
        slide_mpp=slide_mpp_override,
    script:
        "../scripts/extract_patches.py"


rule qc_table:
    input:
        masks=lambda wc: expand(
            "results/masks/{cohort}/{slide_id}.json",
            cohort=wc.cohort,
            slide_id=cohort_slide_ids(wc.cohort),
        ),
        stores=lambda wc: [
            store_path(wc.cohort, s) for s in cohort_slide_ids(wc.cohort)
        ],
    output:
        csv="results/qc/{cohort}.csv",
    log:
        "logs/qc_table/{cohort}.log",
    benchmark:
        "logs/benchmarks/qc_table/{cohort}.tsv"
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        slide_ids=lambda wc: cohort_slide_ids(wc.cohort),
    script:
        "../scripts/qc_table.py"
