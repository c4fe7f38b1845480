"""Snakemake script of rule train_fold: gigamil.train.run.train_fold on one fold."""

from pathlib import Path

from gigamil.evaluate.splits import fold_slides, read_folds
from gigamil.logutil import setup_logging
from gigamil.train.run import train_fold

setup_logging(snakemake.log[0])
fold = int(snakemake.wildcards.fold)
folds = read_folds(snakemake.input.folds)
pattern = snakemake.params.store_pattern


def with_stores(df):
    """The fold's slides plus the ``store`` column the trainer reads."""
    pairs = zip(df["cohort"], df["slide_id"], strict=True)
    stores = [pattern.format(cohort=c, slide_id=s) for c, s in pairs]
    return df.assign(store=stores)


train_fold(
    with_stores(fold_slides(folds, fold, "train")),
    with_stores(fold_slides(folds, fold, "val")),
    classes=list(snakemake.params.classes),
    model_cfg=dict(snakemake.params.model),
    training_cfg=dict(snakemake.params.training),
    out_dir=Path(snakemake.output.model).parent,
    resume=True,
    threads=snakemake.threads,
)
