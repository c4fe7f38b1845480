"""Rule extract_features: the feature cache of a frozen encoder (gigamil.data.features).

Used only when the encoder is frozen (training.strategy frozen, or its older spelling
model.trainable_blocks 0 / freeze_encoder) and
model.feature_cache is on (FEATURE_ID, common.smk): train_fold and predict_fold then read
results/features/{encoder_id}/{cohort}/{slide_id}.zarr instead of the patch stores. encoder_id
hashes everything the features depend on (encoder, weights, BatchNorm mode, normalisation, patch
settings); the only param is that spec, so training or head changes re-extract nothing.
"""


rule extract_features:
    input:
        store=layout.store_path("{cohort}", "{slide_id}"),
    output:
        features=directory(
            layout.feature_store("{encoder_id}", "{cohort}", "{slide_id}")
        ),
    log:
        layout.log_file("extract_features", "{encoder_id}", "{cohort}", "{slide_id}"),
    benchmark:
        layout.benchmark_file(
            "extract_features", "{encoder_id}", "{cohort}", "{slide_id}"
        )
    wildcard_constraints:
        encoder_id="[A-Za-z0-9_]+-[0-9a-f]+",
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,  # MB; more on each retry (OOM)
        runtime=lambda wc, attempt: 30 * attempt,  # minutes; more on each retry
        gpu=FEATURE_GPUS,
    params:
        encoder=FEATURE_SPEC,
    script:
        "../scripts/extract_features.py"
