"""``gigamil model-info``: what a fold's model.pt (or a folder of fold models) is (classes, input
patches, encoder, what it was trained on), the config.yaml keys a project needs to predict with
it, and, with ``--config``, whether that config can (:mod:`gigamil.train.model_info`,
:mod:`gigamil.train.trained_models`)."""

from __future__ import annotations

import argparse

NAME = "model-info"
HELP = "what a model.pt (or a folder of fold models) is, and the config keys to predict with it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a fold's model.pt (e.g. results/models/demo/fold0/model.pt), or a folder of "
        "fold<k>/model.pt files (what trained_models names)",
    )
    parser.add_argument(
        "--config",
        metavar="CONFIG.yaml",
        help="check that this config can predict with the model(s), as the workflow does with "
        "trained_models before any job: errors name the setting to use, warnings are printed",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the header(s) (everything but the weights) and the config keys as JSON",
    )


def _print_keys(fragment: dict) -> None:
    import yaml

    print(
        "\nconfig.yaml keys of a project predicting with it (with trained_models: the folder "
        "holding fold<k>/model.pt; README, 'Sharing trained models'):"
    )
    classes = {"classes": fragment["classes"]}  # a list in one line, sections as blocks
    print(yaml.safe_dump(classes, default_flow_style=None, allow_unicode=True).rstrip())
    rest = {"preprocessing": fragment["preprocessing"]}
    print(yaml.safe_dump(rest, sort_keys=False, allow_unicode=True).rstrip())


def _check(models: dict, config_path: str) -> list[str]:
    """The workflow's trained_models checks of ``models`` against the config at
    ``config_path`` (GigamilError naming the setting to use); its warnings and a verdict."""
    from gigamil.config import load_config
    from gigamil.data.feature_spec import config_encoder_id
    from gigamil.train.trained_models import check_with_config

    config = load_config(config_path)
    warnings = check_with_config(models, config, config_encoder_id(config))
    them = "this model" if len(models) == 1 else f"these {len(models)} fold models"
    verdict = f"{config_path} can predict with {them}"
    return [
        *(f"warning: {w}" for w in warnings),
        verdict + (" (warnings above)" if warnings else ""),
    ]


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from gigamil.train.model_info import config_fragment, describe_model, model_header_of
    from gigamil.train.trained_models import fold_models

    path = Path(args.model)
    models = fold_models(path) if path.is_dir() else {0: path}
    headers = {fold: model_header_of(p) for fold, p in models.items()}
    fragments = {fold: config_fragment(h) for fold, h in headers.items()}
    first = next(iter(fragments.values()))
    checked = _check(models, args.config) if args.config else []
    if args.json:  # the check's lines on stderr: stdout is the JSON alone
        if checked:
            print("\n".join(checked), file=sys.stderr)
        if path.is_dir():
            shown = {"headers": {f"fold{k}": h for k, h in headers.items()}}
        else:
            shown = {"header": headers[0]}
        print(json.dumps({**shown, "config": first}, indent=2, default=str))
        return 0
    for fold, header in headers.items():
        print("\n".join(describe_model(models[fold], header)))
    if any(f != first for f in fragments.values()):
        print("\nnote: the fold models differ in these keys; shown: the first fold's")
    _print_keys(first)
    if checked:
        print("\n" + "\n".join(checked))
    return 0
