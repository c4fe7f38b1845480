"""Rule demo_cohort: the built-in demo cohort (gigamil demo): mosaic slides of the packaged CC0
PatchCamelyon tiles (DEMO_KIND "tiles"; "synthetic" = planted lesions in the packaged CMU slide).

The committed resources/demo/sheet.csv is exactly the sheet this rule writes (a unit test
checks it); its slide ids name the rule's outputs and its patients give the generator's
``n_patients`` (slides per patient: gigamil.demo_io.DEMO_SLIDES_PER_PATIENT).
"""

from pathlib import Path

import pandas

from gigamil.demo import SOURCE_MPP
from gigamil.demo_io import DEMO_SLIDES_PER_PATIENT
from gigamil.demo_tiles import PCAM_MPP

DEMO_SEED = 0
DEMO_KIND = "tiles"
DEMO_SHEET = pandas.read_csv(
    Path(workflow.basedir) / "resources" / "demo" / "sheet.csv"
)
DEMO_SLIDE_IDS = DEMO_SHEET["slide_id"].tolist()
DEMO_PATIENTS = DEMO_SHEET["patient_id"].nunique()

# µm/px of the generated demo slides' level 0
DEMO_MPP = {"tiles": PCAM_MPP, "synthetic": SOURCE_MPP}[DEMO_KIND]

if getattr(workflow, "is_main_process", True) and DEMO_COHORTS:
    # common.smk checks the demo slides that exist; before rule demo_cohort has run, the one
    # check that needs no file (the patch µm/px against the slides' known one) is done here
    from gigamil.cohorts import check_demo_cohorts
    from gigamil.wsi.patching import upsampling_problem

    try:  # demo: true copied onto a cohort of one's own slides
        check_demo_cohorts(config, SHEETS, DEMO_SLIDE_IDS)
    except ConfigError as exc:
        stop(f"gigamil: invalid configuration: {CONFIG_SOURCE}: {exc}")

    _problem = upsampling_problem(DEMO_MPP, config["preprocessing"]["patches"]["mpp"])
    if _problem:
        stop(
            f"gigamil: demo cohort {', '.join(DEMO_COHORTS)} (slides generated at "
            f"{DEMO_MPP:g} µm/px; checked before any job runs): {_problem}"
        )


rule demo_cohort:
    output:
        sheet=layout.demo_sheet(),
        slides=[layout.demo_slide(s) for s in DEMO_SLIDE_IDS],
        masks=[layout.demo_lesion_mask(s) for s in DEMO_SLIDE_IDS],
        mask_meta=[layout.demo_lesion_meta(s) for s in DEMO_SLIDE_IDS],
        tiles=[layout.demo_tiles_table()] if DEMO_KIND == "tiles" else [],
    log:
        layout.log_file("demo", "demo_cohort"),
    benchmark:
        layout.benchmark_file("demo_cohort")
    conda:
        "../../envs/gigamil.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        seed=DEMO_SEED,
        kind=DEMO_KIND,
        patients=DEMO_PATIENTS,
        slides_per_patient="-".join(str(n) for n in DEMO_SLIDES_PER_PATIENT),
    script:
        "../scripts/demo_cohort.py"
