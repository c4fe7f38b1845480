"""Training: the epoch loop over zarr bags, checkpoints, DDP helpers, fold-level entry points.

Entry points (used by the Snakemake scripts and the CLI): :func:`gigamil.train.run.train_fold`
and :func:`gigamil.train.predict.predict_slides`.
"""
