"""Snakemake script of rule aggregate_cv: gigamil.evaluate.aggregate.aggregate_cv."""

from pathlib import Path

from gigamil.evaluate.aggregate import aggregate_cv
from gigamil.evaluate.splits import read_folds
from gigamil.logutil import setup_logging

setup_logging(snakemake.log[0])
params = snakemake.params
folds = read_folds(snakemake.input.folds)
test = folds[folds["role"] == "test"]
localization = {}
for row in test.itertuples(index=False):
    mask = params.lesion_masks.get(row.cohort, {}).get(row.slide_id)
    if mask:
        ids = {"cohort": row.cohort, "slide_id": row.slide_id}
        localization[row.slide_id] = (
            params.store_pattern.format(**ids),
            params.attention_pattern.format(fold=row.fold, **ids),
            mask,
        )
aggregate_cv(
    snakemake.input.preds,
    snakemake.input.folds,
    list(params.classes),
    Path(snakemake.output.summary).parent,
    experiment=params.experiment,
    localization=localization or None,
    n_boot=int(params.n_boot),
    seed=int(params.seed),
)
