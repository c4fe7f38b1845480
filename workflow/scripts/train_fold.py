"""Snakemake script of rule train_fold: gigamil.train.run.train_fold on one fold.

With more than one GPU (resources gpu > 1) the fold is trained by torchrun, one process per GPU.
"""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

from gigamil import layout
from gigamil.folds import fold_slides, read_folds
from gigamil.train.launch import train_fold_torchrun
from gigamil.train.run import train_fold

fold = int(snakemake.wildcards.fold)
folds = read_folds(snakemake.input.folds)
features = snakemake.params.features  # encoder_id of the feature cache, or None: patch stores
train_df = layout.with_stores(fold_slides(folds, fold, "train"), features)
val_df = layout.with_stores(fold_slides(folds, fold, "val"), features)
out_dir = Path(snakemake.output.model).parent
gpus = int(snakemake.resources.get("gpu", 0) or 0)
if gpus > 1:
    train_fold_torchrun(
        train_df,
        val_df,
        config=snakemake.config,
        out_dir=out_dir,
        nproc=gpus,
        threads=snakemake.threads,
        log_file=Path(snakemake.log[0]),
    )
else:
    train_fold(
        train_df,
        val_df,
        classes=list(snakemake.params.classes),
        model_cfg=dict(snakemake.params.model),
        training_cfg=snakemake.config["training"],  # params.training only triggers reruns
        out_dir=out_dir,
        resume=True,
        threads=snakemake.threads,
    )
