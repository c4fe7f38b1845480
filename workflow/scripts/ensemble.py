"""Snakemake script of rule ensemble: gigamil.evaluate.ensemble.ensemble_cohort."""

from pathlib import Path

from gigamil.evaluate.ensemble import ensemble_cohort
from gigamil.logutil import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params
cohort = snakemake.wildcards.cohort
localization = {}
for slide_id, mask in params.lesion_masks.get(cohort, {}).items():
    ids = {"cohort": cohort, "slide_id": slide_id}
    attention = [params.attention_pattern.format(fold=k, **ids) for k in params.folds]
    localization[slide_id] = (params.store_pattern.format(**ids), attention, mask)
ensemble_cohort(
    snakemake.input.preds,
    list(params.classes),
    Path(snakemake.output.summary).parent,
    cohort=cohort,
    experiment=params.experiment,
    n_boot=int(params.n_boot),
    seed=int(params.seed),
    localization=localization or None,
)
