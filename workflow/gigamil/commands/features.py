"""``gigamil features``: encode a patch store once with the frozen encoder (rule extract_features).

A model trained on cached features (``training.strategy: frozen`` with ``model.feature_cache``)
predicts feature stores, not patch stores: this writes the feature store of a new slide with the
encoder of the same config.yaml, so ``gigamil predict`` takes it.
"""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE

NAME = "features"
HELP = "encode a patch store with the frozen encoder of a config into a feature store"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE.zarr", help="patch store (gigamil patches)")
    parser.add_argument(
        "--config",
        required=True,
        metavar="CONFIG.yaml",
        help="config file: `model:` (encoder, weights) and `preprocessing.patches` are used, "
        "as rule extract_features does",
    )
    parser.add_argument("--out", required=True, metavar="FEATURES.zarr", help="feature store")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="(default auto)"
    )
    parser.add_argument(
        "--threads", type=AT_LEAST_ONE, default=1, metavar="N", help="torch CPU threads (1)"
    )


def run(args: argparse.Namespace) -> int:
    from gigamil.commands.train import load_cli_config
    from gigamil.data.feature_extract import extract_features
    from gigamil.train.fold_data import resolve_device

    cfg = load_cli_config(args.config)
    resolve_device(args.device, key="--device")  # a missing CUDA named as the option
    out = extract_features(
        args.store,
        args.out,
        model_cfg=cfg["model"],
        patch_cfg=cfg["preprocessing"]["patches"],
        device=args.device,
        threads=args.threads,
    )
    print(out)
    return 0
