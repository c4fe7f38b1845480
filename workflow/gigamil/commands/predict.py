"""``gigamil predict``: slide probabilities and attention maps from a trained model."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE

NAME = "predict"
HELP = "predict slides with a trained model.pt (probabilities + attention per patch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL.pt", help="trained model.pt")
    parser.add_argument(
        "--slides",
        required=True,
        metavar="CSV",
        help="slides: cohort, slide_id, patient_id, store (label optional: written to the output)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PREDS.csv",
        help="output CSV: slide_id, patient_id, cohort, label, prob_<class>, pred",
    )
    parser.add_argument(
        "--attention-dir",
        required=True,
        metavar="DIR",
        help="writes DIR/{slide_id}.npy (float32 attention per patch)",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="default auto (CUDA when available)",
    )
    parser.add_argument(
        "--threads",
        type=AT_LEAST_ONE,
        default=1,
        metavar="N",
        help="torch CPU threads, and threads decoding patches (default 1)",
    )
    parser.add_argument(
        "--chunk",
        type=AT_LEAST_ONE,
        default=256,
        metavar="K",
        help="instances per encoder pass (memory bound; default 256, the schema default of "
        "training.max_instances_per_forward_pass)",
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gigamil.commands.train import read_slides_csv
    from gigamil.train.predict import predict_slides

    predict_slides(
        Path(args.model),
        read_slides_csv(args.slides, labels=False),
        Path(args.out),
        Path(args.attention_dir),
        device=args.device,
        threads=args.threads,
        max_instances_per_forward_pass=args.chunk,
    )
    print(args.out)
    return 0
