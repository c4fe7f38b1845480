"""``gigamil model-info``: what a fold's model.pt is (classes, input patches, encoder, what it was
trained on) and the config.yaml keys a project needs to predict with it
(:mod:`gigamil.train.model_info`)."""

from __future__ import annotations

import argparse

NAME = "model-info"
HELP = "what a model.pt is, and the config keys (classes, preprocessing) to predict with it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL.pt",
        help="a fold's model.pt, e.g. results/models/demo/fold0/model.pt",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the header (everything but the weights) and the config keys as JSON",
    )


def run(args: argparse.Namespace) -> int:
    import json

    import yaml

    from gigamil.train.model_info import config_fragment, describe_model, model_header_of

    header = model_header_of(args.model)
    fragment = config_fragment(header)
    if args.json:
        print(json.dumps({"header": header, "config": fragment}, indent=2, default=str))
        return 0
    print("\n".join(describe_model(args.model, header)))
    print(
        "\nconfig.yaml keys of a project predicting with it (with trained_models: the folder "
        "holding fold<k>/model.pt; README, 'Sharing trained models'):"
    )
    classes = {"classes": fragment["classes"]}  # a list in one line, sections as blocks
    print(yaml.safe_dump(classes, default_flow_style=None, allow_unicode=True).rstrip())
    rest = {"preprocessing": fragment["preprocessing"]}
    print(yaml.safe_dump(rest, sort_keys=False, allow_unicode=True).rstrip())
    return 0
