"""gigamil: whole-slide image classification with end-to-end attention MIL.

Run the demo with `snakemake --cores all`; see README.md for everything else.
"""

from snakemake.utils import min_version

min_version("9.0")


# The demo's config.yaml (in the directory snakemake runs in) only when no --configfile is given:
# Snakemake would merge a user's --configfile over it, and the demo cohort would join their cohorts.
if not workflow.overwrite_configfiles:
    import sys

    import yaml

    try:  # a YAML slip named by its line, not by Snakemake's generic message
        with open("config.yaml") as _fh:
            _raw = yaml.safe_load(_fh)
    except yaml.YAMLError as _exc:
        print(f"gigamil: config.yaml is not valid YAML: {_exc}", file=sys.stderr)
        sys.exit(1)
    except OSError:
        _raw = {}  # no config.yaml: Snakemake's own message names it
    if not isinstance(_raw, dict):
        _what = "an empty file" if _raw is None else f"a {type(_raw).__name__}"
        print(
            "gigamil: invalid configuration: config.yaml must be a mapping of keys "
            f"(experiment:, cohorts:, ...), not {_what}",
            file=sys.stderr,
        )
        sys.exit(1)

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/heatmaps.smk"


onsuccess:
    print_run_summary()


rule all:
    default_target: True
    input:
        [layout.qc_csv(c) for c in config["cohorts"]],
        eval_targets(),
        # a sample of the tissue-mask QC thumbnails, shown in the report
        qc_thumbnails("workflow/report/qc_thumbnail.rst"),
