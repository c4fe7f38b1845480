"""``gigamil predict``: slide probabilities and attention maps from a trained model."""

from __future__ import annotations

import argparse

from gigamil.commands._argtypes import AT_LEAST_ONE
from gigamil.commands.train import add_fold_arguments

NAME = "predict"
HELP = "predict slides with a trained model.pt (probabilities + attention per patch)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="MODEL.pt", help="trained model.pt")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--slides",
        metavar="CSV",
        help="slides: cohort, slide_id, patient_id, store (label optional: written to the output)",
    )
    src.add_argument(
        "--folds",
        metavar="FOLDS.csv",
        help="instead of --slides: the test slides of fold --fold K of this folds.csv "
        "(gigamil splits), their stores under --stores",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="PREDS.csv",
        help="output CSV: slide_id, patient_id, cohort, label, prob_<class>, pred",
    )
    add_fold_arguments(
        parser,
        "the fold model's number: writes a fold column after the ids, as the pipeline's "
        "per-fold CSVs have, so the output goes to gigamil evaluate / ensemble as it is (with "
        "--folds: the fold whose test slides are predicted)",
    )
    parser.add_argument(
        "--attention-dir",
        metavar="DIR",
        help="writes DIR/{slide_id}.npy (float32 attention per patch: gigamil heatmap reads "
        "them) and DIR/patch_logits/{slide_id}.npy (the smoothed patch logits: with the "
        "attention, gigamil evaluate's patch score); default: none written",
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
    import contextlib
    import tempfile
    from pathlib import Path

    from gigamil.commands.train import check_fold_flags, fold_slides, read_slides_csv
    from gigamil.evaluate.predictions import write_fold_predictions
    from gigamil.train.fold_data import resolve_device
    from gigamil.train.predict import predict_slides

    resolve_device(args.device, key="--device")  # named as typed, before the model is read
    check_fold_flags(args, "--slides")
    if Path(args.out).is_dir():  # found before any slide is predicted, named as given
        from gigamil.errors import GigamilError

        raise GigamilError(f"--out {args.out}: is a folder; give the CSV file to write")
    with contextlib.ExitStack() as stack:  # no --attention-dir: written to a temporary folder
        attention = args.attention_dir or stack.enter_context(tempfile.TemporaryDirectory())
        preds = predict_slides(
            Path(args.model),
            fold_slides(args, "test")[0]
            if args.folds is not None
            else read_slides_csv(args.slides, labels=False),
            None if args.fold is not None else Path(args.out),
            Path(attention),
            device=args.device,
            threads=args.threads,
            max_instances_per_forward_pass=args.chunk,
            require_unseen=args.folds is not None,  # declared test slides: none may be seen
        )
    if args.fold is not None:
        write_fold_predictions(preds, args.fold, args.out)
    import logging

    logging.getLogger("gigamil").info(  # a trial read P = 1 for skin by lymph-node models
        "a probability means something only for slides like the model's training slides "
        "(tissue, stain, scanner, µm/px), and nothing checks that these are: gigamil "
        "model-info %s says what it trained on",
        args.model,
    )
    print(args.out)
    return 0
